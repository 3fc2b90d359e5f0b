"""The small-batch suite's arithmetic and the launch-bound axpy chain, checked on the CPU.

The chain's kernel is replaced by a NumPy FMA step and CuPy by NumPy, so the launch order, the graph
capture and the data flow (first step from y0, the rest in place) run here exactly as on a GPU.
"""
import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from mfugap.kernels import cublas_gemm, launch_bound
from mfugap.kernels.launch_bound import AxpyChainEager, AxpyChainGraph
from mfugap.suites import test_small_batch as small_batch
from mfugap.verify import check_close


@pytest.mark.parametrize(("m", "n", "sms", "waves"), [
    (1, 4096, 132, 32 / 132), (128, 4096, 132, 32 / 132), (129, 4096, 132, 64 / 132),
    (8192, 4096, 132, 64 * 32 / 132), (1, 14336, 132, 112 / 132), (4096, 14336, 114, 32 * 112 / 114)])
def test_nominal_waves_count_128x128_tiles_per_sm(m, n, sms, waves):
    assert small_batch.nominal_waves(m, n, sms) == pytest.approx(waves)


def test_nominal_waves_refuse_nonpositive_sizes_in_one_line():
    with pytest.raises(ValueError, match="positive") as exc:
        small_batch.nominal_waves(1, 4096, 0)
    assert "\n" not in str(exc.value)


def test_batch_sizes_are_powers_of_two_up_to_8192_with_a_quick_subset():
    full = small_batch.batch_sizes(quick=False)
    assert full == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
    assert small_batch.batch_sizes(quick=True) == (1, 16, 256, 4096)
    assert set(small_batch.batch_sizes(quick=True)) <= set(full)


def test_gemm_cases_cover_both_shapes_and_one_mlp_row_when_quick():
    quick = small_batch.gemm_cases(quick=True)
    assert quick == [("square", 1), ("square", 16), ("square", 256), ("square", 4096), ("mlp_up", 1)]
    full = small_batch.gemm_cases(quick=False)
    assert len(full) == 28 and {shape for shape, _ in full} == set(small_batch.SHAPES)
    assert small_batch.SHAPES["mlp_up"] == (4096, 14336)


def test_gemm_formulas_at_the_swept_shapes():
    g = cublas_gemm.CublasGemm(1, 14336, 4096, "bf16")
    assert g.flops() == 2 * 1 * 14336 * 4096
    assert g.min_bytes() == 2 * (1 * 4096 + 4096 * 14336 + 1 * 14336)


def test_shape_notes_show_intensity_and_nominal_waves_in_label_and_params():
    noted = small_batch.with_shape_notes(cublas_gemm.CublasGemm(1, 4096, 4096, "bf16"), sm_count=132)
    assert noted.params == {"m": 1, "n": 4096, "k": 4096}
    assert noted.notes == {"flop_per_byte": 1.0, "waves@128x128": 0.24}
    assert noted.row_label == "cuBLAS bf16 1x4096x4096 flop_per_byte=1.0 waves@128x128=0.24"
    assert (noted.name, noted.precision) == ("cublas_gemm", "bf16")
    assert noted.flops() == 2 * 4096 * 4096 and noted.min_bytes() == 2 * (2 * 4096 + 4096 * 4096)
    big = small_batch.with_shape_notes(cublas_gemm.CublasGemm(8192, 4096, 4096, "bf16"), sm_count=None)
    assert big.notes["flop_per_byte"] == 1638.4 and big.notes["waves@128x128"] is None


@pytest.mark.parametrize("gemm", list(small_batch.GEMMS))
def test_suite_builds_every_gemm_case_with_notes(gemm):
    """The suite's own test bodies, run against a measure() that only collects the workloads."""
    measured = []
    gpu = SimpleNamespace(device=SimpleNamespace(sm_count=132, l2_bytes=50 << 20))
    cases = small_batch.gemm_cases(quick=False)
    for case in cases:
        small_batch.test_bf16_gemm_batch(measured.append, gpu, gemm, case)
    for w, (shape, batch) in zip(measured, cases, strict=True):
        k, n = small_batch.SHAPES[shape]
        assert (w.params["m"], w.params["n"], w.params["k"], w.precision) == (batch, n, k, "bf16")
        assert w.flops() == 2 * batch * n * k and w.min_bytes() == 2 * (batch * k + k * n + batch * n)
        assert f"waves@128x128={w.notes['waves@128x128']}" in w.row_label


def test_suite_measures_the_same_chain_eagerly_and_as_a_graph():
    measured = []
    for chain in (AxpyChainEager, AxpyChainGraph):
        small_batch.test_tiny_kernel_chain(measured.append, chain)
    eager, graph = measured
    assert eager.params == graph.params == {"n": 4096, "count": 1000}
    assert (type(eager), type(graph)) == (AxpyChainEager, AxpyChainGraph)


def _row(workload, m, n, mfu, k=4096):
    return {"workload": workload, "params": {"m": m, "n": n, "k": k}, "mfu_pct": mfu}


def test_summary_finds_where_mfu_reaches_half_its_maximum_per_gemm_and_shape():
    mfu = {1: 0.8, 2: 1.6, 64: 30.0, 128: 41.0, 256: 60.0, 8192: 70.0, 4096: 72.0}
    rows = [_row("cublas_gemm", b, 4096, v) for b, v in mfu.items()]
    rows += [_row("cublas_gemm", 1, 14336, 1.1), _row("cublas_gemm", 16, 14336, 9.0),
             _row("cublas_gemm", 2, 14336, 5.0)]
    rows += [_row("cublas_gemm", 32, 4096, None)]  # no peak known: ignored
    rows += [{"workload": "axpy_chain_graph", "params": {"n": 4096, "count": 1000}, "mfu_pct": 0.01}]
    rows += [_row("gemm_mma_sync", 1, 14336, 0.3)]  # one point (the quick MLP row): no sweep to read
    summary = small_batch.summarize(rows)
    assert summary == {
        "cublas_gemm K=4096 N=14336": {"max MFU %": 9.0, "at B": 16, "half-max MFU from B": 2,
                                       "below half at B": 1},
        "cublas_gemm K=4096 N=4096": {"max MFU %": 72.0, "at B": 4096, "half-max MFU from B": 128,
                                      "below half at B": 64},
    }
    assert small_batch.summarize([]) == {}
    flat = [_row("cublas_gemm", b, 4096, 50.0) for b in (1, 2, 4)]
    assert small_batch.summarize(flat)["cublas_gemm K=4096 N=4096"]["below half at B"] is None


def test_tiny_chain_counts_every_kernel():
    assert launch_bound.flops(4096, 1000) == 2 * 4096 * 1000
    assert launch_bound.min_bytes(4096, 1000) == 12 * 4096 * 1000
    eager, graph = AxpyChainEager(4096, 1000), AxpyChainGraph(4096, 1000)
    assert (eager.flops(), eager.min_bytes()) == (graph.flops(), graph.min_bytes())
    assert eager.footprint_bytes() == 3 * 4 * 4096
    assert eager.label == "axpy_chain_eager n=4096 count=1000" and graph.name == "axpy_chain_graph"
    assert launch_bound.blocks(4096) == 16 and launch_bound.blocks(4097) == 17


@pytest.mark.parametrize(("n", "count"), [(0, 10), (10, 0), (-1, 1)])
def test_tiny_chain_refuses_empty_work_in_one_line(n, count):
    with pytest.raises(ValueError, match="n >= 1 and count >= 1") as exc:
        AxpyChainGraph(n, count)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(("count", "a"), [(1, 1.0), (2, 0.5), (1000, 2**-10), (1024, 2**-10), (1025, 2**-11)])
def test_step_scale_is_a_power_of_two_with_count_times_a_at_most_one(count, a):
    assert launch_bound.step_scale(count) == a
    assert count * a <= 1


def test_float64_chain_matches_a_hand_computed_case():
    y0, x = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    # three steps of y += 0.5 x: 1 + 3 * 0.25 and -2 + 3 * 0.125
    np.testing.assert_array_equal(launch_bound.reference(y0, x, 0.5, 3), [1.75, -1.625])
    np.testing.assert_array_equal(launch_bound.reference(y0, x, 0.5, 0), y0)


def test_inputs_are_nonzero_multiples_of_2_to_the_minus_10_in_unit_range():
    x, y0 = launch_bound.random_inputs(4096, seed=1)
    for v in (x, y0):
        assert v.dtype == np.float32 and np.all(v != 0) and np.all(np.abs(v) <= 1)
        assert np.all(v / launch_bound.GRID_STEP == np.round(v / launch_bound.GRID_STEP))
    assert not np.array_equal(x, y0)


def _fp32_chain(y0, x, a, count):
    """What the GPU computes: count fp32 steps (a * x is exact here, so mul + add rounds once, like fmaf)."""
    y = y0.astype(np.float32)
    for _ in range(count):
        y = np.float32(a) * x + y
    return y


@pytest.mark.parametrize("count", [1, 7, 1000, 8192])
def test_fp32_chain_is_exact_on_these_inputs_and_within_the_bound(count):
    x, y0 = launch_bound.random_inputs(512, seed=count)
    a = launch_bound.step_scale(count)
    exact = launch_bound.reference(y0, x, a, count)
    np.testing.assert_array_equal(_fp32_chain(y0, x, a, count), exact)
    assert 0 < launch_bound.tolerance(y0, x, a, count) < 1e-3


@pytest.mark.parametrize("count", [1, 7, 1000, 2048])
def test_check_catches_one_step_too_few_or_too_many(count):
    x, y0 = launch_bound.random_inputs(512, seed=count)
    a = launch_bound.step_scale(count)
    exact = launch_bound.reference(y0, x, a, count)
    tol = launch_bound.tolerance(y0, x, a, count)
    for wrong in (count - 1, count + 1):
        assert not check_close(launch_bound.reference(y0, x, a, wrong), exact, tol, "off by one").ok


def test_tolerance_grows_with_the_number_of_roundings():
    x, y0 = launch_bound.random_inputs(256, seed=3)
    a = 2.0**-13
    assert launch_bound.tolerance(y0, x, a, 10) < launch_bound.tolerance(y0, x, a, 100)
    ku = 100 * 2.0**-24
    assert launch_bound.tolerance(y0, x, a, 100) >= ku  # |y0| + count|ax| >= |y_count| elementwise


class FakeStream:
    """Enough of cupy.cuda.Stream for setup and launch: a context manager that can capture a graph."""

    def __init__(self):
        self.capturing = False
        self.captured = []
        self.log = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def begin_capture(self):
        self.capturing = True
        self.log.append("begin_capture")

    def end_capture(self):
        self.capturing = False
        self.log.append("end_capture")
        steps, self.captured = self.captured, []
        return SimpleNamespace(launch=lambda stream: [step() for step in steps])


@pytest.fixture
def fake_gpu(monkeypatch):
    """CuPy as NumPy, and the axpy kernel as a NumPy FMA step that a capturing stream records instead."""
    monkeypatch.setitem(sys.modules, "cupy", SimpleNamespace(asarray=np.asarray, empty_like=np.empty_like))

    def kernel(grid, block, args, stream):
        a, x, y_in, y_out, n = args
        assert grid == (launch_bound.blocks(int(n)),) and block == (launch_bound.THREADS,)
        assert (type(a), type(n)) == (np.float32, np.int32), "CuPy reads a scalar's type from its dtype"

        def step():
            y_out[:n] = a * x[:n] + y_in[:n]

        stream.log.append("kernel")
        if stream.capturing:
            stream.captured.append(step)
        else:
            step()

    monkeypatch.setattr(launch_bound.SOURCE, "function", lambda name: kernel)
    return FakeStream()


def _run_once(workload, stream):
    workload.setup(stream)
    workload.poison()
    stream.log.clear()
    workload.launch(stream)
    return workload.buf


@pytest.mark.parametrize("chain", [AxpyChainEager, AxpyChainGraph])
def test_one_launch_overwrites_the_poison_with_count_steps_from_y0(fake_gpu, chain):
    workload = chain(n=300, count=5)
    buf = _run_once(workload, fake_gpu)
    expected = launch_bound.reference(buf["y0"], buf["x"], workload.a, 5)
    np.testing.assert_array_equal(buf["y"], expected)
    workload.launch(fake_gpu)  # a second launch starts from y0 again, whatever y holds
    np.testing.assert_array_equal(buf["y"], expected)


def test_eager_chain_launches_count_kernels_per_launch(fake_gpu):
    _run_once(AxpyChainEager(n=64, count=7), fake_gpu)
    assert fake_gpu.log == ["kernel"] * 7


def test_graph_chain_captures_count_kernels_once_and_launches_none_itself(fake_gpu):
    workload = AxpyChainGraph(n=64, count=7)
    workload.setup(fake_gpu)
    assert fake_gpu.log == ["begin_capture", *["kernel"] * 7, "end_capture"]
    fake_gpu.log.clear()
    workload.poison()
    workload.launch(fake_gpu)
    assert fake_gpu.log == [] and not np.isnan(workload.buf["y"]).any()


def test_graph_capture_ends_even_when_a_launch_fails(fake_gpu, monkeypatch):
    def broken(grid, block, args, stream):
        raise RuntimeError("launch failed")

    monkeypatch.setattr(launch_bound.SOURCE, "function", lambda name: broken)
    with pytest.raises(RuntimeError, match="launch failed"):
        AxpyChainGraph(n=64, count=3).setup(fake_gpu)
    assert fake_gpu.log == ["begin_capture", "end_capture"] and not fake_gpu.capturing


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_axpy_kernel_is_one_fused_multiply_add(arch):
    report = launch_bound.SOURCE.compile_offline(arch)
    body = re.search(r"\.entry axpy_f32\((.*?)^}", report.ptx, re.S | re.M).group(1)
    assert len(re.findall(r"\bfma\.rn\.f32\b", body)) == 1
    assert not re.search(r"\b(add|mul|sub)\.(rn\.)?f32\b", body), "the update must round once, not twice"
    kernel = report.kernels["axpy_f32"]
    assert (kernel.spill_stores, kernel.spill_loads) == (0, 0)


def test_suite_lesson_is_two_or_three_sentences():
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", " ".join(small_batch.LESSON.split())) if s]
    assert 2 <= len(sentences) <= 3
