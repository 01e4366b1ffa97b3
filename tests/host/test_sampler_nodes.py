"""Temporal-consistency sampler in the real host: equivalence with KSampler, round trip, each mechanism,
chunk seams, composition with upstream patches, SAMPLER for SamplerCustom, bad input.

Scale: the tiny SD1.5 (attention blocks input 1, output 0, output 1), 6 frames of 64x64 px (8x8 latents),
5 DDIM steps (5 divides 1000, so our schedule is ComfyUI's ddim_uniform). One UNet call on 12 latents
takes ~0.5-1 s on this shared 2-core machine, so runs are cached within the module.
"""
import pytest
import torch

from temporal_adapter.adapter_core.adapter import Adapter
from temporal_adapter.adapter_core.temporal_loss import cosine_similarity_adjacent
from test_inversion_nodes import encode, frames_of, invert, load, rel_error

pytestmark = pytest.mark.usefixtures("big_model_turn")  # full-size checkpoints (conftest)

CKPT = "ta_tiny_sd15.safetensors"
STEPS = 5
FRAMES = 6
ALL_OFF = dict(use_adapter=False, temporal_filter=False, keyframe_attention=False, inject_source=False)
ALL_ON = dict(use_adapter=True, temporal_filter=True, keyframe_attention=True, inject_source=True)


@pytest.fixture(scope="module")
def mods(comfy_host):
    from temporal_adapter.nodes import inversion_nodes, sampler_nodes
    return inversion_nodes, sampler_nodes


@pytest.fixture(scope="module")
def setup(comfy_host, tiny_model, clips, mods):
    """Model, source prompt, edit prompt, negative, VAE, 8 frames of bikes.mp4 and their inversion."""
    model, clip, vae = tiny_model
    with torch.inference_mode():
        source, edit, negative = (comfy_host.nodes.CLIPTextEncode().encode(clip, text)[0] for text in
                                  ("people riding bikes", "people riding horses, oil painting", ""))
    latent = encode(comfy_host, vae, frames_of(clips["bikes.mp4"], FRAMES, 64))
    noise, inv, _ = invert(mods[0], model, source, latent, STEPS)
    return model, source, edit, negative, vae, latent, noise, inv


_runs = {}


def edit_run(mods, setup, **switches):
    """The edit (cfg 4, edit prompt, from the inversion) with these switches, computed once per module."""
    key = tuple(sorted(switches.items()))
    if key not in _runs:
        model, _, prompt, negative, _, _, _, inv = setup
        _runs[key] = sample(mods, model, prompt, negative, inv, cfg=4.0, **switches)
    return _runs[key]


def sample(mods, model, positive, negative, inv=None, latent=None, cfg=1.0, adapter=None, steps=STEPS, **switches):
    args = dict(ALL_OFF, keyframes=3, keyframe_stride=0, attention_fraction=0.5, feature_fraction=0.8,
                frames_per_chunk=16, chunk_overlap=4)
    args.update(switches)
    with torch.inference_mode():
        out, report = mods[1].ConsistencySampler().sample(model, positive, negative, steps, cfg, 0, inversion=inv,
                                                          latent=latent, adapter=adapter, **args)
    return out["samples"], report


def test_all_off_reproduces_the_source_and_matches_ksampler(comfy_host, mods, setup):
    """cfg 1: the round trip equals the inverter's own reconstruction readout (same path) and is within
    its error of the source; cfg 1 and 4: equal to ComfyUI's KSamplerAdvanced (ddim, ddim_uniform, no
    added noise) started from the inversion's noise, to 1e-4."""
    model, source, edit, negative, _, latent, noise, inv = setup
    out, report = sample(mods, model, source, negative, inv)
    with torch.inference_mode():
        recon = mods[0].InversionReconstruct().reconstruct(model, source, inv, "test/recon")["result"][0]["samples"]
    torch.testing.assert_close(out, recon, rtol=1e-5, atol=1e-5)
    # Same path as the readout, so the same error (random weights: plain DDIM inversion is far from exact).
    assert abs(rel_error(out, latent["samples"]) - rel_error(recon, latent["samples"])) < 1e-4
    assert "x0 adjacent-frame cosine per step" in report
    for cfg, positive, ours in ((1.0, source, out), (4.0, edit, edit_run(mods, setup)[0])):
        with torch.inference_mode():
            theirs = comfy_host.nodes.KSamplerAdvanced().sample(
                model, "disable", 0, STEPS, cfg, "ddim", "ddim_uniform", positive, negative, noise, 0, 10000,
                "disable")[0]["samples"]
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("switch", ["temporal_filter", "keyframe_attention"])
def test_smoothing_mechanisms_raise_adjacent_cosine(mods, setup, switch):
    """The edit (cfg 4, another prompt) of 6 frames. Asserted for the two mechanisms that make frames
    alike by construction, whatever the weights: the filter averages attn1 outputs along frames, and
    keyframe attention gives every frame the same extra keys/values. (Source injection and the adapter
    are measured, not asserted, in benchmarks/sampler.py: injection copies the SOURCE clip's structure,
    so it raises consistency only where the source is more consistent than the free edit; the adapter's
    effect depends on its training.)"""
    off, _ = edit_run(mods, setup)
    on, report = edit_run(mods, setup, **{switch: True})
    c_off, c_on = (float(cosine_similarity_adjacent(x).mean()) for x in (off, on))
    print(f"\n{switch}: adjacent cosine off {c_off:.5f} on {c_on:.5f}")
    assert c_on > c_off


def test_keyframe_attention_equals_extending_the_attention_inputs(mods, setup, monkeypatch):
    """Keyframe attention appends the keyframes' projected keys/values; an independent reference appends
    the keyframe rows' attn1 INPUTS before the projections (an attn1 patch, per CFG half) and runs the
    host's own attention: the projections act per token, so both must give the same edit. On CPU ours
    runs the host's torch SDPA function (`host.long_key_attention`) on the 4x longer keys. Also: an attn1
    replace already on the model keeps acting (ours calls it with the extended keys/values)."""
    import functools

    import comfy.ldm.modules.attention as attention
    model, _, prompt, negative, _, _, _, inv = setup
    rows = mods[1].keyframe_indices(FRAMES, 3, 0)
    sdpa, sdpa_keys = attention.attention_pytorch, []

    @functools.wraps(sdpa)
    def counting_sdpa(q, k, v, *args, **kwargs):
        sdpa_keys.append(k.shape[1] // q.shape[1])
        return sdpa(q, k, v, *args, **kwargs)

    def reference(n, context, value, extra_options):
        def extend(t):
            return torch.cat([torch.cat([c, c[rows].reshape(1, -1, c.shape[-1]).expand(c.shape[0], -1, -1)], 1)
                              for c in t.chunk(len(extra_options["cond_or_uncond"]))])
        return n, extend(context), extend(value)
    patched = model.clone()
    patched.set_model_attn1_patch(reference)
    expected, _ = sample(mods, patched, prompt, negative, inv, cfg=4.0)
    assert attention.optimized_attention is not sdpa  # the reference ran the host's CPU default
    monkeypatch.setattr(attention, "attention_pytorch", counting_sdpa)
    ours, report = sample(mods, model, prompt, negative, inv, cfg=4.0, keyframe_attention=True)
    monkeypatch.undo()
    assert f"keyframe attention: on (frames {rows})" in report
    assert len(sdpa_keys) == 3 * STEPS and set(sdpa_keys) == {4}  # 3 attention blocks, one batched call per step
    # Two attention algorithms (torch SDPA, the host's sub-quadratic one) sum in different orders, which
    # also change with the thread count: with one torch thread 1 of the 1536 values differed by 1.3e-4.
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=2e-4)

    seen = []

    def upstream(q, k, v, extra_options):
        seen.append(k.shape[1] // q.shape[1])  # keys per query token: 1 + keyframes
        return torch.nn.functional.scaled_dot_product_attention(
            *(t.view(t.shape[0], -1, extra_options["n_heads"], t.shape[-1] // extra_options["n_heads"]).transpose(1, 2)
              for t in (q, k, v))).transpose(1, 2).reshape(q.shape)
    replaced = model.clone()
    replaced.set_model_attn1_replace(upstream, "output", 1)
    out, _ = sample(mods, replaced, prompt, negative, inv, cfg=4.0, keyframe_attention=True)
    assert seen and set(seen) == {4}
    torch.testing.assert_close(out, ours, rtol=1e-4, atol=1e-4)


def test_source_injection_keeps_the_source_structure(mods, setup):
    """What injection must do: the edit stays closer to the source latents than without it."""
    latent = setup[5]["samples"]
    off, _ = edit_run(mods, setup)
    on, report = edit_run(mods, setup, inject_source=True)
    assert "source injection: on (attention 0.5 on output 0, output 1; features 0.8 on output 1)" in report
    print(f"\ndistance to source: off {rel_error(off, latent):.4f} on {rel_error(on, latent):.4f}")
    assert rel_error(on, latent) < rel_error(off, latent)


def test_source_passes_that_stop_early_change_nothing(mods, setup, monkeypatch):
    """A source pass ends once it has recorded what its step injects (attention steps: at the tiny model's
    last attn1 input; feature steps: on entering its feature block); the edit must be bit-identical to
    one whose source passes run the whole UNet."""
    from temporal_adapter.adapter_core.attention import SourceInjection
    stops = []
    needed = SourceInjection.needed

    def counted(self):
        keys = needed(self)
        if keys <= self.store.keys():
            stops.append(list(self.store)[-1])  # the key whose record ends the pass
        return keys
    monkeypatch.setattr(SourceInjection, "needed", counted)
    model, _, prompt, negative, _, _, _, inv = setup
    early, _ = sample(mods, model, prompt, negative, inv, cfg=4.0, inject_source=True, feature_fraction=1.0)
    assert set(stops) == {("attn1", "output", 1, 0), ("features", "output", 1)}
    monkeypatch.setattr(SourceInjection, "needed", lambda self: {"never recorded"})
    full, _ = sample(mods, model, prompt, negative, inv, cfg=4.0, inject_source=True, feature_fraction=1.0)
    assert torch.equal(early, full)


def watch_shrinks(monkeypatch):
    """A list that records (block, size in, size out) of every hidden state `SourceInjection` shrinks."""
    from temporal_adapter.adapter_core.attention import SourceInjection
    shrunk, shrink = [], SourceInjection.input_block

    def watched(self, h, options):
        out = shrink(self, h, options)
        if out is not h:
            shrunk.append((options["block"], tuple(h.shape[2:]), tuple(out.shape[2:])))
        return out
    monkeypatch.setattr(SourceInjection, "input_block", watched)
    return shrunk


def with_foreign_patch(model):
    """A clone carrying another node's (no-op) attn1 patch."""
    clone = model.clone()
    clone.set_model_attn1_patch(lambda n, context, value, extra_options: (n, context, value))
    return clone


def test_unread_blocks_shrink_without_changing_the_edit(comfy_host, mods, setup, monkeypatch):
    """Feature steps replace the hidden state entering output 1 (the tiny model's feature block), so the edit
    pass runs input 1, the middle block and output 0 on a 1x1 latent. With every mechanism on, in chunks
    with keyframe rows, the edit must be bit-identical to one that runs those blocks at full size. Another
    node's patch on the MODEL, or control in the conditioning, keeps every block at full size."""
    from temporal_adapter.nodes import host
    shrunk = watch_shrinks(monkeypatch)
    model, _, prompt, negative, _, _, _, inv = setup
    adapter = Adapter.create(768, FRAMES, host.attention_linears(model), window=(0, 1000))
    switches = dict(ALL_ON, adapter=adapter, frames_per_chunk=4, chunk_overlap=2)
    fast, _ = sample(mods, model, prompt, negative, inv, cfg=4.0, **switches)
    runs, feature_steps = 2, round(0.8 * STEPS)
    assert shrunk == [(("input", 0), (8, 8), (1, 1))] * (runs * feature_steps)

    shrunk.clear()
    full, report = sample(mods, with_foreign_patch(model), prompt, negative, inv, cfg=4.0, **switches)
    assert shrunk == [] and torch.equal(fast, full)
    assert "still run at full size" in report
    controlled = [[prompt[0][0], {**prompt[0][1], "control": object()}]]
    assert host.reaches_inside_unet(model, negative, controlled) and not host.reaches_inside_unet(model, prompt)


def test_unread_blocks_shrink_on_the_sd15_layout(comfy_host, mods, clips, monkeypatch):
    """The full SD1.5 architecture (860M random weights; 3 frames at 96 px: latents 12x12, levels 12, 6,
    3, 2): feature injection on output 4 reads the skip of input 7, so the edit shrinks after input 7 and
    runs input 8-11 (one downsample), the middle block and output 0-3 (one upsample) on 1x1. The edit must
    be bit-identical to the one at full size."""
    shrunk = watch_shrinks(monkeypatch)
    model, cond, vae = load(comfy_host, "ta_full_sd15.safetensors")
    latent = encode(comfy_host, vae, frames_of(clips["bikes.mp4"], 3, 96))
    _, inv, _ = invert(mods[0], model, cond, latent, 2)
    switches = dict(inject_source=True, keyframe_attention=True, temporal_filter=True, feature_fraction=1.0)
    fast, report = sample(mods, model, cond, cond, inv, cfg=2.0, steps=2, **switches)
    assert "features 1 on output 4" in report
    assert shrunk == [(("input", 7), (3, 3), (1, 1))] * 2
    full, _ = sample(mods, with_foreign_patch(model), cond, cond, inv, cfg=2.0, steps=2, **switches)
    assert len(shrunk) == 2 and torch.equal(fast, full)


def test_adapter_tokens_and_lora_reach_the_unet(mods, setup):
    """Mechanism 1 through the host's adapter helpers: a fresh adapter (random tokens, LoRA up = 0) with
    its window over every step changes the edit only through its tokens; switched off, it is ignored."""
    from temporal_adapter.nodes import host
    model, _, prompt, negative, _, _, _, inv = setup
    adapter = Adapter.create(768, FRAMES, host.attention_linears(model), window=(0, 1000))
    on, report = sample(mods, model, prompt, negative, inv, cfg=4.0, adapter=adapter, use_adapter=True)
    off, _ = sample(mods, model, prompt, negative, inv, cfg=4.0, adapter=adapter, use_adapter=False)
    assert "adapter: on" in report
    assert torch.equal(off, edit_run(mods, setup)[0]) and not torch.allclose(on, off)


@pytest.mark.parametrize("chunking", [{}, dict(frames_per_chunk=4, chunk_overlap=2, keyframe_attention=True)],
                         ids=["one chunk", "chunks with keyframe rows"])
def test_adapter_tokens_in_cross_attention_equal_prepending_them(mods, setup, monkeypatch, chunking):
    """The sampler gives the adapter's tokens to the cond half inside cross-attention, so each step is one
    UNet call on both CFG halves. The edit must equal the one from the tokens prepended to the positive
    prompt (`host.adapter_conditioning`, as the trainer and Apply Adapter do), which the host runs as
    two calls per step (prompts of different lengths are not batched); also per chunk, where every run
    carries extra keyframe rows whose tokens are those of the keyframes' frames."""
    from temporal_adapter.nodes import host
    model, _, prompt, negative, _, _, _, inv = setup
    adapter = Adapter.create(768, FRAMES, host.attention_linears(model), window=(0, 1000))
    unet, batches = model.model.diffusion_model, []
    forward = unet.forward

    def counting(x, *args, **kwargs):
        batches.append(x.shape[0])
        return forward(x, *args, **kwargs)
    monkeypatch.setattr(unet, "forward", counting)
    ours, _ = sample(mods, model, prompt, negative, inv, cfg=4.0, adapter=adapter, use_adapter=True, **chunking)
    ours_batches, batches[:] = list(batches), []
    expected, _ = sample(mods, host.adapter_model(model, adapter), host.adapter_conditioning(prompt, adapter, FRAMES),
                         negative, inv, cfg=4.0, **chunking)
    runs = 1 if not chunking else 2
    assert len(ours_batches) == runs * STEPS and len(batches) == 2 * runs * STEPS
    assert sum(ours_batches) == sum(batches)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_run_state_reaches_the_model_the_host_samples(mods, setup, monkeypatch):
    """Every mechanism on, in chunks with extra keyframe rows: the sampler sets per-run state on its patch
    objects (filter rows to skip, keyframe rows, token rows, injection mode) after installing them on
    model clones, and the 2024 host deep-copies a model's options at every clone. The state must reach
    the patches the UNet calls: the filter sees only each chunk's own 4 rows, never the 3 extra keyframe
    rows, and the edit pass really injects (regression: both were silently lost once keyframe attention
    added a clone after them)."""
    import temporal_adapter.adapter_core.attention as attention
    from temporal_adapter.nodes import host
    model, _, prompt, negative, _, _, _, inv = setup
    filtered, injected = [], []
    bilateral, swap = attention.temporal_bilateral, attention.SourceInjection._swap
    monkeypatch.setattr(attention, "temporal_bilateral", lambda x, *a: filtered.append(x.shape[0]) or bilateral(x, *a))
    monkeypatch.setattr(attention.SourceInjection, "_swap",
                        lambda self, key, x, chunks: injected.append(self.mode) or swap(self, key, x, chunks))
    adapter = Adapter.create(768, FRAMES, host.attention_linears(model), window=(0, 1000))
    sample(mods, model, prompt, negative, inv, cfg=4.0, adapter=adapter, frames_per_chunk=4, chunk_overlap=2, **ALL_ON)
    assert filtered and set(filtered) == {4}
    assert "record" in injected and "inject" in injected


def test_incoming_model_untouched_and_upstream_patches_kept(comfy_host, mods, setup):
    model, source, edit, negative, _, latent, _, inv = setup
    nodes = comfy_host.nodes

    def ksample(m):
        with torch.inference_mode():
            return nodes.KSampler().sample(m, 7, 3, 4.0, "euler", "normal", edit, negative, latent,
                                           denoise=0.6)[0]["samples"]
    before = ksample(model)
    options = repr(model.model_options)
    sample(mods, model, edit, negative, inv, cfg=4.0, **ALL_ON)
    assert repr(model.model_options) == options
    assert torch.equal(ksample(model), before)
    # An upstream attn1 output patch (scales attention output) keeps acting under ours.
    calls = []

    def upstream(n, extra_options):
        calls.append(extra_options["block"])
        return n * 0.5
    patched = model.clone()
    patched.set_model_attn1_output_patch(upstream)
    out, _ = sample(mods, patched, edit, negative, inv, cfg=4.0, **ALL_ON)
    plain, _ = edit_run(mods, setup, **ALL_ON)
    assert calls and not torch.allclose(out, plain)


def test_chunks_share_keyframes_and_leave_no_seam(comfy_host, mods, clips, setup):
    """48 frames in chunks of 16 with overlap 4 (4 chunks): the adjacent cosine across each chunk border
    is within 10% of the mean inside chunks. 32x32 px frames (4x4 latents) keep 48 frames affordable."""
    model, source, edit, negative, vae, _, _, _ = setup
    latent = encode(comfy_host, vae, frames_of(clips["bikes.mp4"], 48, 32))
    _, inv, _ = invert(mods[0], model, source, latent, 4, chunk=16)
    out, report = sample(mods, model, edit, negative, inv, cfg=1.0, steps=4, temporal_filter=True,
                         keyframe_attention=True, inject_source=True)  # cfg 1: no negative branch, half the cost
    assert "4 chunk(s) (0-15, 11-26, 21-36, 32-47)" in report
    cos = cosine_similarity_adjacent(out)
    borders = [10, 15, 20, 26, 31, 36]  # pairs (t, t+1) where a chunk starts or ends
    inside = torch.ones_like(cos, dtype=torch.bool)
    inside[borders] = False
    mean_inside = float(cos[inside].mean())
    print(f"\ninside mean {mean_inside:.4f}; borders {[round(float(cos[b]), 4) for b in borders]}")
    for b in borders:
        assert abs(float(cos[b]) - mean_inside) <= 0.1 * abs(mean_inside)


def test_sampler_for_sampler_custom(comfy_host, mods, setup):
    """All off it is the host's own ddim; the filter and keyframes act through SamplerCustom's model options
    exactly as in the node (here started from the noise LATENT instead of the INVERSION: same start)."""
    from comfy_extras import nodes_custom_sampler as ncs
    model, _, edit, negative, _, _, noise, inv = setup
    with torch.inference_mode():
        sigmas = ncs.BasicScheduler().get_sigmas(model, "ddim_uniform", STEPS, 1.0)[0]

        def run(**switches):
            sampler = mods[1].ConsistencySamplerCustom().get_sampler(model, keyframes=3, keyframe_stride=0,
                                                                     **switches)[0]
            out = ncs.SamplerCustom().sample(model, False, 0, 4.0, edit, negative, sampler, sigmas, noise)[0]
            return out["samples"]
        off = run(temporal_filter=False, keyframe_attention=False)
        on = run(temporal_filter=True, keyframe_attention=True)
    ours, report = sample(mods, model, edit, negative, latent=noise, cfg=4.0, temporal_filter=True,
                          keyframe_attention=True, inject_source=True)
    assert "source injection skipped: it needs an INVERSION" in report
    torch.testing.assert_close(off, edit_run(mods, setup)[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(on, ours, rtol=1e-4, atol=1e-4)


def test_bad_input_gives_clear_errors(comfy_host, mods, setup):
    model, source, edit, negative, vae, latent, noise, inv = setup
    with pytest.raises(ValueError, match="cfg: must be > 0"):
        sample(mods, model, edit, negative, inv, cfg=0.0)
    with pytest.raises(ValueError, match="keyframe_stride: 9 does not fit a clip of 6 frames"):
        sample(mods, model, edit, negative, inv, keyframe_attention=True, keyframe_stride=9)
    with pytest.raises(ValueError, match="inversion: frames/latent size"):
        sample(mods, model, edit, negative, inv, latent={"samples": noise["samples"][:5]})
    other = model.clone()
    other.add_patches({k: (torch.zeros_like(v),) for k, v in list(model.model_state_dict().items())[:1]}, 0.5)
    with pytest.raises(ValueError, match="inversion: it was computed with a different model"):
        sample(mods, other, edit, negative, inv)
    with pytest.raises(ValueError, match="inversion: connect an INVERSION"):
        sample(mods, model, edit, negative)
    with pytest.raises(ValueError, match="steps: the inversion was made with 5 steps"):
        with torch.inference_mode():
            mods[1].ConsistencySampler().sample(model, edit, negative, 12, 1.0, 0, inversion=inv, **ALL_OFF,
                                                keyframes=3, keyframe_stride=0, attention_fraction=0.5,
                                                feature_fraction=0.8, frames_per_chunk=0, chunk_overlap=0)
    with pytest.raises(ValueError, match="chunk_overlap: 4 must be from 0"):
        sample(mods, model, edit, negative, inv, frames_per_chunk=4)
    three_frames = Adapter.create(768, 3, {})
    with pytest.raises(ValueError, match="adapter does not fit: frames is 3 in the adapter but 6 in the clip"):
        sample(mods, model, edit, negative, inv, adapter=three_frames, use_adapter=True)
    two_prompts = [[torch.cat([edit[0][0]] * 2), dict(edit[0][1])]]
    with pytest.raises(ValueError, match="positive: batch of 2 prompts does not match the latent's 6 frames"):
        sample(mods, model, two_prompts, negative, inv)


def test_a_v_prediction_model_matches_ksampler_and_runs_every_mechanism(comfy_host, mods, setup):
    """A v-prediction model (the host's ModelSamplingDiscrete patch, as SD2.x-v loads): all off, the edit
    equals KSamplerAdvanced (ddim, ddim_uniform) from the inversion's noise to 1e-4; every mechanism on
    (adapter, filter, keyframes, injection with the shrunk unread blocks), the edit is finite and differs."""
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete

    from temporal_adapter.nodes import host
    model, source, edit, negative, _, latent, _, _ = setup
    model = ModelSamplingDiscrete().patch(model, "v_prediction", False)[0]
    noise, inv, _ = invert(mods[0], model, source, latent, STEPS)
    off, _ = sample(mods, model, edit, negative, inv, cfg=4.0)
    with torch.inference_mode():
        theirs = comfy_host.nodes.KSamplerAdvanced().sample(model, "disable", 0, STEPS, 4.0, "ddim", "ddim_uniform",
                                                            edit, negative, noise, 0, 10000, "disable")[0]["samples"]
    torch.testing.assert_close(off, theirs, rtol=1e-4, atol=1e-4)
    adapter = Adapter.create(768, FRAMES, host.attention_linears(model), window=(0, 1000))
    on, report = sample(mods, model, edit, negative, inv, cfg=4.0, adapter=adapter, **ALL_ON)
    assert "still run at full size" not in report
    assert torch.isfinite(on).all() and not torch.allclose(on, off)


def test_every_mechanism_on_a_two_level_model(comfy_host, mods, clips):
    """A model with two resolution levels (attention blocks input 1, 3, middle, output 0..3): the
    mechanisms pick its blocks (filter on its last two output blocks, injection on its output blocks,
    keyframes on every attention block), chunked with shared keyframes, adapter on; the result is
    finite and differs from the all-off edit."""
    from temporal_adapter.nodes import host
    with torch.inference_mode():
        model, clip, vae = comfy_host.nodes.CheckpointLoaderSimple().load_checkpoint("ta_twolevel_sd15.safetensors")[:3]
        source, edit, negative = (comfy_host.nodes.CLIPTextEncode().encode(clip, text)[0] for text in
                                  ("people riding bikes", "people riding horses", ""))
    latent = encode(comfy_host, vae, frames_of(clips["bikes.mp4"], 8, 64))
    _, inv, _ = invert(mods[0], model, source, latent, 3)
    adapter = Adapter.create(768, 8, host.attention_linears(model), window=(0, 1000))
    on, report = sample(mods, model, edit, negative, inv, cfg=4.0, steps=3, adapter=adapter, frames_per_chunk=6,
                        chunk_overlap=2, **ALL_ON)
    off, _ = sample(mods, model, edit, negative, inv, cfg=4.0, steps=3)
    print("\n" + report)
    assert "8 frames, 3 steps, 2 chunk(s) (0-5, 2-7)" in report and "keyframe attention: on (frames [0, 4, 7])" in report
    assert "temporal filter: on (output 2, output 3, kernel 5)" in report
    assert "features 0.8 on output 3" in report
    assert on.shape == latent["samples"].shape and torch.isfinite(on).all()
    assert not torch.allclose(on, off)


def test_apply_adapter_refuses_another_frame_count_when_sampling_starts(comfy_host, mods, setup):
    """Apply Adapter with no latent connected cannot check the frame count: its model patch does, at the
    first model call. KSampler on 4 frames with a 6-frame adapter fails by name; on 6 frames it runs. This
    sampler picks the per-frame conditioning rows itself, so it samples the applied model and conditioning
    in chunks of 4 frames."""
    from temporal_adapter.nodes import adapter_nodes, host
    model, _, edit, negative, _, latent, _, inv = setup
    adapter = Adapter.create(768, FRAMES, host.attention_linears(model), window=(0, 1000))
    with torch.inference_mode():
        applied, positive, negative = adapter_nodes.TA_ApplyAdapter().apply(model, edit, adapter, True, negative)
        four = {"samples": latent["samples"][:4]}
        with pytest.raises(ValueError, match="adapter: it was trained on 6 frames but the sampler runs 4 frames at "
                                             "once; sample a latent of 6 frames"):
            comfy_host.nodes.KSampler().sample(applied, 0, 1, 4.0, "euler", "normal", positive, negative, four)
        out = comfy_host.nodes.KSampler().sample(applied, 0, 1, 4.0, "euler", "normal", positive, negative,
                                                 latent)[0]["samples"]
    assert out.shape == latent["samples"].shape and torch.isfinite(out).all()
    chunked, report = sample(mods, applied, positive, negative, inv, cfg=4.0, frames_per_chunk=4, chunk_overlap=2)
    assert "2 chunk(s) (0-3, 2-5)" in report and torch.isfinite(chunked).all()
