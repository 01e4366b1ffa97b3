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
    """Chunks covering 0..frames, each processing exactly `size` frames (context included), so that
    the largest batch, hence peak memory, is `size` frames whatever the clip length.

    Every owned frame has at least `context` processed neighbours on each side inside its chunk
    (fewer only at the clip's ends): the first chunk owns frames 0 .. size − context, the next ones
    size − 2·context each, and the last one's window ends at the clip's last frame (it may reach
    further back than `context`). size <= 0 or >= frames gives one chunk of the whole clip; a
    positive size below 2·context + 1 is a ValueError (no frame would have both neighbourhoods).
    """
    if frames < 1:
        raise ValueError("need at least one frame")
    if size <= 0 or size >= frames:
        return [Chunk(0, frames, 0, frames)]
    if size < 2 * context + 1:
        raise ValueError(f"frames_per_chunk: {size} is too small; a chunk needs {context} neighbour frames on "
                         f"each side of the frames it keeps, so use at least {2 * context + 1} (or 0 = all)")
    stride = size - 2 * context
    cuts = [0, size - context]
    while frames - cuts[-1] > size - context:
        cuts.append(cuts[-1] + stride)
    cuts.append(frames)
    plan = []
    for keep_lo, keep_hi in zip(cuts, cuts[1:]):
        lo = min(max(keep_lo - context, 0), frames - size)
        plan.append(Chunk(lo, lo + size, keep_lo, keep_hi))
    return plan


def run_chunked(plan, fn, dim=0):
    """Concatenate fn(chunk)'s owned frames along `dim` over a chunk plan."""
    return torch.cat([c.owned(fn(c), dim) for c in plan], dim=dim)


def overlap_plan(frames, size, overlap):
    """Windows of `size` frames, neighbours sharing at least `overlap` frames, spread evenly over
    0..frames (size <= 0 or >= frames: one chunk). Each chunk owns the frames up to the middle of its
    overlaps, so the owned ranges partition the clip."""
    if frames < 1:
        raise ValueError("need at least one frame")
    if size <= 0 or size >= frames:
        return [Chunk(0, frames, 0, frames)]
    if not 0 <= overlap < size:
        raise ValueError(f"chunk_overlap: {overlap} must be from 0 to frames_per_chunk - 1 ({size - 1})")
    count = -(-(frames - overlap) // (size - overlap))
    starts = [round(i * (frames - size) / (count - 1)) for i in range(count)]
    cuts = [0] + [(s + prev + size) // 2 for prev, s in zip(starts, starts[1:])] + [frames]
    return [Chunk(s, s + size, cuts[i], cuts[i + 1]) for i, s in enumerate(starts)]


def blend_weights(plan, chunk):
    """[hi - lo] weights of `chunk`'s frames for a linear cross-fade with its neighbours in `plan`:
    ramps over each overlap (rising from its first shared frame, falling to its last), 1 elsewhere;
    the weights of two neighbours sum to 1 on their overlap."""
    i = plan.index(chunk)
    w = torch.ones(chunk.hi - chunk.lo, dtype=torch.float64)
    if i > 0:
        shared = plan[i - 1].hi - chunk.lo
        w[:shared] = torch.arange(1, shared + 1, dtype=torch.float64) / (shared + 1)
    if i + 1 < len(plan):
        shared = chunk.hi - plan[i + 1].lo
        w[chunk.hi - chunk.lo - shared:] = torch.arange(shared, 0, -1, dtype=torch.float64) / (shared + 1)
    return w


def run_blended(plan, fn, dim=0):
    """fn(chunk) over frames lo:hi along `dim`, cross-faded over the overlaps with `blend_weights`.
    Only the blended result is kept (memory: the output plus one chunk)."""
    total, weight = None, None
    for chunk in plan:
        y = fn(chunk)
        shape = [1] * y.ndim
        shape[dim] = -1
        w = blend_weights(plan, chunk).to(y.device, torch.float32).view(shape)
        if total is None:
            full = list(y.shape)
            full[dim] = plan[-1].hi
            total, weight = y.new_zeros(full, dtype=torch.float32), torch.zeros(plan[-1].hi, device=y.device)
        total.narrow(dim, chunk.lo, chunk.hi - chunk.lo).add_(y.float() * w)
        weight[chunk.lo:chunk.hi] += w.flatten()
    shape = [1] * total.ndim
    shape[dim] = -1
    return total / weight.view(shape)
