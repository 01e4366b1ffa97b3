"""Consistency metrics node: how temporally stable an edit is, measured against its source clip."""

import torch

from ..adapter_core import metrics
from . import checks, host

DEFAULT_PREFIX = "temporal_adapter/metrics"


@checks.checked_inputs
class TA_ConsistencyMetrics:
    DESCRIPTION = ("Measures the temporal consistency of an edited clip against its source: warp error "
                   "and warped SSIM along optical flow computed on the source (OpenCV DIS, occlusions "
                   "masked by a forward-backward check), frame-to-frame PSNR, and optionally the "
                   "adjacent-frame cosine of the edit's latents and CLIP-F (consecutive-frame cosine of "
                   "CLIP vision embeddings). Writes the report as JSON to the output folder.")
    CATEGORY = "Temporal Adapter/metrics"
    FUNCTION = "measure"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("report", "plot")
    OUTPUT_TOOLTIPS = ("The report as readable text: means, then one line per frame pair.",
                       "Curves per frame pair (warp error, warped SSIM, PSNR, cosines) as one image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "source": ("IMAGE", {
                    "tooltip": "The original frames (at least 2). Optical flow is computed on them."}),
                "edited": ("IMAGE", {
                    "tooltip": "The edited frames: same count, order and size as the source. An edit "
                               "that the VAE cropped to a multiple of 8 (64x48 from a 65x49 source) is "
                               "compared with the same centre of the source; the report says which area "
                               "was compared."}),
            },
            "optional": {
                "latents": ("LATENT", {
                    "tooltip": "Optional: the edit's latents (one per frame) for the adjacent-frame "
                               "latent cosine similarity."}),
                "clip_vision": ("CLIP_VISION", {
                    "tooltip": "Optional: a CLIP vision model; adds CLIP-F, the mean cosine of the "
                               "embeddings of consecutive edited frames."}),
                "filename_prefix": ("STRING", {
                    "default": DEFAULT_PREFIX,
                    "tooltip": "Where the JSON report goes, inside the output folder "
                               "(folder/name, numbered like saved images)."}),
            },
        }

    def measure(self, source, edited, latents=None, clip_vision=None, filename_prefix=DEFAULT_PREFIX):
        embed = host.image_embedder(clip_vision) if clip_vision is not None else None
        report = metrics.consistency_report(
            source, edited, latents=None if latents is None else latents["samples"], embed=embed,
            progress=host.Progress(len(source)).callback)
        saved = host.save_json(report, filename_prefix)
        text = f"{metrics.format_report(report)}\nsaved: {saved}"
        plot = torch.from_numpy(metrics.plot_report(report)).float().div(255.0).unsqueeze(0)
        return {"ui": {"text": [text]}, "result": (text, plot)}


NODE_CLASS_MAPPINGS = {"TA_ConsistencyMetrics": TA_ConsistencyMetrics}
NODE_DISPLAY_NAME_MAPPINGS = {"TA_ConsistencyMetrics": "Consistency Metrics (Temporal Adapter)"}
