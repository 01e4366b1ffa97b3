"""scripts/ta.py: clear errors for a bad set-up, and a second run that reuses the cache."""
import json
import os
import subprocess
import sys
import time

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
    with open(os.path.join(provisioned["cache"], "manifest.json")) as f:
        assert json.load(f)["comfyui"] == provisioned["comfyui"]
