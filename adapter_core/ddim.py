"""Deterministic DDIM sampling and inversion in sigma space (method.md §2).

Convention (ComfyUI / k-diffusion): a noisy latent is x = x0 + σ·ε, and a denoiser
``model(x, sigma_batch, **extra_args)`` returns its estimate of x0; the noise estimate is
eps = (x − denoised)/σ. A VP model with cumulative alphas ᾱ_t (SD1.5) has σ_t² = (1 − ᾱ_t)/ᾱ_t and
its own latent is z = sqrt(ᾱ)·x = x / sqrt(1 + σ²).

DDIM with η = 0 is exactly an Euler step in σ: dividing z_{t'} = sqrt(ᾱ_{t'})·x̂0 + sqrt(1 − ᾱ_{t'})·ε̂
by sqrt(ᾱ_{t'}) gives x_{t'} = x̂0 + σ_{t'}·ε̂ = x_t + (σ_{t'} − σ_t)·ε̂, with x̂0 = x_t − σ_t·ε̂. The samplers take the host's model wrapper and have the signature that
``comfy.samplers.KSAMPLER`` calls; options arrive as keywords (KSAMPLER's extra_options).
"""
import torch


def scaled_linear_sigmas(beta_start=0.00085, beta_end=0.012, timesteps=1000, dtype=torch.float64, device=None):
    """Training sigmas of the "scaled linear" beta schedule (SD1.x defaults): [timesteps], ascending.

    β_t = (linspace(sqrt(beta_start), sqrt(beta_end)))², ᾱ_t = Π(1 − β), σ_t = sqrt((1 − ᾱ_t)/ᾱ_t);
    σ_0 ≈ 0.0292, σ_999 ≈ 14.615 for SD1.5. Use the model's own sigmas when a model is at hand.
    """
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps, dtype=torch.float64, device=device) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt().to(dtype)


# The most DDIM steps every spacing can take on a 1000-step model: "leading" steps start at timestep
# 1 and stop one short of the schedule's end.
MAX_STEPS = 999


def schedule(model_sigmas, steps, spacing="leading"):
    """DDIM sampling sigmas: `steps` uniformly spaced training timesteps, descending, then 0.

    model_sigmas: [N] the model's ascending training sigmas (N = 1000 for SD1.5).
    steps: 1..N ("leading": 1..N−1).
    spacing: "leading" — timesteps 1 + i·(N // steps), i < steps, the ComfyUI ddim_uniform /
        diffusers SD1.5 ("leading", steps_offset 1) schedule: 981, 961, …, 1 for 50 steps; it equals
        ComfyUI's ddim_uniform whenever steps divides N (otherwise ComfyUI takes extra steps).
        "trailing" — round(N − i·N/steps) − 1: 999, 979, …, 19 for 50 steps (reaches the top σ).
    Returns [steps + 1] sigmas on model_sigmas' device and dtype, the last one 0.
    """
    n = model_sigmas.shape[0]
    if not 1 <= steps <= n - (spacing == "leading"):
        raise ValueError(f"steps: {steps} does not fit this model's {n}-step schedule with {spacing!r} spacing; use "
                         f"1 to {n - (spacing == 'leading')} steps")
    i = torch.arange(steps, device=model_sigmas.device)
    if spacing == "leading":
        timesteps = (1 + i * (n // steps)).flip(0)
    elif spacing == "trailing":
        timesteps = torch.round(n - i.double() * (n / steps)).long() - 1
    else:
        raise ValueError(f"spacing must be 'leading' or 'trailing', got {spacing!r}")
    return torch.cat([model_sigmas[timesteps], model_sigmas.new_zeros(1)])


def timesteps_for(model_sigmas, sigmas):
    """Integer training timesteps of `sigmas`: nearest model sigma in log σ (as ComfyUI's
    ModelSamplingDiscrete.timestep). σ = 0 (clean data, ᾱ = 1) maps to −1, DDIM's "before step 0".

    model_sigmas: [N] ascending; sigmas: [K] any order. Returns a long tensor [K] on
    model_sigmas' device.
    """
    sigmas = sigmas.to(model_sigmas)
    clean = sigmas <= 0
    log_sigmas = torch.where(clean, model_sigmas[0], sigmas).log()
    nearest = (log_sigmas[:, None] - model_sigmas.log()[None, :]).abs().argmin(dim=1)
    return torch.where(clean, -1, nearest)


def _record(trajectory, x):
    if trajectory is not None:
        trajectory.append(x.clone())


@torch.no_grad()
def sample_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, trajectory=None):
    """Deterministic DDIM (η = 0) from sigmas[0] down to sigmas[-1]: x ← x + (σ_{i+1} − σ_i)·eps(x, σ_i).

    model: the host's denoiser, model(x, sigma * s_in, **extra_args) -> denoised x0, s_in = ones([B]).
    x: [B, ...] latent at sigmas[0] (x0 + σ·ε); sigmas: [K+1] descending, all > 0 but the last.
    callback: called each step with {"x", "i", "sigma", "sigma_hat", "denoised"} like k-diffusion.
    disable: accepted for the k-diffusion signature (progress display is the host's business).
    trajectory: optional list; receives a clone of the latent at every sigma (K + 1 entries).
    Returns the latent at sigmas[-1].
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        _record(trajectory, x)
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + (sigmas[i + 1] - sigmas[i]) * (x - denoised) / sigmas[i]
    _record(trajectory, x)
    return x


@torch.no_grad()
def invert_ddim(model, x, sigmas, extra_args=None, callback=None, disable=None, trajectory=None,
                refine=0, sigma_data=1.0, latent_filter=None):
    """Deterministic DDIM inversion from sigmas[0] (usually 0: the clean latent) up to sigmas[-1].

    Standard DDIM inversion (as diffusers' DDIMInverseScheduler / null-text inversion): the noise is
    predicted at the DESTINATION timestep from the current VP latent z_i = x_i/sqrt(σ_i² + σ_d²),
        ε̂ = ε_θ(z_i, σ_{i+1}),   x_{i+1} = x_i + (σ_{i+1} − σ_i)·ε̂.
    Through the σ-space model wrapper (which divides its input by sqrt(σ² + σ_d²)) that is
    x̃ = x_i·sqrt((σ_{i+1}² + σ_d²)/(σ_i² + σ_d²)), ε̂ = (x̃ − model(x̃, σ_{i+1}))/σ_{i+1}. Using x_i
    itself at σ_{i+1} instead would undershoot the growth of x at high σ: on a Gaussian-data model
    its 50-step round trip error is ~7× larger. The round trip with `sample_ddim` has a first-order
    error (~1/steps); `refine` fixed-point iterations x_{i+1} ← x_i + (σ_{i+1} − σ_i)·eps(x_{i+1}, σ_{i+1})
    (one more model call each) solve for the point that the sampler's step maps back to x_i.

    model, extra_args, callback, disable: as in `sample_ddim` (callback's "sigma_hat" is the
        destination σ_{i+1}, where the model was evaluated).
    x: [B, ...] latent at sigmas[0]; sigmas: [K+1] ASCENDING (a flipped `schedule`, starting at 0).
    trajectory: optional list; receives a clone of the latent at every sigma (K + 1 entries,
        ascending; flip it for the sampler's order).
    refine: fixed-point iterations per step (0 = plain DDIM inversion).
    sigma_data: the model's σ_data (1.0 for SD1.x / ComfyUI's ModelSamplingDiscrete).
    latent_filter: optional callable x -> x applied after every step (e.g. a `spatial_bilateral`);
        the trajectory records the filtered latents.
    Returns the latent at sigmas[-1].
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    var_data = sigma_data * sigma_data
    for i in range(len(sigmas) - 1):
        _record(trajectory, x)
        sigma, dest = sigmas[i], sigmas[i + 1]
        probe = x * ((dest * dest + var_data) / (sigma * sigma + var_data)).sqrt()
        denoised = model(probe, dest * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": dest, "denoised": denoised})
        x_next = x + (dest - sigma) * (probe - denoised) / dest
        for _ in range(refine):
            x_next = x + (dest - sigma) * (x_next - model(x_next, dest * s_in, **extra_args)) / dest
        x = x_next if latent_filter is None else latent_filter(x_next)
    _record(trajectory, x)
    return x
