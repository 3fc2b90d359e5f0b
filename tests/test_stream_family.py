"""The STREAM family on the CPU: counts from the definition, references, launches and checks through a
host stand-in for CuPy, and the PTX of every kernel."""
import re
from functools import cache
from types import SimpleNamespace

import numpy as np
import pytest

from mfugap.cuda_source import OFFLINE_ARCHS
from mfugap.kernels import stream
from tests.fake_cupy import Recorder, on_device

# op -> (FLOPs per element, arrays moved), from STREAM's definitions
DEFINITION = {"copy": (0, 2), "scale": (1, 2), "add": (1, 3), "triad": (2, 3), "dot": (2, 2)}
ELEMENTWISE = [op for op, spec in stream.OPS.items() if spec.writes]
ODD_N = 1003  # not a multiple of 4: the remainder loop runs


@pytest.fixture
def kernels(monkeypatch):
    recorder = Recorder()
    monkeypatch.setattr(stream.SOURCE, "function", recorder)
    return recorder


def _inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: (rng.random(n, dtype=np.float32) * 2 - 1) for name in ("b", "c")}


def _workload_with_buffers(op: str, n: int = ODD_N) -> stream.StreamOp:
    """A workload whose buffers hold what a correct launch leaves, computed on the host in fp32."""
    w = stream.StreamOp(op, n, sm_count=4)
    host = _inputs(n)
    w.buf = {name: on_device(host[name]) for name in w.spec.reads}
    if w.spec.writes:
        w.buf["a"] = on_device(stream.reference(host["b"], host["c"], stream.SCALAR, op).astype(np.float32))
    else:
        w.buf["partial"] = on_device(np.zeros(w.grid, dtype=np.float32))
        w.buf["sum"] = on_device(np.array([np.dot(host["b"], host["c"])], dtype=np.float64))
    return w


# --- counts ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", list(DEFINITION))
@pytest.mark.parametrize("n", [1, ODD_N, 1 << 28])
def test_counts_follow_stream_definitions(op, n):
    flops_per_element, arrays = DEFINITION[op]
    assert stream.flops(n, op) == flops_per_element * n
    assert stream.min_bytes(n, op) == arrays * 4 * n
    w = stream.StreamOp(op, n, sm_count=132)
    assert (w.flops(), w.min_bytes()) == (flops_per_element * n, arrays * 4 * n)
    assert w.name == f"stream_{op}" and w.precision == "fp32" and w.label == f"stream_{op} n={n}"


def test_every_op_is_defined():
    assert set(stream.OPS) == set(DEFINITION)


def test_footprint_is_the_arrays_plus_the_dot_partial_sums():
    assert stream.StreamOp("add", ODD_N, sm_count=132).footprint_bytes() == 3 * 4 * ODD_N
    dot = stream.StreamOp("dot", ODD_N, sm_count=132)
    assert dot.footprint_bytes() == 2 * 4 * ODD_N + 4 * 132 * stream.BLOCKS_PER_SM + 8


def test_triad_stays_a_stream_op():
    t = stream.Triad(ODD_N, sm_count=132)
    assert isinstance(t, stream.StreamOp) and t.op == "triad" and t.name == "stream_triad"
    assert t.grid == 132 * stream.BLOCKS_PER_SM


def test_device_copy_moves_two_arrays_and_does_no_math():
    d = stream.DeviceCopy(ODD_N)
    assert (d.flops(), d.min_bytes(), d.precision) == (0, 2 * 4 * ODD_N, "fp32")
    assert d.label == f"memcpy_d2d n={ODD_N}"


@pytest.mark.parametrize(("args", "match"), [
    (("fma", 10, 1), "op must be one of"), (("copy", 0, 1), "n >= 1"), (("dot", 10, 0), "sm_count >= 1")])
def test_stream_op_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        stream.StreamOp(*args)


def test_device_copy_rejects_empty_arrays():
    with pytest.raises(ValueError, match="n >= 1"):
        stream.DeviceCopy(0)


# --- references and tolerance ---------------------------------------------------------------------

B = np.array([1.0, -2.0, 0.5], dtype=np.float32)
C = np.array([4.0, 0.25, -1.0], dtype=np.float32)


@pytest.mark.parametrize(("op", "c", "expected"), [
    ("copy", None, [1.0, -2.0, 0.5]),
    ("scale", None, [3.0, -6.0, 1.5]),
    ("add", C, [5.0, -1.75, -0.5]),
    ("triad", C, [13.0, -1.25, -2.5]),
    ("dot", C, 1.0 * 4.0 - 2.0 * 0.25 - 0.5 * 1.0)])
def test_references_by_hand(op, c, expected):
    got = stream.reference(B, c, 3.0, op)
    np.testing.assert_array_equal(got, expected)
    assert np.asarray(got).dtype == np.float64


def test_dot_tolerance_is_gamma_of_the_longest_rounding_chain():
    # 10 float4 steps (40 FMAs) + 1 remainder element + log2(256) = 8 block-sum levels + 1 double pass
    k = 4 * 10 + 1 + 8 + 1
    u = 2.0**-24
    assert stream.dot_tolerance(4 * 10 * 2048, 2048) == pytest.approx(k * u / (1 - k * u))
    # one float4 more makes one thread's chain 4 FMAs longer
    assert stream.dot_tolerance(4 * 10 * 2048 + 4, 2048) == pytest.approx((k + 4) * u / (1 - (k + 4) * u))
    assert stream.dot_tolerance(1 << 28, 132 * 8 * 256) < 1e-4  # H100: ~1000-long chains per thread


# --- launches --------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ELEMENTWISE)
def test_elementwise_launch(op, fake_cupy, kernels):
    w = _workload_with_buffers(op)
    w.launch("stream")
    [(name, grid, block, args, kwargs)] = kernels.calls
    assert (name, grid, block, kwargs) == (f"{op}_f32", (4 * stream.BLOCKS_PER_SM,), (stream.THREADS,),
                                           {"stream": "stream"})
    a, b, c, s, n = args
    assert a is w.buf["a"] and b is w.buf["b"] and c is w.buf.get("c", w.buf["b"])
    assert (s, n) == (np.float32(stream.SCALAR), ODD_N) and type(n) is np.int64
    assert name in stream.SOURCE.kernels


def test_dot_launches_partial_sums_then_one_finishing_block(fake_cupy, kernels):
    w = _workload_with_buffers("dot")
    w.launch("stream")
    partial, total = kernels.calls
    assert partial[:3] == ("dot_partial_f32", (w.grid,), (stream.THREADS,))
    b, c, out, n = partial[3]
    assert b is w.buf["b"] and c is w.buf["c"] and out is w.buf["partial"] and n == ODD_N
    assert total[:3] == ("dot_finish", (1,), (stream.THREADS,))
    assert total[3][0] is w.buf["partial"] and total[3][1] == w.grid and total[3][2] is w.buf["sum"]


def test_device_copy_launch_is_one_async_memcpy(fake_cupy):
    d = stream.DeviceCopy(ODD_N)
    d.buf = {"a": SimpleNamespace(data=SimpleNamespace(ptr=0xA000), nbytes=4 * ODD_N),
             "b": SimpleNamespace(data=SimpleNamespace(ptr=0xB000), nbytes=4 * ODD_N)}
    d.launch(SimpleNamespace(ptr=0x5))
    assert fake_cupy.cuda.runtime.copies == [(0xA000, 0xB000, 4 * ODD_N, 3, 0x5)]


@pytest.mark.parametrize("op", ["copy", "dot"])
def test_poison_fills_every_output_with_nan(op):
    w = _workload_with_buffers(op)
    w.poison()
    assert all(np.isnan(w.buf[name]).all() for name in w._outputs())


# --- checks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", list(DEFINITION))
def test_check_accepts_a_correct_result(op, fake_cupy):
    verdict = _workload_with_buffers(op).check()
    assert verdict.ok, verdict.detail


@pytest.mark.parametrize("op", list(DEFINITION))
def test_check_catches_an_unwritten_output(op, fake_cupy):
    w = _workload_with_buffers(op)
    w.buf["a" if w.spec.writes else "partial"][-1] = np.nan
    verdict = w.check()
    assert not verdict.ok and "unwritten" in verdict.detail


@pytest.mark.parametrize("op", ELEMENTWISE)
def test_check_catches_a_wrong_tail_element(op, fake_cupy):
    w = _workload_with_buffers(op)
    w.buf["a"][-1] += 1.0  # the remainder loop's element
    assert not w.check().ok


def test_dot_check_catches_a_sum_off_by_more_than_the_bound(fake_cupy):
    w = _workload_with_buffers("dot")
    b, c = w.buf["b"].get().astype(np.float64), w.buf["c"].get().astype(np.float64)
    w.buf["sum"][0] += 2 * stream.dot_tolerance(ODD_N, w.grid * stream.THREADS) * np.abs(b) @ np.abs(c)
    verdict = w.check()
    assert not verdict.ok and "exceeds" in verdict.detail


# --- PTX -------------------------------------------------------------------------------------------

@cache
def _ptx(arch: str) -> str:
    return stream.SOURCE.compile_offline(arch).ptx


def _entry(ptx: str, kernel: str) -> str:
    """The PTX body of one kernel: from its .entry to the next one."""
    start = ptx.index(f".entry {kernel}(")
    end = ptx.find(".entry ", start + 1)
    return ptx[start:end if end >= 0 else None]


@pytest.mark.parametrize("arch", OFFLINE_ARCHS)
@pytest.mark.parametrize("op", list(DEFINITION))
def test_every_kernel_loads_16_bytes_and_only_the_arrays_it_counts(op, arch):
    kernel = "dot_partial_f32" if op == "dot" else f"{op}_f32"
    body = _entry(_ptx(arch), kernel)
    assert re.search(r"ld\.global(\.nc)?\.v4\.f32", body)
    if stream.OPS[op].writes:
        assert "st.global.v4.f32" in body
    # the second input array is the c parameter (1 for dot, 2 for the others): loaded only if counted
    c_param = f"{kernel}_param_{1 if op == 'dot' else 2}"
    assert (f"[{c_param}]" in body) == ("c" in stream.OPS[op].reads)


@pytest.mark.parametrize("arch", OFFLINE_ARCHS)
@pytest.mark.parametrize("kernel", ["dot_partial_f32", "dot_finish"])
def test_dot_reduces_with_warp_shuffles(kernel, arch):
    body = _entry(_ptx(arch), kernel)
    assert "shfl.sync" in body and "bar.sync" in body


def test_selftest_covers_every_op_and_the_remainder_loop():
    cases = stream.selftest_cases()
    assert {c.op for c in cases} == set(stream.OPS)
    assert any(isinstance(c, stream.DeviceCopy) for c in cases)
    for op in stream.OPS:
        sizes = {c.params["n"] for c in cases if c.name == f"stream_{op}"}
        assert min(sizes) < 4 and any(n % 4 for n in sizes if n > 4)  # remainder alone, and after float4s
