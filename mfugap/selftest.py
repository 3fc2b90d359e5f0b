"""`mfugap selftest`: verify every kernel family and say, one line per kernel, ok / failed / skipped.

On a GPU each family's `selftest_cases()` (small, odd shapes) runs once and is checked against its
reference, exactly as the harness verifies before timing. Without one, what the CPU can check runs
instead: every CUDA C source compiled with NVRTC for sm_80 and sm_90 (no spills where a spill is a
bug), and each family's `simulator_checks()` (Numba kernels in the CUDA simulator).
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import mfugap.kernels
from mfugap.cuda_source import OFFLINE_ARCHS, registered
from mfugap.measure import context_broken, one_line, verify


@dataclass(frozen=True)
class Line:
    status: str  # ok | failed | skipped
    name: str
    detail: str

    def __str__(self) -> str:
        return f"{self.status:<8}{self.name}: {self.detail}"


def _imported() -> list[tuple[str, ModuleType | ImportError]]:
    prefix = mfugap.kernels.__name__ + "."
    found = []
    for name in sorted(info.name for info in pkgutil.walk_packages(mfugap.kernels.__path__, prefix)):
        try:
            found.append((name, importlib.import_module(name)))
        except ImportError as exc:  # e.g. the Numba ladder without numba-cuda installed
            found.append((name, exc))
    return found


def kernel_modules() -> list[ModuleType]:
    """Every module under mfugap.kernels that imports (importing registers their CUDA C sources)."""
    return [module for _, module in _imported() if isinstance(module, ModuleType)]


def import_lines() -> Iterator[Line]:
    """A skipped line for each kernel module that cannot be imported here, with the reason."""
    for name, module in _imported():
        if isinstance(module, ImportError):
            yield Line("skipped", name, f'cannot import ({module}): pip install -e ".[cuda12]" or ".[test]"')


def gpu_lines(modules: list[ModuleType], stream: Any, compute_capability: tuple[int, int] | None = None,
              broken: Callable[[], str | None] = context_broken) -> Iterator[Line]:
    """Every kernel family's cases on the GPU (skipping those that cannot run here, with the reason),
    until one leaves the CUDA context unusable."""
    for module in modules:
        for workload in getattr(module, "selftest_cases", list)():
            reason = workload.unavailable(compute_capability)
            if reason:
                yield Line("skipped", workload.row_label, reason)
                continue
            line = run_case(workload, stream)
            yield line
            reason = broken() if line.status == "failed" else None
            if reason:
                yield Line("failed", "(the rest)", f"not run: {workload.row_label} left the CUDA context "
                                                   f"broken ({reason})")
                return


def run_case(workload: Any, stream: Any) -> Line:
    try:
        verdict = verify(workload, stream)
    except Exception as exc:  # one broken kernel must not hide the verdicts on the others
        return Line("failed", workload.row_label, one_line(exc))
    finally:
        workload.teardown()
    return Line("ok" if verdict.ok else "failed", workload.row_label, verdict.detail)


def compile_lines() -> Iterator[Line]:
    try:
        import cuda.bindings.nvrtc  # noqa: F401
    except ImportError:
        yield Line("skipped", "CUDA C kernels", 'NVRTC not installed (pip install -e ".[test]")')
        return
    for source in registered():
        yield from _compile_source(source)


def _compile_source(source: Any) -> Iterator[Line]:
    reports = {}
    for arch in OFFLINE_ARCHS:
        try:
            reports[arch] = source.compile_offline(arch).kernels
        except Exception as exc:  # NVRTC's error text is the useful part
            yield Line("failed", "+".join(source.kernels), f"{arch}: {str(exc).splitlines()[0]}")
            return
    for kernel in source.kernels:
        name = f"{kernel} ({source.variant})" if source.variant else kernel
        per_arch = [(arch, reports[arch].get(kernel)) for arch in OFFLINE_ARCHS]
        missing = [arch for arch, report in per_arch if report is None]
        spills = [arch for arch, report in per_arch
                  if report and report.spill_stores + report.spill_loads and kernel not in source.may_spill]
        regs = ", ".join(f"{arch} {report.registers} regs" for arch, report in per_arch if report)
        if missing or spills:
            problem = f"not built for {missing}" if missing else f"spills registers on {spills}"
            yield Line("failed", name, f"NVRTC: {problem} ({regs})")
        else:
            yield Line("ok", name, f"NVRTC compiled, {regs}, no spills")


def simulator_lines(modules: list[ModuleType]) -> Iterator[Line]:
    for module in modules:
        for name, verdict in getattr(module, "simulator_checks", list)():
            yield Line("ok" if verdict.ok else "failed", name, f"CUDA simulator: {verdict.detail}")
