"""adapter_core.finite: NaN/inf counted exactly, with the fast sum path never hiding one."""
import pytest
import torch

from temporal_adapter.adapter_core.finite import SLICE, all_finite, count_nonfinite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_counts_nan_and_both_infinities_in_every_float_dtype(dtype):
    x = torch.rand(3, 5, 7).to(dtype)
    assert count_nonfinite(x) == 0 and all_finite(x)
    x[0, 1, 2], x[1, 0, 0], x[2, 4, 6] = float("nan"), float("inf"), -float("inf")
    assert count_nonfinite(x) == 3 and not all_finite(torch.zeros(2), x)
    assert count_nonfinite(x[2:, 4:, 6:]) == 1  # a view, not contiguous


def test_finite_values_whose_sum_overflows_are_not_counted():
    assert count_nonfinite(torch.full((8,), 3e38)) == 0
    assert count_nonfinite(torch.full((8,), 60000.0, dtype=torch.float16)) == 0
    assert count_nonfinite(torch.tensor([float("inf"), -float("inf")])) == 2  # the sum is NaN, not inf


def test_large_tensors_are_counted_in_slices_and_other_dtypes_hold_none():
    x = torch.zeros(SLICE * 2 + 5)
    x[-1] = x[SLICE] = float("nan")
    assert count_nonfinite(x) == 2
    assert count_nonfinite(torch.arange(5)) == 0 and count_nonfinite(torch.ones(3, dtype=torch.bool)) == 0
    assert count_nonfinite(torch.empty(0)) == 0
