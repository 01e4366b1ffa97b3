"""bilateral: the temporal filter against hand computation and noise statistics, the spatial
filter against OpenCV on a real frame."""
import math

import cv2
import numpy as np
import pytest
import torch

from temporal_adapter.adapter_core import bilateral


def _mirror(i, n):
    """Reflect-101 index, written independently of the library (…, 2, 1, 0, 1, 2, …)."""
    while i < 0 or i > n - 1:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def _temporal_reference(seq, kernel, sigma_s, sigma_r):
    """The bilateral formula on one scalar sequence, a frame at a time."""
    r, n, out = kernel // 2, len(seq), []
    for t in range(n):
        num = den = 0.0
        for k in range(-r, r + 1):
            v = seq[_mirror(t + k, n)]
            w = math.exp(-k * k / (2 * sigma_s ** 2)) * math.exp(-(v - seq[t]) ** 2 / (2 * sigma_r ** 2))
            num, den = num + w * v, den + w
        out.append(num / den)
    return out


def test_hand_computed_five_frame_toy():
    # two independent columns: [0, 1, 0, 2, 5] and [3, 3, 4, 1, 0]
    x = torch.tensor([[0.0, 3.0], [1.0, 3.0], [0.0, 4.0], [2.0, 1.0], [5.0, 0.0]], dtype=torch.float64)
    y, applied = bilateral.temporal_bilateral(x, kernel=5, sigma_s=1.0, sigma_r=1.0)
    assert applied
    # frame 0 of column 0 by hand: neighbours (mirrored) 0, 1, 0, 1, 0 at k = -2..2;
    # weights e^-2, e^-0.5·e^-0.5, 1, e^-1, e^-2 -> y = 2e^-1 / (1 + 2e^-1 + 2e^-2)
    assert y[0, 0].item() == pytest.approx(2 * math.exp(-1) / (1 + 2 * math.exp(-1) + 2 * math.exp(-2)), abs=1e-12)
    for col in range(2):
        expected = _temporal_reference(x[:, col].tolist(), 5, 1.0, 1.0)
        assert y[:, col].tolist() == pytest.approx(expected, abs=1e-12)
    print("toy output", [round(v, 4) for v in y[:, 0].tolist()])


def test_window_longer_than_the_clip_mirrors_repeatedly():
    x = torch.tensor([0.0, 2.0, 1.0], dtype=torch.float64)[:, None]
    y, applied = bilateral.temporal_bilateral(x, kernel=9, sigma_s=2.0, sigma_r=1.5)
    assert applied
    assert y[:, 0].tolist() == pytest.approx(_temporal_reference([0.0, 2.0, 1.0], 9, 2.0, 1.5), abs=1e-12)


def test_constant_sequence_is_a_fixed_point():
    x = torch.randn(1, 7, 5, generator=torch.Generator().manual_seed(0)).expand(9, 7, 5).contiguous()
    y, applied = bilateral.temporal_bilateral(x)
    assert applied and torch.allclose(y, x, rtol=1e-6, atol=0)


def test_step_edge_is_kept_with_small_sigma_r_and_blurred_with_large():
    x = torch.tensor([0.0] * 4 + [1.0] * 4)[:, None, None].repeat(1, 3, 2)
    sharp, _ = bilateral.temporal_bilateral(x, sigma_r=0.05)
    blurred, _ = bilateral.temporal_bilateral(x, sigma_r=100.0)
    print(f"edge: max change sigma_r=0.05 {(sharp - x).abs().max().item():.1e}, "
          f"sigma_r=100 {(blurred - x).abs().max().item():.3f}")
    assert (sharp - x).abs().max() < 1e-6
    assert (blurred - x).abs().max() > 0.2


def test_white_noise_variance_shrinks_by_sum_of_squared_weights():
    w = torch.exp(-torch.arange(-2.0, 3.0) ** 2 / 2)
    predicted = ((w / w.sum()) ** 2).sum().item()
    x = torch.randn(40, 8192, generator=torch.Generator().manual_seed(1))
    y, _ = bilateral.temporal_bilateral(x, kernel=5, sigma_s=1.0, sigma_r=1e4)
    measured = (y[2:-2].var() / x[2:-2].var()).item()  # interior frames: no mirrored samples
    print(f"variance factor measured {measured:.4f}, predicted {predicted:.4f}")
    assert predicted == pytest.approx(0.287, abs=0.001)
    assert abs(measured / predicted - 1) < 0.10


def test_fewer_than_three_frames_is_a_no_op():
    for frames in (1, 2):
        x = torch.randn(frames, 16, 4)
        y, applied = bilateral.temporal_bilateral(x)
        assert y is x and applied is False


def test_relative_sigma_r_follows_the_feature_scale():
    x = torch.randn(6, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    rel, _ = bilateral.temporal_bilateral(x, sigma_r=0.5, relative_sigma_r=True)
    rel_big, _ = bilateral.temporal_bilateral(1000 * x, sigma_r=0.5, relative_sigma_r=True)
    abs_big, _ = bilateral.temporal_bilateral(1000 * x, sigma_r=0.5)
    assert torch.allclose(rel_big, 1000 * rel, rtol=1e-10)
    assert not torch.allclose(abs_big, 1000 * rel, rtol=1e-3)
    expected = _temporal_reference(x[:, 0].tolist(), 5, 1.0, 0.5 * x.std().item())
    assert rel[:, 0].tolist() == pytest.approx(expected, abs=1e-12)


def test_half_precision_keeps_dtype():
    x = torch.randn(5, 64, 8, generator=torch.Generator().manual_seed(3))
    y16, _ = bilateral.temporal_bilateral(x.half())
    y32, _ = bilateral.temporal_bilateral(x)
    assert y16.dtype == torch.float16 and (y16.float() - y32).abs().max() < 1e-2


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError):
        bilateral.temporal_bilateral(torch.zeros(5, 2), kernel=4)
    with pytest.raises(ValueError):
        bilateral.temporal_bilateral(torch.zeros(5, 2), sigma_r=0.0)
    with pytest.raises(ValueError):
        bilateral.spatial_bilateral(torch.zeros(1, 1, 8, 8), 5, 0.0, 1.0)


@pytest.mark.parametrize("diameter,sigma_color,sigma_space", [(9, 75.0, 75.0), (5, 20.0, 2.0), (0, 30.0, 2.5)])
def test_spatial_matches_opencv_on_a_real_frame(clips, diameter, sigma_color, sigma_space):
    """Each 8-bit plane of the first carphone frame against cv2.bilateralFilter.

    OpenCV quantises its float result to 8 bits by rounding, except on its IPP fast path (seen for
    d = 5 here), which truncates: our rounded output then differs by 1 on about half the pixels.
    Before quantisation every pixel must lie within one grey level of OpenCV's.
    """
    capture = cv2.VideoCapture(clips["carphone_pristine.mp4"])
    ok, frame = capture.read()
    capture.release()
    assert ok, "could not decode the clip"
    channels = [np.ascontiguousarray(frame[:, :, c]) for c in range(3)]  # 8-bit B, G, R planes
    expected = np.stack([cv2.bilateralFilter(c, diameter, sigma_color, sigma_space) for c in channels])
    x = torch.from_numpy(np.stack(channels)).double()[None]  # [1, 3, H, W]
    y = bilateral.spatial_bilateral(x, diameter, sigma_color, sigma_space)
    ours = y[0].round().clamp(0, 255).numpy().astype(np.uint8)
    diff = np.abs(ours.astype(int) - expected.astype(int))
    changed = np.abs(expected.astype(int) - np.stack(channels).astype(int)).mean()
    unquantised = np.abs(y[0].numpy() - expected).max()
    print(f"d={diameter} sc={sigma_color} ss={sigma_space}: mean |ours - cv2| {diff.mean():.4f}, "
          f"max {diff.max()}, max before rounding {unquantised:.4f}, mean change made by the filter {changed:.3f}")
    assert diff.mean() < 1.0
    assert unquantised < 1.001
    assert changed > 1.0  # the comparison is not between two near-identities


def test_spatial_constant_image_and_device_dtype():
    x = torch.full((2, 3, 10, 12), 0.7, dtype=torch.float32)
    y = bilateral.spatial_bilateral(x, 5, 0.1, 1.0)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert torch.allclose(y, x, atol=1e-6)
