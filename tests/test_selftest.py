import inspect
import itertools
import os
import subprocess
import sys
from types import SimpleNamespace

from mfugap import selftest
from mfugap.cuda_source import OFFLINE_ARCHS, KernelReport
from mfugap.workload import Workload
from tests.fake_events import FakeEvents, FakeStream
from tests.test_measure import Axpy

STREAM = FakeStream()


def _clock():
    return FakeEvents(itertools.repeat(1.0))


def test_a_correct_case_is_ok_and_a_wrong_one_failed():
    assert selftest.run_case(Axpy(101, _clock()), STREAM).status == "ok"
    wrong = selftest.run_case(Axpy(101, _clock(), bug=True), STREAM)
    assert wrong.status == "failed" and "unwritten" in wrong.detail


def test_an_exception_is_a_failed_line_not_a_crash():
    line = selftest.run_case(Axpy(5, _clock(), fail_in_setup=True), STREAM)
    assert line.status == "failed" and line.detail.startswith("MemoryError:")


class FakeSource:
    def __init__(self, spills, may_spill=(), error=None):
        self.kernels, self.may_spill, self.spills, self.error = ("k",), may_spill, spills, error
        self.variant = None

    def compile_offline(self, arch):
        if self.error:
            raise RuntimeError(self.error)
        report = KernelReport("k", 32, self.spills, self.spills, 0)
        return SimpleNamespace(kernels={"k": report})


def test_spills_fail_unless_the_kernel_may_spill():
    assert [line.status for line in selftest._compile_source(FakeSource(0))] == ["ok"]
    (line,) = selftest._compile_source(FakeSource(8))
    assert line.status == "failed" and all(arch in line.detail for arch in OFFLINE_ARCHS)
    assert [line.status for line in selftest._compile_source(FakeSource(8, may_spill=("k",)))] == ["ok"]
    (line,) = selftest._compile_source(FakeSource(0, error="kernel.cu(3): error: identifier x\nmore"))
    assert line.status == "failed" and "identifier x" in line.detail and "more" not in line.detail


def test_every_kernel_module_with_a_workload_offers_gpu_cases():
    for module in selftest.kernel_modules():
        concrete = [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Workload)
                    and c.__module__ == module.__name__ and not inspect.isabstract(c)]
        if not concrete:
            continue
        cases = module.selftest_cases()
        assert cases, f"{module.__name__} offers no selftest cases"
        for workload in cases:
            assert workload.flops() >= 0 and workload.min_bytes() > 0


def test_cli_selftest_without_gpu_checks_what_the_cpu_can():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "mfugap.cli", "selftest"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("ok") and "triad_f32: NVRTC compiled" in line for line in lines)
    assert any(line.startswith("skipped") and "needs a GPU" in line for line in lines)
    assert not any(line.startswith("failed") for line in lines)
    assert "Traceback" not in proc.stderr
    # one line per kernel build: sources sharing kernel names (the mma.sync warp tilings) say which
    compiled = [line.split(": NVRTC")[0] for line in lines if ": NVRTC compiled" in line]
    assert len(compiled) == len(set(compiled)), compiled
    assert any("mma_gemm_bf16 (warps 64x64)" in name for name in compiled)


def test_a_kernel_module_that_cannot_import_is_a_skipped_line(monkeypatch):
    real = selftest.importlib.import_module

    def no_numba(name):
        if name.endswith("ladder"):
            raise ModuleNotFoundError("No module named 'numba'")
        return real(name)

    monkeypatch.setattr(selftest.importlib, "import_module", no_numba)
    (line,) = selftest.import_lines()
    assert line.status == "skipped" and line.name.endswith("gemm.ladder") and "numba" in line.detail
    assert all(not m.__name__.endswith("ladder") for m in selftest.kernel_modules())


def test_gpu_lines_stop_once_a_kernel_breaks_the_cuda_context():
    from types import ModuleType

    family = ModuleType("family")
    family.selftest_cases = lambda: [Axpy(11, _clock()), Axpy(12, _clock(), bug=True), Axpy(13, _clock())]
    sticky = []

    def broken():
        sticky.append("cudaErrorIllegalAddress")  # the failing case faulted
        return sticky[0]

    lines = list(selftest.gpu_lines([family], STREAM, broken=broken))
    assert [line.status for line in lines] == ["ok", "failed", "failed"]
    assert lines[2].name == "(the rest)" and "axpy n=12 left the CUDA context broken" in lines[2].detail


def test_gpu_lines_skip_a_case_too_new_for_the_gpu():
    from types import ModuleType

    from tests.test_measure import AmpereAxpy

    family = ModuleType("family")
    family.selftest_cases = lambda: [AmpereAxpy(11, _clock()), Axpy(12, _clock())]
    lines = list(selftest.gpu_lines([family], STREAM, compute_capability=(7, 5), broken=lambda: None))
    assert [(line.status, line.name) for line in lines] == [("skipped", "axpy n=11"), ("ok", "axpy n=12")]
    assert lines[0].detail == "needs compute capability 8.0 or newer; this GPU is 7.5"


def test_gpu_lines_go_on_after_a_failure_that_leaves_the_context_usable():
    from types import ModuleType

    family = ModuleType("family")
    family.selftest_cases = lambda: [Axpy(11, _clock(), bug=True), Axpy(12, _clock())]
    lines = list(selftest.gpu_lines([family], STREAM, broken=lambda: None))
    assert [(line.status, line.name) for line in lines] == [("failed", "axpy n=11"), ("ok", "axpy n=12")]
