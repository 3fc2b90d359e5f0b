import math

import pytest

from mfugap import metrics


def test_rates_use_time_in_the_denominator():
    assert metrics.tflops(2e12, 2.0) == pytest.approx(1.0)
    assert metrics.gbps(3e9, 0.5) == pytest.approx(6.0)
    assert metrics.tflops(1e12, 0.0) is None
    assert metrics.gbps(1e9, None) is None


def test_mfu_of_h100_gemm_against_dense_peak():
    # 8192^3 bf16 GEMM at 1.4 ms on an H100 SXM (989.4 dense TFLOP/s)
    achieved = metrics.tflops(2 * 8192**3, 1.4e-3)
    assert metrics.mfu_pct(achieved, 989.4, 2 * 8192**3) == pytest.approx(100 * achieved / 989.4)


def test_zero_flops_means_zero_mfu_even_without_a_peak():
    assert metrics.mfu_pct(0.0, None, 0) == 0.0
    assert metrics.mfu_pct(0.0, 989.4, 0) == 0.0
    assert metrics.mfu_pct(None, 989.4, 0) is None


def test_roofline_memory_and_compute_bound():
    # triad: 2 FLOP / 12 B on 3350 GB/s -> 0.558 TFLOP/s attainable, far under the 67 TFLOP/s peak
    ceiling = metrics.roofline_tflops(67.0, 3350.0, metrics.intensity(2, 12))
    assert ceiling == pytest.approx(2 / 12 * 3350 / 1e3)
    # 8192^3 bf16 GEMM: intensity 2*8192^3 / (3*2*8192^2) = 2730 FLOP/B, compute-bound
    assert metrics.roofline_tflops(989.4, 3350.0, metrics.intensity(2 * 8192**3, 6 * 8192**2)) == 989.4
    assert metrics.roofline_tflops(989.4, None, 1.0) == 989.4
    assert metrics.roofline_tflops(None, 3350.0, 1.0) is None
    assert metrics.intensity(10, 0) is None


def test_gap_and_flags():
    assert metrics.gap_pts(99.0, 0.0) == 99.0
    assert metrics.gap_pts(None, 5.0) is None
    flags = metrics.row_flags(mfu=60.0, util_pct=50.0, clock_event_reasons=0x4 | 0x40,
                              other_processes=2, util_samples=1, is_mig=False)
    assert flags == ["mfu_above_util", "throttle:sw_power_cap", "throttle:hw_thermal", "other_processes",
                     "few_util_samples"]
    assert metrics.row_flags(mfu=1.0, util_pct=99.0, clock_event_reasons=0x1, other_processes=0,
                             util_samples=15, is_mig=False) == []
    assert metrics.row_flags(mfu=1.0, util_pct=None, clock_event_reasons=None, other_processes=0,
                             util_samples=0, is_mig=True) == []


@pytest.mark.parametrize(("q", "expected"), [(0, 1.0), (50, 2.5), (100, 4.0), (10, 1.3)])
def test_percentile_interpolates(q, expected):
    assert metrics.percentile([1.0, 2.0, 3.0, 4.0], q) == pytest.approx(expected)


def test_percentile_of_nothing_raises():
    with pytest.raises(ValueError):
        metrics.percentile([], 50)


def test_derive_window_vs_kernel_and_bandwidth():
    n = 1 << 28
    out = metrics.derive(flops=2 * n, nbytes=12 * n, kernel_s=1.0e-3, window_s=2.5, reps=2000,
                         peak_tflops=67.0, peak_clock_tflops=60.0, bw_gbps=3350.0, alt_peaks={"bf16": 989.4})
    achieved = 2 * n * 2000 / 2.5 / 1e12
    assert out["tflops"] == pytest.approx(achieved)
    assert out["kernel_tflops"] == pytest.approx(2 * n / 1e-3 / 1e12)
    assert out["gbps"] == pytest.approx(12 * n * 2000 / 2.5 / 1e9)
    assert out["mbu_pct"] == pytest.approx(100 * out["gbps"] / 3350.0)
    assert out["mfu_pct"] == pytest.approx(100 * achieved / 67.0)
    assert out["mfu_clock_pct"] == pytest.approx(100 * achieved / 60.0)
    assert out["mfu_alt_pct"]["bf16"] == pytest.approx(100 * achieved / 989.4)
    assert out["roofline_pct"] == pytest.approx(100 * achieved / (2 / 12 * 3350 / 1e3))
    # the window includes host gaps, so its rate can never beat the median launch's
    assert out["tflops"] <= out["kernel_tflops"]
    assert math.isfinite(out["intensity_flop_per_byte"])


def test_derive_spin_has_zero_mfu_and_no_roofline_ratio():
    out = metrics.derive(flops=0, nbytes=16, kernel_s=0.02, window_s=2.5, reps=125, peak_tflops=None,
                         peak_clock_tflops=None, bw_gbps=3350.0)
    assert out["mfu_pct"] == 0.0
    assert out["roofline_pct"] is None


def _gemm_row(workload, label, precision, m, tflops):
    return {"workload": workload, "label": label, "precision": precision, "params": {"m": m},
            "tflops": tflops}


def test_percent_of_reference_matches_by_fields_and_params():
    rows = [
        _gemm_row("cublas_gemm", "cuBLAS bf16", "bf16", 8, 800.0),
        _gemm_row("cublas_gemm", "cuBLAS fp16", "fp16", 8, 400.0),
        _gemm_row("gemm_mma_sync", "mma bf16", "bf16", 8, 400.0),
        _gemm_row("gemm_mma_sync", "mma fp16", "fp16", 8, 300.0),
        _gemm_row("gemm_mma_sync", "mma fp16 m4", "fp16", 4, 1.0),  # no cuBLAS row at m=4
        _gemm_row("gemm_mma_sync", "failed", "bf16", 8, None),
    ]
    assert metrics.percent_of(rows, "cublas_gemm", "tflops", same=("precision", "m")) == {
        "mma bf16": 50.0, "mma fp16": 75.0}
    assert metrics.percent_of(rows, "nothing", "tflops") == {}


def test_goal_says_met_missed_or_not_measured():
    from mfugap.metrics import goal

    assert goal(93.14, at_least=90) == "93.1 (met: >= 90)"
    assert goal(71.2, at_least=75) == "71.2 (missed: >= 75)"
    assert goal(0.4, at_most=1) == "0.4 (met: <= 1)"
    assert goal(1.5, at_most=1) == "1.5 (missed: <= 1)"
    assert goal(None, at_least=50) == "not measured"
    # close to the bound, the digits that tell the two apart are kept
    assert goal(74.96, at_least=75) == "74.96 (missed: >= 75)"
    assert goal(96.97, at_least=97) == "96.97 (missed: >= 97)"
    assert goal(1.004, at_most=1) == "1.004 (missed: <= 1)"
    assert goal(75.0, at_least=75) == "75 (met: >= 75)"
    assert goal(75.04, at_least=75) == "75.04 (met: >= 75)"


def test_find_row_matches_row_fields_and_params():
    from mfugap.metrics import find_row

    rows = [{"workload": "g", "precision": "fp16", "params": {"m": 8192}},
            {"workload": "g", "precision": "bf16", "params": {"m": 4096}},
            {"workload": "g", "precision": "bf16", "params": {"m": 8192}}]
    assert find_row(rows, "g", precision="bf16", m=8192) is rows[2]
    assert find_row(rows, "g") is rows[0]
    assert find_row(rows, "g", m=1) is None and find_row(rows, "other") is None
