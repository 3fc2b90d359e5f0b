"""STREAM triad in fp32, a[i] = b[i] + s * c[i]: the memory-bound end of the roofline.

16-byte (float4) accesses in a grid-stride loop, with a scalar loop for the remainder, so any n works.
Bytes are counted STREAM's way: triad reads two arrays and writes one, 3 x 4 x n bytes; 2 FLOPs per
element (a multiply and an add, fused into one FMA).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mfugap.cuda_source import CudaSource
from mfugap.verify import TOLERANCE, check_close, sample_indices
from mfugap.workload import Check, Workload

SOURCE = CudaSource(r"""
extern "C" __global__ void triad_f32(float* __restrict__ a, const float* __restrict__ b,
                                     const float* __restrict__ c, float s, long long n) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long n4 = n / 4;
    float4* a4 = reinterpret_cast<float4*>(a);
    const float4* b4 = reinterpret_cast<const float4*>(b);
    const float4* c4 = reinterpret_cast<const float4*>(c);
    for (long long i = tid; i < n4; i += stride) {
        const float4 x = b4[i], y = c4[i];
        a4[i] = make_float4(fmaf(s, y.x, x.x), fmaf(s, y.y, x.y), fmaf(s, y.z, x.z), fmaf(s, y.w, x.w));
    }
    for (long long i = 4 * n4 + tid; i < n; i += stride) a[i] = fmaf(s, c[i], b[i]);
}
""", kernels=("triad_f32",))

SCALAR = 3.0
THREADS = 256
BLOCKS_PER_SM = 8  # 8 x 256 threads fill an SM's 2048 thread slots on Ampere and Hopper


def flops(n: int) -> int:
    return 2 * n


def min_bytes(n: int) -> int:
    return 3 * 4 * n


def reference(b: np.ndarray, c: np.ndarray, s: float = SCALAR) -> np.ndarray:
    return np.asarray(b, dtype=np.float64) + s * np.asarray(c, dtype=np.float64)


def default_n(l2_bytes: int | None, quick: bool) -> int:
    """Elements per array: 2^28 (1 GiB), or 2^26 quick; never under 4x L2 per array."""
    n = 1 << (26 if quick else 28)
    while 4 * n < 4 * (l2_bytes or 0):  # bytes per array vs 4x L2
        n *= 2
    return n


class Triad(Workload):
    """STREAM triad over three fp32 arrays of n elements."""

    name = "stream_triad"
    precision = "fp32"

    def __init__(self, n: int, sm_count: int) -> None:
        if n < 1:
            raise ValueError(f"triad needs n >= 1, got {n}")
        self.params = {"n": n}
        self.grid = max(1, sm_count * BLOCKS_PER_SM)
        self.buf = {}

    def flops(self) -> int:
        return flops(self.params["n"])

    def min_bytes(self) -> int:
        return min_bytes(self.params["n"])

    def footprint_bytes(self) -> int:
        return self.min_bytes()

    def setup(self, stream: Any) -> None:
        import cupy

        n = self.params["n"]
        with stream:
            self.buf["b"] = cupy.random.random(n, dtype=cupy.float32) * 2 - 1
            self.buf["c"] = cupy.random.random(n, dtype=cupy.float32) * 2 - 1
            self.buf["a"] = cupy.empty(n, dtype=cupy.float32)

    def poison(self) -> None:
        self.buf["a"].fill(np.nan)

    def launch(self, stream: Any) -> None:
        import cupy

        a, b, c = self.buf["a"], self.buf["b"], self.buf["c"]
        SOURCE.function("triad_f32")((self.grid,), (THREADS,),
                                     (a, b, c, cupy.float32(SCALAR), cupy.int64(a.size)), stream=stream)

    def check(self) -> Check:
        import cupy

        a, b, c = self.buf["a"], self.buf["b"], self.buf["c"]
        unwritten = int(cupy.isnan(a).sum())
        if unwritten:
            return Check(ok=False, detail=f"triad left {unwritten} of {a.size} elements unwritten")
        idx = cupy.asarray(sample_indices(a.size, 1 << 20, seed=a.size, tail=64))
        return check_close(a[idx].get(), reference(b[idx].get(), c[idx].get()), TOLERANCE["fp32"],
                           "triad vs float64 NumPy on 1M sampled elements and the tail")
