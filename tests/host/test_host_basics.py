"""The provisioned host and weights: real ComfyUI classes, SD1.5 detection, determinism, conventions."""
import hashlib
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.mark.parametrize("kind,blocks", [("tiny", 2), ("twolevel", 4)])
def test_generated_checkpoint_is_sd15_and_samples(comfy_host, kind, blocks):
    nodes = comfy_host.nodes
    with torch.inference_mode():
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(f"ta_{kind}_sd15.safetensors")[:3]
        assert type(model.model.model_config).__name__ == "SD15"
        assert len(model.model.diffusion_model.output_blocks) == blocks
        pos = nodes.CLIPTextEncode().encode(clip, "a bike on a road")[0]
        neg = nodes.CLIPTextEncode().encode(clip, "")[0]
        assert pos[0][0].shape == (1, 77, 768)
        latent = nodes.EmptyLatentImage().generate(64, 64, 2)[0]
        out = nodes.KSampler().sample(model, 1, 4, 5.0, "ddim", "ddim_uniform", pos, neg, latent)[0]
        image = nodes.VAEDecode().decode(vae, out)[0]
    assert out["samples"].shape == (2, 4, 8, 8) and torch.isfinite(out["samples"]).all()
    assert image.shape == (2, 64, 64, 3) and torch.isfinite(image).all()


def test_weights_are_byte_identical_when_regenerated(provisioned, tmp_path):
    subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_weights.py"), provisioned["comfyui"],
                    str(tmp_path), "tiny"], check=True, capture_output=True)
    name = "ta_tiny_sd15.safetensors"
    assert sha256(tmp_path / name) == sha256(os.path.join(provisioned["checkpoints"], name))


def test_the_generated_vae_encodes_the_same_on_every_host(comfy_host):
    """One weights file, one meaning: a seeded image encodes (and decodes) to the values recorded on
    the 2024 host. ComfyUI 0.8.0's TAESD adds `vae_shift` to every latent; the generator writes it as 0
    (a file with the shift of 1 that the ones-fill gave moves the mean by 1 and fails here)."""
    nodes = comfy_host.nodes
    with torch.inference_mode():
        vae = nodes.CheckpointLoaderSimple().load_checkpoint("ta_tiny_sd15.safetensors")[2]
        image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(11))
        latent = nodes.VAEEncode().encode(vae, image)[0]["samples"]
        decoded = nodes.VAEDecode().decode(vae, {"samples": latent})[0]
    assert latent.shape == (1, 4, 8, 8)
    recorded = [-0.12204751, -0.74957907, -3.03035450, -1.70223951, -3.97628284, -2.76085472]
    assert latent.flatten()[:6].tolist() == pytest.approx(recorded, abs=1e-3)
    assert (latent.mean().item(), latent.std().item()) == pytest.approx((-1.1760418, 5.0220284), abs=1e-3)
    assert (decoded.mean().item(), decoded.std().item()) == pytest.approx((8.9688e-4, 6.1564e-3), abs=1e-5)


def test_every_node_follows_the_conventions(comfy_host):
    mappings = comfy_host.plugin.NODE_CLASS_MAPPINGS
    assert mappings, "the plugin registers no nodes"
    problems = []
    for node_id, cls in mappings.items():
        if not node_id.startswith("TA_"):
            problems.append(f"{node_id}: id lacks the TA_ prefix")
        if not cls.CATEGORY.startswith("Temporal Adapter/"):
            problems.append(f"{node_id}: category {cls.CATEGORY!r}")
        if not getattr(cls, "DESCRIPTION", "").strip():
            problems.append(f"{node_id}: no DESCRIPTION")
        if node_id not in comfy_host.plugin.NODE_DISPLAY_NAME_MAPPINGS:
            problems.append(f"{node_id}: no display name")
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, value in spec.get(section, {}).items():
                opts = value[1] if len(value) > 1 else {}
                if not opts.get("tooltip"):
                    problems.append(f"{node_id}.{name}: no tooltip")
    assert not problems, "\n".join(problems)
