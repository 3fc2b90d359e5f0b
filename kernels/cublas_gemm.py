"""The vendor ceiling: C = A @ B through cuBLAS (cublasGemmEx) in fp32, tf32, bf16 or fp16.

Shapes, counts, inputs and the check are kernels/dense_gemm.py's; this module only calls cuBLAS.

cublasGemmEx is called directly, through ctypes, in the libcublas CuPy has loaded, on a handle CuPy made.
CuPy 14's own wrapper refuses every cuBLAS call while a stream is being captured into a CUDA graph
(NotImplementedError), although cuBLAS supports capture. Through it, a GEMM shorter than the harness's
graph threshold (the small-batch sweep, 4096^3 with --quick) could only be launched one by one from
Python, with Python's gaps in its time, while our mma.sync kernel beside it is replayed from a graph.
Where no libcublas can be found in the process, CuPy's wrapper is used, and such rows say their capture
failed.
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path
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
CUBLAS_STATUS_SUCCESS = 0

_P, _I = ctypes.c_void_p, ctypes.c_int  # pointers and handles; C ints and enums
# cublas_api.h: cublasStatus_t cublasGemmEx(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B,
# Btype, ldb, beta, C, Ctype, ldc, computeType, algo)
GEMM_EX_ARGTYPES = (_P, _I, _I, _I, _I, _I, _P, _P, _I, _I, _P, _I, _I, _P, _P, _I, _I, _I, _I)
SET_STREAM_ARGTYPES = (_P, _P)  # cublasSetStream_v2(handle, stream): cublasSetStream is a macro for it


class CublasError(RuntimeError):
    """A cuBLAS call returned a status other than CUBLAS_STATUS_SUCCESS."""


def loaded_library(prefix: str, maps: Path = Path("/proc/self/maps")) -> str | None:
    """The path of a shared library this process has mapped whose file name starts with `prefix`."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:  # not Linux
        return None
    paths = (line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6)
    return next((path for path in paths if Path(path).name.startswith(prefix)), None)


class DirectCublas:
    """cublasSetStream and cublasGemmEx of one libcublas, called without CuPy's wrapper."""

    def __init__(self, path: str) -> None:
        library = ctypes.CDLL(path)  # the copy already loaded: dlopen returns its handle
        self.path = path
        self._set_stream = _declare(library.cublasSetStream_v2, SET_STREAM_ARGTYPES)
        self._gemm_ex = _declare(library.cublasGemmEx, GEMM_EX_ARGTYPES)

    def gemm_ex(self, stream_ptr: int, handle: int, *args: int) -> None:
        """cublasGemmEx(handle, *args) on the stream `stream_ptr`; CublasError when cuBLAS refuses."""
        _check("cublasSetStream", self._set_stream(handle, stream_ptr))
        _check("cublasGemmEx", self._gemm_ex(handle, *args))


def _declare(function: Any, argtypes: tuple) -> Any:
    function.argtypes = list(argtypes)
    function.restype = ctypes.c_int
    return function


def _check(call: str, status: int) -> None:
    if status != CUBLAS_STATUS_SUCCESS:
        raise CublasError(f"{call} returned cuBLAS status {status}")


@functools.cache
def direct_cublas() -> DirectCublas | None:
    """The libcublas CuPy links to, called directly; None where it cannot be found in the process."""
    from cupy_backends.cuda.libs import cublas  # noqa: F401  loading it maps libcublas

    path = loaded_library("libcublas.so")
    return DirectCublas(path) if path else None


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
        handle = cupy.cuda.device.get_cublas_handle()
        # cuBLAS is column-major: the row-major C = A @ B is the column-major C^T = B^T @ A^T.
        args = (cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_N, n, m, k,
                self.buf["alpha"].ctypes.data, b.data.ptr, dt, n, a.data.ptr, dt, k,
                self.buf["beta"].ctypes.data, c.data.ptr, dt, n,
                self.buf["compute"], cublas.CUBLAS_GEMM_DEFAULT)
        direct = direct_cublas()
        if direct is not None:
            direct.gemm_ex(stream.ptr, handle, *args)
        else:  # CuPy's wrapper binds the handle to CuPy's current stream, which the harness makes `stream`
            cublas.gemmEx(handle, *args)


def selftest_cases() -> list[Workload]:
    """Odd shapes in every precision, and a batch-1 row (M = 1) as in decoding."""
    shapes = ((67, 45, 129), (1, 256, 384))
    return [CublasGemm(*shape, precision) for precision in FORMATS for shape in shapes]
