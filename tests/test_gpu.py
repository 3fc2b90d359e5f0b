"""On a GPU box, plain `pytest` also runs these: each kernel on small odd shapes, then one short measurement.

They skip with the reason everywhere else (the `gpu` marker; see mfugap/plugin.py).
"""
import pytest

from mfugap.kernels import cublas_gemm, spin, stream
from mfugap.measure import GpuContext, WindowConfig, measure

pytestmark = pytest.mark.gpu

SHORT = WindowConfig(window_s=1.0, warmup_s=0.1, min_reps=3)


@pytest.fixture(scope="module")
def ctx():
    return GpuContext.open()


def _verify(workload, ctx):
    workload.setup(ctx.stream)
    try:
        workload.poison()
        workload.launch(ctx.stream)
        ctx.stream.synchronize()
        return workload.check()
    finally:
        workload.teardown()


@pytest.mark.parametrize("n", [1, 3, 1003, (1 << 20) + 5])
def test_triad_is_correct_on_odd_sizes(ctx, n):
    verdict = _verify(stream.Triad(n, ctx.device.sm_count), ctx)
    assert verdict.ok, verdict.detail


@pytest.mark.parametrize("precision", sorted(cublas_gemm.FORMATS))
@pytest.mark.parametrize("shape", [(67, 45, 129), (1, 4096, 4096), (128, 128, 128)])
def test_cublas_gemm_is_correct(ctx, precision, shape):
    verdict = _verify(cublas_gemm.CublasGemm(*shape, precision), ctx)
    assert verdict.ok, verdict.detail


def test_spin_is_bounded(ctx):
    verdict = _verify(spin.Spin(blocks=3, ms=2.0), ctx)
    assert verdict.ok, verdict.detail


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
