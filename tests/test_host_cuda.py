"""Our CUDA C kernels, run on the CPU from their real source through their real workloads.

tests/host_cuda.py compiles each CudaSource with g++ against a small CUDA shim (threads as coroutines,
barriers that open when every running thread reaches them, the inline PTX our kernels use emulated).
Each kernel family's `selftest_cases()` (what `mfugap selftest` runs on a GPU) goes through
mfugap.measure.verify with a NumPy-backed `cupy`: setup, poison, launch with CuPy's argument rules,
check against the float64 reference. Then kernels with a bug put in must fail that check.
"""
from types import SimpleNamespace

import numpy as np
import pytest

from mfugap import cuda_source, measure
from mfugap.cuda_source import CudaSource
from mfugap.kernels import elementwise, flag_wait, gemv, launch_bound, mma_gemm, peak, roofline, spin, stream
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
    HostKernels(REVERSE).function("reverse")((3,), (256,), (data, out))
    np.testing.assert_array_equal(out, data.reshape(3, 256)[:, ::-1].ravel())


RACES = source(r"""
extern "C" __global__ void from_previous_thread(const float* x, float* out) {
    __shared__ float t[64];
    t[threadIdx.x] = x[threadIdx.x];
    out[threadIdx.x] = threadIdx.x ? t[threadIdx.x - 1] : 0.0f;  // no barrier between write and read
}
extern "C" __global__ void same_element(float* out) {
    out[0] = (float)threadIdx.x;
}
""", "from_previous_thread", "same_element")


@pytest.mark.parametrize(("kernel", "args"), [
    ("from_previous_thread", (np.arange(64, dtype=np.float32), np.zeros(64, dtype=np.float32))),
    ("same_element", (np.zeros(1, dtype=np.float32),)),
])
def test_races_fail_the_launch_whichever_thread_comes_first(kernel, args):
    with pytest.raises(HostLaunchError, match="differs when the threads run in another order: a race"):
        HostKernels(RACES).function(kernel)((1,), (64,), args)


def test_missing_barrier_fails_the_launch():
    data = np.arange(256, dtype=np.int32)
    with pytest.raises(HostLaunchError, match="a race"):
        HostKernels(REVERSE).function("reverse_unsynced")((1,), (256,), (data, np.zeros_like(data)))


def test_divergent_barrier_fails_the_launch():
    with pytest.raises(HostLaunchError, match="different barriers"):
        HostKernels(REVERSE).function("divergent")((1,), (32,), (np.zeros(32, dtype=np.int32),))


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
    HostKernels(SHUFFLES).function("warp_sums")((1,), (64,), (x, out, out64))
    np.testing.assert_array_equal(out, np.repeat([x[:32].sum(), x[32:].sum()], 32))
    np.testing.assert_array_equal(out64, [x[:32].sum(), x[32:].sum()])  # lane 0 of each warp


PARTIAL_WARP = source(r"""
extern "C" __global__ void sum_first(const float* x, float* out, int n) {
    if ((int)threadIdx.x >= n) return;  // lanes past n return before the shuffles: undefined on a GPU
    float v = x[threadIdx.x];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    out[threadIdx.x] = v;
}
extern "C" __global__ void xor_within_16(float* out) {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (float)threadIdx.x, 16, 16);
}
""", "sum_first", "xor_within_16")


def test_a_shuffle_reading_a_returned_lane_gets_nan():
    out = np.zeros(32, dtype=np.float32)
    x = np.ones(32, dtype=np.float32)
    HostKernels(PARTIAL_WARP).function("sum_first")((1,), (32,), (x, out, np.int32(20)))
    assert np.isnan(out[:20]).all() and (out[20:] == 0).all()


def test_xor_into_a_later_group_of_width_lanes_returns_the_own_value():
    out = np.zeros(32, dtype=np.float32)
    HostKernels(PARTIAL_WARP).function("xor_within_16")((1,), (32,), (out,))
    np.testing.assert_array_equal(out, [*range(16), *range(0, 16)])  # lanes 16-31 read group 0


def test_shfl_sync_broadcasts_one_lane():
    out = np.zeros(32, dtype=np.int32)
    HostKernels(SHUFFLES).function("broadcast")((1,), (32,), (out,))
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
    HostKernels(UNWRITTEN_SHARED).function("first_half")((2,), (64,), (out,))
    for block in out.reshape(2, 64):
        assert (block[:32] == 1).all() and np.isnan(block[32:]).all()


def test_dynamic_shared_memory():
    x = np.arange(40, dtype=np.float32)
    out = np.zeros_like(x)
    HostKernels(SHUFFLES).function("dynamic_reverse")((1,), (40,), (x, out), shared_mem=4 * 40)
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
        HostKernels(SHUFFLES).function("indices")((1,), (8,), args)


def test_grid_and_block_are_tuples_as_cupy_requires():
    with pytest.raises(HostLaunchError, match="tuple"):
        HostKernels(SHUFFLES).function("broadcast")(1, 32, (np.zeros(32, dtype=np.int32),))


def test_launch_limits_are_cudas():
    f = HostKernels(SHUFFLES).function("dynamic_reverse")
    x = np.zeros(2048, dtype=np.float32)
    with pytest.raises(HostLaunchError, match="2048 threads per block, the kernel allows 1024"):
        f((1,), (2048,), (x, x))
    with pytest.raises(HostLaunchError, match="dynamic shared memory"):
        f((1,), (32,), (x, x), shared_mem=64 * 1024)


OUT_OF_BOUNDS = source(r"""
extern "C" __global__ void shift(const float* in, float* out, int by) {
    out[threadIdx.x] = in[threadIdx.x + by];
}
""", "shift")


def test_reads_past_an_array_get_nan_and_writes_past_it_fail_the_launch():
    f = HostKernels(OUT_OF_BOUNDS).function("shift")
    x = np.arange(8, dtype=np.float32)
    out = np.zeros(8, dtype=np.float32)
    f((1,), (8,), (x, out, np.int32(2)))
    np.testing.assert_array_equal(out[:6], x[2:])
    assert np.isnan(out[6:]).all()
    with pytest.raises(HostLaunchError, match="wrote outside shift"):
        f((1,), (8,), (x, out[:4], np.int32(0)))


ALIASED = source(r"""
extern "C" __global__ void write_then_read(float* out, const float* in, float* seen) {
    out[threadIdx.x] = 2.0f;
    __syncthreads();
    seen[threadIdx.x] = in[(threadIdx.x + 1) % blockDim.x];
}
extern "C" __global__ void misaligned(const float* x, float* out) {
    out[threadIdx.x] = reinterpret_cast<const float4*>(x)[threadIdx.x].y;
}
extern "C" __global__ void shared_index(const int* i, float* out) {
    __shared__ float tile[8];
    tile[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = tile[i[0]];
}
extern "C" __global__ void __launch_bounds__(64) bounded(float* out) {
    __shared__ unsigned int flag;
    __shared__ float a[4];
    out[threadIdx.x] = threadIdx.x == 0 ? (float)(flag == 0xFFFFFFFFu) + isnan(a[3]) : 0.0f;
}
""", "write_then_read", "misaligned", "shared_index", "bounded")


PAST_THE_END = source(r"""
extern "C" __global__ void scale_one_too_many(const float* in, float* out, int n) {
    if ((int)threadIdx.x <= n) out[threadIdx.x] = 2.0f * in[threadIdx.x];  // <= : one past each end
}
extern "C" __global__ void stage_one_too_many(const float* in, float* out, int n) {
    extern __shared__ float staged[];
    if ((int)threadIdx.x <= n) staged[threadIdx.x] = in[threadIdx.x];  // one float past the buffer
    __syncthreads();
    if ((int)threadIdx.x < n) out[threadIdx.x] = staged[threadIdx.x];
}
""", "scale_one_too_many", "stage_one_too_many")


def test_a_write_past_the_end_is_caught_even_when_it_stores_the_nan_it_read_there():
    x, out = np.ones(8, dtype=np.float32), np.zeros(8, dtype=np.float32)
    with pytest.raises(HostLaunchError, match="wrote outside"):
        HostKernels(PAST_THE_END).function("scale_one_too_many")((1,), (9,), (x, out, np.int32(8)))


def test_a_write_past_the_dynamic_shared_memory_fails_the_launch():
    x, out = np.ones(8, dtype=np.float32), np.zeros(8, dtype=np.float32)
    f = HostKernels(PAST_THE_END).function("stage_one_too_many")
    with pytest.raises(HostLaunchError, match="wrote past its 32 bytes of dynamic shared memory"):
        f((1,), (9,), (x, out, np.int32(8)), shared_mem=32)
    f((1,), (9,), (x, out, np.int32(8)), shared_mem=36)
    assert (out == 1).all()


def test_the_same_array_twice_is_one_buffer_and_partial_overlaps_are_refused():
    f = HostKernels(ALIASED).function("write_then_read")
    x, seen = np.zeros(8, dtype=np.float32), np.zeros(8, dtype=np.float32)
    f((1,), (8,), (x, x, seen))
    assert (seen == 2).all()  # what another thread wrote through `out`, read through `in`
    with pytest.raises(HostLaunchError, match="overlaps"):
        f((1,), (4,), (x[:4], x[2:6], seen[:4]))


def test_a_misaligned_vector_load_fails_the_launch():
    """A view one float into an array keeps its misalignment in the copy; UBSan reports the float4 load."""
    f = HostKernels(ALIASED).function("misaligned")
    x, out = np.arange(33, dtype=np.float32), np.zeros(8, dtype=np.float32)
    f((1,), (8,), (x[:32], out))
    np.testing.assert_array_equal(out, x[1:32:4])
    with pytest.raises(HostLaunchError, match="misaligned address"):
        f((1,), (8,), (x[1:], out))


def test_an_index_past_a_shared_array_fails_the_launch():
    f = HostKernels(ALIASED).function("shared_index")
    out = np.zeros(8, dtype=np.float32)
    f((1,), (8,), (np.array([7], dtype=np.int32), out))
    assert (out == 1).all()
    with pytest.raises(HostLaunchError, match="out of bounds"):
        f((1,), (8,), (np.array([8], dtype=np.int32), out))


def test_launch_bounds_limit_the_block_and_scalar_shared_variables_start_as_nan():
    f = HostKernels(ALIASED).function("bounded")
    out = np.zeros(64, dtype=np.float32)
    f((1,), (64,), (out,))
    assert out[0] == 2.0  # the unsigned int reads all ones, the float NaN
    with pytest.raises(HostLaunchError, match="128 threads per block, the kernel allows 64"):
        f((1,), (128,), (np.zeros(128, dtype=np.float32),))


def test_shared_declarations_the_shim_cannot_track_are_refused():
    two = source('extern "C" __global__ void k(float* o) { __shared__ float a[4], b[4]; o[0] = a[0]; }', "k")
    with pytest.raises(HostLaunchError, match="one __shared__ variable per statement"):
        HostKernels(two)


@pytest.mark.parametrize(("text", "expected"), [
    ("const float* __restrict__ b", ("b", "const float*", np.float32, True)),
    ("long long n", ("n", "long long", np.int64, False)),
    ("const uint4 *x", ("x", "const uint4 *", None, True)),
    ("unsigned int flags", ("flags", "unsigned int", np.uint32, False)),
])
def test_parameters_are_read_with_their_numpy_types(text, expected):
    p = parse_param(text)
    name, ctype, dtype, pointer = expected
    assert (p.name, p.ctype, p.dtype, p.pointer) == (name, ctype, dtype and np.dtype(dtype), pointer)


LDMATRIX_ROWS = source(r"""
extern "C" __global__ void rows(const int* offsets, unsigned* out) {
    __shared__ __align__(128) unsigned short tile[1024];
    for (int i = threadIdx.x; i < 1024; i += blockDim.x) tile[i] = i;
    __syncthreads();
    // lanes 0..7 name the eight rows of the one 8x8 matrix, as element offsets into the tile
    const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(tile + offsets[threadIdx.x % 8]));
    unsigned d;
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];" : "=r"(d) : "r"(address));
    out[threadIdx.x] = d;
}
""", "rows")


@pytest.mark.parametrize(("offsets", "extra"), [
    ([8 * r for r in range(8)], 0),  # 16-byte rows side by side: eight bank groups, one wavefront
    ([64 * r for r in range(8)], 7),  # 128 bytes apart: all in one bank group, eight wavefronts
    ([0] * 8, 0),  # one row for every lane: a broadcast
    ([0, 64, 8, 72, 16, 80, 24, 88], 1),  # two rows in each of four groups
])
def test_ldmatrix_counts_the_shared_memory_wavefronts_past_one(offsets, extra):
    f = HostKernels(LDMATRIX_ROWS).function("rows")
    out = np.zeros(32, dtype=np.uint32)
    f((1,), (32,), (np.array(offsets, dtype=np.int32), out))
    assert f.ldmatrix_conflicts == extra
    row, pair = np.arange(32) // 4, np.arange(32) % 4  # and lane l still gets row l/4, elements 2(l%4)..
    first = np.array(offsets)[row] + 2 * pair
    np.testing.assert_array_equal(out, first | (first + 1) << 16)


CP_ASYNC_STAGE = source(r"""
extern "C" __global__ void stage(const uint4* src, const int* chunks, uint4* out) {
    __shared__ __align__(128) uint4 tile[512];
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(tile + chunks[threadIdx.x]));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                 :: "r"(dst), "l"(__cvta_generic_to_global(src + threadIdx.x)), "r"(16));
    asm volatile("cp.async.commit_group;" ::);
    asm volatile("cp.async.wait_group %0;" :: "n"(0) : "memory");
    __syncthreads();
    out[threadIdx.x] = tile[chunks[threadIdx.x]];
}
""", "stage")


@pytest.mark.parametrize(("chunks", "extra"), [
    (list(range(32)), 0),  # each 8-lane phase stores 128 consecutive bytes
    ([8 * lane for lane in range(32)], 4 * 7),  # 128 bytes apart: every phase in one bank group
    ([2 * lane for lane in range(32)], 4 * 1),  # every other 16 bytes: two per group in each phase
])
def test_cp_async_counts_the_bank_conflicts_of_its_shared_stores(chunks, extra):
    f = HostKernels(CP_ASYNC_STAGE).function("stage")
    src = np.arange(32 * 4, dtype=np.uint32)
    out = np.zeros_like(src)
    f((1,), (32,), (src, np.array(chunks, dtype=np.int32), out))
    assert f.cp_async_conflicts == extra
    np.testing.assert_array_equal(out, src)  # and each lane's 16 bytes went where it asked


def test_ptx_without_a_host_emulation_is_refused_with_the_reason():
    sleeper = source('extern "C" __global__ void k() { asm volatile("nanosleep.u32 100;"); }', "k")
    assert host_runnable(sleeper) == "PTX nanosleep.u32 has no host emulation"
    with pytest.raises(HostLaunchError, match=r"nanosleep\.u32 has no host emulation"):
        HostKernels(sleeper)


# --- every host-runnable kernel, through its workload ---------------------------------------------

GROUPS = (1157, 260, 12)  # ten tile-rows for the vectorized rung's block order: a group of 8 and a short one


def host_cases() -> list:
    """The selftest cases of every family whose kernels the host runs (cuBLAS, the runtime's memcpy and
    CUDA graphs are not kernels of ours and stay out; the flag wait is run below, on its own)."""
    return [*(c for c in stream.selftest_cases() if not isinstance(c, stream.DeviceCopy)),
            *gemv.selftest_cases(),
            *elementwise.selftest_cases(),
            *roofline.selftest_cases(),
            *mma_gemm.selftest_cases(),
            *peak.selftest_cases(),
            *spin.selftest_cases(),
            *(c for c in launch_bound.selftest_cases() if not isinstance(c, launch_bound.AxpyChainGraph)),
            *(c for c in ladder.selftest_cases() if isinstance(c, ladder.CudaGemm)),
            *(r.workload(*GROUPS) for r in ladder.rungs() if not r.in_numba)]


@pytest.fixture
def on_host(monkeypatch):
    """CudaSource.function answered by host-compiled kernels, `cupy` by NumPy; returns the kernels built,
    by id() of their source."""
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
    if verdict.rel_err is not None:  # numeric checks; the spin's is about time spun
        assert verdict.rel_err <= verdict.tolerance


def test_every_kernel_of_every_source_is_among_the_cases(on_host):
    first = {}
    for case in host_cases():  # the first case of each kind (a kind: one source's kernel) launches it
        first.setdefault((type(case), case.name, case.precision, getattr(case, "kind", None)), case)
    for case in first.values():
        measure.verify(case, FakeStream())
    launched = {(source_id, name) for source_id, kernels in on_host.items()
                for name, f in kernels.functions.items() if f.launches}
    every = {(id(s), name) for s in cuda_source.registered() for name in s.kernels}
    missing = {name for source_id, name in every - launched}
    assert missing == {"flag_wait"}  # its workload maps pinned memory: its kernel is tested on its own below


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
    assert finding in _failure(monkeypatch, module.SOURCE, remove, "", case())


def _failure(monkeypatch, kernel_source: CudaSource, old: str, new: str, case) -> str:
    """Why `case` fails with `old` replaced by `new` in `kernel_source`: its check's detail, or the
    launch's error. The test fails if it passes."""
    assert old in kernel_source.code
    broken = source(kernel_source.code.replace(old, new), *kernel_source.kernels)
    # on the object, so workloads that keep a reference to it launch the broken kernel too
    monkeypatch.setattr(kernel_source, "function", HostKernels(broken).function)
    try:
        verdict = measure.verify(case, FakeStream())
    except HostLaunchError as exc:
        return str(exc)
    assert not verdict.ok, "the check passed a broken kernel"
    return verdict.detail


MMA_CASE = (130, 72, 200)  # two tile-rows, a ragged tile-column, seven K tiles: the pipeline wraps


@pytest.mark.parametrize(("old", "new", "finding"), [
    # waiting for one cp.async group too few: the stage computed has not landed (still NaN)
    ("cp_async_wait<MG_STAGES - 2>()", "cp_async_wait<MG_STAGES - 1>()", "NaN or Inf"),
    # no barrier between the wait and the refill: a warp overwrites the stage another still reads
    ("        __syncthreads();\n        const int next", "        const int next", "a race"),
    # B read without .trans: fragments of B^T
    ("ldmatrix_x4_trans(d, smem_addr", "ldmatrix_x4(d, smem_addr", "relative error"),
    # the two halves of each packed pair of C swapped
    ("P::pack(acc[mi][ni][2 * h], acc[mi][ni][2 * h + 1])",
     "P::pack(acc[mi][ni][2 * h + 1], acc[mi][ni][2 * h])", "relative error"),
    # a B tile row read from one chunk off: ldmatrix rows must start 16-byte aligned
    ("ldmatrix_x4_trans(d, smem_addr(b_stage + smem_chunk(row, chunk, MG_B_ROW_CHUNKS)));",
     "ldmatrix_x4_trans(d, smem_addr(b_stage + smem_chunk(row, chunk, MG_B_ROW_CHUNKS)) + 4);",
     "ldmatrix row address not 16-byte aligned"),
    # a copy that starts half a chunk into the matrix: cp.async sources must be aligned to the copy size
    ("const elem_t* src = inside ? g + (long long)gr * ld + gc : g;",
     "const elem_t* src = inside ? g + (long long)gr * ld + gc + 4 : g;", "cp.async source not aligned"),
])
def test_the_mma_gemm_with_a_bug_fails_on_the_host(on_host, monkeypatch, old, new, finding):
    assert finding in _failure(monkeypatch, mma_gemm.SOURCE, old, new, mma_gemm.MmaGemm(*MMA_CASE, "bf16"))


@pytest.mark.parametrize("warp_tile", sorted(mma_gemm.WARP_TILES))
def test_the_mma_gemm_stages_and_reads_its_tiles_without_bank_conflicts(on_host, warp_tile):
    """The swizzled tiles, through the kernel's own cp.async and ldmatrix calls (the NumPy model checks
    the layout; this checks that the kernel uses it everywhere)."""
    assert measure.verify(mma_gemm.MmaGemm(*MMA_CASE, "bf16", warp_tile=warp_tile), FakeStream()).ok
    (kernels,) = on_host.values()
    gemm = kernels.function("mma_gemm_bf16")
    assert gemm.launches == 1
    assert (gemm.ldmatrix_conflicts, gemm.cp_async_conflicts) == (0, 0)


def test_an_unswizzled_tile_shows_bank_conflicts(on_host, monkeypatch):
    """The counter sees what the swizzle prevents: rows of A 64 bytes apart share bank groups."""
    swizzle = "return row * row_chunks + (chunk ^ ((row / rows_per_line) % span));"
    assert swizzle in mma_gemm.SOURCE.code
    plain = source(mma_gemm.SOURCE.code.replace(swizzle, "return row * row_chunks + chunk;"),
                   *mma_gemm.SOURCE.kernels)
    monkeypatch.setattr(mma_gemm.SOURCE, "function", HostKernels(plain).function)
    assert measure.verify(mma_gemm.MmaGemm(*MMA_CASE, "bf16"), FakeStream()).ok  # still right, slower
    assert mma_gemm.SOURCE.function("mma_gemm_bf16").ldmatrix_conflicts > 0


def test_the_mma_gemm_unchanged_passes_the_case_the_bugs_fail(on_host):
    verdict = measure.verify(mma_gemm.MmaGemm(*MMA_CASE, "bf16"), FakeStream())
    assert verdict.ok, verdict.detail


@pytest.mark.parametrize(("number", "change", "shape", "finding"), [
    # tiles of the short last group never computed
    (4, ("? tiles_m - first : group_m;", "? group_m : group_m;"),
     GROUPS, "NaN or Inf"),
    # the second stage of B never written: its shared memory still holds the NaN each block starts with
    (4, ("            *reinterpret_cast<float4*>(&Bs[cur ^ 1][b_k][b_col]) = b_next;\n", ""), GROUPS,
     "NaN or Inf"),
    (4, ("a_in && k0 + a_k < K ?", "a_in ?"), GROUPS, "NaN or Inf"),  # the last row of A read past its end
    (4, ("float4 a_next = a_in && a_k < K ?", "float4 a_next = a_in ?"), (130, 136, 4), "NaN or Inf"),
    # no barrier after refilling the other stage: a warp reads it while another still writes it
    (5, ("            store(cur ^ 1);\n            __syncthreads();", "            store(cur ^ 1);"),
     (257, 132, 76), "a race"),
    (5, ("a_in && k < K ?", "a_in ?"), (130, 136, 4), "NaN or Inf"),
    (5, ("&Bs[cur][kk][cols + 16 * s]", "&Bs[cur][kk][cols + 4 * s]"), GROUPS, "relative error"),  # strips
])
def test_a_cuda_c_rung_with_a_bug_fails_its_check(on_host, monkeypatch, number, change, shape, finding):
    rung = next(r for r in ladder.rungs() if r.number == number)
    assert finding in _failure(monkeypatch, rung.source, *change, rung.workload(*shape))


# --- the flag wait: host memory another thread writes while the kernel polls ----------------------

def _wait(flag: np.ndarray, epoch: int, timeout_ns: int, polls: int) -> np.ndarray:
    record = np.zeros(flag_wait.RECORD_WORDS, dtype=np.uint64)
    HostKernels(flag_wait.SOURCE).function("flag_wait")(
        (1,), (1,), (flag, np.uint64(epoch), np.uint64(timeout_ns), np.uint64(polls), record))
    return record


def test_flag_wait_ends_when_another_thread_releases_the_flag():
    import threading

    HostKernels(flag_wait.SOURCE)  # built before the straggler's clock starts
    flag = np.zeros(1, dtype=np.uint64)
    delay_ns = 20_000_000
    release = threading.Timer(delay_ns / 1e9, lambda: flag.__setitem__(0, 3))
    release.start()
    limit = flag_wait.timeout_ns(delay_ns)
    record = _wait(flag, 3, limit, flag_wait.max_polls(limit))
    release.join()
    verdict = flag_wait.check_record(record, 3, delay_ns)  # released, after polling, before the timeout
    assert verdict.ok, verdict.detail


@pytest.mark.parametrize(("timeout_ns", "polls", "cut_by"),
                         [(2_000_000, 10**12, "timer"), (10**15, 1000, "polls")])
def test_flag_wait_ends_on_its_own_when_nobody_releases(timeout_ns, polls, cut_by):
    record = _wait(np.zeros(1, dtype=np.uint64), 1, timeout_ns, polls)
    assert record[0] == flag_wait.TIMED_OUT
    if cut_by == "timer":
        assert timeout_ns <= record[1] < 100 * timeout_ns
    else:
        assert record[2] == polls


def test_every_cuda_source_runs_on_the_host():
    assert {" + ".join(s.kernels): host_runnable(s) for s in cuda_source.registered()
            if host_runnable(s) is not None} == {}
