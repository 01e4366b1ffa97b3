"""Split long clips into frame chunks so that peak memory does not grow with clip length.

A chunk is processed with `context` extra frames on each side (e.g. the neighbours a temporal
filter of kernel k needs: k // 2), and only its own frames are kept.
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Chunk:
    lo: int      # first frame processed (context included)
    hi: int      # one past the last frame processed
    keep_lo: int  # first frame this chunk owns (absolute index)
    keep_hi: int  # one past the last owned frame

    def owned(self, x, dim=0):
        """Owned frames of a tensor computed over frames lo:hi along `dim`."""
        return x.narrow(dim, self.keep_lo - self.lo, self.keep_hi - self.keep_lo)


def chunk_plan(frames, size, context=0):
    """Chunks covering 0..frames; size <= 0 or >= frames gives one chunk of the whole clip."""
    if frames < 1:
        raise ValueError("need at least one frame")
    if size <= 0 or size >= frames:
        return [Chunk(0, frames, 0, frames)]
    return [Chunk(max(0, s - context), min(frames, s + size + context), s, min(frames, s + size))
            for s in range(0, frames, size)]


def run_chunked(plan, fn, dim=0):
    """Concatenate fn(chunk)'s owned frames along `dim` over a chunk plan."""
    return torch.cat([c.owned(fn(c), dim) for c in plan], dim=dim)
