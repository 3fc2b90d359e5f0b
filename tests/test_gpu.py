"""On a GPU box, plain `pytest` also runs these: every kernel on small odd shapes, then short measurements.

They skip with the reason everywhere else (the `gpu` marker; see mfugap/plugin.py).
"""
import pytest

from mfugap import selftest
from mfugap.kernels import cublas_gemm, gemv, spin, stream
from mfugap.measure import GpuContext, WindowConfig, measure

pytestmark = pytest.mark.gpu

SHORT = WindowConfig(window_s=1.0, warmup_s=0.1, min_reps=3)
CASES = [w for m in selftest.kernel_modules() for w in getattr(m, "selftest_cases", list)()]


@pytest.fixture(scope="module")
def ctx():
    return GpuContext.open()


@pytest.mark.parametrize("workload", CASES, ids=lambda w: w.label)
def test_every_kernel_is_correct_on_small_odd_shapes(ctx, workload):
    reason = workload.unavailable(ctx.device.compute_capability)
    if reason:
        pytest.skip(reason)
    line = selftest.run_case(workload, ctx.stream)
    assert line.status == "ok", line.detail


def test_one_block_spin_reads_busy_but_does_no_math(ctx):
    row = measure(spin.Spin(blocks=1, ms=20.0), ctx, SHORT, suite="gpu-test")
    assert row["status"] == "ok", row["reason"]
    assert row["mfu_pct"] == 0.0
    if not ctx.device.is_mig:
        assert row["util_samples"] > 0, row["util_note"]
        assert row["gpu_util_pct"] > 80
    if row["sm_util_pct"] is not None:
        assert row["sm_util_pct"] < 10  # one SM of many


def test_triad_row_has_consistent_rates(ctx):
    row = measure(stream.Triad(stream.default_n(ctx.device.l2_bytes, True), ctx.device.sm_count), ctx,
                  SHORT, suite="gpu-test")
    assert row["status"] == "ok", row["reason"]
    assert 0 < row["gbps"] <= row["kernel_gbps"] * 1.001
    assert row["window_s"] >= SHORT.window_s * 0.9
    assert row["sampler_overhead_pct"] < 5


@pytest.mark.parametrize("make", [
    lambda ctx: cublas_gemm.CublasGemm(1, 4096, 4096, "bf16", l2_bytes=ctx.device.l2_bytes),
    lambda ctx: gemv.Gemv(4096, 4096, ctx.device.l2_bytes),
], ids=["cublas-batch1", "gemv"])
def test_short_launches_are_captured_into_a_graph(ctx, make):
    row = measure(make(ctx), ctx, SHORT, suite="gpu-test")
    assert row["status"] == "ok", row["reason"]
    assert row["launches_per_call"] > 1, row["timing_note"]
    assert row["timing_note"] is None


def test_cupy_events_and_kernels_run_on_a_green_context_stream(ctx):
    """The emulated MIG slices time CuPy work on a green context's stream with events made in the
    primary context; whether the driver takes that is settled here (the suite skips where it does not)."""
    from mfugap import green
    from mfugap.suites.test_mig_slices import cupy_refusal, cupy_stream

    if ctx.device.mig_mode:
        pytest.skip("MIG is enabled: green contexts are not used")
    try:
        contexts = green.GreenContexts(green.load_driver(), ctx.device.index)
    except green.GreenContextUnavailable as exc:
        pytest.skip(f"green contexts unavailable: {exc}")
    with contexts.slice("probe", 16, ctx.device.compute_capability) as piece:
        assert cupy_refusal(cupy_stream(piece.stream)) is None
