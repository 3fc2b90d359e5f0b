"""The vendor ceiling: C = A @ B through cuBLAS (cublasGemmEx via CuPy) in fp32, tf32, bf16 or fp16.

Row-major A[M,K], B[K,N], C[M,N], fp32 accumulation. 2*M*N*K model FLOPs; each matrix touched once.
bf16 is stored as uint16 bit patterns, so no bf16 dtype support is needed from the array library.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mfugap.verify import TOLERANCE, check_close, from_bf16_bits, to_bf16_bits
from mfugap.workload import Check, Workload

# precision -> (element bytes, cudaDataType name, cublasComputeType name)
FORMATS = {
    "fp32": (4, "CUDA_R_32F", "CUBLAS_COMPUTE_32F"),
    "tf32": (4, "CUDA_R_32F", "CUBLAS_COMPUTE_32F_FAST_TF32"),
    "bf16": (2, "CUDA_R_16BF", "CUBLAS_COMPUTE_32F"),
    "fp16": (2, "CUDA_R_16F", "CUBLAS_COMPUTE_32F"),
}
BF16_NAN = 0x7FC0
CHECK_ROWS = 32  # rows of C compared with a float64 host product: 2*32*N*K FLOPs on the CPU


def flops(m: int, n: int, k: int) -> int:
    return 2 * m * n * k


def min_bytes(m: int, n: int, k: int, precision: str) -> int:
    return FORMATS[precision][0] * (m * k + k * n + m * n)


def _host_values(x: np.ndarray, precision: str) -> np.ndarray:
    return from_bf16_bits(x).astype(np.float64) if precision == "bf16" else x.astype(np.float64)


class CublasGemm(Workload):
    name = "cublas_gemm"

    def __init__(self, m: int, n: int, k: int, precision: str = "bf16") -> None:
        if precision not in FORMATS:
            raise ValueError(f"cuBLAS GEMM precision must be one of {sorted(FORMATS)}, got {precision!r}")
        if min(m, n, k) < 1:
            raise ValueError(f"GEMM dimensions must be positive, got {m}x{n}x{k}")
        self.precision = precision
        self.params = {"m": m, "n": n, "k": k}
        self.buf = {}

    @property
    def label(self) -> str:
        m, n, k = self.params.values()
        return f"cuBLAS {self.precision} {m}x{n}x{k}"

    def flops(self) -> int:
        return flops(**self.params)

    def min_bytes(self) -> int:
        return min_bytes(**self.params, precision=self.precision)

    def footprint_bytes(self) -> int:
        return self.min_bytes()

    def _random(self, rows: int, cols: int) -> Any:
        import cupy

        x = cupy.random.random((rows, cols), dtype=cupy.float32) * 2 - 1
        if self.precision == "bf16":
            return to_bf16_bits(x, cupy)
        return x.astype(cupy.float16) if self.precision == "fp16" else x

    def setup(self, stream: Any) -> None:
        import cupy
        from cupy_backends.cuda.libs import cublas

        m, n, k = self.params.values()
        with stream:
            self.buf["a"] = self._random(m, k)
            self.buf["b"] = self._random(k, n)
            self.buf["c"] = cupy.empty((m, n), dtype=self.buf["a"].dtype)
        _, dtype_name, compute_name = FORMATS[self.precision]
        self.buf["dtype"] = getattr(cupy.cuda.runtime, dtype_name)
        self.buf["compute"] = getattr(cublas, compute_name)
        self.buf["alpha"] = np.ones(1, dtype=np.float32)  # host scalars, kept alive across launches
        self.buf["beta"] = np.zeros(1, dtype=np.float32)

    def poison(self) -> None:
        self.buf["c"].fill(BF16_NAN if self.precision == "bf16" else np.nan)

    def launch(self, stream: Any) -> None:
        import cupy
        from cupy_backends.cuda.libs import cublas

        m, n, k = self.params.values()
        a, b, c, dt = self.buf["a"], self.buf["b"], self.buf["c"], self.buf["dtype"]
        handle = cupy.cuda.device.get_cublas_handle()
        cublas.setStream(handle, stream.ptr)
        # cuBLAS is column-major: the row-major C = A @ B is the column-major C^T = B^T @ A^T.
        cublas.gemmEx(handle, cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_N, n, m, k,
                      self.buf["alpha"].ctypes.data, b.data.ptr, dt, n, a.data.ptr, dt, k,
                      self.buf["beta"].ctypes.data, c.data.ptr, dt, n,
                      self.buf["compute"], cublas.CUBLAS_GEMM_DEFAULT)

    def check(self) -> Check:
        return check_product(self.buf["a"], self.buf["b"], self.buf["c"], self.precision)


def _nonfinite(c: Any, precision: str) -> int:
    import cupy

    if precision == "bf16":
        return int(((c & 0x7FFF) >= 0x7F80).sum())  # exponent all ones: Inf or NaN
    return int((~cupy.isfinite(c)).sum())


def check_product(a: Any, b: Any, c: Any, precision: str) -> Check:
    """Device arrays C == A @ B? Every element finite (the NaN poison overwritten), then CHECK_ROWS random
    rows against a float64 NumPy product of the same inputs. Shared by every GEMM workload."""
    bad = _nonfinite(c, precision)
    if bad:
        return Check(ok=False, detail=f"{bad} output elements are NaN or Inf (unwritten or overflowed)")
    m = c.shape[0]
    rows = np.random.default_rng(m).choice(m, size=min(CHECK_ROWS, m), replace=False)
    out = _host_values(c[rows].get(), precision)
    ref = _host_values(a[rows].get(), precision) @ _host_values(b.get(), precision)
    return check_close(out, ref, TOLERANCE[precision],
                       f"{len(rows)} random rows vs float64 NumPy on the same inputs")


def selftest_cases() -> list[Workload]:
    """Odd shapes in every precision, and a batch-1 row (M = 1) as in decoding."""
    shapes = ((67, 45, 129), (1, 256, 384))
    return [CublasGemm(*shape, precision) for precision in FORMATS for shape in shapes]
