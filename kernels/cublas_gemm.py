"""The vendor ceiling: C = A @ B through cuBLAS (cublasGemmEx via CuPy) in fp32, tf32, bf16 or fp16.

Shapes, counts, inputs and the check are kernels/dense_gemm.py's; this module only calls cuBLAS.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from mfugap.kernels.dense_gemm import DenseGemm
from mfugap.workload import Workload

# precision -> (cudaDataType name, cublasComputeType name)
FORMATS = {
    "fp32": ("CUDA_R_32F", "CUBLAS_COMPUTE_32F"),
    "tf32": ("CUDA_R_32F", "CUBLAS_COMPUTE_32F_FAST_TF32"),
    "bf16": ("CUDA_R_16BF", "CUBLAS_COMPUTE_32F"),
    "fp16": ("CUDA_R_16F", "CUBLAS_COMPUTE_32F"),
}


class CublasGemm(DenseGemm):
    name = "cublas_gemm"
    kind = "cuBLAS"
    precisions = tuple(FORMATS)

    def setup(self, stream: Any) -> None:
        import cupy
        from cupy_backends.cuda.libs import cublas

        super().setup(stream)
        dtype_name, compute_name = FORMATS[self.precision]
        self.buf["dtype"] = getattr(cupy.cuda.runtime, dtype_name)
        self.buf["compute"] = getattr(cublas, compute_name)
        self.buf["alpha"] = np.ones(1, dtype=np.float32)  # host scalars, kept alive across launches
        self.buf["beta"] = np.zeros(1, dtype=np.float32)

    def launch(self, stream: Any) -> None:
        import cupy
        from cupy_backends.cuda.libs import cublas

        m, n, k = self.params.values()
        a, b, c, dt = self.buf["a"], self.next_weights(), self.buf["c"], self.buf["dtype"]
        # CuPy's gemmEx binds the handle to CuPy's current stream, which the harness makes `stream`.
        handle = cupy.cuda.device.get_cublas_handle()
        # cuBLAS is column-major: the row-major C = A @ B is the column-major C^T = B^T @ A^T.
        cublas.gemmEx(handle, cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_N, n, m, k,
                      self.buf["alpha"].ctypes.data, b.data.ptr, dt, n, a.data.ptr, dt, k,
                      self.buf["beta"].ctypes.data, c.data.ptr, dt, n,
                      self.buf["compute"], cublas.CUBLAS_GEMM_DEFAULT)


def selftest_cases() -> list[Workload]:
    """Odd shapes in every precision, and a batch-1 row (M = 1) as in decoding."""
    shapes = ((67, 45, 129), (1, 256, 384))
    return [CublasGemm(*shape, precision) for precision in FORMATS for shape in shapes]
