"""ddim: schedules, the k-diffusion sampler contract, and inversion/reconstruction on a model whose
ideal denoiser is known in closed form (Gaussian data)."""
import pytest
import torch

from temporal_adapter.adapter_core import ddim

MU, S = 0.5, 1.0  # data ~ N(MU, S²) per element (SD latents are roughly unit-variance)


def gaussian_denoiser(x, sigma, **extra):
    """Ideal x0 estimate for N(MU, S²) data: D(x, σ) = MU + S²/(S² + σ²)·(x − MU)."""
    sigma = sigma.view(-1, *([1] * (x.dim() - 1)))
    return MU + S * S / (S * S + sigma * sigma) * (x - MU)


def gaussian_eps_vp(z, alpha_cumprod):
    """The same ideal model as an ε-predictor on VP latents z = sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε:
    E[ε | z] = sqrt(1 − ᾱ)(z − sqrt(ᾱ)·MU) / (ᾱ·S² + 1 − ᾱ) (derived directly, not from D)."""
    a = alpha_cumprod
    return (1 - a) ** 0.5 * (z - a ** 0.5 * MU) / (a * S * S + 1 - a)


def sd15_alphas_cumprod():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


@pytest.fixture(scope="module")
def sigmas():
    return ddim.scaled_linear_sigmas()


def _clean_latents(seed=0):
    return MU + S * torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def comfy_ddim_uniform(model_sigmas, steps):
    """ComfyUI's ddim_scheduler (comfy/samplers.py), transcribed."""
    sigs, ss, x = [], max(len(model_sigmas) // steps, 1), 1
    while x < len(model_sigmas):
        sigs.append(float(model_sigmas[x]))
        x += ss
    return sigs[::-1] + [0.0]


def test_sd15_sigmas_and_alphas_cumprod_relation(sigmas):
    alphas_cumprod = sd15_alphas_cumprod()
    assert sigmas[0].item() == pytest.approx(0.0291672, abs=1e-6)
    assert sigmas[-1].item() == pytest.approx(14.6146, abs=1e-3)
    assert torch.allclose(sigmas ** 2, (1 - alphas_cumprod) / alphas_cumprod, rtol=1e-12)


@pytest.mark.parametrize("steps", [10, 20, 25, 50, 100, 250])
def test_leading_schedule_is_comfyui_ddim_uniform(sigmas, steps):
    ours = ddim.schedule(sigmas, steps)
    assert ours.shape == (steps + 1,) and ours[-1] == 0 and (ours.diff() < 0).all()
    assert ours.tolist() == pytest.approx(comfy_ddim_uniform(sigmas, steps), rel=1e-12)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_max_steps_fits_every_spacing_and_more_is_refused_by_name(sigmas, spacing):
    timesteps = ddim.timesteps_for(sigmas, ddim.schedule(sigmas, ddim.MAX_STEPS, spacing)[:-1])
    assert len(timesteps) == ddim.MAX_STEPS == len(set(timesteps.tolist()))
    assert timesteps.min() >= 0 and timesteps.max() <= 999
    most = {"leading": 999, "trailing": 1000}[spacing]
    with pytest.raises(ValueError, match=f"steps: {most + 1} does not fit this model's 1000-step schedule with "
                                         f"'{spacing}' spacing; use 1 to {most} steps"):
        ddim.schedule(sigmas, most + 1, spacing)


def test_timesteps_of_both_spacings(sigmas):
    leading = ddim.timesteps_for(sigmas, ddim.schedule(sigmas, 50))
    assert leading.tolist() == list(range(981, 0, -20)) + [-1]
    trailing = ddim.timesteps_for(sigmas, ddim.schedule(sigmas, 50, spacing="trailing"))
    assert trailing.tolist() == list(range(999, 0, -20)) + [-1]
    assert ddim.timesteps_for(sigmas, ddim.schedule(sigmas, 3, spacing="trailing")).tolist() == [999, 666, 332, -1]
    assert ddim.timesteps_for(sigmas, sigmas[[932, 941]].float()).tolist() == [932, 941]  # float32 host sigmas
    assert ddim.timesteps_for(sigmas, ddim.schedule(sigmas, 999)).tolist() == list(range(999, 0, -1)) + [-1]
    every = ddim.timesteps_for(sigmas, ddim.schedule(sigmas, 1000, "trailing"))
    assert every.tolist() == list(range(999, -1, -1)) + [-1]
    for bad in ((0, "leading"), (1000, "leading"), (1001, "trailing")):
        with pytest.raises(ValueError):
            ddim.schedule(sigmas, *bad)
    with pytest.raises(ValueError):
        ddim.schedule(sigmas, 10, spacing="middle")


def naive_sigma_space_inversion(model, x, sigmas):
    """x_{i+1} = x_i + (σ_{i+1} − σ_i)·eps(x_i, σ_{i+1}), with x_i fed to the model unscaled."""
    for sigma, dest in zip(sigmas[:-1], sigmas[1:]):
        x = x + (dest - sigma) * (x - model(x, dest[None])) / dest
    return x


def _round_trip(sigmas, steps, invert=ddim.invert_ddim, **invert_options):
    x0 = _clean_latents()
    schedule = ddim.schedule(sigmas, steps)
    noise = invert(gaussian_denoiser, x0, schedule.flip(0), **invert_options)
    back = ddim.sample_ddim(gaussian_denoiser, noise, schedule)
    return ((back - x0).norm() / x0.norm()).item()


def test_inversion_then_sampling_reconstructs(sigmas):
    """Invert with `steps` DDIM steps, sample back with the same steps, relative error vs x0.

    The brief asked for < 1e-3 at 50 steps. Plain DDIM inversion cannot reach it: it evaluates
    ε at x_i instead of the unknown x_{i+1} the sampler starts from, a first-order error per step
    that sums to O(1/steps). On this model it measures ≈2.1e-2 at 50 steps (1.1e-2 at 100,
    2.2e-3 at 500), so the test pins it below 3e-2 and checks the first-order decay instead; with
    two fixed-point refinements per step (`refine=2`, 3 model calls a step) the same 50 steps
    reach ≈1e-4 (`refine=1`: ≈1.3e-3). The naive σ-space variant (x_i fed to the model at σ_{i+1}
    without the VP rescaling) is ≈7× worse (≈1.4e-1).
    """
    plain = {n: _round_trip(sigmas, n) for n in (10, 20, 50)}
    refined = {n: _round_trip(sigmas, n, refine=2) for n in (10, 20, 50)}
    naive = _round_trip(sigmas, 50, invert=naive_sigma_space_inversion)
    print(f"relative reconstruction error, plain: {plain}; refine=2: {refined}; naive sigma-space @50: {naive:.3e}")
    for errors in (plain, refined):
        assert errors[10] > errors[20] > errors[50]
    assert plain[50] < 3e-2
    assert 3.0 < plain[10] / plain[50] < 7.0  # first order: error ∝ 1/steps
    assert refined[50] < 1e-3
    assert naive > 5 * plain[50]


def test_inversion_equals_alphas_cumprod_ddim_inversion(sigmas):
    """σ-space inversion vs DDIM inversion written with ᾱ (null-text / diffusers inverse form):
    ε = ε_θ(z_t, t_next), x̂0 = (z_t − sqrt(1 − ᾱ_t) ε)/sqrt(ᾱ_t), z_next = sqrt(ᾱ_next) x̂0 + sqrt(1 − ᾱ_next) ε."""
    alphas_cumprod = sd15_alphas_cumprod()
    timesteps = [-1] + list(range(1, 1000, 20))  # ascending, -1 = clean (ᾱ = 1)
    abar = [1.0 if t < 0 else alphas_cumprod[t].item() for t in timesteps]
    x0 = _clean_latents(1)
    z, reference = x0.clone(), [x0.clone()]
    for a, a_next in zip(abar[:-1], abar[1:]):
        eps = gaussian_eps_vp(z, a_next)
        pred_x0 = (z - (1 - a) ** 0.5 * eps) / a ** 0.5
        z = a_next ** 0.5 * pred_x0 + (1 - a_next) ** 0.5 * eps
        reference.append(z / a_next ** 0.5)  # back to σ space: x = z / sqrt(ᾱ)
    trajectory = []
    noise = ddim.invert_ddim(gaussian_denoiser, x0, ddim.schedule(sigmas, 50).flip(0), trajectory=trajectory)
    worst = max(((ours - ref).norm() / ref.norm()).item() for ours, ref in zip(trajectory, reference))
    print(f"inversion vs alphas_cumprod form: worst relative difference over the trajectory {worst:.2e}")
    assert len(trajectory) == 51 and torch.equal(trajectory[-1], noise)
    assert worst < 1e-6


def test_sampling_equals_alphas_cumprod_ddim(sigmas):
    alphas_cumprod = sd15_alphas_cumprod()
    timesteps = list(range(981, 0, -20))
    x = 14 * torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    a = alphas_cumprod[timesteps[0]].item()
    z = x * a ** 0.5
    for t, t_prev in zip(timesteps, timesteps[1:] + [-1]):
        a, a_prev = alphas_cumprod[t].item(), 1.0 if t_prev < 0 else alphas_cumprod[t_prev].item()
        eps = gaussian_eps_vp(z, a)
        pred_x0 = (z - (1 - a) ** 0.5 * eps) / a ** 0.5
        z = a_prev ** 0.5 * pred_x0 + (1 - a_prev) ** 0.5 * eps
    ours = ddim.sample_ddim(gaussian_denoiser, x, ddim.schedule(sigmas, 50))
    rel = ((ours - z).norm() / z.norm()).item()
    print(f"sampling vs alphas_cumprod DDIM (eta=0): relative difference {rel:.2e}")
    assert rel < 1e-6


def test_ksampler_calling_convention_callback_and_trajectory(sigmas):
    """Called exactly as comfy.samplers.KSAMPLER.sample calls a sampler function."""
    calls, events = [], []

    def model(x, sigma, cond=None):
        calls.append((sigma.shape, sigma[0].item(), cond))
        return gaussian_denoiser(x, sigma)

    x0 = _clean_latents(3)
    schedule = ddim.schedule(sigmas, 5)
    for fn, sig in ((ddim.invert_ddim, schedule.flip(0)), (ddim.sample_ddim, schedule)):
        calls.clear(), events.clear()
        trajectory = []
        out = fn(model, x0, sig, extra_args={"cond": "c"}, callback=events.append, disable=True,
                 **{"trajectory": trajectory})
        assert [c[0] for c in calls] == [(2,)] * 5 and all(c[2] == "c" for c in calls)
        assert [e["i"] for e in events] == list(range(5))
        assert set(events[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        evaluated = sig[1:] if fn is ddim.invert_ddim else sig[:-1]  # inversion: at the destination
        assert [c[1] for c in calls] == pytest.approx(evaluated.tolist(), rel=1e-12)
        assert [e["sigma_hat"].item() for e in events] == pytest.approx(evaluated.tolist(), rel=1e-12)
        assert len(trajectory) == 6 and torch.equal(trajectory[0], x0) and trajectory[0] is not x0
        assert torch.equal(trajectory[-1], out)


def test_refine_and_latent_filter_options(sigmas):
    x0 = _clean_latents(4)
    schedule = ddim.schedule(sigmas, 10).flip(0)
    calls = []

    def model(x, sigma):
        calls.append(1)
        return gaussian_denoiser(x, sigma)

    ddim.invert_ddim(model, x0, schedule, refine=3)
    assert len(calls) == 10 * 4
    seen, trajectory = [], []

    def halve(x):
        seen.append(x.clone())
        return 0.5 * x

    ddim.invert_ddim(gaussian_denoiser, x0, schedule, latent_filter=halve, trajectory=trajectory)
    assert len(seen) == 10
    assert all(torch.equal(t, 0.5 * s) for t, s in zip(trajectory[1:], seen))
