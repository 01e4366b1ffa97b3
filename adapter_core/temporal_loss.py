"""Temporal-consistency losses between the frames of a clip (method.md §1).

Features F_t are one tensor per frame, stacked on dim 0: ``[T, C, H, W]`` (a UNet activation or a
latent, channels on dim 1) or ``[T, N, C]`` (attention tokens, channels last). Sim is the cosine
similarity, taken either over the whole flattened frame (``reduce="frame"``) or over the channels
of each spatial position / token and then averaged over positions (``reduce="token"``).

Cosine uses smoothed norms n(v) = sqrt(‖v‖² + eps²): Sim(a, b) = <a, b> / (n(a) n(b)). With the
default ``EPS = 1e-8`` this differs from the exact cosine by a relative ~eps²/‖v‖² (invisible even
in float64 for norms above 1e-4) and stays smooth everywhere: an all-zero frame has Sim = 0 with a
finite gradient (of size ≤ 1/eps). Half-precision inputs are reduced in float32 (their sums of
squares overflow float16); the result then comes back in float32.
"""
import torch

EPS = 1e-8
FORMS = ("adjacent", "second_order", "cross_timestep")
REDUCES = ("frame", "token")


def _vectors(features, reduce):
    """[T, ...] features -> [T, P, D]: the P vectors of D channels whose cosines are averaged."""
    features = features.to(torch.promote_types(features.dtype, torch.float32))
    if reduce == "frame":
        return features.reshape(features.shape[0], 1, -1)
    if reduce != "token":
        raise ValueError(f"reduce must be one of {REDUCES}, got {reduce!r}")
    if features.dim() == 4:  # [T, C, H, W]: one token per spatial position, C channels
        return features.flatten(2).transpose(1, 2)
    if features.dim() == 3:  # [T, N, C]
        return features
    raise ValueError(f"reduce='token' needs [T, C, H, W] or [T, N, C] features, got {tuple(features.shape)}")


def cosine_similarity_adjacent(features, reduce="frame", eps=EPS):
    """Cosine similarity of each frame with the next one.

    features: [T, C, H, W] or [T, N, C] (any float dtype, any device), T >= 2.
    reduce: "frame" (cosine of the flattened frames) or "token" (cosine over channels per
        position/token, averaged over positions).
    eps: norm smoothing, see the module docstring.
    Returns [T-1]: Sim(F_t, F_{t+1}) for t = 0..T-2, unitless in [-1, 1], differentiable.
    """
    if features.shape[0] < 2:
        raise ValueError(f"need at least 2 frames, got {features.shape[0]}")
    v = _vectors(features, reduce)
    inv_norm = torch.rsqrt(v.square().sum(-1) + eps * eps)  # [T, P]
    dots = (v[:-1] * v[1:]).sum(-1)  # [T-1, P]
    return (dots * inv_norm[:-1] * inv_norm[1:]).mean(-1)


def temporal_loss(features, form="adjacent", reduce="frame", features_b=None, eps=EPS):
    """Temporal-consistency loss of a clip's features (a scalar tensor, unitless).

    features: [T, C, H, W] or [T, N, C] frames F_t.
    form:
      "adjacent"       L = 1/(T-1) Σ_t (1 − Sim(F_t, F_{t+1}))                 (T >= 2), in [0, 2];
      "second_order"   L = 1/(T-2) Σ_t (Sim(F_t, F_{t+1}) − Sim(F_{t-1}, F_t))²  (T >= 3), in [0, 4];
      "cross_timestep" features are the frames at noise level t1, features_b the same frames at t2
                       (same shape): L = 1/(T-1) Σ_t (Sim(F_t, F_{t+1}) − Sim(G_t, G_{t+1}))², in [0, 4].
    reduce, eps: as in `cosine_similarity_adjacent`.
    """
    sims = cosine_similarity_adjacent(features, reduce, eps)
    if form == "adjacent":
        return (1.0 - sims).mean()
    if form == "second_order":
        if sims.shape[0] < 2:
            raise ValueError(f"form='second_order' needs at least 3 frames, got {features.shape[0]}")
        return (sims[1:] - sims[:-1]).square().mean()
    if form == "cross_timestep":
        if features_b is None or features_b.shape != features.shape:
            raise ValueError("form='cross_timestep' needs features_b shaped like features "
                             f"{tuple(features.shape)}, got {None if features_b is None else tuple(features_b.shape)}")
        return (sims - cosine_similarity_adjacent(features_b, reduce, eps)).square().mean()
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")
