"""Temporal-consistency metrics of an edited clip against its source (method.md §6).

Frames are IMAGE batches ``[T, H, W, 3]``, float 0..1 (torch tensors or numpy arrays); the edit must
have the same frame count and size as the source, or be the source's centre that the VAE cropped to
a multiple of 8 (then that area of the source is compared, and the report says so). Frame pair ``t`` means frames ``t -> t+1``.

- Warp error (Lai et al. 2018): dense optical flow on the SOURCE frames (OpenCV DIS, no
  weights), edited frame t+1 warped onto frame t along it, occluded pixels masked by a
  forward–backward check (Sundaram et al. 2010); the error of a pair is the mean over non-occluded
  pixels of the squared RGB difference (averaged over channels, 0..1 scale: a masked MSE). The
  source's own warp error along the same flow is reported beside it as the floor to compare with.
- Warped SSIM: SSIM (Gaussian window, sigma 1.5) of frame t and warped frame t+1, averaged over the
  same mask.
- Frame-to-frame PSNR of the edit (unwarped neighbours), in dB for peak 1.
- Adjacent cosine similarity of latents, also one mean per step of a trajectory [S, T, C, H, W]
  (the theory paper's Fig. 4 curve).
- With an image embedder (IMAGE -> [N, D], e.g. CLIP vision): CLIP-F, the cosine of consecutive
  frame embeddings; with a text embedding in the same space, CLIP-T, frame-to-text cosine.

`consistency_report` gathers everything into a JSON-ready dict (floats, per-pair lists, None where
a value is undefined: a pair whose pixels are all occluded); `format_report` and `plot_report` render
it; `write_json` saves it atomically.
"""
import json
import math
import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .atomic import atomic_path
from .inversion import psnr
from .temporal_loss import cosine_similarity_adjacent

FLOW_METHOD = "OpenCV DIS (medium preset, full-resolution finest scale) on the source frames"
# Forward–backward check: pixel occluded when |w_f + w_b|^2 > OCC_RATIO (|w_f|^2 + |w_b|^2) + OCC_OFFSET.
OCC_RATIO, OCC_OFFSET = 0.01, 0.5
SSIM_SIGMA, SSIM_C1, SSIM_C2 = 1.5, 0.01 ** 2, 0.03 ** 2
EMBED_BATCH = 16  # frames per embedder call
MIN_SIDE = 16  # DIS flow needs frames of at least this many pixels a side


# ---- inputs -------------------------------------------------------------------------------------

def clip_frames(images, name):
    """IMAGE [T, H, W, 3] -> contiguous float32 numpy, or ValueError naming the input `name`."""
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{name}: expected an IMAGE batch [frames, height, width, 3], got shape {shape}")
    if shape[0] < 2:
        raise ValueError(f"{name}: has {shape[0]} frame(s); consistency compares neighbouring frames, "
                         "so connect a clip of at least 2 frames")
    if isinstance(images, torch.Tensor):
        images = images.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(images, dtype=np.float32)


VAE_MULTIPLES = (8, 16, 32, 64)  # sides a VAE crops its input to (the host's vae_encode_crop_pixels)


def vae_crop(source_size, edited_size):
    """(top, left) of the edit inside the source when the edit is the source's centre cropped by a
    VAE to multiples of 8 (or 16, 32, 64) per side, as the host's VAE encode crops: offset
    (side % multiple) // 2. None when the sizes are equal or not related that way."""
    if tuple(source_size) == tuple(edited_size):
        return None
    offsets = []
    for side, cropped in zip(source_size, edited_size):
        if not any(cropped == side - side % m for m in VAE_MULTIPLES):
            return None
        offsets.append((side - cropped) // 2)
    return tuple(offsets)


def matched_clips(source, edited):
    """Both clips as float32 numpy after checking they have the same frame count and size.

    An edit that a VAE cropped to a multiple of 8 (e.g. 64x48 from a 65x49 source) is compared with
    the same centre crop of the source; the note says so (None when the frames match as given).
    """
    source, edited = clip_frames(source, "source"), clip_frames(edited, "edited")
    if edited.shape[0] != source.shape[0]:
        raise ValueError(f"edited: has {edited.shape[0]} frames but source has {source.shape[0]}; connect the "
                         "edit of exactly these source frames (same count, same order)")
    note = None
    if edited.shape[1:3] != source.shape[1:3]:
        offset = vae_crop(source.shape[1:3], edited.shape[1:3])
        if offset is None:
            raise ValueError(f"edited: frames are {edited.shape[2]}x{edited.shape[1]} but source frames are "
                             f"{source.shape[2]}x{source.shape[1]}; resize one clip to the other's size before "
                             "measuring (only the VAE's crop to a multiple of 8 is matched automatically)")
        (top, left), (h, w) = offset, edited.shape[1:3]
        note = (f"compared the {w}x{h} area at x={left}, y={top} of the {source.shape[2]}x{source.shape[1]} "
                "source: the VAE cropped the edit to a multiple of 8")
        source = np.ascontiguousarray(source[:, top:top + h, left:left + w])
    if min(source.shape[1:3]) < MIN_SIDE:
        raise ValueError(f"source: frames of {source.shape[2]}x{source.shape[1]} are too small for optical flow; "
                         f"measure frames of at least {MIN_SIDE}x{MIN_SIDE} pixels")
    return source, edited, note


# ---- flow, warping, occlusion -------------------------------------------------------------------

def _gray(frame):
    return cv2.cvtColor(np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def optical_flow(frame_a, frame_b):
    """Dense flow [H, W, 2] float32 (dx, dy in pixels) from RGB frame_a to frame_b (float 0..1):
    the content at pixel x of frame_a is at x + flow(x) in frame_b.

    DIS (Kroeger et al. 2016), medium preset refined down to full resolution: on real frames moved
    by known sub-pixel shifts, rotations and zooms its mean error was 0.02-0.3 px (up to 0.5 px with
    added noise), where Farneback missed motions above ~8 px, and dark low-contrast footage by pixels.
    """
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(0)
    return dis.calc(_gray(frame_a), _gray(frame_b), None)


def _targets(flow):
    """Where each pixel's flow points: x + flow_x, y + flow_y (two float32 [H, W] maps)."""
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return gx + flow[..., 0], gy + flow[..., 1]


def warp(image, flow):
    """`image` [H, W, C] sampled at x + flow(x) (bilinear, border replicated).

    With the flow from frame t to frame t+1 this warps frame t+1 onto frame t.
    """
    x, y = _targets(flow)
    return cv2.remap(image, x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def visible_mask(forward, backward):
    """bool [H, W]: pixels of frame t that are not occluded in frame t+1.

    forward: flow t -> t+1, backward: flow t+1 -> t. A pixel is kept when its forward flow lands
    inside frame t+1 and the backward flow there leads back to it (forward–backward check).
    """
    h, w = forward.shape[:2]
    back = warp(backward, forward)
    gap = np.square(forward + back).sum(-1)
    bound = OCC_RATIO * (np.square(forward).sum(-1) + np.square(back).sum(-1)) + OCC_OFFSET
    x, y = _targets(forward)
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    return (gap <= bound) & inside


def ssim_map(a, b):
    """Per-pixel SSIM [H, W] of two RGB images (float 0..1), averaged over channels."""
    def blur(x):
        return cv2.GaussianBlur(x, (11, 11), SSIM_SIGMA)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)
         / ((mu_a * mu_a + mu_b * mu_b + SSIM_C1) * (var_a + var_b + SSIM_C2)))
    return s.mean(-1)


def _masked_mean(values, mask):
    return float(values[mask].mean()) if mask.any() else math.nan


def warp_metrics(source, edited, progress=None):
    """Per-pair warp readouts of `edited` along the flow of `source` (IMAGE batches, matched).

    Returns a dict of [T-1] lists: "warp_error" (masked MSE of edited t vs warped edited t+1),
    "source_warp_error" (the same for the source clip), "warped_ssim", "visible_fraction" (share
    of non-occluded pixels). A pair with no visible pixel has NaN errors.
    progress: optional callback progress(done, total) after each pair.
    """
    source, edited, _ = matched_clips(source, edited)
    pairs = source.shape[0] - 1
    out = {"warp_error": [], "source_warp_error": [], "warped_ssim": [], "visible_fraction": []}
    for t in range(pairs):
        forward = optical_flow(source[t], source[t + 1])
        mask = visible_mask(forward, optical_flow(source[t + 1], source[t]))
        warped = warp(edited[t + 1], forward)
        out["warp_error"].append(_masked_mean(np.square(edited[t] - warped).mean(-1), mask))
        out["source_warp_error"].append(
            _masked_mean(np.square(source[t] - warp(source[t + 1], forward)).mean(-1), mask))
        out["warped_ssim"].append(_masked_mean(ssim_map(edited[t], warped), mask))
        out["visible_fraction"].append(float(mask.mean()))
        if progress is not None:
            progress(t + 1, pairs)
    return out


def psnr_adjacent(frames):
    """[T-1] PSNR in dB (peak 1) of each frame of an IMAGE batch against the next one.

    Identical neighbours give the cap of `inversion.psnr` (MSE floored at 1e-12: 120 dB).
    """
    frames = torch.from_numpy(clip_frames(frames, "frames"))
    return psnr(frames[1:], frames[:-1], 1.0).tolist()


# ---- latents and embeddings ---------------------------------------------------------------------

def latent_cosine(latents, reduce="frame"):
    """[T-1] cosine similarity of consecutive latents [T, C, H, W] (see temporal_loss for `reduce`)."""
    if latents.dim() != 4 or latents.shape[0] < 2:
        raise ValueError(f"latents: expected a batch [frames >= 2, channels, height, width], "
                         f"got shape {tuple(latents.shape)}")
    return cosine_similarity_adjacent(latents.detach(), reduce).tolist()


def trajectory_cosine(trajectory, reduce="frame"):
    """[S] mean adjacent-frame cosine of the latents at each step of a trajectory [S, T, C, H, W]
    (e.g. an inversion's or a sampler's latents at every DDIM timestep): the theory paper's Fig. 4."""
    if trajectory.dim() != 5 or trajectory.shape[1] < 2:
        raise ValueError(f"trajectory: expected [steps, frames >= 2, channels, height, width], "
                         f"got shape {tuple(trajectory.shape)}")
    return [float(cosine_similarity_adjacent(step.detach(), reduce).mean()) for step in trajectory]


def embed_frames(frames, embed, progress=None, batch=EMBED_BATCH):
    """Embeddings [T, D] float32 of IMAGE frames by `embed(images [N, H, W, 3]) -> [N, D]`, run on
    chunks of `batch` frames; progress(done, total) after each chunk."""
    frames = torch.from_numpy(clip_frames(frames, "frames"))
    chunks = torch.split(frames, batch)
    out = []
    for i, chunk in enumerate(chunks, 1):
        out.append(embed(chunk).detach().to("cpu", torch.float32).reshape(chunk.shape[0], -1))
        if progress is not None:
            progress(i, len(chunks))
    return torch.cat(out)


def clip_frame_cosine(embeddings):
    """[T-1] cosine of consecutive frame embeddings [T, D]; CLIP-F is their mean."""
    return cosine_similarity_adjacent(embeddings.float(), "frame").tolist()


def clip_text_cosine(embeddings, text_embedding):
    """[T] cosine of each frame embedding [T, D] with one text embedding ([D] or [1, D]); CLIP-T is
    their mean. Both must live in the same joint space (e.g. CLIP's projected embeddings)."""
    text = text_embedding.detach().to("cpu", torch.float32).reshape(1, -1)
    if text.shape[1] != embeddings.shape[1]:
        raise ValueError(f"text_embedding: has {text.shape[1]} dimensions but the frame embeddings have "
                         f"{embeddings.shape[1]}; use the text encoder that matches the image encoder")
    return F.cosine_similarity(embeddings.float(), text, dim=1).tolist()


# ---- the report ---------------------------------------------------------------------------------

def _finite(values):
    return [float(v) if math.isfinite(v) else None for v in values]


def _series(report, key, values, per="per_pair"):
    """Store the mean of the finite values under `key` and the list under `key_per`."""
    values = _finite(values)
    kept = [v for v in values if v is not None]
    report[key] = sum(kept) / len(kept) if kept else None
    report[f"{key}_{per}"] = values


def consistency_report(source, edited, latents=None, embed=None, text_embedding=None, trajectory=None,
                       progress=None):
    """Every metric that the inputs allow, as a JSON-ready dict.

    source, edited: IMAGE batches [T, H, W, 3] of the same count (T >= 2) and size, or an edit that
        the VAE cropped to a multiple of 8 (compared on that area; "compared" says which).
    latents: optional [T, C, h, w] latents of the edit -> "latent_cosine".
    embed: optional image embedder IMAGE [N, H, W, 3] -> [N, D] -> "clip_f" (on the edit);
        with text_embedding ([D]) also "clip_t".
    trajectory: optional [S, T', C, h, w] latents per step -> "trajectory_cosine_per_step".
    progress: optional progress(done, total) callback (one step per frame pair and embedder chunk).
    Each metric `m` comes as the mean `m` (None if undefined) and the list `m_per_pair` (or
    `_per_frame` / `_per_step`).
    """
    source, edited, note = matched_clips(source, edited)
    frames, height, width = edited.shape[:3]
    if latents is not None and latents.shape[0] != frames:
        raise ValueError(f"latents: has {latents.shape[0]} latents but the clips have {frames} frames; "
                         "connect the latents of this edit (one per frame)")
    if text_embedding is not None and embed is None:
        raise ValueError("text_embedding: CLIP-T needs an image embedder too (embed=...)")
    chunks = -(-frames // EMBED_BATCH) if embed is not None else 0
    total = frames - 1 + chunks

    def _step(offset):
        return None if progress is None else (lambda done, _total: progress(offset + done, total))

    report = {"frames": frames, "width": width, "height": height, "flow": FLOW_METHOD,
              "compared": note or "the whole frames"}
    warped = warp_metrics(source, edited, _step(0))
    for key in ("warp_error", "source_warp_error", "warped_ssim", "visible_fraction"):
        _series(report, key, warped[key])
    _series(report, "psnr", psnr_adjacent(edited))
    if latents is not None:
        _series(report, "latent_cosine", latent_cosine(latents))
    if embed is not None:
        embeddings = embed_frames(edited, embed, _step(frames - 1))
        _series(report, "clip_f", clip_frame_cosine(embeddings))
        if text_embedding is not None:
            _series(report, "clip_t", clip_text_cosine(embeddings, text_embedding), per="per_frame")
    if trajectory is not None:
        _series(report, "trajectory_cosine", trajectory_cosine(trajectory), per="per_step")
    return report


# What each metric is called in text and plots: key -> (label, format, better).
LABELS = {
    "warp_error": ("warp error (masked MSE)", "{:.5f}", "lower"),
    "source_warp_error": ("source warp error (floor)", "{:.5f}", "lower"),
    "warped_ssim": ("warped SSIM", "{:.4f}", "higher"),
    "visible_fraction": ("non-occluded share", "{:.3f}", None),
    "psnr": ("frame-to-frame PSNR (dB)", "{:.2f}", "higher"),
    "latent_cosine": ("latent adjacent cosine", "{:.4f}", "higher"),
    "clip_f": ("CLIP-F (consecutive frames)", "{:.4f}", "higher"),
    "clip_t": ("CLIP-T (frame to text)", "{:.4f}", "higher"),
    "trajectory_cosine": ("latent cosine per step", "{:.4f}", "higher"),
}
PAIR_KEYS = ("warp_error", "source_warp_error", "warped_ssim", "psnr", "latent_cosine", "clip_f")


def _fmt(key, value):
    return "n/a" if value is None else LABELS[key][1].format(value)


def format_report(report):
    """Readable multi-line text: the means, then one line per frame pair."""
    lines = [f"Temporal consistency of {report['frames']} frames, {report['width']}x{report['height']} "
             f"(flow: {report['flow']}; {report.get('compared', 'the whole frames')})"]
    for key, (label, _, better) in LABELS.items():
        if key in report:
            hint = f"  ({better} is better)" if better else ""
            lines.append(f"{label}: {_fmt(key, report[key])}{hint}")
    keys = [k for k in PAIR_KEYS if k in report]
    lines.append("per pair t->t+1: " + " | ".join(LABELS[k][0] for k in keys))
    for t in range(report["frames"] - 1):
        values = " | ".join(_fmt(k, report[f"{k}_per_pair"][t]) for k in keys)
        lines.append(f"  {t}->{t + 1}: {values}")
    return "\n".join(lines)


def _panels(report):
    """(title, x label, [(legend, key of a list)]) for each plot panel the report can fill."""
    panels = [("Warp error (masked MSE)", "frame pair", [("edited", "warp_error_per_pair"),
                                                         ("source", "source_warp_error_per_pair")]),
              ("Warped SSIM", "frame pair", [("edited", "warped_ssim_per_pair")]),
              ("Frame-to-frame PSNR (dB)", "frame pair", [("edited", "psnr_per_pair")])]
    cosines = [(label, key) for label, key in (("latents", "latent_cosine_per_pair"), ("CLIP-F", "clip_f_per_pair"))
               if key in report]
    if cosines:
        panels.append(("Adjacent cosine", "frame pair", cosines))
    if "trajectory_cosine_per_step" in report:
        panels.append(("Latent adjacent cosine per step", "trajectory step",
                       [("mean", "trajectory_cosine_per_step")]))
    return panels


def plot_report(report, width=960, height=720):
    """The report's curves (per frame pair, per trajectory step) as an RGB uint8 array [height, width, 3].

    Rendered headless with matplotlib's Agg canvas (imported here, on first use).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = _panels(report)
    cols = 2
    rows = -(-len(panels) // cols)
    dpi = 100
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    for i, (title, xlabel, curves) in enumerate(panels):
        axes = figure.add_subplot(rows, cols, i + 1)
        for label, key in curves:
            values = [math.nan if v is None else v for v in report[key]]
            axes.plot(range(len(values)), values, "o-", label=label, markersize=3)
        axes.set_title(title, fontsize=10)
        axes.set_xlabel(xlabel, fontsize=8)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
        if len(curves) > 1:
            axes.legend(fontsize=7)
    canvas.draw()
    return np.array(canvas.buffer_rgba())[..., :3]


def write_json(report, path):
    """Write the report as strict JSON (no NaN/Infinity) to `path` atomically (temp file + rename)."""
    with atomic_path(path) as temporary, open(temporary, "w") as f:
        json.dump(report, f, indent=1, allow_nan=False)
    return path
