"""Adapter trainer and Save/Load/Apply nodes in the real host (two-level tiny SD1.5, carphone clip).

The acceptance run is at full scale: 8 frames of carphone_pristine.mp4 at 512 px (64x64 latents),
STEPS AdamW steps of 2 adjacent frames each (the pair is drawn anew every step, across the clip). There
the loss on fixed batches falls (total and temporal term), the shared MODEL is bit-identical afterwards
and a second run with the same seed repeats the first bit for bit. A step there is a forward and
backward of the UNet copy over 2 frames of 4,096 tokens: about 4 s (8 CPU-s) on a quiet 2-core
machine (the trainer's attention is torch SDPA; the host's CPU default, sub-quadratic attention,
cost 1.6x more).

The other tests check mechanics that do not depend on the frame size (plain GD with its Lipschitz
estimate, the shared-only phase, save/load/apply through the sampler, resume, errors, interrupt, the
CLIP-vision token form) on the same 8 frames at 64 px (8x8 latents), where they cost seconds, not minutes.
"""
import json
import os
import re
import time

import numpy as np
import pytest
import torch

from temporal_adapter.adapter_core import training
from temporal_adapter.adapter_core.adapter import Adapter
from test_inversion_nodes import frames_of

CKPT = "ta_twolevel_sd15.safetensors"
FRAMES, STEPS, REPEAT = 8, 12, 2
FULL_PX, SMALL_PX = 512, 64  # 64x64 and 8x8 latents
TIMESTEPS = (950,)  # the middle of the LoRA window (each timestep costs an 8-frame forward at 64x64 per adapter)


@pytest.fixture(scope="module")
def mods(comfy_host):
    from temporal_adapter.nodes import adapter_nodes, host
    return adapter_nodes, host


@pytest.fixture(scope="module")
def loaded(comfy_host):
    nodes = comfy_host.nodes
    with torch.inference_mode():
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(CKPT)[:3]
        cond = nodes.CLIPTextEncode().encode(clip, "a man talking on a phone in a car")[0]
        negative = nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    return model, vae, cond, negative


def clip_at(comfy_host, loaded, clips, size):
    """(model, cond, negative, latent, images) for the clip's first FRAMES frames at size x size px."""
    model, vae, cond, negative = loaded
    images = frames_of(clips["carphone_pristine.mp4"], FRAMES, size)
    with torch.inference_mode():
        latent = comfy_host.nodes.VAEEncode().encode(vae, images)[0]
    return model, cond, negative, latent, images


@pytest.fixture(scope="module")
def full(comfy_host, loaded, clips):
    return clip_at(comfy_host, loaded, clips, FULL_PX)


@pytest.fixture(scope="module")
def small(comfy_host, loaded, clips):
    return clip_at(comfy_host, loaded, clips, SMALL_PX)


def train(mods, setup, steps, adapter=None, **kw):
    model, cond, _, latent = setup[:4]
    args = dict(steps=steps, learning_rate="auto", optimizer="adamw", temporal_weight=1.0, temporal_form="adjacent",
                temporal_reduce="frame", feature_blocks="auto", shared_only_fraction=0.25, seed=3, frames_per_step=2,
                shared_tokens=4, unshared_tokens=2, lora_rank=4, lora_alpha=4.0, lora_blocks="auto",
                window_start=900, window_end=1000)
    args.update(kw)
    with torch.inference_mode():
        return mods[0].TA_TrainAdapter().train(model, cond, latent, adapter=adapter, unique_id="7", **args)["result"]


def untrained(mods, model, cond, frames, shared_tokens=4, unshared_tokens=2, lora_rank=4, lora_alpha=4.0, seed=3):
    """The adapter `train` starts from (same settings and seed) before its first step: the baseline of the
    loss and Fig. 4 comparisons (the node itself refuses steps=0)."""
    with torch.inference_mode(False):
        return mods[0].TA_TrainAdapter._new_adapter(model, mods[1].model_family(model), frames, cond[0][0],
                                                    shared_tokens, unshared_tokens, lora_rank, lora_alpha, "auto",
                                                    (900, 1000), seed, None, None)


def ksample(comfy_host, model, pos, neg, latent, steps=2):
    with torch.inference_mode():
        return comfy_host.nodes.KSampler().sample(model, 11, steps, 4.0, "euler", "normal", pos, neg, latent,
                                                  denoise=1.0)[0]["samples"]


def state(adapter):
    return {k: v.clone() for k, v in adapter.module.state_dict().items()}


def same_state(a, b):
    a, b = state(a), state(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def model_state(model):
    """Everything of the shared MODEL a trainer could change: its weights (and module tree, through
    the state dict's keys), patches, object patches and model options."""
    weights = {k: v.detach().clone() for k, v in model.model.state_dict().items()}
    return weights, dict(model.patches), dict(model.object_patches), repr(model.model_options)


@pytest.fixture(scope="module")
def trained(comfy_host, mods, full, small):
    """The acceptance run at 64x64 latents, with the shared MODEL's state and sampler output (on the
    small clip) before and after. The repeat check reuses a shorter run: the first REPEAT steps are a
    run of their own (no shared-only phase, so they are the first steps of the long run), the STEPS-step
    adapter resumes it (one STEPS-step run gives the same, see tests/unit/test_training.py), and a
    second REPEAT-step run with the same seed must equal the first bit for bit."""
    model, cond, negative = full[:3]
    weights, patches, object_patches, options = model_state(model)
    before = ksample(comfy_host, model, cond, negative, small[3])
    events = []
    send = mods[1].send_event
    mods[1].send_event = lambda event, data: events.append((event, data))
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        first = train(mods, full, REPEAT, shared_only_fraction=0.0)
        adapter, curve, steps = train(mods, full, STEPS, adapter=first[0])
    finally:
        mods[1].send_event = send
    cost = (time.perf_counter() - wall, time.process_time() - cpu)
    again = train(mods, full, REPEAT, shared_only_fraction=0.0)
    after = ksample(comfy_host, model, cond, negative, small[3])
    now = model_state(model)
    unchanged = (now[0].keys() == weights.keys() and all(torch.equal(now[0][k], weights[k]) for k in weights)
                 and now[1:] == (patches, object_patches, options))
    return dict(adapter=adapter, curve=curve, steps=steps, first=first[0], again=again[0], before=before,
                after=after, unchanged=unchanged, events=events, cost=cost)


def evaluate(mods, setup, adapter, batches=3):
    """Mean (total, denoise, temporal) of the training objective on fixed batches of the adapter's
    frames_per_step frames, and the consistency table at TIMESTEPS over all frames."""
    model, cond, _, latent = setup[:4]
    host = mods[1]
    settings = training.TrainSettings(**adapter.metadata["training"])
    blocks = [tuple(b) for b in adapter.metadata["feature_blocks"]]
    with torch.inference_mode(), host.TrainingDenoiser(model, adapter, blocks) as denoise:
        latents = host.model_space(model, latent["samples"]).clone()
        text, sigmas = cond[0][0].clone(), host.model_sigmas(model)
        objective = training.Objective(adapter, denoise, latents, text, sigmas, settings)
        with torch.no_grad():
            values = [objective(training.draw_batch(settings, 10_000 + i, FRAMES, latents.shape[1:], adapter.window))
                      for i in range(batches)]
        table = training.consistency_table(adapter, denoise, latents, text, sigmas, TIMESTEPS, seed=1)
    return [float(sum(v[j] for v in values) / batches) for j in range(3)], table


@pytest.fixture(scope="module")
def measured(mods, full, trained):
    """evaluate() of an untrained adapter (same seed, same start) and of the trained one."""
    adapter = trained["adapter"]
    model, cond = full[:2]
    fresh = untrained(mods, model, cond, FRAMES)
    fresh.metadata.update(training=adapter.metadata["training"], feature_blocks=adapter.metadata["feature_blocks"])
    return evaluate(mods, full, fresh), evaluate(mods, full, adapter)


def test_training_at_512px_lowers_the_loss_keeps_the_model_and_repeats_bit_for_bit(full, trained, measured):
    adapter, history = trained["adapter"], trained["adapter"].metadata["loss_history"]
    assert full[3]["samples"].shape == (FRAMES, 4, 64, 64)
    assert trained["steps"] == STEPS and trained["curve"].shape == (1, 320, 512, 3)
    assert trained["unchanged"], "training changed the shared MODEL (weights, modules, patches or options)"
    assert torch.equal(trained["before"], trained["after"]), "training changed the shared MODEL's sampler output"
    first, again = trained["first"], trained["again"]
    assert first.metadata["loss_history"] == again.metadata["loss_history"] == history[:REPEAT]
    assert same_state(first, again), "the same seed gave a different adapter"
    assert all(torch.equal(x, y) for i in first.optimizer_state["state"]
               for x, y in zip(first.optimizer_state["state"][i].values(), again.optimizer_state["state"][i].values()))
    settings = training.TrainSettings(**adapter.metadata["training"])
    batches = [training.draw_batch(settings, s, FRAMES, (4, 64, 64), adapter.window) for s in range(STEPS)]
    assert all(len(b.frames) == 2 and b.frames[1] == b.frames[0] + 1 for b in batches)
    starts = sorted({int(b.frames[0]) for b in batches})
    ((t0, d0, tmp0), _), ((t1, d1, tmp1), _) = measured
    print(f"\npairs drawn (first frame): {starts}; loss on 3 fixed batches, untrained -> trained ({STEPS} AdamW "
          f"steps at 64x64 latents): total {t0:.5f} -> {t1:.5f}, denoise {d0:.5f} -> {d1:.5f}, "
          f"temporal {tmp0:.6f} -> {tmp1:.6f}")
    print("per-step total:", " ".join(f"{r['total']:.4f}" for r in history))
    print(f"{STEPS} steps took {trained['cost'][0]:.0f} s wall, {trained['cost'][1]:.0f} s CPU")
    assert len(starts) >= 4, "the pairs do not spread over the clip"
    assert t1 < t0 and tmp1 < tmp0
    assert adapter.metadata["feature_blocks"] == [["output", 0], ["output", 1], ["output", 2], ["output", 3]]
    assert [e[1]["step"] for e in trained["events"] if e[0] == "temporal_adapter.loss"] == list(range(1, STEPS + 1))


def test_trained_adapter_raises_adjacent_frame_cosine(measured):
    (_, untrained), (_, trained_rows) = measured
    print("\n   t | features untrained | features trained | x0 untrained | x0 trained")
    for (t, fu, xu), (_, ft, xt) in zip(untrained, trained_rows):
        print(f"{t:4d} | {fu:18.6f} | {ft:16.6f} | {xu:12.6f} | {xt:10.6f}")
    assert np.mean([r[1] for r in trained_rows]) > np.mean([r[1] for r in untrained])
    assert np.mean([r[2] for r in trained_rows]) > np.mean([r[2] for r in untrained])


def test_the_compatibility_shim_applies_where_needed(mods, small):
    """Fails if the 2024 host's in-place adds stop being detected and rewritten (or if the shim is
    needed but no longer enough); on a host without them it must patch nothing."""
    import copy
    from comfy.ldm.modules.attention import BasicTransformerBlock

    host = mods[1]
    model = small[0]
    old_host = hasattr(BasicTransformerBlock, "_forward")

    def backward(shim):
        with torch.inference_mode(False):
            unet = copy.deepcopy(model.model.diffusion_model).requires_grad_(False)
            count = host.inplace_add_shim(unet) if shim else 0
            x = torch.randn(2, 4, 4, 4, requires_grad=True)
            out = unet(x, torch.full((2,), 950.0), context=torch.randn(2, 77, 768))
            out.square().mean().backward()
            return count, x.grad
    count, grad = backward(shim=True)
    assert grad is not None and torch.isfinite(grad).all()
    if old_host:
        assert count == 7, "the shim no longer applies to the 2024 host's BasicTransformerBlock"
        with pytest.raises(RuntimeError, match="inplace operation"):
            backward(shim=False)
    else:
        assert count == 0


def test_shared_only_phase_and_plain_gd_on_the_clip(mods, small):
    adapter = train(mods, small, 3, optimizer="gd", shared_only_fraction=0.0)[0]
    totals = [r["total"] for r in adapter.metadata["loss_history"]]
    print("\nplain GD, auto step (fixed batch):", totals, "step", adapter.metadata["loss_history"][0]["lr"])
    assert all(b <= a for a, b in zip(totals, totals[1:])) and totals[-1] < totals[0]
    two = train(mods, small, 2, shared_only_fraction=0.0)[0]
    three = train(mods, small, 4, adapter=two, shared_only_fraction=0.5)[0]  # steps 3-4: shared tokens only
    a, b = state(two), state(three)
    assert [k for k in a if not torch.equal(a[k], b[k])] == ["tokens.shared"]


def test_save_load_apply_matches_the_in_memory_adapter(comfy_host, mods, small, trained, adapter_dir):
    """The 512 px adapter saved, loaded and applied in the sampler on the small clip (tokens and LoRA do
    not depend on the frame size)."""
    nodes = mods[0]
    model, cond, negative, latent = small[:4]
    adapter = trained["adapter"]
    with torch.inference_mode():
        name = nodes.TA_SaveAdapter().save(adapter, "carphone")["result"][0]
        assert name == "carphone_00001.safetensors" and os.listdir(adapter_dir) == [name]
        loaded = nodes.TA_LoadAdapter().load(name, model, latent)[0]
        outs = []
        for a in (adapter, loaded):
            m, pos, neg = nodes.TA_ApplyAdapter().apply(model, cond, a, True, negative, latent)
            assert pos[0][0].shape == (FRAMES, 4 + 2 + 77, 768) and neg[0][0].shape == pos[0][0].shape
            outs.append(ksample(comfy_host, m, pos, neg, latent))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], trained["before"])  # the adapter changes the sampler's output
    assert loaded.metadata["loss_history"] == adapter.metadata["loss_history"]
    resumed = train(mods, small, STEPS + 2, adapter=loaded)
    assert resumed[2] == STEPS + 2


def test_save_adapter_names_the_prefix_and_its_fault(mods, adapter_dir):
    """A prefix that would make a hidden or misplaced file is refused naming filename_prefix and the fault;
    nothing is written."""
    adapter = Adapter.create(768, 2, {}, seed=0)
    adapter.metadata["family"] = "SD15"
    cases = [(".hidden", r"filename_prefix: '\.hidden' starts with '\.', which makes a hidden file that Load Adapter "
                         r"does not list; start the name with a letter or digit"),
             ("sub/name", r"filename_prefix: give a plain name without folders, got 'sub/name'")]
    for prefix, message in cases:
        with pytest.raises(ValueError, match=message):
            mods[0].TA_SaveAdapter().save(adapter, prefix)
    assert not os.listdir(adapter_dir)


def test_bad_inputs_give_clear_errors_and_nothing_half_written(comfy_host, mods, small, trained, adapter_dir):
    import comfy.model_management

    nodes, host = mods
    model, latent = small[0], small[3]
    adapter = trained["adapter"]
    with torch.inference_mode():
        name = nodes.TA_SaveAdapter().save(adapter, "ok")["result"][0]
        four = {"samples": latent["samples"][:4]}
        with pytest.raises(ValueError, match="frames is 8 in the adapter but 4 in the clip"):
            nodes.TA_LoadAdapter().load(name, model, four)
        wide = Adapter.create(1024, FRAMES, {}, seed=0)
        wide.metadata["family"] = "SD15"
        wide.save(str(adapter_dir / "wide.safetensors"))
        with pytest.raises(ValueError, match="width is 1024 in the adapter but 768 in the model"):
            nodes.TA_LoadAdapter().load("wide.safetensors", model, latent)
        (adapter_dir / "broken.safetensors").write_bytes(b"not a safetensors file at all")
        with pytest.raises(ValueError, match="broken.safetensors: not a valid adapter file: it cannot be read"):
            nodes.TA_LoadAdapter().load("broken.safetensors", model, latent)
    two = train(mods, small, 2, shared_only_fraction=0.0)[0]
    with pytest.raises(ValueError, match=r"training diverged at step 4: the loss (became NaN/inf|exploded .*)\. The "
                                         r"adapter keeps the weights of step 2, from before the update that diverged\. "
                                         r"Try learning_rate 0\.01 instead of 1e\+30 .* No step of this run had "
                                         r"completed, so nothing was saved \(the adapter it resumed from is unchanged"):
        train(mods, small, 6, adapter=two, learning_rate="1e30")
    calls, denoise = [0], host.TrainingDenoiser.__call__

    def nan_at_step_four(self, x, sigma, context):
        calls[0] += 1
        out, features = denoise(self, x, sigma, context)
        return (out * float("nan"), features) if calls[0] == 4 else (out, features)
    host.TrainingDenoiser.__call__ = nan_at_step_four
    try:
        with pytest.raises(ValueError, match=r"training diverged at step 4: the loss became NaN/inf\. The adapter "
                                             r"keeps the weights of step 2, from before the update that diverged\..* "
                                             r"The adapter of the last completed step was saved to .*diverged-"):
            train(mods, small, 6, shared_only_fraction=0.0)
    finally:
        host.TrainingDenoiser.__call__ = denoise
    saved = [f for f in os.listdir(adapter_dir) if f.startswith("diverged-")]
    assert len(saved) == 1 and saved[0].endswith("-step2.safetensors")
    assert same_state(Adapter.load(str(adapter_dir / saved[0])), two)  # the weights before the update at step 3
    for text in ("nan", "inf", "-1", "fast"):
        with pytest.raises(ValueError, match=rf"learning_rate: (must be a finite number > 0, got '{text}'|write a "
                                             "positive number or 'auto')"):
            train(mods, small, 2, learning_rate=text)
    with pytest.raises(ValueError, match=r"LoRA window: window_start must be at least 0 and below window_end, got "
                                         r"\[900, 900\)"):
        train(mods, small, 2, window_start=900, window_end=900)

    send = host.send_event

    def interrupt_after_three(event, data):
        if data["step"] == 3:
            comfy.model_management.interrupt_current_processing(True)
    host.send_event = interrupt_after_three
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            train(mods, small, 8)
    finally:
        host.send_event = send
        comfy.model_management.interrupt_current_processing(False)
    stopped = [f for f in os.listdir(adapter_dir) if f.startswith("interrupted-")]
    assert len(stopped) == 1 and Adapter.load(str(adapter_dir / stopped[0])).metadata["loss_history"][-1]["step"] == 3
    assert not [f for f in os.listdir(adapter_dir) if f.startswith(".")]  # no temporary file left


def test_load_adapter_refuses_a_misfit_or_damaged_file_by_name(mods, small, adapter_dir):
    """A LoRA whose shape does not fit the model names the file, the layer and both shapes; a file with bad
    metadata or NaN weights is "not a valid adapter file" (every form: tests/unit/test_tokens_lora_adapter.py)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    nodes, host = mods
    model, latent = small[0], small[3]
    linears = host.attention_linears(model)
    layer, (i, o) = sorted(linears.items())[0]
    Adapter.create(768, FRAMES, {**linears, layer: (i + 8, o)}).save(str(adapter_dir / "misfit.safetensors"))
    good = Adapter.create(768, FRAMES, linears).save(str(adapter_dir / "good.safetensors"))
    tensors = load_file(good)
    save_file(tensors, str(adapter_dir / "nojson.safetensors"), metadata={"temporal_adapter": "{'frames': 8"})
    tensors["tokens.shared"][1, 2] = float("nan")
    with safe_open(good, "pt") as f:  # the valid metadata, a NaN weight
        save_file(tensors, str(adapter_dir / "nan.safetensors"), metadata=f.metadata())
    cases = {"misfit.safetensors": rf"misfit.safetensors: adapter does not fit: the LoRA on layer {re.escape(layer)} "
                                   rf"is {i + 8}->{o} \(in->out features\) in the adapter but {i}->{o} in the model",
             "nojson.safetensors": r"nojson.safetensors: not a valid adapter file: its 'temporal_adapter' metadata "
                                   r"is not JSON",
             "nan.safetensors": r"nan.safetensors: not a valid adapter file: tensor 'tokens.shared' holds NaN"}
    with torch.inference_mode():
        for name, message in cases.items():
            with pytest.raises(ValueError, match=rf"^{message}"):
                nodes.TA_LoadAdapter().load(name, model, latent)
        assert nodes.TA_LoadAdapter().load("good.safetensors", model, latent)[0].frames == FRAMES


# ---- unshared tokens projected from CLIP vision ----------------------------------------------------
TINY_CLIP_VISION = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "quick_gelu", "hidden_size": 64,
                    "image_size": 224, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 128,
                    "layer_norm_eps": 1e-05, "model_type": "clip_vision_model", "num_attention_heads": 4,
                    "num_channels": 3, "num_hidden_layers": 2, "patch_size": 14, "projection_dim": 32,
                    "torch_dtype": "float32"}


def tiny_clip_vision(folder):
    """A CLIP_VISION built by the host's own class from a small config (2 layers, width 64, 224 px, patch
    14, 32-d embeddings) with deterministic random weights, inside inference mode like the host's
    loader node (no CLIP vision weights can be downloaded)."""
    import comfy.clip_vision
    from make_weights import fill

    config = folder / "clip_vision_tiny.json"
    config.write_text(json.dumps(TINY_CLIP_VISION))
    with torch.inference_mode():
        vision = comfy.clip_vision.ClipVisionModel(str(config))
        missing, unexpected = vision.load_sd({k: v.float() for k, v in fill(vision.get_sd(), 300).items()})
    assert not missing and not unexpected
    return vision


def test_clip_vision_tokens_are_each_frames_own_from_training_to_the_sampler(comfy_host, mods, small, adapter_dir,
                                                                             tmp_path):
    nodes = mods[0]
    model, cond, negative, latent, images = small
    vision = tiny_clip_vision(tmp_path)
    adapter = train(mods, small, 4, clip_vision=vision, images=images)[0]
    assert adapter.metadata["unshared_form"] == "clip_vision" and adapter.metadata["vision_dim"] == 32
    with torch.inference_mode():
        embeds = vision.encode_image(images).image_embeds.float()
    assert embeds.shape == (FRAMES, 32) and torch.equal(adapter.tokens.vision, embeds)
    assert all(not torch.equal(embeds[i], embeds[i + 1]) for i in range(FRAMES - 1))
    with torch.inference_mode(False):
        start = nodes.TA_TrainAdapter._new_adapter(model, "SD15", FRAMES, cond[0][0], 4, 2, 4, 4.0, "auto",
                                                   (900, 1000), 3, vision, images)
    assert not torch.equal(start.tokens.projection.weight, adapter.tokens.projection.weight)  # it was trained

    with torch.inference_mode():
        name = nodes.TA_SaveAdapter().save(adapter, "vision")["result"][0]
        loaded = nodes.TA_LoadAdapter().load(name, model, latent)[0]
        assert loaded.metadata["unshared_form"] == "clip_vision" and same_state(loaded, adapter)
        applied = [nodes.TA_ApplyAdapter().apply(model, cond, a, False, negative, latent) for a in (adapter, loaded)]
        outs = [ksample(comfy_host, m, pos, neg, latent) for m, pos, neg in applied]
        # What the sampler would get if every frame used frame 0's tokens (the reference code's bug).
        with torch.inference_mode(False), torch.no_grad():
            frame0 = loaded.copy()
            frame0.tokens.vision.copy_(frame0.tokens.vision[:1].expand(FRAMES, -1))
        m, pos0, neg0 = nodes.TA_ApplyAdapter().apply(model, cond, frame0, False, negative, latent)
        out0 = ksample(comfy_host, m, pos0, neg0, latent)
    assert torch.equal(outs[0], outs[1]), "save -> load -> apply changed the sampler output"
    tokens = applied[1][1][0][0]  # positive conditioning [frames, S + U + 77, 768]
    assert tokens.shape == (FRAMES, 4 + 2 + 77, 768)
    shared, unshared = tokens[:, :4], tokens[:, 4:6]
    assert all(torch.equal(shared[0], shared[i]) for i in range(FRAMES))
    assert all(not torch.allclose(unshared[i], unshared[j]) for i in range(FRAMES) for j in range(i))
    with torch.no_grad():
        expected = loaded.tokens.projection(embeds).view(FRAMES, 2, 768)
    torch.testing.assert_close(unshared, expected)  # each frame's tokens from that frame's own embedding
    assert torch.equal(out0[0], outs[1][0]) and all(not torch.equal(out0[f], outs[1][f]) for f in range(1, FRAMES))
