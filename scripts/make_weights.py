"""Generate deterministic random SD1.5-architecture checkpoints with ComfyUI's own classes.

Run inside the provisioned venv:  python scripts/make_weights.py COMFYUI_DIR OUT_DIR tiny|twolevel|full

Each checkpoint holds a UNet (`model.diffusion_model.*`), the CLIP-L text encoder
(`cond_stage_model.transformer.text_model.*`) and a TAESD VAE (`first_stage_model.taesd_*`),
all fp16. Weights come from one seeded generator in sorted key order, so files are byte-identical
across runs on one machine. The script asserts that the host detects each UNet as SD15.
"""
import os
import sys

# UNet sizes. All keep the SD1.5 width (model_channels 320, context 768, 8 heads, conv proj_in),
# so ComfyUI's detection says SD15; depth varies.
UNET_CONFIGS = {
    # 18.7 M params: one level, one res block, one transformer, no middle block.
    "tiny": dict(channel_mult=[1], num_res_blocks=[1], transformer_depth=[1],
                 transformer_depth_output=[1, 1], transformer_depth_middle=-2),
    # Two levels of width 320 with a middle block (about 50 M params).
    "twolevel": dict(channel_mult=[1, 1], num_res_blocks=[1, 1], transformer_depth=[1, 1],
                     transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1),
    # The real SD1.5 layout (860 M params, output blocks 0..11).
    "full": dict(channel_mult=[1, 2, 4, 4], num_res_blocks=[2, 2, 2, 2],
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                 transformer_depth_middle=1),
}
SEEDS = {"tiny": 1, "twolevel": 2, "full": 3}


def file_name(kind):
    return f"ta_{kind}_sd15.safetensors"


def fill(state_dict, seed):
    """Deterministic init: fan-in scaled normals for weights, ones for 1-D scales (norms), zeros for biases."""
    import torch
    gen = torch.Generator("cpu").manual_seed(seed)
    out = {}
    for key in sorted(state_dict):
        t = state_dict[key]
        if key.endswith("bias"):
            v = torch.zeros(t.shape)
        elif t.ndim <= 1:
            v = torch.ones(t.shape)
        elif "embedding" in key:
            v = torch.randn(t.shape, generator=gen) * 0.02
        else:
            fan_in = t[0].numel()
            v = torch.randn(t.shape, generator=gen) / fan_in ** 0.5
        out[key] = v.to(torch.float16).contiguous()
    return out


def _latent_scale(taesd, vae_sd, target_std=5.0):
    """TAESD's vae_scale that gives encoded latents about SD1.5's spread (std ~5 before the 0.18215
    scale factor, ~1 inside the model), measured on a fixed seeded image."""
    import torch
    taesd.load_state_dict({k: v.float() for k, v in vae_sd.items()}, strict=False)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator("cpu").manual_seed(7))
    raw_std = taesd.taesd_encoder(image).std()
    return (raw_std / target_std).reshape(vae_sd["vae_scale"].shape).to(torch.float16)


def build(kind, comfy_dir):
    sys.path.insert(0, comfy_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    torch.set_grad_enabled(False)
    import comfy.ops
    import comfy.sd1_clip
    import comfy.taesd.taesd
    import comfy.model_detection
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    cfg = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320,
               use_spatial_transformer=True, legacy=False, context_dim=768, num_heads=8,
               num_head_channels=-1, use_linear_in_transformer=False, adm_in_channels=None,
               use_checkpoint=False, operations=comfy.ops.disable_weight_init, **UNET_CONFIGS[kind])
    unet = UNetModel(**cfg)
    sd = {"model.diffusion_model." + k: v for k, v in fill(unet.state_dict(), SEEDS[kind]).items()}
    del unet
    clip = comfy.sd1_clip.SDClipModel(device="cpu")
    # Like a real SD1.5 file: text_model only (the host sets text_projection to identity itself).
    text = {k: v for k, v in clip.transformer.state_dict().items() if k.startswith("text_model.")}
    sd.update({"cond_stage_model.transformer." + k: v for k, v in fill(text, 100).items()})
    del clip
    taesd = comfy.taesd.taesd.TAESD()
    vae_sd = fill(taesd.state_dict(), 200)
    # Written on every host, so one file means the same everywhere: newer hosts' TAESD adds a
    # `vae_shift` (latent = encoder / scale + shift) that `fill` would set to 1; the 2024 host has
    # none and ignores the key.
    vae_sd["vae_shift"] = torch.zeros((), dtype=torch.float16)
    vae_sd["vae_scale"] = _latent_scale(taesd, vae_sd)
    sd.update({"first_stage_model." + k: v for k, v in vae_sd.items()})
    detected = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    name = type(detected).__name__ if detected is not None else None
    if name != "SD15":
        raise SystemExit(f"generated {kind} UNet is detected as {name}, not SD15")
    return sd


def save_sorted(sd, path, metadata):
    """Write a safetensors file with a sorted header, so equal tensors give equal bytes.

    (safetensors' own writer orders the JSON header differently from run to run.)
    """
    import json
    import struct
    import torch
    header, offset = {"__metadata__": metadata}, 0
    for key in sorted(sd):
        t = sd[key]
        assert t.dtype.is_floating_point and t.element_size() == 2, key
        size = t.numel() * 2
        header[key] = {"dtype": "F16", "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for key in sorted(sd):
            f.write(sd[key].contiguous().view(-1).view(torch.int16).numpy().tobytes())


def main():
    comfy_dir, out_dir, kind = sys.argv[1], sys.argv[2], sys.argv[3]
    sd = build(kind, comfy_dir)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, file_name(kind))
    tmp = path + ".tmp"
    save_sorted(sd, tmp, {"generator": "temporal-adapter make_weights", "kind": kind})
    os.replace(tmp, path)
    n_unet = sum(v.numel() for k, v in sd.items() if k.startswith("model.diffusion_model."))
    print(f"{kind}: {path} unet_params={n_unet / 1e6:.1f}M detected=SD15")


if __name__ == "__main__":
    main()
