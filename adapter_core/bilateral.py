"""Edge-preserving bilateral filters (method.md §2): along frames, and 2-D per channel.

Weights w_k = exp(−‖k‖²/2σ_s²) · exp(−(x_{n+k} − x_n)²/2σ_r²), normalised over the window; the
centre always has weight 1, so the normaliser is ≥ 1. Borders are mirrored without repeating the
edge sample (reflect-101: …, x2, x1, x0, x1, x2, …; torch's "reflect", OpenCV's BORDER_REFLECT_101),
for any window size. Both filters loop over window offsets only: each offset is a slice of one
padded copy, so memory is about 4× the input plus the padding, and time O(window × input).
Half-precision inputs are filtered in float32 and returned in their own dtype.
"""
import torch


def _reflect_pad(x, dim, radius):
    """x padded by `radius` reflect-101 samples on both ends of `dim` (any radius, size ≥ 1)."""
    n = x.shape[dim]
    index = torch.cat([torch.arange(-radius, 0, device=x.device), torch.arange(n, n + radius, device=x.device)])
    period = max(2 * (n - 1), 1)
    index = index.remainder(period)
    index = torch.where(index < n, index, period - index)
    return torch.cat([x.index_select(dim, index[:radius]), x, x.index_select(dim, index[radius:])], dim)


def _normalised_sum(x, neighbours, sigma_r):
    """Σ_k w_k x_{n+k} / Σ_k w_k, elementwise, the centre included with weight 1.

    neighbours: (−‖k‖²/2σ_s², x shifted by k) for every window offset k but the centre.
    sigma_r: range σ (a float).
    """
    scale = -0.5 / (sigma_r * sigma_r)
    num = x.clone()
    den = torch.ones_like(x)
    w = torch.empty_like(x)
    for log_space_weight, nb in neighbours:
        torch.sub(nb, x, out=w)
        torch.addcmul(x.new_tensor(log_space_weight), w, w, value=scale, out=w).exp_()
        num.addcmul_(w, nb)
        den.add_(w)
    return num.div_(den)


def temporal_bilateral(x, kernel=5, sigma_s=1.0, sigma_r=1.0, relative_sigma_r=False):
    """Bilateral filter along dim 0 (frames), independently for every other element.

    x: [T, ...] (e.g. an attn1 output [T, tokens, channels]), float, any device.
    kernel: odd window length in frames; sigma_s: spatial σ in frames.
    sigma_r: range σ in feature units, or in units of x's standard deviation (over all elements)
        when relative_sigma_r is True.
    Returns (y, applied): y like x; with fewer than 3 frames nothing is done and y is x itself,
    applied False (the caller reports it).
    """
    if kernel < 1 or kernel % 2 == 0 or not (sigma_s > 0 and sigma_r > 0):
        raise ValueError(f"need an odd kernel >= 1 and sigmas > 0, got {kernel}, {sigma_s}, {sigma_r}")
    if x.shape[0] < 3:
        return x, False
    work = x.to(torch.promote_types(x.dtype, torch.float32)).contiguous()  # strided inputs are slow
    if relative_sigma_r:
        sigma_r = sigma_r * max(work.std().item(), torch.finfo(work.dtype).eps)
    radius, frames = kernel // 2, x.shape[0]
    padded = _reflect_pad(work, 0, radius)
    neighbours = ((-k * k / (2.0 * sigma_s * sigma_s), padded[radius + k: radius + k + frames])
                  for k in range(-radius, radius + 1) if k != 0)
    return _normalised_sum(work, neighbours, sigma_r).to(x.dtype), True


def spatial_bilateral(x, diameter, sigma_color, sigma_space):
    """2-D bilateral filter of each channel separately, with OpenCV's definition.

    x: [B, C, H, W] float, any device (for an 8-bit image pass its values 0..255 as floats).
    diameter: window diameter in pixels; the window is the disc of radius diameter//2 (if
        diameter <= 0, radius round(1.5·sigma_space)); radius at least 1, as cv2.bilateralFilter.
    sigma_color: range σ in x's units (on the absolute difference of the channel values).
    sigma_space: σ in pixels of the Gaussian on the Euclidean offset.
    Returns y like x. For one channel this is cv2.bilateralFilter(img, diameter, sigma_color,
    sigma_space) with its default BORDER_REFLECT_101 (before OpenCV's rounding to 8 bits); for
    colour images OpenCV instead sums |Δ| over the channels in one shared weight.
    """
    if not (sigma_color > 0 and sigma_space > 0):
        raise ValueError(f"need sigma_color > 0 and sigma_space > 0, got {sigma_color}, {sigma_space}")
    radius = max(diameter // 2 if diameter > 0 else round(1.5 * sigma_space), 1)
    work = x.to(torch.promote_types(x.dtype, torch.float32)).contiguous()  # strided inputs are slow
    height, width = x.shape[-2:]
    padded = _reflect_pad(_reflect_pad(work, 2, radius), 3, radius)
    neighbours = ((-(i * i + j * j) / (2.0 * sigma_space * sigma_space),
                   padded[:, :, radius + i: radius + i + height, radius + j: radius + j + width])
                  for i in range(-radius, radius + 1) for j in range(-radius, radius + 1)
                  if 0 < i * i + j * j <= radius * radius)
    return _normalised_sum(work, neighbours, sigma_color).to(x.dtype)
