"""theory: closed-form gradient, the Lipschitz bound on ∇L, step rules, the local estimator."""
import math

import numpy as np
import pytest
import torch

from temporal_adapter.adapter_core import temporal_loss as tl
from temporal_adapter.adapter_core import theory

M_LO, M_HI = 1.0, 1.5  # every compared vector has its norm in [m, M]
DIM = 4  # channels per vector (small: the Hessians below are computed densely)


def _vectors_with_norms(shape, g, lo=M_LO, hi=M_HI):
    """Random vectors along the last dim with norms uniform in [lo, hi]."""
    v = torch.randn(shape, generator=g, dtype=torch.float64)
    norms = lo + (hi - lo) * torch.rand(shape[:-1] + (1,), generator=g, dtype=torch.float64)
    return v / v.norm(dim=-1, keepdim=True) * norms


def _problem(form, reduce, T):
    """(loss of a stacked variable z, z's frame count). cross_timestep differentiates both sets."""
    if form == "cross_timestep":
        return (lambda z: tl.temporal_loss(z[:T], form, reduce, features_b=z[T:])), 2 * T
    return (lambda z: tl.temporal_loss(z, form, reduce)), T


def _grad(fn, z):
    z = z.detach().requires_grad_(True)
    return torch.autograd.grad(fn(z), z)[0]


def test_similarity_grad_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 5, dtype=torch.float64, generator=g)
    y = torch.randn(6, 3, 5, dtype=torch.float64, generator=g)
    closed = theory.similarity_grad(x, y)
    xr = x.clone().requires_grad_(True)
    sims = torch.stack([tl.cosine_similarity_adjacent(torch.stack([a, b]))[0] for a, b in zip(xr, y)])
    (auto,) = torch.autograd.grad(sims.sum(), xr)
    assert torch.allclose(closed, auto, rtol=1e-10, atol=1e-14)
    exact = theory.similarity_grad(x, y, eps=0.0).flatten(1)
    xf, yf = x.flatten(1), y.flatten(1)
    s = (xf * yf).sum(1) / (xf.norm(dim=1) * yf.norm(dim=1))
    assert torch.allclose(exact.norm(dim=1), (1 - s * s).sqrt() / xf.norm(dim=1), rtol=1e-12)
    assert (exact * xf).sum(1).abs().max() < 1e-12  # orthogonal to x (scale invariance)


@pytest.mark.parametrize("form", tl.FORMS)
@pytest.mark.parametrize("reduce", tl.REDUCES)
def test_lipschitz_bound_holds_on_1000_pairs(form, reduce):
    """‖∇L(x) − ∇L(y)‖ / ‖x − y‖ ≤ lipschitz_bound for 1,000 pairs with all norms in [m, M].

    Pairs: independent draws; close pairs (y = x + δu, δ log-uniform in [1e-4, 1], norms put back
    into [m, M]); and, every twentieth, a step of 1e-5 along the top Hessian eigenvector at a point
    with all norms = m (the ratio is then the local Lipschitz constant: how tight the bound is).
    """
    g = torch.Generator().manual_seed(len(form) * 7 + len(reduce))
    tokens = 1 if reduce == "frame" else 3
    worst = 0.0
    for draw in range(1000):
        T = int(torch.randint(3 if form == "second_order" else 2, 6, (1,), generator=g))
        fn, frames = _problem(form, reduce, T)
        shape = (frames, DIM) if reduce == "frame" else (frames, tokens, DIM)
        bound = theory.lipschitz_bound(M_LO, M_HI, T, form, tokens=tokens)
        kind = draw % 20
        if kind == 0:
            x = _vectors_with_norms(shape, g, M_LO, M_LO)
            hessian = torch.autograd.functional.hessian(fn, x).reshape(x.numel(), x.numel())
            values, vectors = np.linalg.eigh(hessian.numpy())  # numpy: torch's eigh stalls on a busy CPU
            top_vector = torch.from_numpy(vectors[:, np.abs(values).argmax()]).reshape(shape)
            y = x + 1e-5 * top_vector
        elif kind < 10:
            x, y = _vectors_with_norms(shape, g), _vectors_with_norms(shape, g)
        else:
            x = _vectors_with_norms(shape, g)
            y = x + 10 ** (-4 * float(torch.rand(1, generator=g))) * torch.randn(shape, generator=g, dtype=x.dtype)
            y = y * (y.norm(dim=-1, keepdim=True).clamp(M_LO, M_HI) / y.norm(dim=-1, keepdim=True))
        ratio = ((_grad(fn, x) - _grad(fn, y)).norm() / (x - y).norm()).item()
        worst = max(worst, ratio / bound)
    print(f"{form}/{reduce}: max measured ratio / bound = {worst:.3f} over 1000 pairs")
    assert worst <= 1.0
    assert worst > 0.05  # the measurement saw real curvature


def test_bound_scaling_and_arguments():
    base = theory.lipschitz_bound(1.0, 3.0, T=8)
    assert theory.lipschitz_bound(2.0, 3.0, T=8) == pytest.approx(base / 4)  # order 1/m²
    assert theory.lipschitz_bound(1.0, None, T=8) == base  # M does not enter the bound
    assert theory.lipschitz_bound(1.0, T=8, tokens=16) == pytest.approx(base / 16)
    assert theory.lipschitz_bound(1.0, T=8, form="second_order", tokens=4) < theory.lipschitz_bound(
        1.0, T=8, form="second_order")
    for bad in (dict(m=0.0), dict(m=2.0, M=1.0), dict(m=1.0, T=1), dict(m=1.0, form="cubic"),
                dict(m=1.0, T=2, form="second_order")):
        with pytest.raises(ValueError):
            theory.lipschitz_bound(**bad)


def test_step_rules():
    assert theory.safe_step(4.0) == 0.25
    assert theory.valid_step(0.49, 4.0) and theory.valid_step(theory.safe_step(4.0), 4.0)
    assert not theory.valid_step(0.5, 4.0) and not theory.valid_step(0.0, 4.0)
    with pytest.raises(ValueError):
        theory.safe_step(0.0)


def _descent_runs(form, step_multiple, problems, seed):
    """Plain GD, 200 steps, η = step_multiple/L on near-aligned clips (frames of one scene).

    No projection is needed: ∇L is orthogonal to every frame, so norms never drop below m
    (checked). Returns (largest loss increase in one step, problems with an increase > 1e-12).
    """
    g = torch.Generator().manual_seed(seed)
    largest, with_increase = -math.inf, 0
    for _ in range(problems):
        T = int(torch.randint(3 if form == "second_order" else 2, 7, (1,), generator=g))
        eta = step_multiple * theory.safe_step(theory.lipschitz_bound(M_LO, M_HI, T, form))
        base = torch.randn(1, 8, generator=g, dtype=torch.float64)
        spread = 0.02 + 0.3 * float(torch.rand(1, generator=g))
        x = base + spread * base.norm() * torch.randn(T, 8, generator=g, dtype=torch.float64) / math.sqrt(8)
        x = x / x.norm(dim=1, keepdim=True) * (M_LO + (M_HI - M_LO) * torch.rand(T, 1, generator=g, dtype=x.dtype))
        losses = []
        for _ in range(201):
            x.requires_grad_(True)
            loss = tl.temporal_loss(x, form)
            (grad,) = torch.autograd.grad(loss, x)
            losses.append(loss.item())
            x = (x - eta * grad).detach()
            assert x.norm(dim=1).min() >= M_LO
        steps = torch.tensor(losses).diff()
        largest = max(largest, steps.max().item())
        with_increase += bool((steps > 1e-12).any())
    return largest, with_increase


def test_gradient_descent_with_safe_step_never_increases_the_loss():
    largest, count = _descent_runs("adjacent", 1.0, problems=50, seed=0)
    print(f"adjacent, eta=1/L: largest one-step change {largest:.2e}, problems with an increase {count}/50")
    assert count == 0
    largest, count = _descent_runs("second_order", 1.0, problems=10, seed=1)
    print(f"second_order, eta=1/L: largest one-step change {largest:.2e}, problems with an increase {count}/10")
    assert count == 0


def test_five_times_the_safe_step_can_increase_the_loss():
    largest, count = _descent_runs("adjacent", 5.0, problems=50, seed=0)
    print(f"adjacent, eta=5/L: largest one-step increase {largest:.2e}, problems with an increase {count}/50")
    assert count >= 1 and largest > 1e-6


def test_estimate_lipschitz_on_a_known_quadratic_and_below_the_bound():
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    eigenvalues = torch.tensor([0.5, -3.0, 1.0, 2.0, 0.1, 2.5], dtype=torch.float64)
    a = q @ torch.diag(eigenvalues) @ q.T
    x = torch.randn(6, generator=g, dtype=torch.float64)
    estimate = theory.estimate_lipschitz(lambda v: 0.5 * v @ a @ v, x, iters=200, generator=g)
    print(f"quadratic: estimate {estimate:.6f}, true 3")
    assert estimate == pytest.approx(3.0, rel=1e-4)
    features = _vectors_with_norms((5, 6), g, M_LO, M_LO)
    before = features.clone()
    local = theory.estimate_lipschitz(tl.temporal_loss, features, iters=50, generator=g)
    bound = theory.lipschitz_bound(M_LO, M_LO, T=5)
    print(f"adjacent T=5 at norm m: local {local:.4f}, bound {bound:.4f}")
    assert 0.1 * bound < local <= bound
    assert torch.equal(features, before) and not features.requires_grad  # input untouched
