"""The training loop on a toy differentiable denoiser (no host): determinism, the shared-only final
phase, plain-GD monotonicity, NaN guard, interrupt + resume, loss-curve picture."""
import copy
import re

import numpy as np
import pytest
import torch

from temporal_adapter.adapter_core import training
from temporal_adapter.adapter_core.adapter import Adapter
from temporal_adapter.adapter_core.lora import lora_linear

FRAMES, WIDTH, CH = 6, 8, 4


class Toy(torch.nn.Module):
    """eps = tanh(x) mixed with the pooled, projected context; features carry the context too."""

    def __init__(self, adapter):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.proj = lora_linear(torch.nn.Linear(WIDTH, CH).requires_grad_(False), adapter.loras["proj"], adapter.window)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(CH, WIDTH, generator=g))
            self.proj.bias.copy_(torch.randn(CH, generator=g))
        self.nan_at = None
        self.calls = 0

    def forward(self, x, sigma, context):
        self.calls += 1
        c = self.proj(context).mean(1)  # [B, CH]
        eps = torch.tanh(x) * 0.3 + c[:, :, None, None]
        features = x.flatten(2).transpose(1, 2) + c[:, None, :]
        if self.nan_at is not None and self.calls >= self.nan_at:
            eps = eps * float("nan")
        return x - sigma.view(-1, 1, 1, 1) * eps, [features]


def setup(seed=0):
    adapter = Adapter.create(WIDTH, FRAMES, {"proj": (WIDTH, CH)}, shared=2, unshared=1, seed=seed)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(FRAMES, CH, 3, 3, generator=g).cumsum(0) / 2
    text = torch.randn(1, 5, WIDTH, generator=g)
    sigmas = torch.linspace(0.03, 14.6, 1000)
    return adapter, Toy(adapter), latents, text, sigmas


def run(settings, seed=0, **kw):
    adapter, toy, latents, text, sigmas = setup(seed)
    history = training.train(adapter, toy, latents, text, sigmas, settings, **kw)
    return adapter, history


def state(adapter):
    return {k: v.clone() for k, v in adapter.module.state_dict().items()}


def test_loss_decreases_and_runs_repeat_bit_for_bit():
    s = training.TrainSettings(steps=60, seed=5, frames_per_step=3, lr=0.05)
    a, h = run(s)
    b, h2 = run(s)
    assert h == h2
    assert all(torch.equal(x, y) for x, y in zip(state(a).values(), state(b).values()))
    first, last = np.mean([r["total"] for r in h[:10]]), np.mean([r["total"] for r in h[-10:]])
    print(f"toy AdamW total loss, mean of first/last 10 steps: {first:.4f} -> {last:.4f}")
    assert last < first


def test_shared_only_final_phase_freezes_unshared_tokens_and_lora():
    s = training.TrainSettings(steps=20, shared_only_fraction=0.25, lr=0.05)
    snaps = {}
    start = s.shared_only_from()
    assert start == 15

    adapter, toy, latents, text, sigmas = setup()

    def progress(step, total, record):
        snaps[step] = state(adapter)
    training.train(adapter, toy, latents, text, sigmas, s, progress)
    before, after = snaps[start], snaps[20]
    for key in before:
        same = torch.equal(before[key], after[key])
        assert same == (key != "tokens.shared"), key
    assert not torch.equal(snaps[1]["loras.proj.up"], snaps[start]["loras.proj.up"])


def test_plain_gd_with_the_automatic_step_never_increases_the_loss():
    s = training.TrainSettings(steps=25, optimizer="gd", lam=2.0, frames_per_step=4)
    _, h = run(s)
    totals = [r["total"] for r in h]
    print("plain GD (auto step) total loss:", " ".join(f"{t:.5f}" for t in totals[:5]), "...", f"{totals[-1]:.5f}")
    assert all(b <= a for a, b in zip(totals, totals[1:]))
    assert totals[-1] < totals[0] and h[0]["lr"] > 0


def test_nan_loss_undoes_the_update_before_it_and_a_resume_continues_exactly():
    """NaN at step 5: the update of step 4 is undone (weights, AdamW moments and its loss record), so
    the adapter is the one after step 3, and resuming from it repeats an uninterrupted run bit for bit."""
    s = training.TrainSettings(steps=10, lr=0.05)
    whole, _ = run(s)
    adapter, toy, latents, text, sigmas = setup()
    snaps = {}
    toy.nan_at = 5
    with pytest.raises(training.TrainingDiverged, match=r"training diverged at step 5: the loss became NaN/inf. The "
                       r"adapter keeps the weights of step 3, from before the update that diverged. Try "
                       r"learning_rate 0.005 instead of 0.05"):
        training.train(adapter, toy, latents, text, sigmas, s, lambda i, n, r: snaps.__setitem__(i, state(adapter)))
    assert len(adapter.metadata["loss_history"]) == 3
    assert all(torch.equal(v, snaps[3][k]) for k, v in state(adapter).items())
    assert all(p.requires_grad and p.grad is None for p in adapter.module.parameters())
    toy.nan_at = None
    training.train(adapter, toy, latents, text, sigmas, s)
    assert adapter.metadata["loss_history"] == whole.metadata["loss_history"]
    assert all(torch.equal(x, y) for x, y in zip(state(adapter).values(), state(whole).values()))


@pytest.mark.parametrize("lr,reason", [
    (1e30, "the loss became NaN/inf"),
    (1e3, r"the loss exploded to [0-9.e+]+, over 1000x every earlier loss \([0-9.]+ at most\)")])
def test_a_diverging_learning_rate_keeps_the_weights_before_the_update_that_diverged(tmp_path, lr, reason):
    """Three good steps, then a resumed run at a learning rate that blows up its first update (AdamW
    moves every weight by about lr): the adapter, its AdamW state and its file are those of step 3."""
    adapter, toy, latents, text, sigmas = setup()
    training.train(adapter, toy, latents, text, sigmas, training.TrainSettings(steps=3, lr=0.05))
    good, moments = state(adapter), copy.deepcopy(adapter.optimizer_state)
    with pytest.raises(training.TrainingDiverged, match=rf"training diverged at step 5: {reason}. The adapter keeps "
                       rf"the weights of step 3, from before the update that diverged. Try learning_rate 0.01 "
                       rf"instead of {re.escape(f'{lr:g}')}"):
        training.train(adapter, toy, latents, text, sigmas, training.TrainSettings(steps=8, lr=lr))
    assert len(adapter.metadata["loss_history"]) == 3
    assert all(torch.equal(v, good[k]) for k, v in state(adapter).items())
    assert all(torch.equal(x, y) for i in moments["state"] for x, y in
               zip(moments["state"][i].values(), adapter.optimizer_state["state"][i].values()))
    saved = Adapter.load(adapter.save(str(tmp_path / "kept.safetensors")))
    assert all(torch.equal(v, good[k]) for k, v in state(saved).items())
    fresh, toy, latents, text, sigmas = setup()
    with pytest.raises(training.TrainingDiverged, match="keeps the weights of step 0"):
        training.train(fresh, toy, latents, text, sigmas, training.TrainSettings(steps=4, lr=lr))
    assert fresh.metadata["loss_history"] == [] and all(torch.equal(v, setup()[0].module.state_dict()[k])
                                                        for k, v in state(fresh).items())


def test_suggested_learning_rate():
    assert training.suggested_lr(0.05) == pytest.approx(0.005)
    assert training.suggested_lr(1e30) == training.suggested_lr(0.5) == training.AUTO_ADAMW_LR


class Stop(Exception):
    pass


def test_interrupt_keeps_the_last_completed_step_and_resume_from_file_matches_one_run(tmp_path):
    s = training.TrainSettings(steps=12, lr=0.05, shared_only_fraction=0.25)
    whole, _ = run(s)
    adapter, toy, latents, text, sigmas = setup()
    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 8:
            raise Stop()
    with pytest.raises(Stop):
        training.train(adapter, toy, latents, text, sigmas, s, check_interrupt=interrupt)
    assert len(adapter.metadata["loss_history"]) == 7
    resumed = Adapter.load(adapter.save(str(tmp_path / "stopped.safetensors")))  # AdamW moments included
    toy2 = Toy(resumed)
    training.train(resumed, toy2, latents, text, sigmas, s)
    assert resumed.metadata["loss_history"] == whole.metadata["loss_history"]
    assert all(torch.equal(x, y) for x, y in zip(state(resumed).values(), state(whole).values()))


def test_settings_are_validated():
    with pytest.raises(ValueError, match="needs 3 frames per step"):
        training.TrainSettings(form="second_order", frames_per_step=2).validate(8)
    with pytest.raises(ValueError, match="optimizer"):
        training.TrainSettings(optimizer="sgd").validate(8)


def test_cross_timestep_form_trains():
    _, h = run(training.TrainSettings(steps=3, form="cross_timestep", lr=0.05))
    assert len(h) == 3 and all(np.isfinite(r["temporal"]) for r in h)


def test_loss_curve_image():
    img = training.loss_curve_image([{"step": i + 1, "total": 1 / (i + 1), "denoise": 0.9 / (i + 1), "temporal": 0.1}
                                     for i in range(30)])
    assert img.shape == (320, 512, 3) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    assert (img < 0.5).any()
    assert training.loss_curve_image([]).shape == (320, 512, 3)
