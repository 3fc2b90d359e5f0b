"""An elementwise chain, y = f_k(...f_1(x)) with f(v) = a*v + b, as k separate kernels or one fused kernel.

Both compute the same function with the same model FLOPs (2 per element per step) and the same minimum
traffic (x read once, y written once: 8 bytes per element). The unfused chain moves k times that, each
kernel reading and writing the whole array; the fused kernel keeps the k steps in registers. Both keep
the GPU busy the whole time, so GPU-Util cannot tell them apart; MBU can.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mfugap.cuda_source import CudaSource
from mfugap.verify import TOLERANCE, check_close, sample_indices
from mfugap.workload import Check, Workload

SOURCE = CudaSource(r"""
// out[i] = `steps` applications of v -> a*v + b to in[i]; float4 accesses, scalar tail, any n.
// No __restrict__: the unfused chain runs in place (out == in); each thread reads an element before
// writing it, which is well defined only without the no-alias promise.
extern "C" __global__ void affine_chain_f32(float* out, const float* in,
                                            float a, float b, int steps, long long n) {
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long n4 = n / 4;
    for (long long i = tid; i < n4; i += stride) {
        float4 v = reinterpret_cast<const float4*>(in)[i];
        for (int s = 0; s < steps; ++s) {
            v.x = fmaf(a, v.x, b); v.y = fmaf(a, v.y, b); v.z = fmaf(a, v.z, b); v.w = fmaf(a, v.w, b);
        }
        reinterpret_cast<float4*>(out)[i] = v;
    }
    for (long long i = 4 * n4 + tid; i < n; i += stride) {
        float v = in[i];
        for (int s = 0; s < steps; ++s) v = fmaf(a, v, b);
        out[i] = v;
    }
}
""", kernels=("affine_chain_f32",))

A, B = 0.75, 0.125  # contractive: values stay in [-1, 1] and rounding errors shrink along the chain
THREADS = 256
BLOCKS_PER_SM = 8


def flops(n: int, steps: int) -> int:
    return 2 * steps * n


def min_bytes(n: int) -> int:
    """x read once, y written once, whether the chain is fused or not."""
    return 2 * 4 * n


def moved_bytes(n: int, steps: int, fused: bool) -> int:
    """What the kernels actually move: once for the fused chain, once per step for separate kernels."""
    return min_bytes(n) * (1 if fused else steps)


def reference(x: np.ndarray, steps: int) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    for _ in range(steps):
        v = A * v + B
    return v


class AffineChain(Workload):
    """`steps` affine updates over n fp32 elements, fused into one kernel or one kernel per step."""

    precision = "fp32"

    def __init__(self, n: int, steps: int, fused: bool, sm_count: int) -> None:
        if n < 1 or steps < 1:
            raise ValueError(f"the chain needs n >= 1 and steps >= 1, got n={n} steps={steps}")
        self.fused = fused
        self.name = "elementwise_fused" if fused else "elementwise_unfused"
        self.params = {"n": n, "steps": steps}
        self.grid = max(1, sm_count * BLOCKS_PER_SM)
        self.buf = {}

    def flops(self) -> int:
        return flops(**self.params)

    def min_bytes(self) -> int:
        return min_bytes(self.params["n"])

    def footprint_bytes(self) -> int:
        return self.min_bytes()

    def setup(self, stream: Any) -> None:
        import cupy

        self.buf["x"] = cupy.random.random(self.params["n"], dtype=cupy.float32) * 2 - 1
        self.buf["y"] = cupy.empty_like(self.buf["x"])

    def poison(self) -> None:
        self.buf["y"].fill(np.nan)

    def _kernel(self, out: Any, src: Any, steps: int, stream: Any) -> None:
        import cupy

        SOURCE.function("affine_chain_f32")((self.grid,), (THREADS,),
                                            (out, src, cupy.float32(A), cupy.float32(B), cupy.int32(steps),
                                             cupy.int64(out.size)), stream=stream)

    def launch(self, stream: Any) -> None:
        x, y, steps = self.buf["x"], self.buf["y"], self.params["steps"]
        if self.fused:
            self._kernel(y, x, steps, stream)
            return
        self._kernel(y, x, 1, stream)  # x stays untouched, so every launch computes the same y
        for _ in range(steps - 1):
            self._kernel(y, y, 1, stream)

    def check(self) -> Check:
        import cupy

        x, y = self.buf["x"], self.buf["y"]
        unwritten = int(cupy.isnan(y).sum())
        if unwritten:
            return Check(ok=False, detail=f"{unwritten} of {y.size} elements unwritten")
        idx = cupy.asarray(sample_indices(y.size, 1 << 20, seed=y.size, tail=64))
        return check_close(y[idx].get(), reference(x[idx].get(), self.params["steps"]), TOLERANCE["fp32"],
                           "chain vs float64 NumPy on 1M sampled elements and the tail")


def selftest_cases() -> list[AffineChain]:
    return [AffineChain(n, 5, fused, sm_count=2) for fused in (True, False) for n in (1, 1003)]
