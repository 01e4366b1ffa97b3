"""The temporal-consistency sampler (method.md §4): DDIM from an inversion with the adapter, a temporal
bilateral filter, keyframe attention, source-feature injection and chunking, each switchable; and
a SAMPLER for SamplerCustom with the mechanisms that need nothing but the batch."""
import dataclasses

import torch

from ..adapter_core import ddim
from ..adapter_core.adapter import TYPE_NAME
from ..adapter_core.attention import (ContextTokens, KeyframeAttention, SourceInjection, TemporalAttn1Filter,
                                      keyframe_indices)
from ..adapter_core.chunking import run_blended
from ..adapter_core.layout import names
from ..adapter_core.sampling import PNP_FRACTIONS, StepCosine, plan_runs, sample_consistent
from . import checks, host

CATEGORY = "Temporal Adapter/sampling"
FILTER_DEFAULTS = {"kernel": 5, "sigma_s": 1.0, "sigma_r": 1.0, "relative_sigma_r": False}


def _keyframe_inputs():
    return {
        "keyframe_attention": ("BOOLEAN", {"default": True, "tooltip": "Mechanism 3: every frame's self-attention "
                               "also attends to the keys/values of shared keyframes (extended attention)."}),
        "keyframes": ("INT", {"default": 3, "min": 1, "max": 64, "tooltip": "How many keyframes (each adds the "
                      "cost of one frame's tokens to every self-attention)."}),
        "keyframe_stride": ("INT", {"default": 0, "min": 0, "max": 4096, "tooltip": "Frames between keyframes, "
                            "starting at frame 0; 0 spreads `keyframes` evenly from the first to the last frame. "
                            "Must be smaller than the clip."}),
    }


def _filter(model, settings):
    """TemporalAttn1Filter with the inversion's temporal filter settings when it used one, else the
    method defaults on the layout's filter blocks (the two highest-resolution decoder attention blocks)."""
    if settings.get("filter") == "temporal":
        return TemporalAttn1Filter(settings["blocks"], settings["kernel"], settings["sigma_s"], settings["sigma_r"],
                                   settings["relative_sigma_r"])
    return TemporalAttn1Filter(host.unet_layout(model).filter_blocks(), **FILTER_DEFAULTS)


def _start(model, steps, inversion, latent):
    """(start latent [T, C, H, W] in LATENT space, sigmas) from the inversion or the noise LATENT."""
    if inversion is None and latent is None:
        raise ValueError("inversion: connect an INVERSION (from Bilateral DDIM Inversion) or a noise LATENT")
    if latent is not None and latent["samples"].ndim != 4:
        raise ValueError(f"latent: expected image latents [frames, 4, H/8, W/8], got {tuple(latent['samples'].shape)}")
    if inversion is None:
        return latent["samples"], ddim.schedule(host.model_sigmas(model), steps)
    if steps != inversion.steps:
        raise ValueError(f"steps: the inversion was made with {inversion.steps} steps; set steps to "
                         f"{inversion.steps} (or invert again with {steps})")
    return host.latent_space(model, inversion.noise), inversion.sigmas


@checks.checked_inputs
class ConsistencySampler:
    DESCRIPTION = ("Edits a clip with deterministic DDIM from its inversion (or a noise LATENT) under the edit "
                   "prompt, with CFG and temporal-consistency mechanisms that can each be switched on: 1. the "
                   "adapter (its tokens prepended per frame, its LoRA inside its timestep window); 2. a temporal "
                   "bilateral filter on self-attention outputs (per CFG half); 3. keyframe attention; 4. "
                   "source-feature injection from the inversion (plug-and-play); 5. chunks with overlap for long "
                   "clips, sharing the keyframes. Decode the LATENT with VAE Decode. The report lists the "
                   "adjacent-frame cosine similarity of the predicted x0 at every step.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", "STRING")
    RETURN_NAMES = ("latent", "report")
    OUTPUT_TOOLTIPS = ("The edited frames' latents (decode with VAE Decode).",
                       "Mechanisms used and the adjacent-frame x0 cosine per step.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The SD1.x/SD2.x/SDXL-family model the inversion was made with (LoRAs and "
                      "other patches applied upstream are kept)."}),
            "positive": ("CONDITIONING", {"tooltip": "The EDIT prompt (one, or one per frame)."}),
            "negative": ("CONDITIONING", {"tooltip": "The negative prompt; also the prompt of the source passes "
                         "of source-feature injection (plug-and-play uses an empty prompt there)."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": ddim.MAX_STEPS, "tooltip": "DDIM steps; with an "
                      "INVERSION it must equal the inversion's steps (its schedule is used)."}),
            "cfg": ("FLOAT", {"default": 7.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip":
                    "Classifier-free guidance scale (> 0; 1 runs without the negative branch)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Passed to the host "
                     "for patches that draw random numbers; DDIM itself (eta 0) is deterministic."}),
            "use_adapter": ("BOOLEAN", {"default": True, "tooltip": "Mechanism 1: apply the connected adapter "
                            "(tokens prepended per frame + windowed LoRA)."}),
            "temporal_filter": ("BOOLEAN", {"default": True, "tooltip": "Mechanism 2: bilateral filter along "
                                "frames on self-attention outputs, per CFG half; the inversion's filter settings "
                                "when it used the temporal filter, else kernel 5 on the two highest-resolution "
                                "decoder attention blocks (SD1.5: output 9, 10; SDXL: output 3, 4)."}),
            **_keyframe_inputs(),
            "inject_source": ("BOOLEAN", {"default": True, "tooltip": "Mechanism 4: inject the source's "
                              "self-attention maps and features from the inversion trajectory during the first "
                              "steps (needs an INVERSION; one extra cfg-1 model pass per injected step)."}),
            "attention_fraction": ("FLOAT", {"default": PNP_FRACTIONS[0], "min": 0.0, "max": 1.0, "step": 0.05,
                                   "tooltip": "Fraction of the first steps whose self-attention maps (decoder "
                                   "blocks 4-11: SD1.5 output 4-11, SDXL output 1-5) come from the source."}),
            "feature_fraction": ("FLOAT", {"default": PNP_FRACTIONS[1], "min": 0.0, "max": 1.0, "step": 0.05,
                                 "tooltip": "Fraction of the first steps whose features entering the feature "
                                 "block (plug-and-play's layer 4: SD1.5 output 4, SDXL output 1) come from the "
                                 "source."}),
            "frames_per_chunk": ("INT", {"default": 16, "min": 0, "max": 4096, "tooltip": "Mechanism 5: frames "
                                 "sampled at once (0 = all). Peak memory follows this, not the clip length."}),
            "chunk_overlap": ("INT", {"default": 4, "min": 0, "max": 4095, "tooltip": "Frames shared by "
                              "neighbouring chunks, cross-faded so no seam shows."}),
        }, "optional": {
            "inversion": ("TA_INVERSION", {"tooltip": "From Bilateral DDIM Inversion: the start noise, the "
                          "schedule and the source trajectory for injection."}),
            "latent": ("LATENT", {"tooltip": "Start from this noise LATENT instead (e.g. the inverter's noise); "
                       "with an INVERSION too, only its shape is checked against the inversion."}),
            "adapter": (TYPE_NAME, {"tooltip": "A trained adapter for exactly this clip's frame count."}),
        }}

    def sample(self, model, positive, negative, steps, cfg, seed, use_adapter, temporal_filter, keyframe_attention,
               keyframes, keyframe_stride, inject_source, attention_fraction, feature_fraction, frames_per_chunk,
               chunk_overlap, inversion=None, latent=None, adapter=None):
        host.check_supported(model)
        if not cfg > 0:
            raise ValueError(f"cfg: must be > 0, got {cfg}; use 1 for no guidance")
        x, sigmas = _start(model, steps, inversion, latent)
        frames, notes = x.shape[0], []
        checks.clip_inputs(model, frames, inversion, None if latent is None else latent["samples"].shape,
                           positive=positive, negative=negative)
        if inject_source and inversion is None:
            notes.append("source injection skipped: it needs an INVERSION")
            inject_source = False
        edit_model, tokens = model, None
        if use_adapter and adapter is not None:
            # Tokens through cross-attention, not the positive prompt: the CFG halves stay one batch.
            edit_model = host.adapter_model(model, adapter)
            tokens = ContextTokens(adapter.context_tokens(frames))
            edit_model = host.with_context_tokens(edit_model, tokens)
        keys = keyframe_indices(frames, keyframes, keyframe_stride) if keyframe_attention else ()
        runs = plan_runs(frames, frames_per_chunk, chunk_overlap, keys)
        patches = self._patches(model, inversion, temporal_filter, keyframe_attention, inject_source)
        if inject_source:
            patches["injection"].shrink_unread = not host.reaches_inside_unet(model, positive, negative)
            if not patches["injection"].shrink_unread:
                notes.append("source injection: other patches or control act inside the UNet, so the blocks whose "
                             "output feature injection replaces still run at full size (same edit, slower)")
        edit_model = host.with_patches(edit_model, attn1=patches["attn1"], attn1_output=patches["attn1_output"],
                                       output_block=patches["output_block"],
                                       input_block_after_skip=patches["input_block_after_skip"])
        source_model = host.with_patches(model, attn1=patches["attn1"], attn1_output=patches["attn1_output"],
                                         output_block=patches["output_block"]) if inject_source else None
        if patches["keyframes"] is not None:
            edit_model = host.with_attn1_extension(edit_model, patches["keyframes"].extend)
        total = len(runs) * (len(sigmas) - 1)
        preview, cosine, done = host.preview_callback(edit_model, total), StepCosine(len(sigmas) - 1), [0]
        by_chunk = {run.chunk: run for run in runs}

        def sample_run(chunk):
            run = by_chunk[chunk]
            options = {}
            if patches["filter"] is not None:
                patches["filter"].skip = run.extra
            if patches["keyframes"] is not None:
                patches["keyframes"].rows = list(run.key_rows)
            if tokens is not None:
                tokens.rows = list(run.rows)
            if inject_source:
                options = {"injection": patches["injection"],
                           "source": dataclasses.replace(inversion, trajectory=inversion.trajectory[:, list(run.rows)]),
                           "source_denoise": host.source_denoiser(source_model, negative, run.rows, frames),
                           "fractions": (attention_fraction, feature_fraction)}

            def progress(step, _total, x0):
                cosine.add(step - 1, run.owned_part(x0))
                preview(done[0] + step, x0)

            out = host.run_sampler(edit_model, sample_consistent, sigmas,
                                   host.select_conditioning(positive, run.rows, frames),
                                   host.select_conditioning(negative, run.rows, frames),
                                   x[list(run.rows)], cfg, options, progress, seed)
            done[0] += len(sigmas) - 1
            return run.chunk_part(out)

        result = run_blended([run.chunk for run in runs], sample_run)
        if patches["filter"] is not None and patches["filter"].skipped:
            notes.append("temporal filter skipped where fewer than 3 frames were sampled together")
        report = self._report(frames, runs, keys, use_adapter and adapter is not None, patches, inject_source,
                              (attention_fraction, feature_fraction), cosine.means(), notes)
        return ({"samples": result.to(x.dtype)}, report)

    @staticmethod
    def _patches(model, inversion, temporal_filter, keyframe_attention, inject_source):
        layout = host.unet_layout(model)
        injection = (SourceInjection(layout.decoder_attention_blocks(), [layout.feature_block()],
                                     layout.input_count(), layout.depths()) if inject_source else None)
        keyframes = KeyframeAttention() if keyframe_attention else None
        filt = _filter(model, inversion.settings if inversion is not None else {}) if temporal_filter else None
        return {"injection": injection, "keyframes": keyframes, "filter": filt,
                "attn1": [injection.attn1] if injection else [],
                "attn1_output": [filt] if filt else [], "output_block": [injection.output_block] if injection else [],
                "input_block_after_skip": [injection.input_block] if injection else []}

    @staticmethod
    def _report(frames, runs, keys, adapter, patches, inject, fractions, cosines, notes):
        def blocks(ids):
            return names(sorted(ids))
        filt, injection = patches["filter"], patches["injection"]
        lines = [f"temporal consistency sampler: {frames} frames, {len(cosines)} steps, {len(runs)} chunk(s)"
                 + (f" ({', '.join(f'{r.chunk.lo}-{r.chunk.hi - 1}' for r in runs)})" if len(runs) > 1 else ""),
                 f"adapter: {'on' if adapter else 'off'}",
                 f"temporal filter: {f'on ({blocks(filt.blocks)}, kernel {filt.kernel})' if filt else 'off'}",
                 f"keyframe attention: {f'on (frames {list(keys)})' if keys else 'off'}",
                 "source injection: " + (f"on (attention {fractions[0]:g} on {blocks(injection.attention_blocks)}; "
                                         f"features {fractions[1]:g} on {blocks(injection.feature_blocks)})"
                                         if inject else "off"),
                 f"x0 adjacent-frame cosine per step: {[round(c, 4) for c in cosines]}"]
        return "\n".join(lines + notes)


@checks.checked_inputs
class ConsistencySamplerCustom:
    DESCRIPTION = ("A SAMPLER for SamplerCustom: deterministic DDIM (eta 0) with the temporal bilateral filter "
                   "on self-attention outputs and keyframe attention over the frames of the batch. Injection, "
                   "chunking and the adapter need the inversion or per-frame data: use Temporal Consistency "
                   "Sampler for them (or Apply Adapter upstream of SamplerCustom).")
    CATEGORY = CATEGORY
    FUNCTION = "get_sampler"
    RETURN_TYPES = ("SAMPLER",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model connected to SamplerCustom (picks the filtered blocks)."}),
            "temporal_filter": ("BOOLEAN", {"default": True, "tooltip": "Bilateral filter along frames on "
                                "self-attention outputs (kernel 5, the two highest-resolution decoder attention "
                                "blocks), per CFG half."}),
            **_keyframe_inputs(),
        }}

    def get_sampler(self, model, temporal_filter, keyframe_attention, keyframes, keyframe_stride):
        host.check_supported(model)
        patches = {"attn1_output_patch": [_filter(model, {})] if temporal_filter else []}
        extension = ((KeyframeAttention(None, keyframes, keyframe_stride).extend,
                      host.unet_layout(model).attention_blocks())
                     if keyframe_attention else None)
        return (host.patched_sampler(sample_consistent, patches, attn1_extension=extension),)


NODE_CLASS_MAPPINGS = {
    "TA_ConsistencySampler": ConsistencySampler,
    "TA_ConsistencySamplerCustom": ConsistencySamplerCustom,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TA_ConsistencySampler": "Temporal Consistency Sampler (Temporal Adapter)",
    "TA_ConsistencySamplerCustom": "Temporal Consistency SAMPLER (Temporal Adapter)",
}
