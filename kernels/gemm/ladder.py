"""fp32 GEMM ladder, C = A @ B: the rung registry and the workloads that run any rung.

Row-major A[M,K], B[K,N], C[M,N]; fp32 in, out and accumulation. Each rung lives in its own module
`rungNN_<name>.py` beside this one (SGEMM_CUDA's numbering; a module name cannot start with a digit) and
declares `RUNG = Rung(...)`; `rungs()` finds them, so adding a rung touches that one file and, at most,
its suite. Rungs are Numba-CUDA kernels, so CI runs them in the simulator, except where Numba cannot say
what the rung is about: 16-byte vector loads need CUDA C (a `source` rung, launched through CuPy with
(A, B, C, M, N, K) as its arguments). Model FLOPs and minimum bytes are the GEMM's own, whatever the rung.

fp32 tolerance: the check is norm-wise (mfugap.verify). Summing K fp32 products in order has a relative
error below sqrt(K) * 2^-24 for random inputs: bound 3.8e-6 and measured 1.1e-6 at K = 4096, so
TOLERANCE["fp32"] = 1e-5 holds as it is; a wrong index or a lost tile is off by far more.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import cuda

import mfugap.kernels.gemm
from mfugap.cuda_source import CompileReport, CudaSource, parse_ptxas_log
from mfugap.kernels.dense_gemm import DenseGemm
from mfugap.kernels.tile_order import cdiv
from mfugap.verify import TOLERANCE, check_close
from mfugap.workload import Check


def restore_row_stack() -> None:
    """Give NumPy back np.row_stack, an alias of np.vstack that NumPy 2.5 removed, where it lacks it.
    numba-cuda 0.30, its last release, registers an overload of it when it first compiles, and without
    the name every Numba compile fails (NVIDIA/numba-cuda#907, closed unfixed). The extras pin
    numpy<2.5; this keeps the Numba rungs working where NumPy 2.5 is installed anyway (a GPU image,
    installed with --no-deps): checked with NumPy 2.5.5, offline compiles and the simulator."""
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack


restore_row_stack()  # before anything here compiles

Dims = tuple[int, ...]
SIGNATURE = "void(float32[:, ::1], float32[:, ::1], float32[:, ::1])"  # C-contiguous A, B, C
# M, N, K: partial tiles everywhere, and a K shorter than one K step; the simulator runs the first only
SMALL_ODD_SHAPES = ((37, 45, 29), (257, 131, 75), (130, 133, 3))


@dataclass(frozen=True)
class Rung:
    """One step of the ladder: a kernel and how to launch it over C."""

    number: int
    name: str
    description: str  # one line: what this rung demonstrates
    kernel: Any  # a numba.cuda kernel `kernel[grid, block](a, b, c)`, or a kernel name in `source`
    launch_config: Callable[[int, int], tuple[Dims, Dims]]  # (M, N) -> (grid, block)
    tile: tuple[int, int]  # rows x columns of C that one block computes
    source: CudaSource | None = None  # the CUDA C the kernel is in; None for a Numba rung
    multiple: int = 1  # N and K must be multiples of this (whole 16-byte vectors per row)

    @property
    def in_numba(self) -> bool:
        return self.source is None

    def workload(self, m: int, n: int, k: int) -> DenseGemm:
        """This rung as a workload at one shape."""
        if n % self.multiple or k % self.multiple:
            raise ValueError(f"rung {self.number} {self.name} needs N and K multiples of {self.multiple}, "
                             f"got N={n} K={k}")
        return (NumbaGemm if self.in_numba else CudaGemm)(self, m, n, k)

    def odd_shapes(self) -> list[tuple[int, int, int]]:
        """SMALL_ODD_SHAPES with N and K rounded up to the rung's multiple: still ragged in every tile."""
        return [(m, _round_up(n, self.multiple), _round_up(k, self.multiple)) for m, n, k in SMALL_ODD_SHAPES]


def rungs() -> list[Rung]:
    """Every `RUNG` declared by a `rung*` module of this package, in rung order."""
    package = mfugap.kernels.gemm
    found = [importlib.import_module(f"{package.__name__}.{info.name}").RUNG
             for info in pkgutil.iter_modules(package.__path__) if info.name.startswith("rung")]
    return sorted(found, key=lambda r: r.number)


VECTOR = 4  # floats per 16-byte access: a CUDA C rung's N and K are multiples of it


def c_defines(**constants: int) -> str:
    """A rung's tile constants as C preprocessor lines: they live in Python, in the rung's own file."""
    return "".join(f"#define {name} {value}\n" for name, value in constants.items())


def grouped_launch(bm: int, bn: int, threads: int) -> Callable[[int, int], tuple[Dims, Dims]]:
    """Launch configuration of a rung ordering its blocks with tile_order.CODE: one block per bm x bn tile
    of C, in a 1-D grid."""
    def launch_config(m: int, n: int) -> tuple[Dims, Dims]:
        return (cdiv(m, bm) * cdiv(n, bn),), (threads,)
    return launch_config


def _round_up(a: int, b: int) -> int:
    return cdiv(a, b) * b


# inline="always" inlines at Numba-IR level, so kernels calling this compile offline too: a plain
# device function is compiled for the current device, which compile_ptx without a GPU does not have.
@cuda.jit(device=True, inline="always")
def load_or_zero(x: Any, row: int, col: int) -> Any:
    """x[row, col], or 0 outside x: a tile hanging over the matrix edge reads zeros, which add nothing."""
    if row < x.shape[0] and col < x.shape[1]:
        return x[row, col]
    return np.float32(0)


def run_small(rung: Rung, m: int, n: int, k: int, seed: int = 0) -> Check:
    """Run Numba `rung` once on NumPy inputs and compare all of C (poisoned with NaN first) with float64
    NumPy. Runs wherever numba.cuda points: the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) or a GPU.
    """
    rng = np.random.default_rng(seed)
    a = rng.random((m, k), dtype=np.float32) * 2 - 1
    b = rng.random((k, n), dtype=np.float32) * 2 - 1
    c = cuda.to_device(np.full((m, n), np.nan, dtype=np.float32))
    grid, block = rung.launch_config(m, n)
    rung.kernel[grid, block](cuda.to_device(a), cuda.to_device(b), c)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    return check_close(c.copy_to_host(), ref, TOLERANCE["fp32"], f"{m}x{n}x{k} vs float64 NumPy")


def compile_offline(rung: Rung, arch: str) -> CompileReport:
    """PTX and ptxas report of Numba `rung` for `arch` (e.g. "sm_90") without a GPU: NVVM through
    compile_ptx, ptxas through nvJitLink. Needs the real numba.cuda (the simulator has no compiler) and
    cuda-core. CUDA C rungs compile through their CudaSource."""
    from cuda.core import Linker, LinkerOptions, ObjectCode

    cc = (int(arch[3:-1]), int(arch[-1]))
    ptx, _ = cuda.compile_ptx(rung.kernel.py_func, SIGNATURE, cc=cc)
    linker = Linker(ObjectCode.from_ptx(ptx.encode()), options=LinkerOptions(arch=arch, verbose=True))
    linker.link("cubin")
    return CompileReport(arch=arch, ptx=ptx, kernels=parse_ptxas_log(linker.get_info_log()))


class RungGemm(DenseGemm):
    """One rung of the ladder at one shape, fp32, measured like any other workload."""

    graphable = False  # rungs run for milliseconds at the ladder's sizes: nothing for a graph to hide

    precisions = ("fp32",)
    alt_precisions = ("bf16",)  # an fp32 kernel also shows how far it is from the tensor cores

    def __init__(self, rung: Rung, m: int, n: int, k: int) -> None:
        super().__init__(m, n, k, "fp32")
        self.rung = rung
        self.name = f"gemm_{rung.name}"
        self.kind = f"rung {rung.number} {rung.name}"


class CudaGemm(RungGemm):
    """A rung written in CUDA C: kernel(A, B, C, M, N, K) through CuPy."""

    def launch(self, stream: Any) -> None:
        m, n, k = self.params.values()
        grid, block = self.rung.launch_config(m, n)
        args = (self.buf["a"], self.buf["b"], self.buf["c"], np.int32(m), np.int32(n), np.int32(k))
        self.rung.source.function(self.rung.kernel)(grid, block, args, stream=stream)


class NumbaGemm(RungGemm):
    """A rung written in Numba-CUDA."""

    def setup(self, stream: Any) -> None:
        super().setup(stream)
        # Views made once here: making one synchronizes on the array's stream (CUDA Array Interface),
        # which must stay out of `launch`.
        self.buf["views"] = tuple(cuda.as_cuda_array(self.buf[x]) for x in "abc")

    def launch(self, stream: Any) -> None:
        grid, block = self.rung.launch_config(self.params["m"], self.params["n"])
        self.rung.kernel[grid, block, cuda.external_stream(stream.ptr)](*self.buf["views"])


def selftest_cases() -> list[RungGemm]:
    """`mfugap selftest` on a GPU: every rung through the harness path, on small odd shapes."""
    return [r.workload(*shape) for r in rungs() for shape in r.odd_shapes()]


def simulator_checks() -> Iterator[tuple[str, Check]]:
    """`mfugap selftest` without a GPU: every Numba rung in the CUDA simulator (slow: one small shape).
    CUDA C rungs are compiled by NVRTC with the other CUDA sources instead."""
    for r in rungs():
        if r.in_numba:
            yield f"gemm_{r.name}", run_small(r, *SMALL_ODD_SHAPES[0])
