"""Training an Adapter on one clip (method.md §3): ε-MSE denoising inside the LoRA window plus
λ · temporal loss between adjacent frames' attn1 outputs.

The host supplies `denoise(x, sigma, context, **extra) -> (denoised, features)`: a differentiable model
call in the model's latent space (x: [B, C, H, W], sigma: [B], context: [B, L, width], extra: the model's
other per-row conditioning, e.g. y: [B, D], the ADM input of SDXL-family models); `features` is a
list of attn1 outputs [B, N, C] of the chosen blocks, captured during that call. The adapter's
LoRAs must be installed in that model and read `adapter.window`, which the trainer pins to the
batch's timestep. Nothing here knows the host.
"""
import contextlib
import copy
import dataclasses
import math

import cv2
import numpy as np
import torch

from .finite import all_finite
from .temporal_loss import FORMS, REDUCES, cosine_similarity_adjacent, temporal_loss
from .theory import estimate_lipschitz, safe_step

OPTIMIZERS = ("adamw", "gd")
AUTO_ADAMW_LR = 1e-2  # per-clip tuning: measured on the test clip (see tests/unit/test_training.py)
BACKTRACK = 20  # halvings of the plain-GD step before a step is given up
RECORDED = ("total", "denoise", "temporal")
EXPLODED = 1e3  # a loss above this multiple of every earlier loss of the adapter counts as divergence


class TrainingDiverged(FloatingPointError):
    """The loss became NaN/inf or exploded (or its gradient became NaN/inf). The adapter holds the
    weights from before the update that diverged; the message says which learning rate to try."""


def suggested_lr(lr):
    """The learning rate to try after `lr` diverged: a tenth of it, or the default when it was far above."""
    return AUTO_ADAMW_LR if lr > 10 * AUTO_ADAMW_LR else lr / 10


@dataclasses.dataclass
class TrainSettings:
    steps: int = 200
    lr: float | None = None  # None: AUTO_ADAMW_LR for AdamW, 1/L (Lipschitz estimate) for plain GD
    optimizer: str = "adamw"
    lam: float = 1.0
    form: str = "adjacent"
    reduce: str = "frame"
    shared_only_fraction: float = 0.2
    seed: int = 0
    frames_per_step: int = 4
    weight_decay: float = 0.01
    lipschitz_iters: int = 6

    def validate(self, frames):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.form not in FORMS or self.reduce not in REDUCES:
            raise ValueError(f"temporal loss form/reduce must be in {FORMS}/{REDUCES}, got {self.form}/{self.reduce}")
        if not 0.0 <= self.shared_only_fraction <= 1.0:
            raise ValueError(f"shared_only_fraction must be in [0, 1], got {self.shared_only_fraction}")
        need = 3 if self.form == "second_order" else 2
        if not need <= min(self.frames_per_step, frames):
            raise ValueError(f"frames_per_step: the {self.form} temporal loss needs {need} frames per step, "
                             f"got frames_per_step {self.frames_per_step} on a clip of {frames} frames")

    def shared_only_from(self):
        """First step of the final phase that updates only the shared tokens."""
        return self.steps - int(round(self.shared_only_fraction * self.steps))


@dataclasses.dataclass
class Batch:
    frames: torch.Tensor  # [B] frame indices (the clip's contiguous window, twice for cross_timestep)
    timesteps: torch.Tensor  # [B] integer timesteps inside the window
    noise: torch.Tensor  # [B, C, H, W]


def draw_batch(settings, step, frames, shape, window, pairs=1):
    """The batch of `step`: a contiguous run of frames_per_step frames at one timestep drawn from the
    LoRA window, with one noise image shared by those frames (as inverted latents of a steady clip
    are alike). Seeded by (seed, step) alone, so a resumed run draws what a single run would.
    pairs=2 (cross_timestep) repeats the frames at a second timestep."""
    g = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
    count = min(settings.frames_per_step, frames)
    start = int(torch.randint(0, frames - count + 1, (1,), generator=g))
    idx, ts, noise = [], [], []
    for _ in range(pairs):
        t = int(torch.randint(int(math.ceil(window.lo)), int(math.ceil(window.hi)), (1,), generator=g))
        idx.append(torch.arange(start, start + count))
        ts.append(torch.full((count,), t))
        noise.append(torch.randn((1, *shape), generator=g).expand(count, *shape))
    return Batch(torch.cat(idx), torch.cat(ts), torch.cat(noise))


def frame_rows(t, idx):
    """Rows `idx` of a per-frame tensor [T, ...], or of a one-prompt tensor [1, ...] repeated."""
    return t[idx] if t.shape[0] > 1 else t.expand(len(idx), *t.shape[1:])


class Objective(torch.nn.Module):
    """loss(batch) = ε-MSE + λ · temporal loss, as a module over the adapter's parameters (so
    `torch.func.functional_call` can evaluate it at other parameter values).
    extra: the model's other conditioning per frame ({"y": [T or 1, D]} on SDXL-family models)."""

    def __init__(self, adapter, denoise, latents, text, sigmas, settings, extra=None):
        super().__init__()
        self.adapter = adapter.module
        self.window = adapter.window
        object.__setattr__(self, "denoise", denoise)  # not a submodule, even if it is an nn.Module
        self.latents, self.text, self.sigmas, self.extra = latents, text, sigmas, dict(extra or {})
        self.settings = settings

    def forward(self, batch):
        idx, s = batch.frames, self.settings
        sigma = self.sigmas[batch.timesteps].to(self.latents.dtype)
        x = self.latents[idx] + sigma.view(-1, 1, 1, 1) * batch.noise
        text = frame_rows(self.text, idx)
        context = torch.cat([self.adapter.tokens()[idx].to(text.dtype), text], dim=1)
        extra = {k: frame_rows(v, idx) for k, v in self.extra.items()}
        self.window.timestep = float(batch.timesteps[0])
        try:
            denoised, features = self.denoise(x, sigma, context, **extra)
        finally:
            self.window.timestep = None
        eps = (x - denoised) / sigma.view(-1, 1, 1, 1)
        denoise_loss = torch.nn.functional.mse_loss(eps.float(), batch.noise.float())
        if s.lam == 0 or not features:
            temporal = denoise_loss.new_zeros(())
        else:
            terms = []
            for f in features:
                halves = f.float().chunk(2) if s.form == "cross_timestep" else (f.float(), None)
                terms.append(temporal_loss(halves[0], s.form, s.reduce, features_b=halves[1]))
            temporal = torch.stack(terms).mean()
        return denoise_loss + s.lam * temporal, denoise_loss, temporal


def _divergence(total, history):
    """Why the loss `total` of a step means training diverged, or None."""
    value = float(total.detach())
    if not math.isfinite(value):
        return "the loss became NaN/inf"
    worst = max((r["total"] for r in history), default=None)
    if worst is not None and value > EXPLODED * worst:
        return f"the loss exploded to {value:.4g}, over {EXPLODED:g}x every earlier loss ({worst:.4g} at most)"
    return None


def _diverged(reason, step, kept, lr, undone=True):
    before = ", from before the update that diverged" if undone else ""
    return TrainingDiverged(
        f"training diverged at step {step + 1}: {reason}. The adapter keeps the weights of step {kept}{before}. "
        f"Try learning_rate {suggested_lr(lr):g} instead of {lr:g} (or a lower temporal_weight)")


class _Rollback:
    """The adapter's weights and AdamW state from before the last update, to return to it when the next
    loss shows that update diverged (a few MB: the adapter, not the model)."""

    def __init__(self, params, opt):
        self.params, self.opt = params, opt
        self.saved = None

    def keep(self):
        self.saved = ([p.detach().clone() for p in self.params], copy.deepcopy(self.opt.state_dict()))

    def restore(self):
        """Undo the last update; False when there is none to undo (no update yet in this run)."""
        if self.saved is None:
            return False
        weights, state = self.saved
        with torch.no_grad():
            for p, w in zip(self.params, weights):
                p.copy_(w)
        self.opt.load_state_dict(state)
        self.saved = None
        return True


def train(adapter, denoise, latents, text, sigmas, settings, progress=None, check_interrupt=None, extra=None):
    """Train `adapter` in place from step len(adapter.metadata["loss_history"]) to settings.steps.

    latents: [T, C, H, W] clip in the model's latent space; text: [T or 1, 77·k, width] source
    prompt; sigmas: the model's 1000 training sigmas (index = timestep); extra: the model's other
    conditioning of that prompt ({"y": [T or 1, D]} on SDXL-family models, passed to `denoise`).
    progress(step, total, record): after each completed step; record = {"step", "total",
    "denoise", "temporal", "lr"} (also appended to adapter.metadata["loss_history"]).
    check_interrupt(): called before each step; may raise to stop (the adapter then holds the last
    completed step).
    TrainingDiverged is raised when a step's loss is NaN/inf or over EXPLODED times every earlier
    loss, or an update leaves NaN/inf weights: the update that caused it is undone (weights, AdamW
    state and its loss record), so the adapter holds the last step whose weights were good. A NaN/inf
    gradient of a finite loss stops without undoing anything. Nothing non-finite stays in the adapter.
    Returns the loss history.
    """
    frames = latents.shape[0]
    settings.validate(frames)
    history = adapter.metadata.setdefault("loss_history", [])
    adapter.metadata["training"] = dataclasses.asdict(settings)
    objective = Objective(adapter, denoise, latents, text, sigmas, settings, extra)
    pairs = 2 if settings.form == "cross_timestep" else 1
    draw = lambda step: draw_batch(settings, step, frames, latents.shape[1:], adapter.window, pairs)  # noqa: E731
    shared, others = adapter.shared_parameters(), adapter.unshared_parameters() + adapter.lora_parameters()
    if settings.optimizer == "adamw":
        lr = settings.lr or AUTO_ADAMW_LR
        opt = torch.optim.AdamW(shared + others, lr=lr, weight_decay=settings.weight_decay)
        if adapter.optimizer_state is not None:  # resume: keep the moments, take this run's settings
            opt.load_state_dict(adapter.optimizer_state)
            opt.param_groups[0].update(lr=lr, weight_decay=settings.weight_decay)
        gd, rollback = None, _Rollback(shared + others, opt)
    else:
        opt, gd = None, PlainGD(objective, draw(0), settings)
    try:
        for step in range(len(history), settings.steps):
            if check_interrupt is not None:
                check_interrupt()
            for p in others:
                p.requires_grad_(step < settings.shared_only_from())
            for p in shared + others:
                p.grad = None
            if gd is not None:
                total, d, tmp, lr = gd.step(step, shared + others)
            else:
                total, d, tmp = objective(draw(step))
                reason = _divergence(total, history)
                if reason is not None:
                    undone = rollback.restore()
                    if undone:
                        history.pop()
                        adapter.optimizer_state = opt.state_dict()
                    raise _diverged(reason, step, len(history), lr, undone)
                total.backward()
                if not all_finite(*(p.grad for p in shared + others if p.grad is not None)):
                    raise _diverged("its gradient became NaN/inf", step, len(history), lr, undone=False)
                rollback.keep()
                opt.step()
                if not all_finite(*shared, *others):
                    rollback.restore()
                    raise _diverged("the update made weights NaN/inf", step, len(history), lr)
                adapter.optimizer_state = opt.state_dict()
            record = {"step": step + 1, "lr": lr, **{k: float(v.detach()) for k, v in zip(RECORDED, (total, d, tmp))}}
            history.append(record)
            if progress is not None:
                progress(step + 1, settings.steps, record)
    finally:
        for p in shared + others:
            p.requires_grad_(True)
            p.grad = None
    return history


def _twice_differentiable_attention():
    """Context in which torch's scaled_dot_product_attention uses its math backend: the fused kernels
    (which a host denoiser may use) have no second derivative, and the Lipschitz estimate takes
    Hessian-vector products through the model."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3 has no backend switch of this form
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


class PlainGD:
    """Plain gradient descent on one fixed batch (a deterministic objective) with the step 1/L from
    a power-iteration estimate of the local Lipschitz constant L of ∇loss, halved until the loss
    does not increase (decrease check). An explicit settings.lr replaces 1/L as the first try."""

    def __init__(self, objective, batch, settings):
        self.objective, self.batch, self.settings = objective, batch, settings
        self.eta = settings.lr
        self.lipschitz = None

    def _loss_at(self, names, vector, shapes):
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            n = math.prod(shape)
            params[f"adapter.{name}"] = vector[offset:offset + n].view(shape)
            offset += n
        return torch.func.functional_call(self.objective, params, (self.batch,))[0]

    def estimate_step(self, params):
        """1/L with L the largest Hessian eigenvalue magnitude at the current point."""
        by_id = {id(p): n for n, p in self.objective.adapter.named_parameters()}
        names = [by_id[id(p)] for p in params]
        shapes = [tuple(p.shape) for p in params]
        x = torch.cat([p.detach().flatten() for p in params])
        g = torch.Generator().manual_seed(self.settings.seed)
        with _twice_differentiable_attention():
            self.lipschitz = estimate_lipschitz(lambda v: self._loss_at(names, v, shapes), x,
                                                iters=self.settings.lipschitz_iters, generator=g)
        return safe_step(self.lipschitz)

    def step(self, step, params):
        trainable = [p for p in params if p.requires_grad]
        if self.eta is None:
            self.eta = self.estimate_step(trainable)
        total, d, tmp = self.objective(self.batch)
        if not all_finite(total):  # the decrease check never takes a step to a non-finite loss
            raise _diverged("the loss became NaN/inf", step, step, self.eta, undone=False)
        grads = torch.autograd.grad(total, trainable)
        if not all_finite(*grads):
            raise _diverged("its gradient became NaN/inf", step, step, self.eta, undone=False)
        before = [p.detach().clone() for p in trainable]
        eta = self.eta
        with torch.no_grad():
            for _ in range(BACKTRACK):
                for p, p0, gr in zip(trainable, before, grads):
                    p.copy_(p0 - eta * gr)
                if float(self.objective(self.batch)[0]) <= float(total):
                    return total, d, tmp, eta
                eta /= 2
            for p, p0 in zip(trainable, before):  # no decrease at any step size: stay put
                p.copy_(p0)
        return total, d, tmp, 0.0


# ---- the loss-curve picture ------------------------------------------------------------------
CURVES = (("total", (0.1, 0.1, 0.1)), ("denoise", (0.12, 0.47, 0.71)), ("temporal", (0.84, 0.15, 0.16)))


def loss_curve_image(history, width=512, height=320):
    """[height, width, 3] float32 RGB in 0..1: total, denoising and temporal loss per step on a
    shared log10 axis, with the first and last values written in the legend. Drawn in 8 bits (OpenCV 5.1
    draws text only on 8-bit images)."""
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 60, width - 10, 50, height - 30
    cv2.rectangle(img, (left, top), (right, bottom), (153, 153, 153), 1)
    if not history:
        cv2.putText(img, "no steps yet", (left + 10, top + 30), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
        return img.astype(np.float32) / 255
    series = {k: np.log10(np.maximum([r[k] for r in history], 1e-12)) for k, _ in CURVES}
    lo = min(float(v.min()) for v in series.values())
    hi = max(float(v.max()) for v in series.values())
    hi = hi if hi > lo else lo + 1.0
    steps = np.array([r["step"] for r in history], np.float64)
    x = left + (steps - steps.min()) / max(steps.max() - steps.min(), 1) * (right - left)
    for row, (name, colour) in enumerate(CURVES):
        colour = tuple(round(255 * c) for c in colour)
        y = bottom - (series[name] - lo) / (hi - lo) * (bottom - top)
        cv2.polylines(img, [np.stack([x, y], 1).round().astype(np.int32)], False, colour, 2, cv2.LINE_AA)
        label = f"{name} {history[0][name]:.4g} -> {history[-1][name]:.4g}"
        cv2.putText(img, label, (left + 170 * row if width >= 560 else left, 15 + (0 if width >= 560 else 14 * row)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    for value, yy in ((hi, top), (lo, bottom)):
        cv2.putText(img, f"{10 ** value:.2g}", (4, yy + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, f"step {int(steps.min())}..{int(steps.max())}, loss on a log scale", (left, height - 10),
                cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return img.astype(np.float32) / 255


# ---- measuring what training bought ----------------------------------------------------------
def consistency_table(adapter, denoise, latents, text, sigmas, timesteps, seed=0, extra=None):
    """The theory paper's Fig. 4 measurement: for each timestep t, the clip noised to t with one
    shared noise image, one model call with `adapter` (LoRA on inside its window), and the mean
    adjacent-frame cosine similarity of the captured decoder features and of the predicted x0.
    extra: as in `train`. Returns [(t, feature cosine, x0 cosine)]."""
    frames = latents.shape[0]
    every = torch.arange(frames)
    extra = {k: frame_rows(v, every) for k, v in (extra or {}).items()}
    noise = torch.randn((1, *latents.shape[1:]), generator=torch.Generator().manual_seed(seed))
    rows = []
    with torch.no_grad():
        for t in timesteps:
            sigma = sigmas[int(t)].expand(frames).to(latents.dtype)
            x = latents + sigma.view(-1, 1, 1, 1) * noise
            context = torch.cat([adapter.tokens().to(text.dtype), frame_rows(text, every)], dim=1)
            adapter.window.timestep = float(t)
            try:
                denoised, features = denoise(x, sigma, context, **extra)
            finally:
                adapter.window.timestep = None
            feature_cos = torch.stack([cosine_similarity_adjacent(f.float()).mean() for f in features]).mean()
            rows.append((int(t), float(feature_cos), float(cosine_similarity_adjacent(denoised.float()).mean())))
    return rows
