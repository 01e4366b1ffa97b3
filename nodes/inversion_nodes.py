"""Bilateral DDIM inversion nodes: invert, read back the reconstruction, and a SAMPLER for
SamplerCustom users (method.md §2)."""
import torch

from ..adapter_core import ddim
from ..adapter_core.attention import TemporalAttn1Filter, latent_bilateral
from ..adapter_core.chunking import chunk_plan, run_chunked
from ..adapter_core.finite import all_finite
from ..adapter_core.inversion import (Inversion, InversionCache, conditioning_digest, inversion_key,
                                      reconstruction_report, tensor_digest)
from ..adapter_core.layout import choose_blocks, names
from . import checks, host

CATEGORY = "Temporal Adapter/inversion"
FILTERS = ["off", "temporal", "spatial"]


def _filter_inputs():
    return {
        "filter": (FILTERS, {"default": "temporal", "tooltip": "off: plain DDIM inversion. temporal: bilateral "
                   "filter along frames on the self-attention (attn1) output of `blocks` (needs >= 3 frames). "
                   "spatial: 2-D bilateral filter on the latent after every inversion step."}),
        "kernel": ("INT", {"default": 5, "min": 1, "max": 15, "step": 2, "tooltip": "Temporal window in frames "
                   "(odd). Spatial mode: window diameter in latent pixels."}),
        "sigma_s": ("FLOAT", {"default": 1.0, "min": 0.05, "max": 20.0, "step": 0.05, "tooltip":
                    "Spatial sigma: in frames (temporal mode) or latent pixels (spatial mode)."}),
        "sigma_r": ("FLOAT", {"default": 1.0, "min": 0.001, "max": 100.0, "step": 0.01, "tooltip":
                    "Range sigma: feature differences larger than this are treated as edges and kept. "
                    "Spatial mode: in units of the latent's standard deviation."}),
        "relative_sigma_r": ("BOOLEAN", {"default": False, "tooltip": "Temporal mode: sigma_r is multiplied "
                             "by the feature's standard deviation."}),
        "blocks": ("STRING", {"default": "auto", "tooltip": "UNet blocks whose attn1 output is filtered "
                   "(temporal mode), e.g. 'output 9, output 10'. auto: the two highest-resolution decoder "
                   "attention blocks of the model's layout (SD1.x/SD2.x: output 9, 10; SDXL family: output 3, 4). "
                   "A block the model lacks is an error that lists the model's blocks."}),
    }


def _with_temporal_filter(model, settings, frames):
    """(model clone with the temporal attn1 filter of `settings`, patch), or (model, None) when the
    filter is off or the clip has fewer than 3 frames."""
    if settings["filter"] != "temporal" or frames < 3:
        return model, None
    patch = TemporalAttn1Filter(settings["blocks"], settings["kernel"], settings["sigma_s"], settings["sigma_r"],
                                settings["relative_sigma_r"])
    return host.with_attn1_output_patch(model, patch), patch


def _validate_latent(latent, name="latent"):
    x = latent["samples"]
    if x.ndim != 4:
        raise ValueError(f"{name}: expected image latents [frames, 4, H/8, W/8], got shape {tuple(x.shape)}; "
                         "video (3-D) latents are not supported.")
    return x


@checks.checked_inputs
class BilateralDDIMInversion:
    DESCRIPTION = ("Inverts encoded video frames to noise with deterministic DDIM (eta 0) on the model's own "
                   "schedule, conditioned on the source prompt without CFG, optionally with an edge-preserving "
                   "bilateral filter across frames. Keeps the latent at every timestep (INVERSION) so the "
                   "sampler can inject source features and prompt edits never re-run the inversion. Results are "
                   "cached by content in ComfyUI's temp folder.")
    CATEGORY = CATEGORY
    FUNCTION = "invert"
    RETURN_TYPES = ("LATENT", "TA_INVERSION", "STRING")
    RETURN_NAMES = ("noise", "inversion", "report")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD1.x/SD2.x or SDXL-family model (eps or v-prediction)."}),
            "conditioning": ("CONDITIONING", {"tooltip": "The SOURCE prompt describing the original clip "
                             "(one prompt, or one per frame)."}),
            "latent": ("LATENT", {"tooltip": "The clip's frames encoded with VAE Encode."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": ddim.MAX_STEPS, "tooltip": "DDIM steps; use the "
                      "same number in the sampler."}),
            **_filter_inputs(),
            "refine": ("INT", {"default": 0, "min": 0, "max": 10, "tooltip": "Fixed-point refinements per "
                       "inversion step (one extra model call each). 0 is plain DDIM inversion; 2-3 make the "
                       "round trip nearly exact (see the reconstruction readout) at 3-4x the time."}),
            "frames_per_chunk": ("INT", {"default": 16, "min": 0, "max": 4096, "tooltip": "Frames inverted "
                                 "at once, the temporal filter's neighbour frames included (0 = all). Each chunk "
                                 "keeps only the frames whose filter neighbours it also inverted; peak memory "
                                 "follows this number, not the clip length."}),
        }}

    def invert(self, model, conditioning, latent, steps, filter, kernel, sigma_s, sigma_r, relative_sigma_r,
               blocks, refine, frames_per_chunk):
        family = host.check_supported(model)
        x = _validate_latent(latent)
        frames = x.shape[0]
        checks.clip_inputs(model, frames, conditioning=conditioning)
        block_ids = choose_blocks(blocks, host.unet_layout(model), "filter_blocks")[0] if filter == "temporal" else []
        # checked before the cache lookup, so a bad chunk size is an error whether or not the result is cached
        plan = chunk_plan(frames, frames_per_chunk, kernel // 2 if filter == "temporal" and frames >= 3 else 0)
        settings = {"steps": steps, "filter": filter, "kernel": kernel, "sigma_s": sigma_s, "sigma_r": sigma_r,
                    "relative_sigma_r": relative_sigma_r, "blocks": block_ids, "refine": refine}
        model_key = host.model_fingerprint(model)
        source_key = tensor_digest(x)
        key = inversion_key(source_key, model_key, conditioning_digest(conditioning), settings)
        cache = InversionCache(host.inversion_cache_dir())
        inv = cache.get(key, (steps + 1, *x.shape), source_key, model_key)
        cached = inv is not None
        if not cached:
            inv = self._run(model, conditioning, x, settings, plan, source_key, model_key)
            cache.put(key, inv)  # only complete results reach the cache
        noise = host.latent_space(model, inv.noise)
        report = self._report(inv, family, frames, cached)
        return ({"samples": noise}, inv, report)

    @staticmethod
    def _run(model, conditioning, x, settings, plan, source_key, model_key):
        """plan: the `chunk_plan` of the clip, with the temporal filter's neighbours as context."""
        frames, steps, mode = x.shape[0], settings["steps"], settings["filter"]
        sigmas = ddim.schedule(host.model_sigmas(model), steps)
        ascending = sigmas.flip(0)
        notes, options = [], {"refine": settings["refine"]}
        model, patch = _with_temporal_filter(model, settings, frames)
        if mode == "temporal" and patch is None:
            notes.append(f"temporal filter skipped: it needs at least 3 frames, the clip has {frames}")
        elif mode == "spatial":
            options["latent_filter"] = latent_bilateral(settings["kernel"], settings["sigma_r"], settings["sigma_s"])
        bar = host.Progress(len(plan) * steps)
        done = [0]

        def progress(step, _total, _x0):
            bar.update(done[0] + step)

        def invert_chunk(chunk):
            trajectory = []
            host.run_sampler(model, ddim.invert_ddim, ascending, host.slice_conditioning(
                conditioning, chunk.lo, chunk.hi, frames), None, x[chunk.lo:chunk.hi], cfg=1.0,
                options={**options, "trajectory": trajectory}, progress=progress)
            done[0] += steps
            return torch.stack(trajectory[::-1]).to(torch.float32).cpu()  # descending sigma order

        trajectory = run_chunked(plan, invert_chunk, dim=1)
        if not all_finite(trajectory):  # never cached, never passed on
            raise ValueError("model: the inversion came out NaN or infinite (nothing was cached): the model gives "
                             "non-finite outputs on these frames; check the model and what patches it upstream (a "
                             "LoRA or merge with broken weights)")
        if patch is not None and patch.skipped:
            notes.append("temporal filter skipped in a chunk with fewer than 3 frames")
        return Inversion(trajectory, sigmas, settings, source_key, model_key, notes)

    @staticmethod
    def _report(inv, family, frames, cached):
        lines = [f"DDIM inversion: {frames} frames, {inv.steps} steps (refine {inv.settings['refine']}), model "
                 f"{family}, filter {inv.settings['filter']}"
                 + (f" on {names(inv.settings['blocks'])}" if inv.settings["blocks"] else ""),
                 f"sigma range {float(inv.sigmas[-2]):.4f} .. {float(inv.sigmas[0]):.3f}; noise std "
                 f"{float(inv.noise.std()):.3f}" + (" (from cache)" if cached else "")]
        return "\n".join(lines + inv.notes)


@checks.checked_inputs
class InversionReconstruct:
    DESCRIPTION = ("Samples back from an INVERSION with the same steps and temporal filter (plain DDIM, cfg 1) and reports "
                   "per-frame and mean PSNR of the reconstruction against the source, in latent space and, given a "
                   "VAE, in pixels. Compare inversions with the filter on and off to see what the filter buys.")
    CATEGORY = CATEGORY
    FUNCTION = "reconstruct"
    RETURN_TYPES = ("LATENT", "STRING")
    RETURN_NAMES = ("reconstruction", "report")
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model the inversion was made with."}),
            "conditioning": ("CONDITIONING", {"tooltip": "The same source prompt as for the inversion."}),
            "inversion": ("TA_INVERSION", {"tooltip": "From Bilateral DDIM Inversion."}),
            "filename_prefix": ("STRING", {"default": "TemporalAdapter/reconstruction", "tooltip": "The report is "
                                "also saved as JSON under the output folder with this prefix."}),
        }, "optional": {
            "vae": ("VAE", {"tooltip": "Also report PSNR in pixels (both latents decoded with this VAE)."}),
        }}

    def reconstruct(self, model, conditioning, inversion, filename_prefix, vae=None):
        host.check_supported(model)
        checks.clip_inputs(model, inversion.frames, inversion, conditioning=conditioning)
        bar = host.Progress(inversion.steps)
        model, _ = _with_temporal_filter(model, inversion.settings, inversion.frames)
        recon = host.run_sampler(model, ddim.sample_ddim, inversion.sigmas, conditioning, None,
                                 host.latent_space(model, inversion.noise), cfg=1.0,
                                 progress=lambda step, total, x0: bar.update(step))
        source = host.latent_space(model, inversion.source)
        reports = [reconstruction_report(source, recon, "latent")]
        if vae is not None:
            reports.append(reconstruction_report(vae.decode(source).clamp(0, 1), vae.decode(recon).clamp(0, 1),
                                                 "pixels", peak=1.0))
        text = "\n".join(f"reconstruction PSNR ({r['space']}): mean {r['psnr_mean']:.2f} dB, relative error "
                         f"{r['relative_error']:.4f}; per frame {r['psnr_per_frame']}" for r in reports)
        saved = host.save_json({"settings": inversion.settings, "notes": inversion.notes, "readouts": reports},
                               filename_prefix)
        text += f"\nfilter: {inversion.settings['filter']}; saved: {saved}"
        return {"ui": {"text": [text]}, "result": ({"samples": recon}, text)}


@checks.checked_inputs
class DDIMInversionSampler:
    DESCRIPTION = ("A SAMPLER for SamplerCustom: deterministic DDIM inversion (model evaluated at the destination "
                   "timestep). Connect FlipSigmas(BasicScheduler ddim_uniform) as sigmas, cfg 1, and disable "
                   "noise to turn a latent into its noise.")
    CATEGORY = CATEGORY
    FUNCTION = "get_sampler"
    RETURN_TYPES = ("SAMPLER",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "refine": ("INT", {"default": 0, "min": 0, "max": 10, "tooltip": "Fixed-point refinements per step "
                       "(one extra model call each): smaller round-trip error, slower."}),
        }}

    def get_sampler(self, refine):
        return (host.make_sampler(ddim.invert_ddim, {"refine": refine}),)


NODE_CLASS_MAPPINGS = {
    "TA_BilateralDDIMInversion": BilateralDDIMInversion,
    "TA_InversionReconstruct": InversionReconstruct,
    "TA_DDIMInversionSampler": DDIMInversionSampler,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TA_BilateralDDIMInversion": "Bilateral DDIM Inversion (Temporal Adapter)",
    "TA_InversionReconstruct": "Inversion Reconstruction Readout (Temporal Adapter)",
    "TA_DDIMInversionSampler": "DDIM Inversion Sampler (Temporal Adapter)",
}
