"""Smoothness of the temporal loss and safe gradient-descent steps (method.md §1, arXiv 2504.16016).

Everything here is about the losses of `temporal_loss`: a closed-form gradient of the cosine
similarity, a rigorous Lipschitz constant of ∇L for frames whose norms are at least m, the step
rules that follow from it, and an autograd estimator of the local Lipschitz constant at a point.
"""
import math

import numpy as np
import torch

from .temporal_loss import EPS, FORMS

# sup over unit x̂, ŷ of the spectral norm of ‖x‖²·∇²_xx Sim(x, y); reached at Sim = 1/√3
KAPPA = 2.0 / math.sqrt(3.0)


def similarity_grad(x, y, eps=EPS):
    """Closed-form gradient of Sim(x, y) = <x, y> / (n(x) n(y)) with respect to x.

    x, y: [B, ...] same shape; each row (flattened) is one vector. n(v) = sqrt(‖v‖² + eps²) as in
    `temporal_loss` (eps = 0 gives the exact cosine).
    Returns [B, ...] like x:  ∇_x Sim = y / (n(x) n(y)) − Sim · x / n(x)².
    With eps = 0 it is orthogonal to x and ‖∇_x Sim‖ = sqrt(1 − Sim²) / ‖x‖ ≤ 1/‖x‖.
    """
    xf, yf = x.flatten(1), y.flatten(1)
    nx2 = xf.square().sum(1, keepdim=True) + eps * eps
    ny2 = yf.square().sum(1, keepdim=True) + eps * eps
    inv = torch.rsqrt(nx2 * ny2)
    sim = (xf * yf).sum(1, keepdim=True) * inv
    return (yf * inv - sim * xf / nx2).view_as(x)


def _pair_hessian_norm(T):
    """‖N‖ for the T×T matrix of Hessian block-norm bounds of Σ_t Sim(F_t, F_{t+1}), in units 1/m²."""
    n = np.diag(np.full(T, 2.0 * KAPPA)) + np.diag(np.ones(T - 1), 1) + np.diag(np.ones(T - 1), -1)
    n[0, 0] = n[-1, -1] = KAPPA
    return float(np.linalg.eigvalsh(n).max())


def _hessian_and_gradient_constants(T, form):
    """(h, g): ‖∇²L‖ ≤ h/m² and ‖∇L‖ ≤ g/m for every frame norm ≥ m (one vector per frame)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    n = _pair_hessian_norm(T)
    b2 = 2.0 + 2.0 * math.cos(math.pi / T)  # ‖Jacobian of the T-1 similarities‖² · m²
    if form == "adjacent":
        return n / (T - 1), math.sqrt(4 * T - 6) / (T - 1)
    if form == "second_order":
        if T < 3:
            raise ValueError(f"form='second_order' needs T >= 3, got {T}")
        d2 = 2.0 + 2.0 * math.cos(math.pi / (T - 1))  # ‖first-difference matrix‖²
        c_max = 4.0 if T >= 4 else 2.0
        return 2.0 / (T - 2) * (d2 * b2 + c_max * n), 4.0 * math.sqrt(d2 * b2 / (T - 2))
    return 2.0 / (T - 1) * (2.0 * b2 + 2.0 * n), 4.0 * math.sqrt(2.0 * b2 / (T - 1))


def lipschitz_bound(m, M=None, T=2, form="adjacent", tokens=1):
    """Rigorous Lipschitz constant of ∇L for `temporal_loss(F, form, ...)`, in units 1/norm².

    m: lower bound on the norm of every compared vector (a frame for reduce="frame", a token's
       channel vector for reduce="token"); must be > 0.
    M: upper bound on those norms, accepted to state the domain [m, M]. The bound does not depend
       on it: Sim is invariant to the scale of each vector, so large norms only flatten L.
    T: number of frames; form: "adjacent", "second_order" or "cross_timestep" (the bound then
       covers the gradient with respect to both feature sets, so also either one alone).
    tokens: P vectors compared per frame; 1 is reduce="frame", H·W (or N) is reduce="token".
    Returns Λ with ‖∇L(x) − ∇L(y)‖ ≤ Λ ‖x − y‖ for all x, y whose vectors have norms ≥ m.
    eps = 0 is assumed; the default EPS changes the constants by a relative ~EPS²/m².

    Derivation (frame reduce; x̂ = x/‖x‖, s = Sim(x, y), w = ŷ − s x̂, ‖w‖ = sqrt(1 − s²)):
    1. ∇_x Sim = w/‖x‖, so ‖∇_x Sim‖ ≤ 1/m.
    2. ∇²_xx Sim = −(s(I − x̂x̂ᵀ) + w x̂ᵀ + x̂ wᵀ)/‖x‖²; on span{x̂, w} it is [[0, c], [c, s]]/‖x‖²
       (c = ‖w‖), elsewhere s/‖x‖², so its norm is ≤ max_s (|s| + sqrt(4 − 3s²))/2 / m² = KAPPA/m²
       (KAPPA = 2/√3). ∇²_xy Sim = (I − x̂x̂ᵀ)(I − ŷŷᵀ)/(‖x‖‖y‖) has norm ≤ 1/m².
    3. Σ_t Sim(F_t, F_{t+1}): the norm of a block matrix is at most the norm of the matrix of its
       block norms, here the tridiagonal N (diagonal 2·KAPPA, KAPPA at both ends, off-diagonal 1).
       adjacent: ‖∇²L‖ ≤ ‖N‖/((T−1) m²) = h/m²; per frame ‖∇_{F_t} L‖ ≤ 2/((T−1) m) (1/((T−1)m) at
       the ends), so ‖∇L‖ ≤ sqrt(4T − 6)/((T−1) m) = g/m.
       second_order: L = ‖Δs‖²/(T−2) with s the T−1 similarities and Δ the first difference;
       ∇²L = 2/(T−2)·(JᵀΔᵀΔJ + Σ_t c_t ∇²s_t), c = ΔᵀΔs, |c_t| ≤ 4 (2 when T = 3), ‖J‖² ≤ b²/m²
       with b² = 2 + 2cos(π/T), ‖Δ‖² = 2 + 2cos(π/(T−1)) = d²; so h = 2/(T−2)·(d²b² + 4‖N‖) and
       ∇L = 2/(T−2)·JᵀΔᵀΔs with ‖Δs‖ ≤ 2 sqrt(T−2) gives g = 4 d b / sqrt(T−2).
       cross_timestep: e = s(F) − s(G), L = ‖e‖²/(T−1), |e_t| ≤ 2, over both feature sets:
       h = 2/(T−1)·(2b² + 2‖N‖), g = 4 sqrt(2) b / sqrt(T−1).
    4. The set {all norms ≥ m} is not convex, so the Hessian bound is used only on short segments:
       if ‖x − y‖ = d ≤ δ < 2m, every point of the segment has vector norms ≥ sqrt(m² − δ²/4)
       (closest point of a chord to the origin), so the ratio is ≤ h/(m² − δ²/4); if d > δ the
       ratio is ≤ (‖∇L(x)‖ + ‖∇L(y)‖)/δ ≤ 2g/(m δ). Equalising the two over δ gives
       Λ = (h + sqrt(h² + 4g²)) / (2 m²).
    Token reduce (P vectors per frame, averaged): adjacent L is the mean of P independent frame
    losses, one per token, so Λ_token = Λ_frame/P. For the other forms the similarity average
    scales the Jacobian by 1/sqrt(P) and the curvature by 1/P: h → h/P, g → g/sqrt(P) in step 4.
    Every form is of order 1/m².
    """
    if not 0 < m <= (math.inf if M is None else M):
        raise ValueError(f"need 0 < m <= M, got m={m}, M={M}")
    if T < 2 or tokens < 1:
        raise ValueError(f"need T >= 2 frames and tokens >= 1, got T={T}, tokens={tokens}")
    h, g = _hessian_and_gradient_constants(T, form)
    if form == "adjacent":
        return _short_and_long_segments(h, g, m) / tokens
    return _short_and_long_segments(h / tokens, g / math.sqrt(tokens), m)


def _short_and_long_segments(h, g, m):
    """Step 4 of `lipschitz_bound`: Λ = (h + sqrt(h² + 4g²)) / (2m²)."""
    return (h + math.sqrt(h * h + 4.0 * g * g)) / (2.0 * m * m)


def safe_step(L):
    """The gradient-descent step 1/L for a loss whose gradient is L-Lipschitz (L > 0)."""
    if not L > 0:
        raise ValueError(f"the Lipschitz constant must be > 0, got {L}")
    return 1.0 / L


def valid_step(eta, L):
    """True when 0 < eta < 2/L: plain gradient descent then never increases an L-smooth loss.

    (Descent lemma: f(x − η∇f) ≤ f(x) − η(1 − Lη/2)‖∇f‖².) For the temporal losses the iterates
    stay in the domain of `lipschitz_bound`: ∇L is orthogonal to every compared vector (Sim is
    scale invariant), so a step never shrinks a vector's norm below m.
    """
    return 0.0 < eta < 2.0 / L


def estimate_lipschitz(loss_fn, x, iters=20, generator=None):
    """Local Lipschitz constant of ∇loss_fn at x: the Hessian's spectral norm by power iteration.

    loss_fn: callable tensor -> scalar tensor, twice differentiable (e.g. a `temporal_loss`).
    x: the point, any shape/device/dtype (float64 for precise answers); not modified.
    iters: Hessian-vector products (each one double-backward through loss_fn).
    generator: optional torch.Generator for the random start vector (on x's device).
    Returns a float ≥ 0 (units 1/x²), a lower estimate of max |eigenvalue| that converges to it;
    for a global constant use `lipschitz_bound`.
    """
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(x), x, create_graph=True)
    v = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    v = v / v.norm()
    estimate = 0.0
    for _ in range(iters):
        (hv,) = torch.autograd.grad(grad, x, grad_outputs=v, retain_graph=True)
        estimate = float(hv.norm())
        if estimate == 0.0:
            break
        v = hv / estimate
    return estimate
