"""The inverter's chunk plan: every window is exactly frames_per_chunk frames (so peak memory does not
grow with the clip), owned frames partition the clip, and each owned frame has its filter neighbours
inside its window."""
import pytest
import torch

from temporal_adapter.adapter_core.chunking import chunk_plan, run_chunked


@pytest.mark.parametrize("frames,size,context", [(64, 16, 2), (17, 16, 2), (30, 16, 2), (7, 3, 0), (40, 5, 2),
                                                 (10, 4, 1), (100, 9, 3)])
def test_windows_have_the_chunk_size_and_owned_frames_their_neighbours(frames, size, context):
    plan = chunk_plan(frames, size, context)
    assert all(c.hi - c.lo == size for c in plan)  # the batch never exceeds frames_per_chunk
    assert plan[0].keep_lo == 0 and plan[-1].keep_hi == frames
    assert all(a.keep_hi == b.keep_lo for a, b in zip(plan, plan[1:]))
    for c in plan:
        assert c.keep_lo < c.keep_hi
        assert c.lo <= max(0, c.keep_lo - context) and c.hi >= min(frames, c.keep_hi + context)
    x = torch.arange(frames).view(1, frames, 1)
    torch.testing.assert_close(run_chunked(plan, lambda c: x[:, c.lo:c.hi], dim=1), x)


def test_one_chunk_and_too_small_chunks():
    assert chunk_plan(16, 16, 2) == chunk_plan(16, 0, 2) == chunk_plan(16, 40, 2)
    assert len(chunk_plan(16, 16, 2)) == 1 and chunk_plan(16, 16, 2)[0].hi == 16
    assert [(c.lo, c.hi, c.keep_lo, c.keep_hi) for c in chunk_plan(64, 16, 2)] == [
        (0, 16, 0, 14), (12, 28, 14, 26), (24, 40, 26, 38), (36, 52, 38, 50), (48, 64, 50, 64)]
    with pytest.raises(ValueError, match="frames_per_chunk: 4 is too small.*at least 5"):
        chunk_plan(64, 4, 2)
