"""Run in a host's venv from the host's folder by `ta.py setup`: prints, as JSON, the versions of the
libraries the host and the plugin run on, after proving that torch's companions work beside the pinned
torch (a torchaudio built for another torch can import and still fail in its compiled ops):

- torchaudio, when installed: one resample and one lfilter run (compiled kernels), and the host's own
  audio nodes import (`comfy_extras/nodes_audio.py`, with the host's arguments parsed for CPU);
- torchvision: one `nms` runs (a compiled op).

Exits non-zero, naming the library and the error, when a check fails.

    python host_libraries.py            (cwd: the ComfyUI folder)
"""
import json
import os
import sys
from importlib import metadata

REPORTED = ("torch", "torchvision", "torchaudio", "av", "numpy", "pillow", "safetensors", "opencv-python-headless",
            "transformers", "comfyui-frontend-package")


def check_torchvision():
    import torch
    import torchvision
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]])
    assert torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]


def check_torchaudio():
    import torch
    import torchaudio
    wave = torch.sin(torch.linspace(0, 400, 16000)).unsqueeze(0)
    assert torchaudio.functional.resample(wave, 16000, 8000).shape == (1, 8000)
    out = torchaudio.functional.lfilter(wave, torch.tensor([1.0, -0.5]), torch.tensor([0.5, 0.5]))
    assert torch.isfinite(out).all()
    if os.path.exists(os.path.join("comfy_extras", "nodes_audio.py")):
        sys.argv = [sys.argv[0], "--cpu"]
        sys.path.insert(0, os.getcwd())
        import comfy.options
        comfy.options.enable_args_parsing()
        import comfy_extras.nodes_audio  # noqa: F401  (the host's audio nodes, as the server loads them)


def main():
    versions = {}
    for name in REPORTED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    checks = [("torchvision", check_torchvision)] + ([("torchaudio", check_torchaudio)] if "torchaudio" in versions
                                                       else [])
    for name, check in checks:
        try:
            check()
        except Exception as e:  # noqa: BLE001  (any failure is the answer)
            sys.exit(f"{name} {versions[name]} does not work beside torch {versions['torch']}: "
                     f"{type(e).__name__}: {e}")
    print(json.dumps(versions))


if __name__ == "__main__":
    main()
