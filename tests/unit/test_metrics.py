"""metrics: known answers on real frames (flow, occlusion, warp error), per-pair localisation,
latent/CLIP cosines, the report, its JSON and its plot."""
import json
import math
import os

import cv2
import numpy as np
import pytest
import torch

from temporal_adapter.adapter_core import metrics

# Frame k is the crop of a real frame at origin (X0 + dx_k, Y0 + dy_k): its content moves by
# -(offset_{k+1} - offset_k) pixels from frame k to frame k+1.
OFFSETS = [(0, 0), (2, 1), (5, 3), (4, -2), (1, 0), (9, -6)]
H, W, Y0, X0 = 112, 144, 16, 16
MARGIN = 12  # the interior: farther from the border than any step moves


def _decode(path, count):
    cap = cv2.VideoCapture(path)
    frames = []
    while len(frames) < count:
        ok, bgr = cap.read()
        assert ok, f"could not decode frame {len(frames)} of {path}"
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0)
    cap.release()
    return np.stack(frames)


@pytest.fixture(scope="module")
def video(clips):
    """The first 6 frames of carphone_pristine.mp4 (real motion), [6, 144, 176, 3] float 0..1."""
    return _decode(clips["carphone_pristine.mp4"], 6)


@pytest.fixture(scope="module")
def shifted(video):
    """Crops of frame 0 at OFFSETS: a clip whose true flow is known exactly."""
    return np.stack([video[0, Y0 + dy:Y0 + dy + H, X0 + dx:X0 + dx + W] for dx, dy in OFFSETS])


def _interior(a):
    return a[MARGIN:-MARGIN, MARGIN:-MARGIN]


def _noisy(clip, frame, sigma=0.05, seed=0):
    out = clip.copy()
    noise = np.random.default_rng(seed).normal(0.0, sigma, out[frame].shape).astype(np.float32)
    out[frame] = np.clip(out[frame] + noise, 0.0, 1.0)
    return out


def test_identical_frames_score_perfectly(video):
    clip = np.repeat(video[:1], 3, axis=0)
    latents = torch.randn(1, 4, 18, 22, generator=torch.Generator().manual_seed(0)).repeat(3, 1, 1, 1)
    report = metrics.consistency_report(clip, clip, latents=latents)
    assert np.abs(metrics.optical_flow(clip[0], clip[1])).max() < 1e-3
    assert report["warp_error"] == pytest.approx(0.0, abs=1e-9)
    assert report["source_warp_error"] == pytest.approx(0.0, abs=1e-9)
    assert report["warped_ssim"] == pytest.approx(1.0, abs=1e-5)
    assert report["visible_fraction"] == 1.0
    assert report["psnr"] == pytest.approx(120.0)  # the MSE floor of inversion.psnr
    assert report["latent_cosine_per_pair"] == pytest.approx([1.0, 1.0], abs=1e-6)


def test_flow_recovers_known_shifts(shifted):
    for t in range(len(OFFSETS) - 1):
        truth = -(np.array(OFFSETS[t + 1], np.float32) - np.array(OFFSETS[t], np.float32))
        flow = metrics.optical_flow(shifted[t], shifted[t + 1])
        error = np.linalg.norm(_interior(flow) - truth, axis=-1).mean()
        assert error < 0.5, f"pair {t}: shift {truth}, mean flow error {error:.3f} px"


def test_flow_recovers_a_subpixel_rotation_and_zoom(video):
    # Content at x moves to A x: 2 degrees about the centre, 3 % zoom, (1.5, -0.75) px translation.
    frame = video[0]
    h, w = frame.shape[:2]
    a = cv2.getRotationMatrix2D((w / 2, h / 2), 2.0, 1.03)
    a[:, 2] += (1.5, -0.75)
    moved = cv2.warpAffine(frame, a, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    truth = np.stack([a[0, 0] * gx + a[0, 1] * gy + a[0, 2] - gx, a[1, 0] * gx + a[1, 1] * gy + a[1, 2] - gy], -1)
    flow = metrics.optical_flow(frame, np.clip(moved, 0.0, 1.0))
    margin = 24  # the zoom moves the border by up to ~5 px and the reflected border is not the scene
    error = np.linalg.norm((flow - truth)[margin:-margin, margin:-margin], axis=-1).mean()
    assert error < 0.5, f"mean flow error {error:.3f} px"


def test_occlusion_mask_drops_pixels_that_leave_the_frame(shifted):
    # Pair 1 -> 2: offsets (2, 1) -> (5, 3), content moves 3 px left and 2 px up: columns 0..2 and
    # rows 0..1 of frame 1 leave the frame; everything else stays visible.
    forward = metrics.optical_flow(shifted[1], shifted[2])
    mask = metrics.visible_mask(forward, metrics.optical_flow(shifted[2], shifted[1]))
    assert not mask[:, :2].any() and not mask[:1, :].any()
    assert _interior(mask).all()


def test_warp_error_vanishes_along_the_source_flow(shifted):
    out = metrics.warp_metrics(shifted, shifted)
    unwarped = [float(np.square(shifted[t + 1] - shifted[t]).mean()) for t in range(len(OFFSETS) - 1)]
    assert max(out["warp_error"]) < 1e-5, out["warp_error"]
    assert min(unwarped) > 1e-2  # so the flow, not a static scene, makes the error vanish
    assert min(out["warped_ssim"]) > 0.99
    assert min(out["visible_fraction"]) > 0.85


def test_noise_on_one_frame_raises_exactly_its_pairs(video):
    clean = metrics.warp_metrics(video, video)
    noisy = metrics.warp_metrics(video, _noisy(video, 3))
    for t in range(len(video) - 1):
        assert noisy["source_warp_error"][t] == clean["source_warp_error"][t]  # flow comes from the source
        if t in (2, 3):  # the pairs 2->3 and 3->4 touch frame 3
            assert noisy["warp_error"][t] > clean["warp_error"][t] + 1e-3, (t, noisy, clean)
            assert noisy["warped_ssim"][t] < clean["warped_ssim"][t] - 0.1
        else:
            assert noisy["warp_error"][t] == pytest.approx(clean["warp_error"][t], abs=1e-9)
            assert noisy["warped_ssim"][t] == pytest.approx(clean["warped_ssim"][t], abs=1e-6)
    psnr_clean, psnr_noisy = metrics.psnr_adjacent(video), metrics.psnr_adjacent(_noisy(video, 3))
    assert [round(a - b, 6) > 0 for a, b in zip(psnr_clean, psnr_noisy)] == [False, False, True, True, False]


def test_latent_cosine_known_answers():
    a = torch.zeros(4, 2, 2)
    a[0, 0, 0] = 1.0
    b = torch.zeros(4, 2, 2)
    b[1, 1, 1] = 3.0
    latents = torch.stack([a, 2 * a, -a, b])  # same direction, opposite, orthogonal
    assert metrics.latent_cosine(latents) == pytest.approx([1.0, -1.0, 0.0], abs=1e-6)


def test_trajectory_cosine_gives_one_mean_per_step():
    g = torch.Generator().manual_seed(1)
    frame = torch.randn(4, 8, 8, generator=g)
    steps = torch.stack([torch.randn(5, 4, 8, 8, generator=g),  # unrelated frames
                         frame.expand(5, 4, 8, 8),  # a still clip
                         torch.stack([frame, -frame] * 2 + [frame])])  # flickering sign
    per_step = metrics.trajectory_cosine(steps)
    assert len(per_step) == 3
    assert per_step[0] == pytest.approx(float(np.mean(metrics.latent_cosine(steps[0]))))
    assert abs(per_step[0]) < 0.2
    assert per_step[1:] == pytest.approx([1.0, -1.0], abs=1e-6)


def _solid(colours, side=16):
    return np.stack([np.broadcast_to(np.array(c, np.float32), (side, side, 3)) for c in colours])


def _mean_colour(images):
    return images.mean(dim=(1, 2))


def test_clip_scores_with_an_embedder_and_progress():
    clip = _solid([(1, 0, 0), (0.5, 0, 0), (0, 1, 0)])  # red, dark red, green
    calls = []
    report = metrics.consistency_report(clip, clip, embed=_mean_colour, text_embedding=torch.tensor([1.0, 0, 0]),
                                        progress=lambda done, total: calls.append((done, total)))
    assert report["clip_f_per_pair"] == pytest.approx([1.0, 0.0], abs=1e-6)
    assert report["clip_f"] == pytest.approx(0.5, abs=1e-6)
    assert report["clip_t_per_frame"] == pytest.approx([1.0, 1.0, 0.0], abs=1e-6)
    assert calls == [(1, 3), (2, 3), (3, 3)]  # 2 frame pairs, then 1 embedder chunk


def test_embeddings_are_computed_in_chunks():
    clip = _solid([(i / 5, 1 - i / 5, 0.5) for i in range(5)])
    sizes = []

    def embed(images):
        sizes.append(images.shape[0])
        return _mean_colour(images)

    chunked = metrics.embed_frames(clip, embed, batch=2)
    assert sizes == [2, 2, 1]
    assert torch.allclose(chunked, _mean_colour(torch.from_numpy(clip)), atol=1e-6)


@pytest.mark.parametrize("source_shape,edited_shape,message", [
    ((4, 32, 32, 3), (3, 32, 32, 3), "edited: has 3 frames but source has 4"),
    ((3, 32, 32, 3), (3, 32, 48, 3), "edited: frames are 48x32 but source frames are 32x32"),
    ((1, 32, 32, 3), (1, 32, 32, 3), "source: has 1 frame(s)"),
    ((3, 32, 32, 4), (3, 32, 32, 3), "source: expected an IMAGE batch [frames, height, width, 3]"),
    ((3, 8, 32, 3), (3, 8, 32, 3), "too small for optical flow"),
])
def test_mismatched_clips_raise_clear_errors(source_shape, edited_shape, message):
    with pytest.raises(ValueError) as info:
        metrics.consistency_report(torch.zeros(source_shape), torch.zeros(edited_shape))
    assert message in str(info.value)


def test_bad_optional_inputs_raise_clear_errors():
    clip = torch.zeros(3, 16, 16, 3)
    with pytest.raises(ValueError, match="latents: has 2 latents but the clips have 3 frames"):
        metrics.consistency_report(clip, clip, latents=torch.zeros(2, 4, 2, 2))
    with pytest.raises(ValueError, match=r"latents: expected a batch \[frames >= 2"):
        metrics.latent_cosine(torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match=r"trajectory: expected \[steps, frames >= 2"):
        metrics.trajectory_cosine(torch.zeros(3, 4, 2, 2))
    with pytest.raises(ValueError, match="text_embedding: CLIP-T needs an image embedder"):
        metrics.consistency_report(clip, clip, text_embedding=torch.ones(3))
    with pytest.raises(ValueError, match="text_embedding: has 4 dimensions but the frame embeddings have 3"):
        metrics.clip_text_cosine(torch.ones(3, 3), torch.ones(4))


def _numbers(value):
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [value] if isinstance(value, (int, float)) else []


def test_report_round_trips_as_strict_json_and_text(video, tmp_path):
    report = metrics.consistency_report(video[:4], _noisy(video[:4], 2), latents=torch.randn(4, 4, 18, 22),
                                        embed=_mean_colour)
    path = metrics.write_json(report, str(tmp_path / "report.json"))
    with open(path) as f:
        loaded = json.load(f)
    assert loaded == report and os.listdir(tmp_path) == ["report.json"]
    assert all(math.isfinite(n) for n in _numbers(loaded)) and len(_numbers(loaded)) > 30
    text = metrics.format_report(report)
    assert "warp error (masked MSE): " in text and "CLIP-F" in text and "latent adjacent cosine" in text
    assert [ln.split(":")[0].strip() for ln in text.splitlines() if "->" in ln and ln.startswith("  ")] == \
        ["0->1", "1->2", "2->3"]


def test_fully_occluded_pairs_are_reported_as_undefined(video, tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "visible_mask", lambda forward, backward: np.zeros(forward.shape[:2], bool))
    report = metrics.consistency_report(video[:3], video[:3])
    assert report["warp_error"] is None and report["warp_error_per_pair"] == [None, None]
    assert report["warped_ssim"] is None and report["visible_fraction"] == 0.0
    assert "warp error (masked MSE): n/a" in metrics.format_report(report)
    metrics.write_json(report, str(tmp_path / "r.json"))  # strict JSON: None, never NaN
    with pytest.raises(ValueError):  # NaN is refused, and the temporary file does not stay behind
        metrics.write_json({"x": math.nan}, str(tmp_path / "bad.json"))
    assert os.listdir(tmp_path) == ["r.json"]


def test_plot_has_a_panel_per_metric_group(video):
    report = metrics.consistency_report(video[:3], video[:3])
    image = metrics.plot_report(report)
    assert image.shape == (720, 960, 3) and image.dtype == np.uint8
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10
    bottom_right = (slice(380, 720), slice(500, 960))
    assert (image[bottom_right] == 255).all()  # three panels: the fourth cell stays blank
    report = metrics.consistency_report(video[:3], video[:3], latents=torch.randn(3, 4, 18, 22),
                                        trajectory=torch.randn(4, 3, 4, 8, 8))
    image = metrics.plot_report(report, width=640, height=900)
    assert image.shape == (900, 640, 3)
    assert not (image[600:, :320] == 255).all()  # the per-step panel fills the third row


def test_an_edit_the_vae_cropped_is_compared_on_the_same_centre_of_the_source():
    # ComfyUI's VAE encode keeps the centre: offset (side % 8) // 2, e.g. 3 for 70 -> 64.
    assert metrics.vae_crop((49, 65), (48, 64)) == (0, 0)
    assert metrics.vae_crop((70, 77), (64, 72)) == (3, 2)
    assert metrics.vae_crop((70, 77), (64, 64)) == (3, 6)  # a VAE that crops to multiples of 16
    assert metrics.vae_crop((70, 70), (60, 70)) is None and metrics.vae_crop((48, 64), (49, 65)) is None
    rng = np.random.default_rng(0)
    source = torch.from_numpy(rng.random((3, 70, 77, 3), dtype=np.float32))
    edited = source[:, 3:67, 2:74]
    report = metrics.consistency_report(source, edited)
    assert report["compared"].startswith("compared the 72x64 area at x=2, y=3 of the 77x70 source")
    assert report["warp_error"] == pytest.approx(report["source_warp_error"], abs=1e-7)  # same pixels
    assert "72x64 area" in metrics.format_report(report).splitlines()[0]
    with pytest.raises(ValueError, match=r"edited: frames are 70x60 but source frames are 77x70.*only the VAE"):
        metrics.consistency_report(source, source[:, :60, :70])
