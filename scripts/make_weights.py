"""Generate deterministic random checkpoints of the SD1.5, SD2.x and SDXL-family architectures with
ComfyUI's own classes.

Run inside the provisioned venv:  python scripts/make_weights.py COMFYUI_DIR OUT_DIR KIND
(KIND: tiny | twolevel | full | sd21 | vega, see KINDS).

Each checkpoint holds a UNet (`model.diffusion_model.*`), the architecture's text encoders in the
checkpoint layout the host itself saves (SD1.5: CLIP-L; SD2.x: OpenCLIP-H; SDXL: CLIP-L + OpenCLIP-G,
each at full depth: the loaders build their fixed configs, and missing layers would be left
uninitialised) and a TAESD VAE (`first_stage_model.taesd_*`), all fp16. Weights come from one seeded
generator per part in sorted key order, so files are byte-identical across runs on one machine. The
script asserts that the host detects each UNet as the intended class (and prediction type).
"""
import os
import sys

# Architectures: the UNet settings the host's detection fixes, the supported_models class the file must be
# detected as, the prediction type, the TAESD seed and the latent spread its encoder is scaled to (the
# standard deviation of LATENT-space latents, about 1 / the latent format's scale factor).
ARCHS = {
    # SD1.5: context 768 (CLIP-L), conv proj_in, 8 heads.
    "sd15": dict(unet=dict(context_dim=768, use_linear_in_transformer=False, num_heads=8, num_head_channels=-1,
                           adm_in_channels=None),
                 family="SD15", prediction="EPS", vae_seed=200, latent_std=5.0),
    # SD2.x: context 1024 (OpenCLIP-H), linear proj_in, heads of 64 channels.
    "sd2": dict(unet=dict(context_dim=1024, use_linear_in_transformer=True, num_heads=-1, num_head_channels=64,
                          adm_in_channels=None),
                family="SD20", prediction="V_PREDICTION", vae_seed=200, latent_std=5.0),
    # SDXL family: context 2048 (CLIP-L + OpenCLIP-G), linear proj_in, heads of 64, ADM input (pooled text +
    # size/crop embedding, 2816 wide); latent scale factor 0.13025 instead of SD1.5's 0.18215.
    "sdxl": dict(unet=dict(context_dim=2048, use_linear_in_transformer=True, num_heads=-1, num_head_channels=64,
                           adm_in_channels=2816, num_classes="sequential"),
                 family="Segmind_Vega", prediction="EPS", vae_seed=201, latent_std=7.0),
}

# Kinds: (architecture, UNet depth, seed, file name). Depth lists follow the host's unet_config
# (transformer_depth_output in the host's order, which its decoder pops from the end).
KINDS = {
    # 18.7 M params: one level, one res block, one transformer, no middle block.
    "tiny": ("sd15", dict(channel_mult=[1], num_res_blocks=[1], transformer_depth=[1],
                          transformer_depth_output=[1, 1], transformer_depth_middle=-2), 1, "ta_tiny_sd15.safetensors"),
    # Two levels of width 320 with a middle block (about 50 M params).
    "twolevel": ("sd15", dict(channel_mult=[1, 1], num_res_blocks=[1, 1], transformer_depth=[1, 1],
                              transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1), 2,
                 "ta_twolevel_sd15.safetensors"),
    # The real SD1.5 layout (860 M params, output blocks 0..11).
    "full": ("sd15", dict(channel_mult=[1, 2, 4, 4], num_res_blocks=[2, 2, 2, 2],
                          transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                          transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                          transformer_depth_middle=1), 3, "ta_full_sd15.safetensors"),
    # SD2.1 768-v: the SD1.5/SD2 layout (4 levels, output blocks 0..11) at 320 channels on every level
    # (114 M params), detected as SD20 with v-prediction (the host reads it from output 11's norm1 bias).
    "sd21": ("sd2", dict(channel_mult=[1, 1, 1, 1], num_res_blocks=[2, 2, 2, 2],
                         transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                         transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                         transformer_depth_middle=1), 4, "ta_sd21_768v.safetensors"),
    # Segmind Vega, the SDXL-family layout at its real width (745 M params): 3 levels, transformer depths
    # 1 and 2 at 1/2 and 1/4 size, no middle attention; detected as Segmind_Vega.
    "vega": ("sdxl", dict(channel_mult=[1, 2, 4], num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 1, 1, 2, 2],
                          transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2], transformer_depth_middle=-1), 5,
             "ta_vega_sdxl.safetensors"),
}
V_PREDICTION_KEY = "output_blocks.11.1.transformer_blocks.0.norm1.bias"  # SD20.model_type reads its spread
TEXT_SEED = 100


def file_name(kind):
    return KINDS[kind][3]


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


def _latent_scale(taesd, vae_sd, target_std):
    """TAESD's vae_scale that gives encoded latents about the architecture's spread (`target_std` before the
    latent format's scale factor, ~1 inside the model), measured on a fixed seeded image."""
    import torch
    taesd.load_state_dict({k: v.float() for k, v in vae_sd.items()}, strict=False)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator("cpu").manual_seed(7))
    raw_std = taesd.taesd_encoder(image).std()
    return (raw_std / target_std).reshape(vae_sd["vae_scale"].shape).to(torch.float16)


def import_host(comfy_dir):
    sys.path.insert(0, comfy_dir)
    sys.argv = [sys.argv[0], "--cpu"]
    import comfy.options
    comfy.options.enable_args_parsing()
    import torch
    torch.set_grad_enabled(False)


def unet_config(arch, depth):
    """The UNetModel arguments of an architecture and a depth (the host's unet_config keys)."""
    return {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
            "use_spatial_transformer": True, "legacy": False, "use_checkpoint": False, **ARCHS[arch]["unet"], **depth}


def text_encoders(model_config):
    """Seeded text encoder weights in the checkpoint layout the host itself saves for this model class
    (SD1.5: CLIP-L text_model only, the host sets its text_projection to identity)."""
    clip = model_config.clip_target().clip(device="meta")  # shapes only: `fill` allocates the values
    sd = model_config.process_clip_state_dict_for_saving(fill(clip.state_dict(), TEXT_SEED))
    # SDXL's saver adds integer position ids, which the host's CLIP does not keep (it counts positions itself)
    return {k: v for k, v in sd.items() if v.dtype.is_floating_point}


def build(kind, comfy_dir):
    import_host(comfy_dir)
    import torch
    import comfy.model_detection
    import comfy.ops
    import comfy.supported_models
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    arch, depth, seed, _ = KINDS[kind]
    spec = ARCHS[arch]
    unet = UNetModel(**unet_config(arch, depth), device="meta", operations=comfy.ops.disable_weight_init)
    unet_sd = fill(unet.state_dict(), seed)
    del unet
    if spec["prediction"] == "V_PREDICTION":
        g = torch.Generator("cpu").manual_seed(seed)
        unet_sd[V_PREDICTION_KEY] = (torch.randn(unet_sd[V_PREDICTION_KEY].shape, generator=g) * 0.2).half()
    sd = {"model.diffusion_model." + k: v for k, v in unet_sd.items()}
    detected = comfy.model_detection.model_config_from_unet(sd, "model.diffusion_model.")
    name = type(detected).__name__ if detected is not None else None
    if name != spec["family"]:
        raise SystemExit(f"generated {kind} UNet is detected as {name}, not {spec['family']}")
    prediction = detected.model_type(sd, "model.diffusion_model.").name
    if prediction != spec["prediction"]:
        raise SystemExit(f"generated {kind} UNet is detected as {prediction}, not {spec['prediction']}")
    sd.update(text_encoders(getattr(comfy.supported_models, spec["family"])(unet_config(arch, depth))))
    taesd = comfy.taesd.taesd.TAESD()
    vae_sd = fill(taesd.state_dict(), spec["vae_seed"])
    # Written on every host, so one file means the same everywhere: newer hosts' TAESD adds a
    # `vae_shift` (latent = encoder / scale + shift) that `fill` would set to 1; the 2024 host has
    # none and ignores the key.
    vae_sd["vae_shift"] = torch.zeros((), dtype=torch.float16)
    vae_sd["vae_scale"] = _latent_scale(taesd, vae_sd, spec["latent_std"])
    sd.update({"first_stage_model." + k: v for k, v in vae_sd.items()})
    return sd, f"{name} {prediction}"


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
    sd, detected = build(kind, comfy_dir)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, file_name(kind))
    tmp = path + ".tmp"
    save_sorted(sd, tmp, {"generator": "temporal-adapter make_weights", "kind": kind})
    os.replace(tmp, path)
    n_unet = sum(v.numel() for k, v in sd.items() if k.startswith("model.diffusion_model."))
    print(f"{kind}: {path} unet_params={n_unet / 1e6:.1f}M detected={detected}")


if __name__ == "__main__":
    main()
