"""temporal_loss: values, gradients against central finite differences, numerical safety."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from temporal_adapter.adapter_core import temporal_loss as tl

SHAPES = {"tchw": (5, 3, 2, 3), "tnc": (5, 4, 3)}


def _loss_fn(form, reduce, features_b):
    return lambda f: tl.temporal_loss(f, form=form, reduce=reduce, features_b=features_b)


def _central_difference(fn, x, h=1e-6):
    grad = torch.zeros_like(x)
    flat, out = x.view(-1), grad.view(-1)
    for i in range(flat.numel()):
        keep = flat[i].item()
        flat[i] = keep + h
        up = fn(x).item()
        flat[i] = keep - h
        down = fn(x).item()
        flat[i] = keep
        out[i] = (up - down) / (2 * h)
    return grad


@pytest.mark.parametrize("form,reduce,shape", list(itertools.product(tl.FORMS, tl.REDUCES, SHAPES)))
def test_gradient_matches_central_differences(form, reduce, shape):
    g = torch.Generator().manual_seed(sum(map(ord, form + reduce + shape)))
    x = torch.randn(SHAPES[shape], generator=g, dtype=torch.float64)
    features_b = torch.randn(SHAPES[shape], generator=g, dtype=torch.float64) if form == "cross_timestep" else None
    fn = _loss_fn(form, reduce, features_b)
    x_ad = x.clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(fn(x_ad), x_ad)
    numeric = _central_difference(fn, x.clone())
    rel = ((autograd - numeric).norm() / autograd.norm()).item()
    print(f"{form}/{reduce}/{shape}: |grad|={autograd.norm().item():.3e} rel err vs FD={rel:.2e}")
    assert autograd.norm() > 1e-3
    assert (autograd != 0).float().mean() > 0.9  # every frame takes part
    assert rel < 1e-5


def test_reference_bug_cosine_over_size_one_dim_has_zero_gradient():
    """The reference code took F.cosine_similarity over a dim of size 1: sign(a)·sign(b), flat."""
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    buggy = x.clone().requires_grad_(True)
    (1 - F.cosine_similarity(buggy[:-1], buggy[1:], dim=1)).mean().backward()
    ours = x.clone().requires_grad_(True)
    tl.temporal_loss(ours, reduce="frame").backward()
    print(f"reference |grad|={buggy.grad.norm().item():.3e}, ours |grad|={ours.grad.norm().item():.3e}")
    assert buggy.grad.abs().max() < 1e-12  # zero up to rounding
    assert ours.grad.norm() > 1e-3


def test_values_of_known_configurations():
    a = torch.tensor([1.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.5, math.sqrt(3) / 2], dtype=torch.float64)  # 60 degrees from a
    assert tl.temporal_loss(torch.stack([a, b])).item() == pytest.approx(0.5, abs=1e-12)
    assert tl.temporal_loss(torch.stack([a, a, a])).item() == pytest.approx(0.0, abs=1e-12)
    assert tl.temporal_loss(torch.stack([a, -a, a])).item() == pytest.approx(2.0, abs=1e-12)
    # sims 1, 0.5, 0.5 -> second order ((0.5-1)^2 + 0)/2; cross against all-equal frames (sims 1)
    frames = torch.stack([a, a, b, a])
    sims = tl.cosine_similarity_adjacent(frames)
    assert sims.tolist() == pytest.approx([1.0, 0.5, 0.5], abs=1e-12)
    assert tl.temporal_loss(frames, "second_order").item() == pytest.approx(0.125, abs=1e-12)
    same = torch.stack([a, a, a, a])
    assert tl.temporal_loss(frames, "cross_timestep", features_b=same).item() == pytest.approx(
        (0 + 0.25 + 0.25) / 3, abs=1e-12)


def test_frame_and_token_reduce_against_torch_cosine():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 5, 2, dtype=torch.float64, generator=g)  # [T, C, H, W]
    frame = F.cosine_similarity(x[:-1].flatten(1), x[1:].flatten(1), dim=1)
    token = F.cosine_similarity(x[:-1], x[1:], dim=1).flatten(1).mean(1)  # over channels
    assert torch.allclose(tl.cosine_similarity_adjacent(x, "frame"), frame, atol=1e-12)
    assert torch.allclose(tl.cosine_similarity_adjacent(x, "token"), token, atol=1e-12)
    tokens = x.flatten(2).transpose(1, 2)  # the same features as [T, N, C]
    assert torch.allclose(tl.cosine_similarity_adjacent(tokens, "token"), token, atol=1e-12)
    assert not torch.allclose(frame, token, atol=1e-3)  # the two reduces are different measures


@pytest.mark.parametrize("form,reduce", list(itertools.product(tl.FORMS, tl.REDUCES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_zero_frame_is_safe(form, reduce, dtype):
    x = torch.randn(4, 3, 2, 2, dtype=dtype, generator=torch.Generator().manual_seed(2))
    x[1] = 0
    x.requires_grad_(True)
    features_b = torch.randn_like(x) if form == "cross_timestep" else None
    loss = tl.temporal_loss(x, form, reduce, features_b=features_b)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert x.grad[3].abs().sum() > 0  # frames away from the zero one still learn


def test_half_precision_does_not_overflow():
    x = 30 * torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(3))  # ‖frame‖² ≈ 3.7e6
    exact = tl.temporal_loss(x.double())
    half = tl.temporal_loss(x.half())
    print(f"float16 loss {half.item():.6f} vs float64 {exact.item():.6f}")
    assert half.dtype == torch.float32 and torch.isfinite(half)
    assert abs(half.item() - exact.item()) < 1e-3


def test_invalid_arguments_are_rejected():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match="3 frames"):
        tl.temporal_loss(x, "second_order")
    with pytest.raises(ValueError, match="features_b"):
        tl.temporal_loss(x, "cross_timestep")
    with pytest.raises(ValueError, match="form"):
        tl.temporal_loss(x, "quadratic")
    with pytest.raises(ValueError, match="reduce"):
        tl.temporal_loss(x, reduce="pixel")
    with pytest.raises(ValueError, match="token"):
        tl.temporal_loss(torch.randn(3, 4), reduce="token")
    with pytest.raises(ValueError, match="2 frames"):
        tl.cosine_similarity_adjacent(torch.randn(1, 4))
