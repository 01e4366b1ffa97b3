"""Conditioning: CONDITIONING lists and the UNet inputs the host builds from them.

The model's keyword inputs for a prompt as the host's own sampler builds them (`model_conds`; the
ADM input of SDXL-family models), per-frame conditioning selected or sliced for some frames of the
clip, and the adapter's tokens prepended per frame.
"""
import torch

import comfy.samplers


def model_conds(model, conditioning, x, prompt_type="positive"):
    """The UNet's keyword inputs for the first entry of `conditioning` and a batch like x [B, C, H, W]:
    {"c_crossattn": [B, L, W], "y": [B, D] for models with an ADM input (SDXL: pooled text + size/crop
    embedding), ...}, built as the host's own sampler builds them (the model's `extra_conds` through
    `comfy.samplers.encode_model_conds`, with the image size of x's latents) and repeated to B rows."""
    tensor, extra = conditioning[0]
    conds = comfy.samplers.encode_model_conds(model.model.extra_conds, [{**extra, "cross_attn": tensor,
                                              "model_conds": {}}], x, x.device, prompt_type)
    return {k: cond.process_cond(batch_size=x.shape[0], device=x.device, area=None).cond.to(x.device)
            for k, cond in conds[0]["model_conds"].items()}


def adm_conditioning(model, conditioning, x):
    """{"y": [B, D]}: the ADM input the host builds for the first entry of `conditioning` and latents like x
    [B, C, H, W] (SDXL family: pooled text + size/crop embedding, `model_conds`); {} for models without one."""
    return {k: v.clone() for k, v in model_conds(model, conditioning, x).items() if k == "y"}


def slice_conditioning(conditioning, lo, hi, frames):
    """Conditioning for frames lo:hi: per-frame (batch == frames) tensors are sliced, others kept."""
    return select_conditioning(conditioning, range(lo, hi), frames)


def select_conditioning(conditioning, rows, frames):
    """Conditioning for the clip frames `rows` (any order, repeats allowed): per-frame (batch ==
    frames) tensors are indexed, others kept."""
    index = torch.as_tensor(list(rows), dtype=torch.long)
    out = []
    for tensor, extra in conditioning:
        if tensor.shape[0] == frames and frames > 1:
            tensor = tensor[index]
            extra = {k: (v[index] if torch.is_tensor(v) and v.shape[0] == frames else v) for k, v in extra.items()}
        out.append([tensor, extra])
    return out


def adapter_conditioning(conditioning, adapter, frames):
    """CONDITIONING with the adapter's tokens prepended per frame: every entry becomes
    [frames, S + U + L, width] (a one-prompt entry is repeated per frame; extras are kept)."""
    tokens = adapter.context_tokens(frames)
    out = []
    for tensor, extra in conditioning:
        adapter.check_fits(tensor.shape[-1], frames)
        if tensor.shape[0] not in (1, frames):
            raise ValueError(f"conditioning: batch of {tensor.shape[0]} prompts does not match the adapter's "
                             f"{frames} frames; use one prompt, or one per frame.")
        tensor = tensor.expand(frames, -1, -1)
        out.append([torch.cat([tokens.to(tensor), tensor], dim=1), dict(extra)])
    return out
