"""Tokens, windowed LoRA wrapper and the Adapter file format (no host)."""
import os

import pytest
import torch

from temporal_adapter.adapter_core import adapter as adapter_mod
from temporal_adapter.adapter_core.adapter import Adapter
from temporal_adapter.adapter_core.lora import LoRA, TimestepWindow, lora_linear
from temporal_adapter.adapter_core.tokens import PromptTokens


def _trained_lora(in_f, out_f, seed=0):
    lora = LoRA(in_f, out_f, rank=2, alpha=3.0, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        lora.up.normal_(generator=torch.Generator().manual_seed(seed + 1))
    return lora


def test_lora_linear_adds_scaled_low_rank_update_only_inside_the_window():
    base = torch.nn.Linear(6, 5)
    weight = base.weight.detach().clone()
    lora, window = _trained_lora(6, 5), TimestepWindow(900, 1000)
    wrapped = lora_linear(base, lora, window)
    x = torch.randn(3, 6)
    assert torch.equal(wrapped(x), base(x))  # window unknown: off
    window.timestep = 950.0
    expected = base(x) + 1.5 * (x @ lora.down.t() @ lora.up.t())
    assert torch.allclose(wrapped(x), expected, atol=1e-6)
    window.timestep = 899.0
    assert torch.equal(wrapped(x), base(x))
    assert window.contains(900) and not window.contains(1000)
    assert isinstance(wrapped, torch.nn.Linear) and wrapped.weight is base.weight
    assert set(wrapped.state_dict()) == {"weight", "bias", "lora.down", "lora.up"}
    assert set(base.state_dict()) == {"weight", "bias"} and torch.equal(base.weight, weight)
    assert lora_linear(wrapped, lora, window).base_module is base  # re-wrapping unwraps first
    # The host patches and restores weights by module path, reaching the wrapper or the base depending on
    # whether the wrapper is installed at that moment: both must see the same parameter.
    patched = torch.nn.Parameter(weight * 2, requires_grad=False)
    setattr(wrapped, "weight", patched)
    assert base.weight is patched
    setattr(base, "weight", torch.nn.Parameter(weight, requires_grad=False))
    assert torch.equal(wrapped.weight, weight) and torch.equal(wrapped(x), base(x))


def test_fresh_lora_is_a_no_op_and_gradients_reach_only_the_lora():
    base = torch.nn.Linear(4, 4).requires_grad_(False)
    lora, window = LoRA(4, 4), TimestepWindow(0, 1000)
    window.timestep = 10
    wrapped = lora_linear(base, lora, window)
    x = torch.randn(2, 4)
    assert torch.equal(wrapped(x), base(x))
    wrapped(x).square().sum().backward()
    assert lora.up.grad is not None and lora.up.grad.abs().sum() > 0 and base.weight.grad is None
    with pytest.raises(ValueError, match="does not fit"):
        lora_linear(torch.nn.Linear(3, 4), lora, window)


def test_prompt_tokens_shapes_and_per_frame_vision_projection():
    free = PromptTokens(4, 2, 8, frames=3, generator=torch.Generator().manual_seed(0))
    out = free()
    assert out.shape == (3, 6, 8)
    assert torch.equal(out[0, :4], out[2, :4]) and not torch.equal(out[0, 4:], out[1, 4:])
    vision = torch.randn(3, 5)
    proj = PromptTokens(1, 2, 8, frames=3, vision=vision, generator=torch.Generator().manual_seed(0))
    tokens = proj()
    assert tokens.shape == (3, 3, 8)
    expected = proj.projection(vision[2]).view(2, 8)  # frame 2's tokens come from frame 2's image alone
    assert torch.allclose(tokens[2, 1:], expected)
    assert not torch.allclose(tokens[1, 1:], tokens[0, 1:])
    with pytest.raises(ValueError, match="at least one token"):
        PromptTokens(0, 0, 8, 3)


def _adapter(frames=3, vision=None):
    return Adapter.create(16, frames, {"blocks.0.attn1.to_q": (8, 8), "blocks.0.attn2.to_k": (16, 8)}, shared=2,
                          unshared=1, vision=vision, seed=3)


@pytest.mark.parametrize("vision", [None, torch.randn(3, 5)])
def test_save_load_round_trip_is_exact(tmp_path, vision):
    a = _adapter(vision=vision)
    with torch.no_grad():
        for p in a.module.parameters():
            p.add_(torch.randn_like(p))
    a.metadata["loss_history"] = [{"step": 1, "total": 0.5}]
    path = a.save(str(tmp_path / "a.safetensors"))
    b = Adapter.load(path)
    assert b.metadata == a.metadata and b.parameter_count() == a.parameter_count()
    for (k, v), (k2, v2) in zip(a.module.state_dict().items(), b.module.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert torch.equal(a.context_tokens(3), b.context_tokens(3))
    assert os.listdir(tmp_path) == ["a.safetensors"]


def test_save_is_atomic(tmp_path, monkeypatch):
    a = _adapter()
    target = tmp_path / "a.safetensors"
    target.write_bytes(b"previous")

    def broken(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(adapter_mod, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        a.save(str(target))
    assert os.listdir(tmp_path) == ["a.safetensors"] and target.read_bytes() == b"previous"


def test_bad_files_and_misfits_name_the_problem(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="not a readable adapter file"):
        Adapter.load(str(bad))
    a = _adapter()
    path = a.save(str(tmp_path / "ok.safetensors"))
    data = open(path, "rb").read()
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(data[: len(data) - 40])
    with pytest.raises(ValueError, match="not a readable adapter file"):
        Adapter.load(str(truncated))
    with pytest.raises(ValueError, match="frames is 3 in the adapter but 5 in the clip"):
        a.check_fits(16, 5)
    with pytest.raises(ValueError, match="width is 16 in the adapter but 768 in the model"):
        a.check_fits(768, 3)
    with pytest.raises(ValueError, match="LoRA target 'blocks.0.attn2.to_k'"):
        a.check_fits(16, 3, targets={"blocks.0.attn1.to_q": (8, 8)})
    a.check_fits(16, 3, family="SD15")
    with pytest.raises(ValueError, match=r"trained on a SD15 model \(text width 16\) but the model here is SDXL "
                                         r"\(text width 2048\)"):
        a.check_fits(2048, 3, family="SDXL")  # the family is named before any other mismatch


def test_copy_is_independent():
    a = _adapter()
    b = a.copy()
    with torch.no_grad():
        b.tokens.shared.add_(1)
        next(iter(b.loras.values())).up.add_(1)
    assert not torch.equal(a.tokens.shared, b.tokens.shared)
    assert torch.count_nonzero(next(iter(a.loras.values())).up) == 0
    b.metadata["loss_history"].append({"step": 1})
    assert a.metadata["loss_history"] == []
