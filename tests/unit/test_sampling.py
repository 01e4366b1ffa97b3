"""Sampler core without a host: chunk plans and cross-fades, keyframes, the attention patches, the
per-step cosine, and the source pass of `sample_consistent` on a toy denoiser."""
import pytest
import torch

from temporal_adapter.adapter_core import ddim
from temporal_adapter.adapter_core.attention import (ContextTokens, KeyframeAttention, SourceInjection,
                                                     SourceRecorded, TemporalAttn1Filter, keyframe_indices)
from temporal_adapter.adapter_core.chunking import blend_weights, overlap_plan, run_blended
from temporal_adapter.adapter_core.inversion import Inversion
from temporal_adapter.adapter_core.sampling import StepCosine, plan_runs, sample_consistent
from temporal_adapter.adapter_core.temporal_loss import cosine_similarity_adjacent


def test_overlap_plan_covers_the_clip_and_weights_cross_fade():
    plan = overlap_plan(48, 16, 4)
    assert [(c.lo, c.hi) for c in plan] == [(0, 16), (11, 27), (21, 37), (32, 48)]
    assert [(c.keep_lo, c.keep_hi) for c in plan] == [(0, 13), (13, 24), (24, 34), (34, 48)]
    total = torch.zeros(48, dtype=torch.float64)
    for c in plan:
        total[c.lo:c.hi] += blend_weights(plan, c)
    torch.testing.assert_close(total, torch.ones(48, dtype=torch.float64))
    assert overlap_plan(10, 0, 4) == overlap_plan(10, 16, 4) and len(overlap_plan(10, 16, 4)) == 1
    with pytest.raises(ValueError, match="chunk_overlap: 16 must be from 0"):
        overlap_plan(48, 16, 16)


def test_run_blended_is_exact_for_consistent_chunks_and_fades_between_others():
    x = torch.randn(40, 3)
    plan = overlap_plan(40, 16, 4)
    torch.testing.assert_close(run_blended(plan, lambda c: x[c.lo:c.hi]), x)
    # Chunk i returns the constant i: on an overlap the result moves linearly from one to the next.
    out = run_blended(plan, lambda c: torch.full((c.hi - c.lo, 1), float(plan.index(c))))
    overlap = out[plan[1].lo:plan[0].hi, 0]
    assert torch.all(overlap.diff() > 0) and 0 < float(overlap[0]) and float(overlap[-1]) < 1


def test_keyframe_indices():
    assert keyframe_indices(24, 3) == [0, 12, 23]
    assert keyframe_indices(24, 3, stride=8) == [0, 8, 16]
    assert keyframe_indices(24, 10, stride=8) == [0, 8, 16]
    assert keyframe_indices(2, 5) == [0, 1]
    with pytest.raises(ValueError, match="keyframe_stride: 30 does not fit a clip of 24 frames"):
        keyframe_indices(24, 3, stride=30)


def test_keyframe_attention_appends_the_keyframe_tokens_per_cfg_chunk():
    k, v = torch.randn(2, 2 * 5, 7, 4)  # projected keys/values: 2 CFG chunks of 5 frames, 7 tokens
    options = {"block": ("output", 1), "cond_or_uncond": [0, 1]}
    patch = KeyframeAttention(count=2)
    k2, v2 = patch.extend(k, v, options)
    assert k2.shape == v2.shape == (10, 7 + 2 * 7, 4)
    for chunk in range(2):
        for t, t2 in ((k, k2), (v, v2)):
            rows = t[5 * chunk: 5 * chunk + 5]
            torch.testing.assert_close(t2[5 * chunk + 3], torch.cat([rows[3], rows[0], rows[4]]))
    patch.rows = [2]
    assert torch.equal(patch.extend(k, v, options)[0][1, 7:], k[2])
    assert KeyframeAttention(blocks=[("output", 9)]).extend(k, v, options)[0] is k


def test_context_tokens_reach_the_cond_chunk_only():
    """Cond chunks attend to [tokens of their frames; prompt], uncond chunks to their prompt alone, within
    one batched call (uncond first here, as the host orders its chunks)."""
    import copy
    frames, count, length, width = 3, 2, 5, 8
    tokens, context = torch.randn(frames, count, width), torch.randn(2 * frames, length, width)
    q = torch.randn(2 * frames, 4, width)
    options = {"cond_or_uncond": [1, 0]}
    patch = ContextTokens(tokens)
    patch.rows = [2, 0, 1]
    _, ctx, value = patch.prepend(q, context, context, options)
    assert ctx.shape == value.shape == (2 * frames, count + length, width)

    def attend(q, k, v, extra_options):
        return torch.softmax(q @ k.transpose(1, 2), -1) @ v
    out = patch.wrap(attend)(q, ctx, value, options)
    cond_context = torch.cat([tokens[[2, 0, 1]], context[frames:]], 1)
    torch.testing.assert_close(out[:frames], attend(q[:frames], context[:frames], context[:frames], {}))
    torch.testing.assert_close(out[frames:], attend(q[frames:], cond_context, cond_context, {}))
    assert copy.deepcopy({"patch": [patch.prepend]})["patch"][0].__self__ is patch  # clones share run state


def test_source_injection_records_then_injects_in_every_chunk():
    inj = SourceInjection([("output", 1)], [("output", 0)], 2)
    options = {"block": ("output", 1), "block_index": 0, "cond_or_uncond": [1]}
    src = torch.randn(3, 5, 4)
    inj.attention = inj.features = True
    inj.mode = "record"
    h_src = torch.randn(3, 8, 2, 2)
    assert inj.output_block(h_src, None, {"block": ("output", 0), "cond_or_uncond": [1]})[0] is h_src
    with pytest.raises(SourceRecorded):  # the last tensor the step injects: the source pass ends here
        inj.attn1(src, src, src, options)
    inj.mode = "inject"
    edit = torch.randn(6, 5, 4)
    q, k, v = inj.attn1(edit, edit, edit, {**options, "cond_or_uncond": [0, 1]})
    assert torch.equal(q, src.repeat(2, 1, 1)) and torch.equal(k, q) and v is edit
    h, _ = inj.output_block(torch.zeros(6, 8, 2, 2), None, {"block": ("output", 0), "cond_or_uncond": [0, 1]})
    assert torch.equal(h, h_src.repeat(2, 1, 1, 1))
    inj.attention = False
    assert inj.attn1(edit, edit, edit, options)[0] is edit


def test_source_pass_stops_once_it_has_recorded_what_the_step_injects():
    """Features on output 4 and attention on output 4..11 (SD1.5 defaults, output 11 here with two
    transformer layers): with attention the pass ends at the attn1 input of output 11's last layer;
    features only, it ends on entering output 4."""
    inj = SourceInjection([("output", i) for i in range(4, 12)], [("output", 4)], 12, {("output", 11): 2})
    inj.mode, inj.attention, inj.features = "record", True, True
    assert len(inj.needed()) == 1 + 8 + 1
    h, n = torch.randn(2, 8, 2, 2), torch.randn(2, 4, 8)
    for number in range(12):
        inj.output_block(h, None, {"block": ("output", number), "cond_or_uncond": [1]})
        if number >= 4:
            for index in range(2 if number == 11 else 1):
                options = {"block": ("output", number), "block_index": index, "cond_or_uncond": [1]}
                if number == 11 and index == 1:
                    with pytest.raises(SourceRecorded):
                        inj.attn1(n, n, n, options)
                else:
                    inj.attn1(n, n, n, options)
    assert inj.needed() == set(inj.store)
    inj.store.clear()
    inj.attention = False
    inj.output_block(h, None, {"block": ("output", 3), "cond_or_uncond": [1]})
    with pytest.raises(SourceRecorded):
        inj.output_block(h * 2, None, {"block": ("output", 4), "cond_or_uncond": [1]})
    assert torch.equal(inj.store[("features", "output", 4)], h * 2)
    inj.mode = "inject"  # an edit pass never stops
    inj.output_block(h, None, {"block": ("output", 4), "cond_or_uncond": [1]})


def test_blocks_that_only_feed_the_replaced_features_are_unread_and_shrunk():
    """SD1.5 layout (12 input blocks, feature block output 4 reads the skip of input 7): with features on,
    input 8-11, the middle block and output 0-3 cannot change the edit. They get no attention injection
    (nor a source record), and an edit pass with shrink_unread cuts the hidden state to 1x1 after input 7."""
    inj = SourceInjection([("output", i) for i in range(2, 12)], [("output", 4)], 12)
    unread = [("input", i) for i in range(8, 12)] + [("middle", 0)] + [("output", i) for i in range(4)]
    inj.attention = inj.features = True
    assert [b for b in [("input", i) for i in range(12)] + [("middle", 0)] + [("output", i) for i in range(12)]
            if inj.unread(b)] == unread
    assert ("attn1", "output", 3, 0) not in inj.needed() and ("attn1", "output", 4, 0) in inj.needed()
    h, n = torch.randn(2, 8, 4, 4), torch.randn(2, 16, 8)
    inj.mode = "inject"
    assert inj.attn1(n, n, n, {"block": ("output", 3), "cond_or_uncond": [0, 1]})[0] is n  # nothing recorded: no lookup
    assert inj.input_block(h, {"block": ("input", 7)}) is h  # shrink_unread is off by default
    inj.shrink_unread = True
    assert inj.input_block(h, {"block": ("input", 6)}) is h
    assert torch.equal(inj.input_block(h, {"block": ("input", 7)}), h[:, :, :1, :1])
    inj.mode = "record"  # the source pass must compute the features it records
    assert inj.input_block(h, {"block": ("input", 7)}) is h
    inj.mode, inj.features = "inject", False  # attention-only steps read every block
    assert not inj.unread(("middle", 0)) and inj.input_block(h, {"block": ("input", 7)}) is h


def test_filter_skip_leaves_the_leading_rows_alone():
    f = TemporalAttn1Filter([("output", 1)])
    n = torch.randn(7, 3, 2)
    f.skip = 2
    out = f(n, {"block": ("output", 1), "cond_or_uncond": [0]})
    assert torch.equal(out[:2], n[:2]) and not torch.equal(out[2:], n[2:])


def test_plan_runs_put_shared_keyframes_first_only_when_chunked():
    single = plan_runs(8, 16, 4, (0, 7))
    assert single[0].rows == tuple(range(8)) and single[0].key_rows == (0, 7) and single[0].extra == 0
    runs = plan_runs(40, 16, 4, (0, 20, 39))
    assert all(r.rows[:3] == (0, 20, 39) and r.key_rows == (0, 1, 2) and r.extra == 3 for r in runs)
    x = torch.arange(40)[list(runs[1].rows)]
    assert runs[1].chunk_part(x).tolist() == list(range(runs[1].chunk.lo, runs[1].chunk.hi))
    assert runs[1].owned_part(x).tolist() == list(range(runs[1].chunk.keep_lo, runs[1].chunk.keep_hi))


def test_step_cosine_equals_the_whole_clip_cosine():
    x0 = torch.randn(2, 10, 4, 3, 3)
    acc = StepCosine(2)
    for step in range(2):
        for lo, hi in ((0, 4), (4, 9), (9, 10)):
            acc.add(step, x0[step, lo:hi])
    expected = [float(cosine_similarity_adjacent(x0[s]).mean()) for s in range(2)]
    assert acc.means() == pytest.approx(expected, abs=1e-6)


def test_sample_consistent_runs_a_source_pass_before_each_injected_step():
    sigmas = ddim.schedule(ddim.scaled_linear_sigmas(), 10)
    trajectory = torch.randn(11, 3, 4, 2, 2)
    source = Inversion(trajectory, sigmas, {}, "s", "m")
    inj = SourceInjection([], [], 12)
    seen, modes = [], []

    def source_denoise(x, sigma):
        seen.append((float(sigma[0]), x.clone(), inj.attention, inj.features))
        return x

    def model(x, sigma):
        modes.append(inj.mode)
        return x * 0.9

    x = torch.randn(3, 4, 2, 2)
    out = sample_consistent(model, x, sigmas, injection=inj, source=source, source_denoise=source_denoise,
                            fractions=(0.3, 0.5))
    assert [s[0] for s in seen] == pytest.approx([float(s) for s in sigmas[:5]])
    assert all(torch.equal(s[1], trajectory[i]) for i, s in enumerate(seen))
    assert [(s[2], s[3]) for s in seen] == [(True, True)] * 3 + [(False, True)] * 2
    assert modes == ["inject"] * 5 + [None] * 5 and inj.mode is None and not inj.store
    torch.testing.assert_close(out, ddim.sample_ddim(model, x, sigmas))
