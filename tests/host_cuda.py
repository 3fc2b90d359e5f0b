"""Run our CUDA C kernels on the CPU: the real source, compiled by g++ against tests/host_cuda.h.

For kernels with no inline PTX and no CUDA headers. A HostKernels stands in for a CudaSource's
`function(name)` and launches like a CuPy RawKernel, `f(grid, block, args, stream=..., shared_mem=...)`,
converting arguments by CuPy's rules (a Python int is passed as long long, a float as double) and
refusing any argument whose type differs from the kernel's parameter: on a GPU such a mismatch is
silent garbage. Launch limits are CUDA's: at most 1024 threads and 48 KiB of dynamic shared memory.

Each array argument runs in a copy with GUARD_BYTES of 0xFF on both sides: a read past either end gets
NaN (0xFF bytes are NaN in fp32, fp64 and bf16), which the family's check then finds, and a write there
fails the launch. Arguments that are the same array share one copy, as they share memory on a GPU.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mfugap.cuda_source import CudaSource

HEADER = Path(__file__).with_name("host_cuda.h")
COMPILER = shutil.which("g++")
MAX_THREADS = 1024
MAX_DYNAMIC_SHARED = 48 * 1024  # more needs cudaFuncSetAttribute, which no kernel here asks for
GUARD_BYTES = 4096
GUARD = 0xFF

# C type (without const, __restrict__ and the pointer) -> NumPy dtype; a vector type maps to its lanes'
C_TYPES = {
    "float": np.float32, "double": np.float64, "int": np.int32, "unsigned int": np.uint32,
    "unsigned": np.uint32, "long long": np.int64, "unsigned long long": np.uint64,
    "unsigned short": np.uint16, "short": np.int16, "unsigned char": np.uint8, "char": np.int8,
    "float2": np.float32, "float4": np.float32, "double2": np.float64, "uint2": np.uint32,
    "uint4": np.uint32, "int2": np.int32, "int4": np.int32,
}
_KERNEL = re.compile(r'extern\s+"C"\s+HC_KERNEL\s+void\s+(\w+)\s*\(([^)]*)\)')
_DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+((?:__align__\(\d+\)\s+)?[\w:]+)\s+(\w+)\s*\[\s*\]\s*;")
_STATIC_SHARED = re.compile(r"__shared__\s+((?:__align__\(\d+\)\s+)?[\w:]+)\s+(\w+)((?:\s*\[[^\]]+\])+)\s*;")
_PARAM = re.compile(r"^(?P<type>.*?[\s*&])(?P<name>\w+)$")


class HostLaunchError(RuntimeError):
    """The launch could not run as written: bad arguments or configuration, or diverged barriers."""


@dataclass(frozen=True)
class Param:
    name: str
    ctype: str  # as the kernel declares it, without __restrict__
    dtype: Any
    pointer: bool


def host_runnable(source: CudaSource) -> str | None:
    """Why `source` cannot run on the host, or None when it can."""
    if COMPILER is None:
        return "no host C++ compiler (g++)"
    if re.search(r"\basm\b", source.code):
        return "uses inline PTX"
    if "#include" in source.code:
        return "includes CUDA headers"
    return None


def parse_param(text: str) -> Param:
    text = " ".join(text.replace("__restrict__", " ").split())
    match = _PARAM.match(text)
    if match is None:
        raise ValueError(f"cannot read kernel parameter {text!r}")
    ctype = match["type"].strip()
    base = " ".join(ctype.replace("*", " ").replace("const", " ").split())
    if base not in C_TYPES:
        raise ValueError(f"kernel parameter {text!r}: no NumPy type for {base!r}")
    return Param(match["name"], ctype, np.dtype(C_TYPES[base]), ctype.endswith("*"))


def signatures(code: str) -> dict[str, list[Param]]:
    """Every extern "C" kernel's parameters, read after the preprocessor so macro-made kernels count."""
    defines = ["-D__global__=HC_KERNEL", "-D__launch_bounds__(...)=", "-D__device__=", "-D__forceinline__=",
               "-D__align__(n)=", "-D__shared__="]
    out = subprocess.run([COMPILER, "-E", "-P", "-x", "c++", *defines, "-"], input=code, text=True,
                         capture_output=True, check=True).stdout
    return {name: [parse_param(p) for p in params.split(",") if p.strip()]
            for name, params in _KERNEL.findall(out)}


def host_code(code: str, kernels: dict[str, list[Param]]) -> str:
    """The source with `extern __shared__` arrays pointed at the launch's buffer, `__shared__` arrays
    filled with 0xFF (NaN) at the start of each block, so a read of an element no thread of the block
    wrote shows, plus one entry per kernel that unpacks an array of argument pointers into a call."""
    code = _DYNAMIC_SHARED.sub(r"\1* \2 = reinterpret_cast<\1*>(hc_dynamic_shared);", code)
    code = _STATIC_SHARED.sub(r"__shared__ \1 \2\3; hc::fresh_shared(\2, sizeof(\2));", code)
    entries = []
    for name, params in kernels.items():
        call = ", ".join(f"*static_cast<{p.ctype}*>(a[{i}])" for i, p in enumerate(params))
        entries.append(f'extern "C" void hc_entry_{name}(void** a) {{ {name}({call}); }}')
    return code + "\n" + "\n".join(entries) + "\n"


@functools.cache
def _build(code: str) -> tuple[ctypes.CDLL, dict[str, list[Param]]]:
    kernels = signatures(code)
    folder = Path(tempfile.gettempdir()) / "mfugap-host-cuda"
    folder.mkdir(exist_ok=True)
    stem = folder / hashlib.sha256((HEADER.read_text() + code).encode()).hexdigest()[:16]
    library = stem.with_suffix(".so")
    if not library.exists():
        cpp, built = (Path(f"{stem}.{os.getpid()}{ext}") for ext in (".cpp", ".so"))  # one per process
        cpp.write_text(host_code(code, kernels))
        done = subprocess.run([COMPILER, "-std=c++17", "-O1", "-shared", "-fPIC", "-w", "-include",
                               str(HEADER), "-o", str(built), str(cpp)], capture_output=True, text=True)
        if done.returncode:
            raise HostLaunchError(f"g++ cannot build {cpp} for the host:\n{done.stderr[-3000:]}")
        built.replace(library)  # atomic: nobody loads half a library
    lib = ctypes.CDLL(str(library))
    lib.hc_launch.restype = ctypes.c_int
    lib.hc_launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, *[ctypes.c_uint] * 6, ctypes.c_size_t,
                              ctypes.c_char_p, ctypes.c_size_t]
    return lib, kernels


def _dim3(value: Any) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, int | np.integer) else tuple(value)
    if not 1 <= len(dims) <= 3 or any(int(d) < 1 for d in dims):
        raise HostLaunchError(f"launch dimensions must be 1 to 3 positive integers, got {value!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))


def _cupy_dtype(value: Any) -> np.dtype:
    """The type CuPy passes a scalar as (cupy/_core/_scalar.pyx: Python int -> int64, float -> float64)."""
    if isinstance(value, np.generic):
        return value.dtype
    if isinstance(value, bool):
        return np.dtype(np.bool_)
    if isinstance(value, int):
        return np.dtype(np.uint64 if value >= 1 << 63 else np.int64)
    if isinstance(value, float):
        return np.dtype(np.float64)
    raise HostLaunchError(f"CuPy cannot pass {type(value).__name__} to a kernel")


class HostFunction:
    """One kernel, called like a CuPy RawKernel."""

    def __init__(self, lib: ctypes.CDLL, name: str, params: list[Param]) -> None:
        self.lib = lib
        self.name = name
        self.params = params
        self.entry = ctypes.cast(getattr(lib, f"hc_entry_{name}"), ctypes.c_void_p)
        self.launches = 0

    def _argument(self, param: Param, value: Any, guarded: Guarded) -> ctypes._SimpleCData:
        where = f"{self.name}({param.ctype} {param.name})"
        if param.pointer:
            if not isinstance(value, np.ndarray):
                raise HostLaunchError(f"{where} needs an array, got {type(value).__name__}")
            if value.dtype != param.dtype:
                raise HostLaunchError(f"{where} needs {param.dtype} elements, got a {value.dtype} array")
            if not value.flags.c_contiguous:
                raise HostLaunchError(f"{where} gets a strided view: the kernel would read past it")
            return ctypes.c_void_p(guarded.pointer(value, where))
        dtype = _cupy_dtype(value)
        if dtype != param.dtype:
            raise HostLaunchError(f"{where} gets a {dtype} value: on a GPU its bytes would be misread")
        return np.ctypeslib.as_ctypes_type(dtype)(value)

    def __call__(self, grid: Any, block: Any, args: tuple, stream: Any = None, shared_mem: int = 0) -> None:
        if len(args) != len(self.params):
            raise HostLaunchError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        grid3, block3 = _dim3(grid), _dim3(block)
        threads = int(np.prod(block3))
        if threads > MAX_THREADS:
            raise HostLaunchError(f"{self.name}: {threads} threads per block, CUDA allows {MAX_THREADS}")
        if not 0 <= shared_mem <= MAX_DYNAMIC_SHARED:
            raise HostLaunchError(f"{self.name}: {shared_mem} bytes of dynamic shared memory, "
                                  "over CUDA's limit without an opt-in")
        guarded = Guarded()
        values = [self._argument(p, v, guarded) for p, v in zip(self.params, args, strict=True)]
        argv = (ctypes.c_void_p * max(1, len(values)))(*(ctypes.addressof(v) for v in values))
        error = ctypes.create_string_buffer(512)
        if self.lib.hc_launch(self.entry, argv, *grid3, *block3, shared_mem, error, len(error)):
            raise HostLaunchError(f"{self.name}: {error.value.decode()}")
        guarded.copy_back(self.name)
        self.launches += 1


class Guarded:
    """Copies of a launch's array arguments between guard bands, written back after the launch."""

    def __init__(self) -> None:
        self.copies: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, str]] = {}

    def pointer(self, array: np.ndarray, where: str) -> int:
        start, size = array.ctypes.data, array.nbytes
        key = (start, size)
        if key not in self.copies:
            for (other, other_size), (_, _, other_where) in self.copies.items():
                if start < other + other_size and other < start + size:
                    raise HostLaunchError(f"{where} overlaps {other_where} without being the same array")
            band = np.full(size + 2 * GUARD_BYTES, GUARD, dtype=np.uint8)
            band[GUARD_BYTES:GUARD_BYTES + size] = array.reshape(-1).view(np.uint8)
            self.copies[key] = (array, band, where)
        return self.copies[key][1].ctypes.data + GUARD_BYTES

    def copy_back(self, kernel: str) -> None:
        for array, band, where in self.copies.values():
            before, after = band[:GUARD_BYTES], band[GUARD_BYTES + array.nbytes:]
            if (before != GUARD).any() or (after != GUARD).any():
                raise HostLaunchError(f"{kernel}: wrote outside {where} "
                                      f"({int((before != GUARD).sum())} bytes before it, "
                                      f"{int((after != GUARD).sum())} after)")
            array.reshape(-1).view(np.uint8)[:] = band[GUARD_BYTES:GUARD_BYTES + array.nbytes]


class HostKernels:
    """A CudaSource's kernels compiled for the host; `function` mirrors CudaSource.function."""

    def __init__(self, source: CudaSource) -> None:
        reason = host_runnable(source)
        if reason:
            raise HostLaunchError(f"cannot run on the host: {reason}")
        lib, kernels = _build(source.code)
        missing = set(source.kernels) - set(kernels)
        if missing:
            raise HostLaunchError(f"declared kernels not found in the source: {sorted(missing)}")
        self.functions = {name: HostFunction(lib, name, params) for name, params in kernels.items()}

    def function(self, name: str) -> HostFunction:
        return self.functions[name]
