"""scripts/ta.py: clear errors for a bad set-up, the requirements each host gets, and a second run
that reuses the cache."""
import json
import os
import subprocess
import sys
import time

import pytest
import ta

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TA = os.path.join(REPO, "scripts", "ta.py")


def test_missing_comfyui_path_is_named(tmp_path):
    missing = tmp_path / "no-such-comfyui"
    env = dict(os.environ, COMFYUI_PATH=str(missing), TA_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, TA, "setup"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert str(missing) in r.stderr + r.stdout and "no such directory" in r.stderr + r.stdout


def test_a_folder_that_is_not_comfyui_is_refused(tmp_path):
    env = dict(os.environ, COMFYUI_PATH=str(tmp_path), TA_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, TA, "setup"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "is not a ComfyUI folder" in r.stderr + r.stdout


def test_second_setup_reuses_the_cache(provisioned):
    """Provisioning already ran (the test command does it): a rerun must rebuild nothing."""
    ckpts = provisioned["checkpoints"]
    before = {f: os.stat(os.path.join(ckpts, f)).st_mtime_ns for f in os.listdir(ckpts)}
    env = dict(os.environ)
    if not provisioned["user_host"]:
        env.pop("COMFYUI_PATH", None)
    t0 = time.time()
    r = subprocess.run([sys.executable, TA, "setup"], env=env, capture_output=True, text=True, timeout=300)
    took = time.time() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    print(f"second provisioning run: {took:.1f}s")
    assert "$ " not in r.stdout, f"the rerun executed commands:\n{r.stdout}"
    after = {f: os.stat(os.path.join(ckpts, f)).st_mtime_ns for f in os.listdir(ckpts)}
    assert before == after
    with open(os.path.join(provisioned["cache"], "hosts", provisioned["host_key"], "manifest.json")) as f:
        assert json.load(f)["comfyui"] == provisioned["comfyui"]


HOST_REQUIREMENTS = """comfyui-frontend-package==1.35.9
torch
torchsde
torchvision
torchaudio
numpy>=1.25.0
transformers>=4.50.3  # a comment
av>=14.2.0

#non essential dependencies:
kornia>=0.7.1
"""


@pytest.mark.parametrize("audio_build", [False, True])
def test_a_host_keeps_its_own_requirements_and_our_pins_fill_only_what_it_leaves_open(tmp_path, audio_build):
    (tmp_path / "requirements.txt").write_text(HOST_REQUIREMENTS)
    lines, notes = ta.venv_requirements("archive", str(tmp_path), lambda: audio_build)
    names = [ta.requirement_name(ln) for ln in lines]
    # torch and torchvision: our pins, once; the host's own lines exactly as it states them
    assert lines[:2] == ta.TORCH_PINS and names.count("torch") == 1 and names.count("torchvision") == 1
    for line in ("comfyui-frontend-package==1.35.9", "torchsde", "numpy>=1.25.0", "transformers>=4.50.3",
                 "av>=14.2.0", "kornia>=0.7.1"):
        assert line in lines
    # our pins only for what neither the host nor the plugin names: the plugin's runtime libraries come
    # as ComfyUI-Manager resolves its requirements.txt (no numpy/transformers/av/opencv pin of ours)
    pinned = [ln for ln in lines if "==" in ln and ln not in ta.TORCH_PINS]
    assert {ta.requirement_name(ln) for ln in pinned} >= {"pytest", "playwright"}
    assert not ({"numpy", "transformers", "av", "kornia", "opencv-python-headless", "matplotlib"}
                & {ta.requirement_name(ln) for ln in pinned})
    assert "opencv-python-headless>=4.8" in lines
    # torchaudio: kept when a build for the pinned torch exists, else left out and said once
    assert ("torchaudio" in lines) == audio_build
    assert bool(notes) != audio_build and (audio_build or "torchaudio" in notes[0])


def test_the_embedded_host_keeps_our_pins(tmp_path):
    lines, notes = ta.venv_requirements("embedded", str(tmp_path), lambda: False)
    assert lines[:2] == ta.TORCH_PINS and not notes
    assert "av==13.1.0" in lines and "transformers==4.46.3" in lines


def test_each_host_has_its_own_cache_key(tmp_path, monkeypatch):
    other = tmp_path / "ComfyUI"
    (other / "comfy").mkdir(parents=True)
    (other / "main.py").write_text("")
    archive = tmp_path / "ComfyUI-9.9.9.tar.gz"
    archive.write_bytes(b"not really")
    keys = set()
    for env in ({}, {"COMFYUI_PATH": str(other)}, {"TA_HOST_ARCHIVE": str(archive)}):
        monkeypatch.delenv("COMFYUI_PATH", raising=False)
        monkeypatch.delenv("TA_HOST_ARCHIVE", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        keys.add(ta.choose_host()[0])
    assert len(keys) == 3
    monkeypatch.setenv("COMFYUI_PATH", str(other))
    with pytest.raises(SystemExit, match="both set"):
        ta.choose_host()


def test_timings_sum_the_runs_of_each_host(tmp_path, capsys):
    """CI runs a host's tiers in two `ta.py test` runs: the table has one row per host, each tier summed,
    and the host fails when any of its runs failed."""
    runs = [("A", {"unit": (3, 1.5)}, "passed"), ("A", {"host": (2, 10.0), "unit": (1, 0.5)}, "failed (pytest exit 1)"),
            ("B", {"host": (4, 20.0)}, "passed")]
    paths = []
    for i, (host, tiers, outcome) in enumerate(runs):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps({"host": host, "outcome": outcome, "tiers": {
            t: {"count": c, "seconds": s} for t, (c, s) in tiers.items()}}))
    ta.print_timings([str(p) for p in paths] + [str(tmp_path / "missing.json")])
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith(("A ", "B "))}
    assert rows["A"].split() == ["A", "2", "in", "10.0s", "4", "in", "2.0s", "12.0s", "failed", "(pytest", "exit", "1)"]
    assert rows["B"].split() == ["B", "4", "in", "20.0s", "20.0s", "passed"]


def fake_dist(site, name, version, files, requires=()):
    """An installed distribution as pip leaves it: its files, METADATA and RECORD (sha256 per file)."""
    import base64
    import hashlib
    info = f"{name.replace('-', '_')}-{version}.dist-info"
    os.makedirs(os.path.join(site, info), exist_ok=True)
    rows = []
    for rel, text in files.items():
        path = os.path.join(site, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        sha = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        rows.append(f"{rel},sha256={sha},{len(text)}")
    with open(os.path.join(site, info, "METADATA"), "w") as f:
        f.write("".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"]
                        + [f"Requires-Dist: {r}\n" for r in requires]))
    with open(os.path.join(site, info, "RECORD"), "w") as f:
        f.write("\n".join(rows + [f"{info}/METADATA,,", f"{info}/RECORD,,"]) + "\n")


def host_site(tmp_path, host):
    site = ta.site_packages(str(tmp_path / "hosts" / host / "venv"))
    os.makedirs(site, exist_ok=True)
    return site


def test_a_second_host_venv_links_the_pinned_torch_of_another(tmp_path, monkeypatch):
    """A new host venv gets the pinned torch, torchvision and what they require on this platform (extras they
    ask for included) as hard links to another host venv's files (dist-info included, so pip sees them
    installed); not a distribution only an extra nobody asks for brings, not an unrelated one, not console
    scripts, not one the new host's requirements name; nothing from a venv with other versions."""
    from importlib import metadata
    monkeypatch.setattr(ta, "CACHE", str(tmp_path))
    first = host_site(tmp_path, "a")
    fake_dist(first, "torch", "2.14.1", {"torch/lib/big.so": "x" * 1000, "../../../bin/torchrun": "#!"},
              ["cuda-toolkit[cublas] ; platform_system == 'Linux'", "typing-extensions>=4",
               "opt-einsum ; extra == 'opt'", "pywin32 ; platform_system == 'Windows'"])
    fake_dist(first, "torchvision", "0.29.1", {"torchvision/__init__.py": "tv"}, ["torch==2.14.1"])
    fake_dist(first, "cuda-toolkit", "13.0", {"cuda_toolkit/__init__.py": "ct"},
              ["nvidia-cublas ; extra == 'cublas'", "nvidia-cufft ; extra == 'cufft'"])
    fake_dist(first, "nvidia-cublas", "13.1", {"nvidia/cublas/lib.so": "c" * 500})
    fake_dist(first, "nvidia-cufft", "13.1", {"nvidia/cufft/lib.so": "f" * 500})
    fake_dist(first, "typing-extensions", "4.16.0", {"typing_extensions.py": "te"})
    fake_dist(first, "opt-einsum", "3.4", {"opt_einsum/__init__.py": "oe"})
    fake_dist(first, "numpy", "2.4.6", {"numpy/__init__.py": "np"})
    older = host_site(tmp_path, "0-older")
    fake_dist(older, "torch", "2.13.0", {"torch/lib/big.so": "y" * 1000})
    fake_dist(older, "torchvision", "0.28.0", {"torchvision/__init__.py": "tv0"})
    second = host_site(tmp_path, "b")
    linked_bytes = ta.link_pinned_torch(str(tmp_path / "hosts" / "b" / "venv"))
    assert linked_bytes == sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(second) for f in fs) > 1500
    linked = {d.metadata["Name"]: d.version for d in metadata.distributions(path=[second])}
    assert linked == {"torch": "2.14.1", "torchvision": "0.29.1", "cuda-toolkit": "13.0", "nvidia-cublas": "13.1",
                      "typing-extensions": "4.16.0"}
    assert os.path.samefile(os.path.join(first, "torch/lib/big.so"), os.path.join(second, "torch/lib/big.so"))
    assert not os.path.exists(os.path.join(second, "../../../bin/torchrun"))
    assert ta.link_pinned_torch(str(tmp_path / "hosts" / "b" / "venv")) == 0  # torch is there now
    # what the new host's own requirements name is left to pip (the host decides its version)
    third = host_site(tmp_path, "c")
    assert ta.link_pinned_torch(str(tmp_path / "hosts" / "c" / "venv"), {"typing-extensions"}) > 0
    assert {d.metadata["Name"] for d in metadata.distributions(path=[third])} == {
        "torch", "torchvision", "cuda-toolkit", "nvidia-cublas"}


def test_set_ups_writing_the_same_file_at_once_do_not_collide(tmp_path):
    """CI sets a second host up while the first host's tests start: both write the cache's manifest.json and
    extra_model_paths.yaml. Each write is whole, and none fails for the other's temporary file."""
    import threading
    path, errors = str(tmp_path / "manifest.json"), []

    def writer(n):
        try:
            for i in range(200):
                ta.write_atomic(path, f"{n}-{i}\n" * 100)
        except OSError as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    lines = open(path).read().splitlines()
    assert len(lines) == 100 and len(set(lines)) == 1
    assert os.listdir(tmp_path) == ["manifest.json"]


HOST_LIBRARIES = os.path.join(REPO, "scripts", "host_libraries.py")


def test_host_libraries_names_the_versions_the_host_runs_on(tmp_path):
    """Run in this venv: prints the chosen versions (torch at least) after the companions' checks pass."""
    r = subprocess.run([sys.executable, HOST_LIBRARIES], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    versions = json.loads(r.stdout.strip().splitlines()[-1])
    import torch
    assert versions["torch"] == torch.__version__.split("+")[0]


def test_host_libraries_refuses_a_torchaudio_that_does_not_run(tmp_path):
    """A torchaudio that imports but whose kernels fail beside this torch stops set-up, naming it."""
    site = tmp_path / "site"
    fake_dist(str(site), "torchaudio", "9.9.9", {
        "torchaudio/__init__.py": "from . import functional\n",
        "torchaudio/functional.py": "def resample(*a, **k):\n    raise RuntimeError('undefined symbol: _ZN3c10')\n"})
    env = dict(os.environ, PYTHONPATH=str(site))
    r = subprocess.run([sys.executable, HOST_LIBRARIES], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0
    assert "torchaudio 9.9.9 does not work beside torch" in r.stderr and "undefined symbol" in r.stderr
