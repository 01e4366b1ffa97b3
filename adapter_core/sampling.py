"""The temporal-consistency sampler (method.md §4): DDIM from an inversion with switchable mechanisms.

The mechanisms are attention patches (adapter_core.attention) that the host layer installs on a
model clone: the temporal bilateral filter on attn1 outputs, keyframe (extended) attention, and
source-feature injection. This module holds what ties them to the DDIM loop:

- `sample_consistent`, a k-diffusion style sampler (the signature `comfy.samplers.KSAMPLER` calls):
  plain `ddim.sample_ddim`, plus, while injection is on for the step, a source pass on the
  inversion's latent at the same σ just before the edit's model call;
- `plan_runs`: long clips as overlapping chunks, each run with the shared keyframes as extra rows;
- `StepCosine`: the per-step adjacent-frame cosine of the predicted x0, gathered chunk by chunk.
"""
from dataclasses import dataclass

import torch

from . import ddim
from .attention import SourceRecorded
from .chunking import overlap_plan
from .temporal_loss import cosine_similarity_adjacent

PNP_FRACTIONS = (0.5, 0.8)  # attention / feature injection: first fraction of the steps (TokenFlow setup)


def injected_steps(steps, fraction):
    """How many of the first steps a fraction in [0, 1] covers."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"injection fraction must be in [0, 1], got {fraction}")
    return int(round(fraction * steps))


@torch.no_grad()
def sample_consistent(model, x, sigmas, extra_args=None, callback=None, disable=None, injection=None,
                      source=None, source_denoise=None, fractions=PNP_FRACTIONS):
    """DDIM (η = 0) from sigmas[0] to sigmas[-1], with source-feature injection.

    model, x, sigmas, extra_args, callback, disable: as `ddim.sample_ddim`.
    injection: a `SourceInjection` installed on the model (None: plain DDIM).
    source: the inversion for x's rows (`latent_at(σ)` -> [B, C, H, W] in the model's latent space,
        `sigmas` its schedule); source_denoise(x, sigma_batch): a cfg-1 model call on the same
        installed patches (the source pass).
    fractions: (attention, features): injection acts for the first round(fraction · steps) steps
        of the source's schedule.
    """
    if injection is None:
        return ddim.sample_ddim(model, x, sigmas, extra_args, callback, disable)
    steps = source.sigmas.shape[0] - 1
    attention_steps, feature_steps = (injected_steps(steps, f) for f in fractions)

    def denoise(x, sigma, **kwargs):
        step = int((source.sigmas - float(sigma[0])).abs().argmin())
        injection.attention, injection.features = step < attention_steps, step < feature_steps
        try:
            if injection.attention or injection.features:
                injection.mode = "record"
                try:
                    source_denoise(source.latent_at(sigma[0]).to(x), sigma)
                except SourceRecorded:
                    pass  # the pass stopped once it had recorded what this step injects
                injection.mode = "inject"
            return model(x, sigma, **kwargs)
        finally:
            injection.mode = None
            injection.store.clear()

    return ddim.sample_ddim(denoise, x, sigmas, extra_args, callback, disable)


@dataclass(frozen=True)
class Run:
    """One sampling run over a chunk. rows: the clip frame of each batch row (extra keyframe rows
    first, then chunk.lo..chunk.hi); extra: how many leading rows are extra keyframes; key_rows: the
    rows holding the keyframes."""
    chunk: object
    rows: tuple
    extra: int
    key_rows: tuple

    def chunk_part(self, x):
        """The chunk's own rows of a batch tensor (drops the extra keyframe rows)."""
        return x[self.extra:]

    def owned_part(self, x):
        """The rows of the frames this chunk owns (for reports: owned ranges partition the clip)."""
        return x[self.extra + self.chunk.keep_lo - self.chunk.lo: self.extra + self.chunk.keep_hi - self.chunk.lo]


def plan_runs(frames, size, overlap, keyframes=()):
    """Runs over overlapping chunks (`overlap_plan`). With one chunk the keyframes are rows of the
    clip itself; with several, every run carries all keyframes as extra leading rows, so each chunk
    attends to the same keyframes (their rows only attend to keyframes: the same in every run)."""
    plan = overlap_plan(frames, size, overlap)
    keyframes = tuple(keyframes)
    if len(plan) == 1:
        return [Run(plan[0], tuple(range(frames)), 0, keyframes)]
    extra = len(keyframes)
    return [Run(c, keyframes + tuple(range(c.lo, c.hi)), extra, tuple(range(extra))) for c in plan]


class StepCosine:
    """Per-step mean adjacent-frame cosine of the predicted x0 over the whole clip, fed chunk by chunk
    (in clip order) with each run's owned frames; pairs across owned ranges are counted too."""

    def __init__(self, steps):
        self.sums = torch.zeros(steps, dtype=torch.float64)
        self.pairs = torch.zeros(steps, dtype=torch.long)
        self.last = {}

    def add(self, step, x0):
        """x0: [F, ...] predicted x0 of consecutive frames at `step`, continuing the previous call's."""
        x0 = x0.detach().float().cpu()
        if step in self.last:
            x0 = torch.cat([self.last[step][None], x0])
        if x0.shape[0] >= 2:
            cos = cosine_similarity_adjacent(x0)
            self.sums[step] += float(cos.sum())
            self.pairs[step] += cos.shape[0]
        self.last[step] = x0[-1]

    def means(self):
        return [float(s / p) if p else float("nan") for s, p in zip(self.sums, self.pairs)]
