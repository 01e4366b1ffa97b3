"""Cross-attention heatmap viewer node (method.md §5): capture, aggregate, overlay, report."""
import json
import os

import torch
from PIL import Image

from ..adapter_core import ddim
from ..adapter_core import heatmaps as core
from ..adapter_core.finite import all_finite
from ..adapter_core.layout import choose_blocks, names
from . import checks, host

CATEGORY = "Temporal Adapter/heatmaps"
MODES = ["probe", "sample", "invert"]
PREVIEW_SIDE = 256  # longest side of a frame in the viewer's sprite sheets
SHEET_COLUMNS = 8
GRID_MAX_WIDTH = 4096


def _latent(latent):
    x = latent["samples"]
    if x.ndim != 4:
        raise ValueError(f"latent: expected image latents [frames, 4, H/8, W/8], got shape {tuple(x.shape)}")
    return x


@checks.checked_inputs
class AttentionHeatmaps:
    DESCRIPTION = ("Cross-attention heatmaps (DAAM style): records softmax(QK^T/sqrt(d)) of the UNet's "
                   "cross-attention for chosen words, blocks and timesteps while running a single-step probe, a "
                   "DDIM sampling run or a DDIM inversion of the frames, read-only (the model's outputs are "
                   "bit-identical with and without the capture). Maps are upsampled to the latent grid, clamped, "
                   "averaged over heads, layers and timesteps and normalised, then drawn over the frames. The "
                   "report gives the theory paper's alignment error ||Z_t+1 - Z_t||_F per block for adjacent "
                   "frames, also for a baseline (e.g. without the adapter) when one is connected.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("overlays", "grid", "maps", "report")
    OUTPUT_TOOLTIPS = ("Heatmaps over the frames, word by word (all frames of the first word, then the next), "
                       "captioned with word and frame.",
                       "One image: rows = words, columns = frames.",
                       "The normalised maps at the frames' size, in the same order as overlays.",
                       "Settings, selected tokens and the alignment error per block.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD1.x/SD2.x or SDXL-family model (with the adapter's patches, if "
                      "any)."}),
            "clip": ("CLIP", {"tooltip": "The CLIP model that encoded the prompt: its tokenizer maps words to "
                     "token positions."}),
            "conditioning": ("CONDITIONING", {"tooltip": "The prompt's conditioning (one prompt, or one per frame; "
                             "with adapter tokens the context is shared + unshared + 77 tokens)."}),
            "latent": ("LATENT", {"tooltip": "The clip's frames encoded with VAE Encode (clean latents)."}),
            "text": ("STRING", {"multiline": True, "default": "", "tooltip": "The prompt text the conditioning was "
                     "encoded from (the same text as in CLIP Text Encode)."}),
            "words": ("STRING", {"default": "", "tooltip": "Comma-separated: words or phrases of the prompt "
                      "(multi-token words merged, every occurrence), context indices '#5' or '#5-8', or groups "
                      "<shared>, <unshared> (adapter tokens), <start>, <end>. Empty: every word of the prompt."}),
            "blocks": ("STRING", {"default": "auto", "tooltip": "UNet blocks to record, e.g. 'output 4, output 5' "
                       "(a bare number is an output block). auto: the papers' decoder blocks 4-11 on the model's "
                       "layout (SD1.x/SD2.x: output 4-11; SDXL family: output 1-5). A block the model lacks is an "
                       "error listing its blocks."}),
            "timesteps": ("STRING", {"default": "auto", "tooltip": "Training timesteps to record, e.g. '941, 921', "
                          "each snapped to the nearest step of the schedule; a value outside the schedule (e.g. 0 "
                          "when it ends at 1) is an error listing its steps. auto: the two schedule steps nearest "
                          "932 and 941 (the theory paper's figure); all: every step."}),
            "mode": (MODES, {"default": "probe", "tooltip": "probe: one model call per chosen timestep on the "
                     "frames noised to it (the inversion's latents when an inversion is connected). sample: a "
                     "full DDIM sampling run (from the inversion's noise, else from the noised frames). invert: "
                     "a DDIM inversion of the frames (no CFG)."}),
            "steps": ("INT", {"default": 50, "min": 1, "max": ddim.MAX_STEPS, "tooltip": "DDIM steps of the "
                      "schedule (ignored when an inversion is connected: its schedule is used)."}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": "Guidance scale "
                    "when a negative prompt is connected (probe and sample). Only the conditional half is recorded."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Noise seed for "
                     "noising the frames when no inversion is connected."}),
            "alpha": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "Opacity of the "
                      "colour map over the frames."}),
            "colormap": (list(core.COLORMAPS), {"default": "jet", "tooltip": "Colour map of the heatmaps."}),
            "normalize": (["map", "word"], {"default": "map", "tooltip": "map: each map scaled to 0..1 on its own "
                          "(DAAM). word: one scale per word across frames, so frames can be compared."}),
            "shared_tokens": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "Shared adapter tokens "
                              "prepended to the prompt (0 for a plain prompt)."}),
            "unshared_tokens": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "Per-frame adapter tokens "
                                "after the shared ones (0 for a plain prompt)."}),
        }, "optional": {
            "images": ("IMAGE", {"tooltip": "The frames to draw the heatmaps on (one per latent frame). Without "
                       "them the colour maps are shown alone."}),
            "inversion": ("TA_INVERSION", {"tooltip": "From Bilateral DDIM Inversion: its latents (probe) or "
                          "noise (sample) and its schedule."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt for CFG (probe and sample modes)."}),
            "baseline_model": ("MODEL", {"tooltip": "Report the alignment error also for this model (e.g. "
                               "without the adapter); the maps come from 'model' only."}),
            "baseline_conditioning": ("CONDITIONING", {"tooltip": "Report the alignment error also with this "
                                      "conditioning (e.g. the plain prompt without adapter tokens)."}),
        }}

    def run(self, model, clip, conditioning, latent, text, words, blocks, timesteps, mode, steps, cfg, seed, alpha,
            colormap, normalize, shared_tokens, unshared_tokens, images=None, inversion=None, negative=None,
            baseline_model=None, baseline_conditioning=None):
        host.check_supported(model)
        x = _latent(latent)
        frames = x.shape[0]
        if images is not None and images.shape[0] != frames:
            raise ValueError(f"images: {images.shape[0]} frames, but the latent has {frames}; connect the frames "
                             "that were encoded")
        checks.clip_inputs(model, frames, inversion, x.shape, conditioning=conditioning, negative=negative,
                           baseline_conditioning=baseline_conditioning)
        tokens, start_id, end_id = host.prompt_tokens(clip, text)
        context = max(c[0].shape[1] for c in conditioning)
        if context != shared_tokens + unshared_tokens + len(tokens):
            raise ValueError(f"conditioning: {context} context tokens, but shared_tokens ({shared_tokens}) + "
                             f"unshared_tokens ({unshared_tokens}) + the text's {len(tokens)} tokens make "
                             f"{shared_tokens + unshared_tokens + len(tokens)}; use the text the conditioning was "
                             "encoded from and the adapter's token counts")
        selection = core.select_tokens(words, tokens, host.token_encoder(clip), start_id, end_id, shared_tokens,
                                       unshared_tokens)
        block_ids, note = choose_blocks(blocks, host.unet_layout(model), "decoder_attention_blocks")
        notes = [note] if note else []
        model_sigmas = host.model_sigmas(model)
        sigmas = inversion.sigmas.to(model_sigmas) if inversion is not None else ddim.schedule(model_sigmas, steps)
        schedule = ddim.timesteps_for(model_sigmas, sigmas[:-1]).tolist()
        chosen = core.choose_timesteps(timesteps, schedule)
        if mode == "invert" and negative is not None:
            notes.append("invert mode conditions without CFG: the negative prompt is not used")

        run = Capture(model, block_ids, mode, x, sigmas, schedule, chosen, seed, inversion, negative, cfg)
        recorder = core.CrossAttentionRecorder(sorted({i for _, idx in selection for i in idx}), x.shape[-2:],
                                               chosen, model_sigmas)
        bar = host.Progress(run.calls * (2 if baseline_model is not None or baseline_conditioning is not None else 1))
        run(model, conditioning, recorder, bar)
        raw = recorder.maps(selection)
        runs = [("this run", _finite(recorder.alignment(), "model", raw))]
        if baseline_model is not None or baseline_conditioning is not None:
            base_model = baseline_model if baseline_model is not None else model
            host.check_supported(base_model, "baseline_model")
            baseline = core.CrossAttentionRecorder([], x.shape[-2:], chosen, model_sigmas)
            run(base_model, baseline_conditioning if baseline_conditioning is not None else conditioning, baseline,
                bar, offset=run.calls)
            runs.append(("baseline", _finite(baseline.alignment(),
                                             "baseline_model" if baseline_model is not None else "model")))

        maps = core.normalize_maps(raw, normalize)
        labels = [label for label, _ in selection]
        plain, overlays, grid, masks = self._render(maps, images, labels, alpha, colormap)
        report = self._report(mode, frames, sigmas, chosen, recorder, block_ids, selection, runs, notes)
        ui = {"ta_heatmaps": [self._sheets(plain, labels)], "text": [report]}
        return {"ui": ui, "result": (overlays, grid, masks, report)}

    @staticmethod
    def _render(maps, images, labels, alpha, colormap):
        count, frames, h, w = maps.shape
        if images is None:
            size, base, alpha = (h * 8, w * 8), torch.zeros(frames, h * 8, w * 8, 3), 1.0
        else:
            size, base = tuple(images.shape[1:3]), images.float().cpu()
        masks = core.resize_maps(maps, size).flatten(0, 1)
        plain = core.overlay(base.repeat(count, 1, 1, 1), masks, alpha, colormap)
        overlays = core.caption(plain, [f"{label}  f{t + 1}" for label in labels for t in range(frames)])
        scale = min(1.0, GRID_MAX_WIDTH / (frames * size[1]))
        cells = core.resize_images(overlays, scale)
        grid = core.tile(cells, count, frames)[None]
        return plain, overlays, grid, masks

    @staticmethod
    def _sheets(plain, labels):
        """Per word, one PNG sprite sheet of its frames in the temp folder, for the viewer."""
        frames = plain.shape[0] // len(labels)
        scale = min(1.0, PREVIEW_SIDE / max(plain.shape[1:3]))
        small = core.resize_images(plain, scale)
        columns = min(frames, SHEET_COLUMNS)
        sheets = []
        for i in range(len(labels)):
            sheet = core.sprite_sheet(small[i * frames:(i + 1) * frames], columns)
            folder, filename, counter, subfolder = host.save_location("TemporalAdapter/heatmap", directory=host.temp_directory())
            name = f"{filename}_{counter:05}_.png"
            Image.fromarray(sheet).save(os.path.join(folder, name), compress_level=4)
            sheets.append({"filename": name, "subfolder": subfolder, "type": "temp"})
        return {"words": labels, "frames": frames, "columns": columns, "cell": [small.shape[2], small.shape[1]],
                "sheets": sheets}

    @staticmethod
    def _report(mode, frames, sigmas, chosen, recorder, block_ids, selection, runs, notes):
        tokens = "; ".join(f"{label} = #{', #'.join(map(str, idx))}" for label, idx in selection)
        lines = [f"Cross-attention heatmaps: mode {mode}, {frames} frames, {len(sigmas) - 1}-step schedule; "
                 f"timesteps {', '.join(map(str, chosen))} (recorded {recorder.calls} attention calls)",
                 f"blocks: {names(block_ids)}", f"tokens: {tokens}", *notes,
                 "alignment error ||Z_t+1 - Z_t||_F (head-averaged cross-attention of adjacent frames, mean over "
                 "pairs and recorded calls):", core.alignment_table(runs)]
        data = {label: {f"{b[0]} {b[1]}.{b[2]}": [round(float(v), 6) for v in table[b]] for b in table}
                for label, table in runs}
        return "\n".join(lines) + "\n" + json.dumps({"timesteps": chosen, "alignment_per_pair": data}, allow_nan=False)


def _finite(alignment, input_name, maps=None):
    """`alignment` ({block: [error per adjacent pair]}) after checking it (and `maps`) holds no NaN or
    infinity, which a model with broken weights gives; else ValueError naming the model input, as the
    inverter refuses the same model."""
    values = torch.tensor([float(v) for errors in alignment.values() for v in errors])
    if not all_finite(values, *([] if maps is None else [maps])):
        raise ValueError(f"{input_name}: its cross-attention came out NaN or infinite (nothing was saved): the model "
                         "gives non-finite outputs on these frames; check the model and what patches it upstream (a "
                         "LoRA or merge with broken weights)")
    return alignment


class Capture:
    """One capture run of the heatmap node: probe, sample or invert, through the host's sampling."""

    def __init__(self, model, blocks, mode, x, sigmas, schedule, chosen, seed, inversion, negative, cfg):
        self.blocks, self.mode, self.x, self.sigmas = blocks, mode, x, sigmas
        self.schedule, self.chosen, self.inversion = schedule, chosen, inversion
        self.negative, self.cfg = (negative, cfg) if mode != "invert" else (None, 1.0)
        self.noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
        self.calls = len(chosen) if mode == "probe" else len(sigmas) - 1

    def _noised(self, model, sigma):
        """Frames at noise level sigma, in LATENT space: the inversion's latents when given."""
        if self.inversion is not None:
            return host.latent_space(model, self.inversion.latent_at(sigma))
        return host.latent_space(model, host.model_space(model, self.x) + sigma * self.noise)

    def __call__(self, model, conditioning, recorder, bar, offset=0):
        patched = host.with_attn2_capture(model, self.blocks, recorder)
        progress = lambda step, total, x0: bar.update(offset + step)  # noqa: E731
        if self.mode == "probe":
            for i, t in enumerate(self.chosen):
                sigma = self.sigmas[self.schedule.index(t)]
                host.run_sampler(patched, ddim.sample_ddim, torch.stack([sigma, sigma.new_zeros(())]), conditioning,
                                 self.negative, self._noised(model, sigma), self.cfg)
                bar.update(offset + i + 1)
        elif self.mode == "sample":
            start = (host.latent_space(model, self.inversion.noise) if self.inversion is not None
                     else self._noised(model, self.sigmas[0]))
            host.run_sampler(patched, ddim.sample_ddim, self.sigmas, conditioning, self.negative, start, self.cfg,
                             progress=progress)
        else:
            host.run_sampler(patched, ddim.invert_ddim, self.sigmas.flip(0), conditioning, None, self.x, 1.0,
                             progress=progress)


NODE_CLASS_MAPPINGS = {"TA_AttentionHeatmaps": AttentionHeatmaps}
NODE_DISPLAY_NAME_MAPPINGS = {"TA_AttentionHeatmaps": "Attention Heatmaps (Temporal Adapter)"}
