"""CUDA C kernels kept as source: loaded through CuPy on a GPU, compiled offline by NVRTC in tests.

Every CudaSource registers itself, so tests and `mfugap selftest` can compile all of them for sm_80
and sm_90 without a GPU and read the compiler's register and spill report.
"""
from __future__ import annotations

import glob
import os
import re
import site
from dataclasses import dataclass
from functools import cached_property
from typing import Any

_REGISTRY: list[CudaSource] = []

OFFLINE_ARCHS = ("sm_80", "sm_90")


@dataclass(frozen=True)
class KernelReport:
    """What ptxas said about one kernel (-Xptxas=-v)."""

    name: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int


@dataclass(frozen=True)
class CompileReport:
    arch: str
    ptx: str
    kernels: dict[str, KernelReport]


class CudaSource:
    """A CUDA C translation unit whose `extern "C"` kernels are named in `kernels`."""

    def __init__(self, code: str, kernels: tuple[str, ...], *, std: str = "c++17",
                 may_spill: tuple[str, ...] = (), min_compute_capability: tuple[int, int] = (0, 0),
                 variant: str | None = None) -> None:
        self.code = code
        self.kernels = kernels
        self.variant = variant  # what tells apart sources with the same kernel names, e.g. "warps 64x64"
        self.std = std
        self.may_spill = may_spill  # kernels where a spill is acceptable; for all others it is a bug
        # the oldest architecture the code builds for, e.g. (8, 0) for mma.sync, ldmatrix and cp.async;
        # (0, 0): any the toolkit supports. tests/test_cuda_sources.py checks it is neither too low nor
        # too high.
        self.min_compute_capability = min_compute_capability
        self._functions: dict[tuple[str, int], Any] = {}
        _REGISTRY.append(self)

    @cached_property
    def _module(self) -> Any:
        import cupy

        return cupy.RawModule(code=self.code, options=(f"-std={self.std}",))

    def function(self, name: str) -> Any:
        """The compiled kernel on the current device (CuPy compiles for its architecture). Looked up once
        per device: CuPy's get_function makes a new kernel object and a driver call every time, host
        work that would otherwise sit inside every timed launch of a short kernel."""
        import cupy

        if name not in self.kernels:
            raise KeyError(f"{name} is not one of {self.kernels}")
        key = (name, cupy.cuda.runtime.getDevice())
        if key not in self._functions:
            self._functions[key] = self._module.get_function(name)
        return self._functions[key]

    def compile_offline(self, arch: str) -> CompileReport:
        """Compile with NVRTC for `arch` without a GPU (needs cuda-bindings and the NVRTC/header wheels)."""
        from cuda.bindings import nvrtc

        options = [f"--gpu-architecture={arch}", f"-std={self.std}", "-Xptxas=-v",
                   *(f"-I{d}" for d in _include_dirs())]
        prog = _nvrtc_ok(nvrtc.nvrtcCreateProgram(self.code.encode(), b"kernel.cu", 0, [], []))
        try:
            status = nvrtc.nvrtcCompileProgram(prog, len(options), [o.encode() for o in options])[0]
            log = _nvrtc_text(nvrtc.nvrtcGetProgramLogSize, nvrtc.nvrtcGetProgramLog, prog)
            if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
                raise RuntimeError(f"NVRTC failed for {arch}: {log.strip()}")
            ptx = _nvrtc_text(nvrtc.nvrtcGetPTXSize, nvrtc.nvrtcGetPTX, prog)
        finally:
            nvrtc.nvrtcDestroyProgram(prog)
        return CompileReport(arch=arch, ptx=ptx, kernels=parse_ptxas_log(log))


def _nvrtc_ok(result: tuple) -> Any:
    status, *value = result
    if status.value != 0:
        raise RuntimeError(f"NVRTC call failed: {status}")
    return value[0] if value else None


def _nvrtc_text(size_fn: Any, get_fn: Any, prog: Any) -> str:
    buf = b" " * _nvrtc_ok(size_fn(prog))
    _nvrtc_ok(get_fn(prog, buf))
    return buf.rstrip(b"\x00").decode(errors="replace")


def registered() -> list[CudaSource]:
    return list(_REGISTRY)


def _include_dirs() -> list[str]:
    """Header folders of the pip-installed CUDA wheels (cuda_runtime, nvcc's crt/, cccl)."""
    roots = [*site.getsitepackages(), site.getusersitepackages()]
    found = []
    for root in roots:
        found += glob.glob(os.path.join(root, "nvidia", "*", "include"))
        found += glob.glob(os.path.join(root, "nvidia", "cu1*", "include"))
    return sorted(set(found))


_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas_log(log: str) -> dict[str, KernelReport]:
    """Registers, spills and stack frame per entry function from a `ptxas -v` log."""
    reports: dict[str, KernelReport] = {}
    parts = _ENTRY.split(log)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        frame = _FRAME.search(body)
        regs = _REGS.search(body)
        if not (frame and regs):
            raise ValueError(f"ptxas report for {name} lacks registers or spill figures")
        stack, stores, loads = (int(g) for g in frame.groups())
        reports[name] = KernelReport(name, int(regs.group(1)), stores, loads, stack)
    return reports
