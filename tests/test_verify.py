import numpy as np
import pytest

from mfugap.verify import (
    TOLERANCE,
    check_close,
    from_bf16_bits,
    rel_err,
    sample_indices,
    to_bf16_bits,
)


def test_rel_err_is_normwise_and_nan_never_passes():
    ref = np.array([3.0, 4.0])
    assert rel_err(ref, ref) == 0.0
    assert rel_err(np.array([3.0, 4.5]), ref) == pytest.approx(0.5 / 5.0)
    assert rel_err(np.array([np.nan, 4.0]), ref) == float("inf")
    with pytest.raises(ValueError, match="shape"):
        rel_err(np.ones(3), ref)


def test_check_close_reports_error_and_bound():
    ref = np.linspace(1, 2, 101)
    good = check_close(ref * (1 + 1e-7), ref, TOLERANCE["fp32"], "x")
    bad = check_close(ref * 1.01, ref, TOLERANCE["fp32"], "x")
    assert good.ok and not bad.ok
    assert bad.rel_err == pytest.approx(0.01)
    assert "exceeds" in bad.detail and bad.tolerance == TOLERANCE["fp32"]


def test_bf16_round_trip_and_rounding_to_nearest_even():
    exact = np.array([1.0, -2.0, 0.5, 3.140625, 0.0], dtype=np.float32)
    np.testing.assert_array_equal(from_bf16_bits(to_bf16_bits(exact)), exact)
    # 1 + 2^-8 lies halfway between bf16 neighbours 1 and 1 + 2^-7: ties go to the even mantissa (1.0)
    assert from_bf16_bits(to_bf16_bits(np.float32(1 + 2**-8)))[()] == 1.0
    # 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): goes up
    assert from_bf16_bits(to_bf16_bits(np.float32(1 + 3 * 2**-8)))[()] == np.float32(1 + 2**-6)
    x = np.random.default_rng(0).uniform(-1, 1, 10_000).astype(np.float32)
    assert np.max(np.abs(from_bf16_bits(to_bf16_bits(x)) - x) / np.abs(x)) <= 2**-8


def test_sample_indices_cover_the_tail_and_stay_in_range():
    idx = sample_indices(1003, 100, seed=1, tail=5)
    assert idx.max() == 1002 and idx.min() >= 0
    assert set(range(998, 1003)) <= set(idx.tolist())
    assert len(np.unique(idx)) == len(idx)
    assert len(sample_indices(10, 100, seed=1)) == 10
