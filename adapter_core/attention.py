"""Pure functions the host layer installs as UNet attention patches (method.md §2, §4).

A patch receives the host's `extra_options` dict. The keys used here are part of the UNet's
transformer protocol in every ComfyUI version: "block" (e.g. ("output", 9)), "cond_or_uncond"
(one 0/1 entry per batch chunk: cond chunks first), and "sigmas" (the current σ per sample).
The batch of an attention call is len(cond_or_uncond) chunks of the same frames in the same order.
"""
import torch

from .bilateral import temporal_bilateral


def split_chunks(n, extra_options):
    """[B, N, C] -> list of per-chunk tensors [T, N, C] (one per CFG half / copy)."""
    return n.chunk(len(extra_options.get("cond_or_uncond", [0])))


class TemporalAttn1Filter:
    """attn1 output patch: bilateral filter along frames, separately within each batch chunk.

    blocks: set of block ids like ("output", 9) to filter; other blocks pass through.
    kernel, sigma_s, sigma_r, relative_sigma_r: as `temporal_bilateral`.
    skipped: set to True when a call had fewer than 3 frames (the filter needs 3; the caller
    reports it instead of failing).
    """

    def __init__(self, blocks, kernel=5, sigma_s=1.0, sigma_r=1.0, relative_sigma_r=False):
        self.blocks = {tuple(b) for b in blocks}
        self.kernel, self.sigma_s, self.sigma_r, self.relative = kernel, sigma_s, sigma_r, relative_sigma_r
        self.calls = 0
        self.skipped = False

    def __call__(self, n, extra_options):
        block = extra_options.get("block")
        if block is None or tuple(block) not in self.blocks:
            return n
        out = []
        for chunk in split_chunks(n, extra_options):
            y, applied = temporal_bilateral(chunk, self.kernel, self.sigma_s, self.sigma_r, self.relative)
            self.skipped |= not applied
            out.append(y)
        self.calls += 1
        return torch.cat(out) if len(out) > 1 else out[0]


def latent_bilateral(diameter=5, sigma_color=0.5, sigma_space=1.5):
    """A `latent_filter` for DDIM inversion: 2-D bilateral per channel on [B, C, H, W] latents.

    sigma_color is in units of each latent's own standard deviation (the latent's scale grows
    with σ during inversion), sigma_space in latent pixels.
    """
    from .bilateral import spatial_bilateral

    def apply(x):
        scale = x.flatten(1).std(dim=1).clamp_min(1e-6).view(-1, *([1] * (x.ndim - 1)))
        return spatial_bilateral(x / scale, diameter, sigma_color, sigma_space) * scale
    return apply


def parse_blocks(text, available):
    """Parse "output 9, output 10" (or "9, 10" for output blocks) into block ids, checked against
    `available` (the model's blocks with attention); raises ValueError listing what exists."""
    blocks = []
    for part in filter(None, (p.strip() for p in text.replace(";", ",").split(","))):
        words = part.replace("_", " ").split()
        try:
            block = (words[0].lower(), int(words[1])) if len(words) == 2 else ("output", int(words[0]))
        except (ValueError, IndexError):
            raise ValueError(f"blocks: cannot read {part!r}; write e.g. 'output 9, output 10'") from None
        if block not in available:
            names = ", ".join(f"{k} {i}" for k, i in available)
            raise ValueError(f"blocks: the model has no attention block '{block[0]} {block[1]}'. "
                             f"Its attention blocks are: {names}")
        blocks.append(block)
    if not blocks:
        raise ValueError("blocks: empty; name at least one block, e.g. 'output 9, output 10'")
    return blocks
