"""Sampling: running the core's k-diffusion style samplers through the host's own sampling path.

SAMPLER objects around a sampler function, `run_sampler` (model loading, patches, conditioning and
CFG done by the host; progress and interrupt on every step), the FRAMES_CHECKED option our runs
carry, and a denoiser for calls of the model inside a run.
"""
import torch

import comfy.sample
import comfy.samplers

from .conditioning import model_conds, select_conditioning
from .progress import check_interrupt


def source_denoiser(model, conditioning, rows, frames):
    """denoise(x, sigma_batch) -> x0 for use inside a sampling run of `model` (already loaded): one
    cfg-1 UNet call with the first entry of `conditioning` for the clip frames `rows` (with its ADM
    input on SDXL-family models, as the host builds it), through the model's own patches and UNet
    function wrapper, as one unconditional batch chunk."""
    selected = select_conditioning(conditioning[:1], rows, frames)

    def denoise(x, sigma):
        c = {**model_conds(model, selected, x, "negative"),
             "transformer_options": {**model.model_options.get("transformer_options", {}),
                                     "cond_or_uncond": [1], "sigmas": sigma}}
        wrapper = model.model_options.get("model_function_wrapper")
        if wrapper is not None:
            return wrapper(model.model.apply_model, {"input": x, "timestep": sigma, "c": c, "cond_or_uncond": [1]})
        return model.model.apply_model(x, sigma, **c)
    return denoise


def make_sampler(sampler_fn, options=None):
    """A host SAMPLER object (for SamplerCustom) around a k-diffusion style function."""
    return comfy.samplers.KSAMPLER(sampler_fn, extra_options=options or {})


def run_sampler(model, sampler_fn, sigmas, positive, negative, latent, cfg=1.0, options=None, progress=None,
                seed=None):
    """Run a k-diffusion style `sampler_fn(model, x, sigmas, extra_args, callback, disable, **options)`
    through the host's own sampling path (model loading, patches, conditioning, CFG).

    negative: None runs without an unconditional branch (cfg must be 1).
    latent: [B, C, H, W] in LATENT (unscaled) space, used as the starting point (no noise added:
    sigmas[0] must be below the model's σ_max, or 0 for an inversion). Returns the result in LATENT space.
    progress: optional callable(step, total_steps, denoised) called after every step.
    seed: passed to the host (for patches and conditioning that draw random numbers).
    """
    sampler = make_sampler(_frames_checked(sampler_fn), options)
    noise = torch.zeros_like(latent)
    if negative is None:  # cfg 1: the host skips the uncond pass; the same cond keeps every host happy
        negative = positive

    def callback(step, x0, x, total_steps):
        check_interrupt()
        if progress is not None:
            progress(step + 1, total_steps, x0)

    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, latent,
                                      callback=callback, disable_pbar=True, seed=seed)


# Transformer option set during the runs of `run_sampler`: the node running it has matched every
# per-frame conditioning to the frames it samples (which may be a chunk of the clip).
FRAMES_CHECKED = "temporal_adapter_frames_checked"


def _frames_checked(sampler_fn):
    """`sampler_fn` whose runs carry the FRAMES_CHECKED transformer option (a copy of the model options)."""
    def run(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
        extra_args = dict(extra_args or {})
        model_options = dict(extra_args.get("model_options") or {})
        model_options["transformer_options"] = {**(model_options.get("transformer_options") or {}),
                                                FRAMES_CHECKED: True}
        extra_args["model_options"] = model_options
        return sampler_fn(model, x, sigmas, extra_args, callback, disable, **kwargs)
    return run
