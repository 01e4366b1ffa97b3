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
    vision = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    proj = PromptTokens(1, 2, 8, frames=3, vision=vision, generator=torch.Generator().manual_seed(0))
    tokens = proj()
    assert tokens.shape == (3, 3, 8)
    expected = proj.projection(vision[2]).view(2, 8)  # frame 2's tokens come from frame 2's image alone
    # batched and single-row matmuls round differently: a float32 tolerance, not allclose's atol=1e-8
    assert torch.allclose(tokens[2, 1:], expected, rtol=1e-5, atol=1e-6)
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
    with pytest.raises(ValueError, match="bad.safetensors: not a valid adapter file: it cannot be read as safetensors"):
        Adapter.load(str(bad))
    a = _adapter()
    path = a.save(str(tmp_path / "ok.safetensors"))
    data = open(path, "rb").read()
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(data[: len(data) - 40])
    with pytest.raises(ValueError, match="cut.safetensors: not a valid adapter file: it cannot be read as safetensors"):
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


def _rewritten(tmp_path, name, metadata=None, tensors=None):
    """A copy of a valid adapter file with its metadata JSON (text) and/or tensors replaced."""
    from safetensors.torch import load_file, safe_open, save_file
    path = _adapter().save(str(tmp_path / "valid.safetensors"))
    with safe_open(path, "pt") as f:
        raw = f.metadata()[adapter_mod.METADATA_KEY]
    meta = metadata(raw) if metadata else raw
    data = load_file(path)
    if tensors:
        tensors(data)
    target = str(tmp_path / name)
    save_file(data, target, metadata={adapter_mod.METADATA_KEY: meta})
    return target


def _edit(**changes):
    """Metadata rewrite: set keys (a value of DROP removes the key)."""
    import json

    def rewrite(raw):
        meta = json.loads(raw)
        for key, value in changes.items():
            if value is DROP:
                del meta[key]
            else:
                meta[key] = value
        return json.dumps(meta)
    return rewrite


DROP = object()


@pytest.mark.parametrize("metadata,reason", [
    (lambda raw: raw[:-7], r"its 'temporal_adapter' metadata is not JSON"),
    (lambda raw: "[1, 2]", r"its 'temporal_adapter' metadata is not a JSON object"),
    (_edit(format_version="1"), r"metadata 'format_version' must be a whole number, got '1'"),
    (_edit(frames=DROP), r"its metadata lacks 'frames'"),
    (_edit(targets=DROP, rank=DROP), r"its metadata lacks 'rank', 'targets'"),
    (_edit(frames="3"), r"metadata 'frames' must be a whole number >= 1, got '3'"),
    (_edit(frames=True), r"metadata 'frames' must be a whole number >= 1, got True"),
    (_edit(rank=0), r"metadata 'rank' must be a whole number >= 1, got 0"),
    (_edit(alpha="4"), r"metadata 'alpha' must be a finite number"),
    (_edit(window=[1000, 900]), r"metadata 'window' must be \[start, end\] with 0 <= start < end"),
    (_edit(targets="blocks.0.attn1.to_q"), r"metadata 'targets' must be a list of layer names"),
    (_edit(unshared_form="image"), r"metadata 'unshared_form' must be 'free' or 'clip_vision'"),
    (lambda raw: raw.replace('"loss_history": []', '"loss_history": [{"step": 1, "total": NaN}]'),
     r"metadata\['loss_history'\]\[0\]\['total'\] is NaN or infinite"),
    (lambda raw: raw.replace('"alpha": 4.0', '"alpha": Infinity'), r"metadata 'alpha' must be a finite number"),
    (_edit(optimizer_groups="adamw"), r"metadata 'optimizer_groups' must be a list of parameter groups"),
])
def test_malformed_metadata_is_one_clear_error(tmp_path, metadata, reason):
    path = _rewritten(tmp_path, "bad.safetensors", metadata=metadata)
    with pytest.raises(adapter_mod.InvalidAdapterFile, match=r"^bad\.safetensors: not a valid adapter file: " + reason):
        Adapter.load(path)


def test_other_format_version_and_tensor_faults_are_named(tmp_path):
    newer = _rewritten(tmp_path, "newer.safetensors", metadata=_edit(format_version=2, frames=DROP))
    with pytest.raises(ValueError, match="newer.safetensors: format_version is 2 in the file but 1 in this plugin"):
        Adapter.load(newer)
    cases = {
        "nan.safetensors": (lambda t: t["tokens.shared"].__setitem__((0, 0), float("nan")),
                            r"tensor 'tokens.shared' holds NaN or infinite values .*lower learning_rate"),
        "inf.safetensors": (lambda t: t["loras.blocks/0/attn2/to_k.up"].fill_(float("inf")),
                            r"tensor 'loras.blocks/0/attn2/to_k.up' holds NaN or infinite values"),
        "nolora.safetensors": (lambda t: t.pop("loras.blocks/0/attn1/to_q.down"),
                               r"the LoRA tensors of target 'blocks.0.attn1.to_q' are missing or not matrices"),
        "shape.safetensors": (lambda t: t.__setitem__("tokens.shared", torch.zeros(5, 16)),
                              r"its tensors do not match its metadata .*tokens.shared"),
        "extra.safetensors": (lambda t: t.__setitem__("optimizer/x/exp_avg", torch.zeros(2)),
                              r"unexpected tensor 'optimizer/x/exp_avg'"),
    }
    for name, (change, reason) in cases.items():
        path = _rewritten(tmp_path, name, tensors=change)
        with pytest.raises(adapter_mod.InvalidAdapterFile, match=rf"^{name}: not a valid adapter file: {reason}"):
            Adapter.load(path)
    no_meta = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(no_meta))
    with pytest.raises(adapter_mod.InvalidAdapterFile, match="plain.safetensors: not a valid adapter file: a "
                                                             "safetensors file without the 'temporal_adapter'"):
        Adapter.load(str(no_meta))


def test_nothing_non_finite_is_ever_written(tmp_path):
    a = _adapter()
    with torch.no_grad():
        a.tokens.shared[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"adapter: tokens.shared holds NaN or infinite values; a.safetensors was "
                                         r"not written"):
        a.save(str(tmp_path / "a.safetensors"))
    b = _adapter()
    b.metadata["loss_history"] = [{"step": 1, "total": float("inf")}]
    with pytest.raises(ValueError, match=r"adapter: metadata\['loss_history'\]\[0\]\['total'\] holds NaN"):
        b.save(str(tmp_path / "b.safetensors"))
    assert os.listdir(tmp_path) == []


def test_a_lora_of_another_shape_is_named_with_both_shapes():
    a = _adapter()
    with pytest.raises(ValueError, match=r"adapter does not fit: the LoRA on layer blocks.0.attn2.to_k is 16->8 "
                                         r"\(in->out features\) in the adapter but 32->8 in the model"):
        a.check_fits(16, 3, targets={"blocks.0.attn1.to_q": (8, 8), "blocks.0.attn2.to_k": (32, 8)})
    a.check_fits(16, 3, targets={"blocks.0.attn1.to_q": (8, 8), "blocks.0.attn2.to_k": (16, 8), "other": (4, 4)})
