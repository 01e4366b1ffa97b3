"""Models: what a ModelPatcher (or CLIP_VISION) is and holds, read without changing it.

Its family and whether the method supports it, its noise schedule (`model_sampling`, the sigmas) and
latent space, its UNet layout, context width and attention projections, and a content fingerprint
that sees through patches the host has applied in place (2024 host and newer ones alike).
"""
import hashlib

import torch

import comfy.model_management
import comfy.utils

from ...adapter_core.layout import Block, UNetLayout


# Model families (the host's supported_models class names) whose UNet the method targets: the SD1.x/SD2.x
# layout (context 768 / 1024) and the SDXL family (context 2048, ADM input `y`: pooled text + size/crop).
SD_FAMILIES = ("SD15", "SD20", "SD21UnclipL", "SD21UnclipH", "SD15_instructpix2pix")
SDXL_FAMILIES = ("SDXL", "SSD1B", "Segmind_Vega", "KOALA_700M", "KOALA_1B")
SUPPORTED_FAMILIES = SD_FAMILIES + SDXL_FAMILIES


def image_embedder(clip_vision):
    """A CLIP_VISION model as the core's `embed(images [N, H, W, 3]) -> [N, D]` callable: its
    projected image embeddings (the space CLIP scores use). Never differentiated: without no_grad a
    caller outside inference mode (the trainer) would record autograd through the loader's
    inference-mode weights, which autograd refuses."""
    def embed(images):
        with torch.no_grad():
            return clip_vision.encode_image(images).image_embeds
    return embed


def model_family(model):
    """ComfyUI's name for the model's architecture, e.g. "SD15", "SD20", "SDXL"."""
    return type(model.model.model_config).__name__


def check_supported(model, input_name="model"):
    family = model_family(model)
    if family not in SUPPORTED_FAMILIES:
        raise ValueError(f"{input_name}: {family} models are not supported; Temporal Adapter works on SD1.x/SD2.x "
                         f"and SDXL-family UNets ({', '.join(SUPPORTED_FAMILIES)}). Load one of those checkpoints.")
    return family


def model_sampling(model):
    """The ModelPatcher's noise schedule / prediction object: its `model_sampling` object patch (set by
    e.g. ModelSamplingDiscrete, put in place by the host while sampling), else the model's own."""
    return model.object_patches.get("model_sampling") or model.model.model_sampling


def model_sigmas(model):
    """The model's 1000 ascending training sigmas (its own noise schedule)."""
    return model_sampling(model).sigmas.detach().float().cpu()


def unet_layout(model):
    """The model's UNet layout (`adapter_core.layout.UNetLayout`), read from its modules: every block
    with the scale of the grid its layers work on (doubled after a block that downsamples, halved after
    one that upsamples) and its transformer layers, plus the family, context width and ADM width."""
    unet = model.model.diffusion_model

    def has(block, name):
        return any(type(m).__name__ == name for m in block.modules())

    def depth(block):
        return sum(len(m.transformer_blocks) for m in block.modules() if type(m).__name__ == "SpatialTransformer")

    blocks, scale = [], 1
    for i, block in enumerate(unet.input_blocks):
        blocks.append(Block("input", i, scale, depth(block)))
        scale *= 2 if has(block, "Downsample") else 1
    if unet.middle_block is not None:
        blocks.append(Block("middle", 0, scale, depth(unet.middle_block)))
    for i, block in enumerate(unet.output_blocks):
        blocks.append(Block("output", i, scale, depth(block)))
        scale //= 2 if has(block, "Upsample") else 1
    config = model.model.model_config.unet_config
    return UNetLayout(tuple(blocks), model_family(model), int(config["context_dim"]), config.get("adm_in_channels"))


def _digest(h, value):
    """Feed a weight patch into hash `h`, the same in every process: tensors by shape and their first 4096
    values, containers item by item (sets and dicts in sorted order), functions by qualified name,
    other objects (e.g. a newer host's weight adapters) by type and attributes, plain values by repr."""
    if isinstance(value, torch.Tensor):
        h.update(repr(tuple(value.shape)).encode())
        h.update(value.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    elif isinstance(value, (tuple, list)):
        for item in value:
            _digest(h, item)
    elif isinstance(value, (set, frozenset)):
        _digest(h, sorted(map(repr, value)))
    elif isinstance(value, dict):
        for key in sorted(value, key=repr):
            h.update(repr(key).encode())
            _digest(h, value[key])
    elif callable(value) and hasattr(value, "__qualname__"):
        h.update(value.__qualname__.encode())
    elif hasattr(value, "__dict__"):
        h.update(type(value).__qualname__.encode())
        _digest(h, vars(value))
    else:
        h.update(repr(value).encode())


FINGERPRINT_SAMPLES = 4096  # values hashed per UNet tensor, spread evenly over it (all of a smaller one)


def _checkpoint_weights(model):
    """(name, tensor) of every UNet parameter and buffer as the checkpoint gave them. While a clone of
    the model is loaded, the host holds that clone's patches applied in place in the shared model:
    weight patches (the originals kept in `backup`: a tensor on the 2024 host, a (weight,
    inplace_update) tuple on newer ones) and object patches that swap whole modules (e.g. an
    adapter's LoRA layers; the originals in `object_patches_backup`). Clones share both dicts (the
    2024 host starts a new module dict at each unpatch), so the originals are read from the dicts of
    the model and of every loaded patcher of the same model."""
    weights, modules = {}, {}
    loaded = [getattr(m, "model", None) for m in comfy.model_management.current_loaded_models]
    for patcher in [model, *loaded]:
        if patcher is not None and getattr(patcher, "model", None) is model.model:
            weights.update(getattr(patcher, "backup", None) or {})
            modules.update(getattr(patcher, "object_patches_backup", None) or {})

    def walk(module, path):
        for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is not None:
                saved = weights.get(f"diffusion_model.{path}{name}")
                yield f"{path}{name}", tensor if saved is None else getattr(saved, "weight", saved)
        for name, child in module._modules.items():
            if child is not None:
                yield from walk(modules.get(f"diffusion_model.{path}{name}", child), f"{path}{name}.")
    return walk(model.model.diffusion_model, "")


def model_fingerprint(model):
    """Content fingerprint of a ModelPatcher, the same in every process: architecture; every UNet
    tensor's name, shape and FINGERPRINT_SAMPLES values at an even stride over it (the checkpoint's
    own values, not those of patches applied in place); its weight patches (keys, strengths and a
    sample of their values); and its noise schedule and prediction type (the `model_sampling` object
    patch that e.g. ModelSamplingDiscrete sets, else the model's own).

    A change to any tensor of at most FINGERPRINT_SAMPLES values, and any change that touches a
    larger tensor throughout (a merge, a baked-in LoRA, fine-tuning), changes it; one edited value
    of a large tensor between the sampled ones does not. Cost: `benchmarks/inversion.py --part
    fingerprint` (a small fraction of a percent of an inversion)."""
    h = hashlib.sha256(model_family(model).encode())
    samples = []
    for name, tensor in _checkpoint_weights(model):
        h.update(f"{name}{tuple(tensor.shape)}".encode())
        flat = tensor.detach().reshape(-1)
        stride = max(1, -(-flat.numel() // FINGERPRINT_SAMPLES))  # ceil: at most FINGERPRINT_SAMPLES values
        samples.append(flat[::stride].float())
    if samples:
        h.update(torch.cat([s.to(samples[0].device) for s in samples]).cpu().numpy().tobytes())
    for key in sorted(model.patches):
        h.update(key.encode())
        _digest(h, model.patches[key])
    sampling = model_sampling(model)
    h.update(",".join(c.__name__ for c in type(sampling).__mro__).encode())
    _digest(h, sampling.sigmas)
    return h.hexdigest()[:20]


def model_space(model, latent):
    """LATENT (unscaled) -> the model's internal latent space, and back with `latent_space`."""
    return model.model.process_latent_in(latent)


def latent_space(model, latent):
    return model.model.process_latent_out(latent)


def text_width(model):
    """Width of the text conditioning the UNet's cross-attention expects (768 SD1.x, 1024 SD2.x, 2048 SDXL)."""
    return int(model.model.model_config.unet_config["context_dim"])


def _block_of(path):
    """("input"|"middle"|"output", i) of a UNet module path."""
    parts = path.split(".")
    if parts[0] == "middle_block":
        return ("middle", 0)
    return (parts[0].split("_")[0], int(parts[1]))


def attention_linears(model, blocks=None):
    """{path in the UNet: (in_features, out_features)} of the q/k/v/out projections of every
    attention (attn1 and attn2) in `blocks` (all transformer blocks when None)."""
    found = {}
    for path, module in model.model.diffusion_model.named_modules():
        if type(module).__name__ != "BasicTransformerBlock":
            continue
        if blocks is not None and _block_of(path) not in blocks:
            continue
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                linear = comfy.utils.get_attr(module, f"{attn}.{proj}")
                found[f"{path}.{attn}.{proj}"] = (linear.in_features, linear.out_features)
    return found
