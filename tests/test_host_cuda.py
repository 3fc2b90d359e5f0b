"""Our CUDA C kernels, run on the CPU from their real source through their real workloads.

tests/host_cuda.py compiles each CudaSource without inline PTX with g++ against a small CUDA shim
(threads as coroutines, barriers that open when every running thread reaches them). Each kernel family's
`selftest_cases()` (what `mfugap selftest` runs on a GPU) goes through mfugap.measure.verify with a
NumPy-backed `cupy`: setup, poison, launch with CuPy's argument rules, check against the float64
reference. Kernels with inline PTX (tensor cores, timers) are left to the NVRTC and GPU tests.
"""
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from mfugap import cuda_source, measure
from mfugap.cuda_source import CudaSource
from mfugap.kernels import elementwise, gemv, launch_bound, roofline, stream
from mfugap.kernels.gemm import ladder
from tests import fake_cupy
from tests.fake_events import FakeStream
from tests.host_cuda import COMPILER, HostKernels, HostLaunchError, host_runnable, parse_param

pytestmark = pytest.mark.skipif(COMPILER is None,
                                reason="no host C++ compiler (g++) to run CUDA C on the CPU")


def source(code: str, *kernels: str) -> SimpleNamespace:
    """A CUDA source for these tests only: a CudaSource would join the registry the NVRTC tests walk."""
    return SimpleNamespace(code=code, kernels=kernels)


# --- the shim itself ------------------------------------------------------------------------------

REVERSE = source(r"""
extern "C" __global__ void reverse(const int* in, int* out) {
    __shared__ int tile[256];
    const int base = blockIdx.x * blockDim.x;
    tile[threadIdx.x] = in[base + threadIdx.x];
    __syncthreads();
    out[base + threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}
extern "C" __global__ void reverse_unsynced(const int* in, int* out) {
    __shared__ int tile[256];
    const int base = blockIdx.x * blockDim.x;
    tile[threadIdx.x] = in[base + threadIdx.x];
    out[base + threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}
extern "C" __global__ void divergent(int* out) {
    int v = 1;
    if (threadIdx.x < 7) __syncthreads();
    else v = __shfl_xor_sync(0xffffffffu, v, 1);  // lanes 0-6 never come: the shuffle waits forever
    out[threadIdx.x] = v;
}
""", "reverse", "reverse_unsynced", "divergent")


def test_barrier_orders_shared_memory_between_threads():
    data = np.arange(3 * 256, dtype=np.int32)
    out = np.zeros_like(data)
    HostKernels(REVERSE).function("reverse")(3, 256, (data, out))
    np.testing.assert_array_equal(out, data.reshape(3, 256)[:, ::-1].ravel())


def test_missing_barrier_shows_as_wrong_results():
    """Threads run until they block, so a read of shared memory that no barrier orders sees stale data."""
    data = np.arange(256, dtype=np.int32)
    out = np.zeros_like(data)
    HostKernels(REVERSE).function("reverse_unsynced")(1, 256, (data, out))
    assert not np.array_equal(out, data[::-1])


def test_divergent_barrier_fails_the_launch():
    with pytest.raises(HostLaunchError, match="different barriers"):
        HostKernels(REVERSE).function("divergent")(1, 32, (np.zeros(32, dtype=np.int32),))


SHUFFLES = source(r"""
extern "C" __global__ void warp_sums(const float* in, float* out, double* out64) {
    float v = in[threadIdx.x];
    double d = v;
    for (int offset = 16; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
        d += __shfl_down_sync(0xffffffffu, d, offset);
    }
    out[threadIdx.x] = v;
    if (threadIdx.x % 32 == 0) out64[threadIdx.x / 32] = d;
}
extern "C" __global__ void broadcast(int* out) {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, (int)threadIdx.x * 10, 5);
}
extern "C" __global__ void indices(int* out, long long n) {
    const long long i = (long long)(blockIdx.y * gridDim.x + blockIdx.x) * blockDim.x * blockDim.y
                        + threadIdx.y * blockDim.x + threadIdx.x;
    if (i < n) out[i] = (int)(threadIdx.x + 10 * threadIdx.y + 100 * blockIdx.x + 1000 * blockIdx.y);
}
extern "C" __global__ void dynamic_reverse(const float* in, float* out) {
    extern __shared__ float buffer[];
    buffer[threadIdx.x] = in[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = buffer[blockDim.x - 1 - threadIdx.x];
}
""", "warp_sums", "broadcast", "indices", "dynamic_reverse")


def test_warp_shuffles_exchange_between_lanes_of_one_warp():
    x = np.arange(64, dtype=np.float32)
    out, out64 = np.zeros(64, dtype=np.float32), np.zeros(2)
    HostKernels(SHUFFLES).function("warp_sums")(1, 64, (x, out, out64))
    np.testing.assert_array_equal(out, np.repeat([x[:32].sum(), x[32:].sum()], 32))
    np.testing.assert_array_equal(out64, [x[:32].sum(), x[32:].sum()])  # lane 0 of each warp


def test_shfl_sync_broadcasts_one_lane():
    out = np.zeros(32, dtype=np.int32)
    HostKernels(SHUFFLES).function("broadcast")(1, 32, (out,))
    assert set(out) == {50}


def test_two_dimensional_grid_and_block_indices():
    n = 2 * 3 * 4 * 8
    out = np.full(n, -1, dtype=np.int32)
    HostKernels(SHUFFLES).function("indices")((2, 3), (4, 8), (out, n))  # a Python int: long long
    expected = [tx + 10 * ty + 100 * bx + 1000 * by
                for by in range(3) for bx in range(2) for ty in range(8) for tx in range(4)]
    np.testing.assert_array_equal(out, expected)


UNWRITTEN_SHARED = source(r"""
extern "C" __global__ void first_half(float* out) {
    __shared__ float tile[64];
    if (threadIdx.x < 32) tile[threadIdx.x] = 1.0f;
    __syncthreads();
    out[blockIdx.x * 64 + threadIdx.x] = tile[threadIdx.x];
}
""", "first_half")


def test_shared_memory_no_thread_of_the_block_wrote_reads_nan():
    """Each block starts with its shared arrays full of NaN, not with what the last block left."""
    out = np.zeros(2 * 64, dtype=np.float32)
    HostKernels(UNWRITTEN_SHARED).function("first_half")(2, 64, (out,))
    for block in out.reshape(2, 64):
        assert (block[:32] == 1).all() and np.isnan(block[32:]).all()


def test_dynamic_shared_memory():
    x = np.arange(40, dtype=np.float32)
    out = np.zeros_like(x)
    HostKernels(SHUFFLES).function("dynamic_reverse")(1, 40, (x, out), shared_mem=4 * 40)
    np.testing.assert_array_equal(out, x[::-1])


@pytest.mark.parametrize(("args", "problem"), [
    ((np.zeros(8, dtype=np.int32), np.int32(8)), "long long n) gets a int32 value"),
    ((np.zeros(8, dtype=np.int32), 8.0), "gets a float64 value"),
    ((np.zeros(8, dtype=np.int64), 8), "needs int32 elements, got a int64 array"),
    ((np.zeros(16, dtype=np.int32)[::2], 8), "strided view"),
    ((np.zeros(8, dtype=np.int32),), "takes 2 arguments, got 1"),
])
def test_arguments_follow_cupy_rules_and_must_match_the_kernel(args, problem):
    with pytest.raises(HostLaunchError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        HostKernels(SHUFFLES).function("indices")(1, 8, args)


def test_launch_limits_are_cudas():
    f = HostKernels(SHUFFLES).function("dynamic_reverse")
    x = np.zeros(2048, dtype=np.float32)
    with pytest.raises(HostLaunchError, match="2048 threads per block"):
        f(1, 2048, (x, x))
    with pytest.raises(HostLaunchError, match="dynamic shared memory"):
        f(1, 32, (x, x), shared_mem=64 * 1024)


OUT_OF_BOUNDS = source(r"""
extern "C" __global__ void shift(const float* in, float* out, int by) {
    out[threadIdx.x] = in[threadIdx.x + by];
}
""", "shift")


def test_reads_past_an_array_get_nan_and_writes_past_it_fail_the_launch():
    f = HostKernels(OUT_OF_BOUNDS).function("shift")
    x = np.arange(8, dtype=np.float32)
    out = np.zeros(8, dtype=np.float32)
    f(1, 8, (x, out, np.int32(2)))
    np.testing.assert_array_equal(out[:6], x[2:])
    assert np.isnan(out[6:]).all()
    with pytest.raises(HostLaunchError, match="wrote outside shift"):
        f(1, 8, (x, out[:4], np.int32(0)))


def test_the_same_array_twice_is_one_buffer_and_partial_overlaps_are_refused():
    f = HostKernels(OUT_OF_BOUNDS).function("shift")
    x = np.arange(16, dtype=np.float32)
    f(1, 8, (x, x, np.int32(1)))  # in place: thread i reads i + 1, written by thread i + 1 alone
    assert x[7] == 8.0
    with pytest.raises(HostLaunchError, match="overlaps"):
        f(1, 4, (x[:8], x[4:12], np.int32(0)))


@pytest.mark.parametrize(("text", "expected"), [
    ("const float* __restrict__ b", ("b", "const float*", np.float32, True)),
    ("long long n", ("n", "long long", np.int64, False)),
    ("const uint4 *x", ("x", "const uint4 *", np.uint32, True)),
    ("unsigned int flags", ("flags", "unsigned int", np.uint32, False)),
])
def test_parameters_are_read_with_their_numpy_types(text, expected):
    p = parse_param(text)
    name, ctype, dtype, pointer = expected
    assert (p.name, p.ctype, p.dtype, p.pointer) == (name, ctype, np.dtype(dtype), pointer)


def test_kernels_with_inline_ptx_are_refused_with_the_reason():
    spin = source('extern "C" __global__ void k() { asm volatile("nanosleep.u32 100;"); }', "k")
    assert host_runnable(spin) == "uses inline PTX"
    with pytest.raises(HostLaunchError, match="inline PTX"):
        HostKernels(spin)


# --- every host-runnable kernel, through its workload ---------------------------------------------

def host_cases() -> list:
    """The selftest cases of every family whose kernels need no inline PTX (cuBLAS, the runtime's
    memcpy and CUDA graphs are not kernels of ours and stay out)."""
    return [*(c for c in stream.selftest_cases() if not isinstance(c, stream.DeviceCopy)),
            *gemv.selftest_cases(),
            *elementwise.selftest_cases(),
            *(c for c in roofline.selftest_cases() if isinstance(c, roofline.Fp32Roofline)),
            *(c for c in launch_bound.selftest_cases() if not isinstance(c, launch_bound.AxpyChainGraph)),
            *(c for c in ladder.selftest_cases() if isinstance(c, ladder.CudaGemm)),
            # more than one group of tile-rows, the last one short: the vectorized rung's block order
            *(r.workload(1157, 260, 12) for r in ladder.rungs() if not r.in_numba)]


@pytest.fixture
def on_host(monkeypatch):
    """CudaSource.function answered by host-compiled kernels, `cupy` by NumPy; yields the kernels used."""
    fake_cupy.install_numpy(monkeypatch)
    built: dict[int, HostKernels] = {}

    def function(self: CudaSource, name: str):
        if name not in self.kernels:
            raise KeyError(f"{name} is not one of {self.kernels}")
        return built.setdefault(id(self), HostKernels(self)).function(name)

    monkeypatch.setattr(CudaSource, "function", function)
    return built


@pytest.mark.parametrize("case", host_cases(), ids=lambda c: c.row_label)
def test_kernel_passes_its_own_check_on_the_host(on_host, case):
    verdict = measure.verify(case, FakeStream())
    assert verdict.ok, verdict.detail
    assert verdict.rel_err is not None and verdict.rel_err <= verdict.tolerance


def test_every_host_runnable_kernel_is_among_the_cases(on_host):
    launched = set()
    for case in host_cases():
        measure.verify(case, FakeStream())
    for kernels in on_host.values():
        launched |= {name for name, f in kernels.functions.items() if f.launches}
    runnable = {name for s in cuda_source.registered() if host_runnable(s) is None for name in s.kernels}
    assert runnable - launched == set()


# --- the checks catch broken kernels --------------------------------------------------------------

@pytest.mark.parametrize(("module", "case", "remove", "finding"), [
    (stream, lambda: stream.StreamOp("triad", 1003, 2),
     "for (long long i = 4 * n4 + tid; i < n; i += stride) scalar(i);", "unwritten"),
    (stream, lambda: stream.StreamOp("dot", 1003, 2),
     "for (long long i = 4 * n4 + tid; i < n; i += stride) scalar(i);", "exceeds"),
    (gemv, lambda: gemv.Gemv(67, 1003),
     "acc = fmaf(low_bf16(__ldg(wr + c)), low_bf16(xs16[c]), acc);", "relative error"),
    (elementwise, lambda: elementwise.AffineChain(1003, 5, True, sm_count=2),
     "for (int s = 0; s < steps; ++s) v = fmaf(a, v, b);", "relative error"),
])
def test_a_kernel_with_a_line_removed_fails_its_check(on_host, monkeypatch, module, case, remove, finding):
    assert remove in module.SOURCE.code
    broken = source(module.SOURCE.code.replace(remove, ""), *module.SOURCE.kernels)
    broken.function = HostKernels(broken).function
    monkeypatch.setattr(module, "SOURCE", broken)
    verdict = measure.verify(case(), FakeStream())
    assert not verdict.ok
    assert finding in verdict.detail


@pytest.mark.parametrize(("change", "finding"), [
    (("const int rows_in_group = min(tiles_m - first, GROUP_M);", "const int rows_in_group = GROUP_M;"),
     "NaN or Inf"),  # tiles of the short last group never computed
    # the second stage of B never written: its shared memory still holds the NaN each block starts with
    (("            *reinterpret_cast<float4*>(&Bs[cur ^ 1][b_k][b_col]) = b_next;\n", ""), "NaN or Inf"),
    (("a_in && k0 + a_k < K ?", "a_in ?"), "NaN or Inf"),  # the last row of A read past its end
])
def test_the_vectorized_rung_with_a_bug_fails_its_check(on_host, change, finding):
    rung = next(r for r in ladder.rungs() if not r.in_numba)
    old, new = change
    assert old in rung.source.code
    broken = source(rung.source.code.replace(old, new), *rung.source.kernels)
    broken.function = HostKernels(broken).function
    verdict = measure.verify(dataclasses.replace(rung, source=broken).workload(1157, 260, 12), FakeStream())
    assert not verdict.ok
    assert finding in verdict.detail
