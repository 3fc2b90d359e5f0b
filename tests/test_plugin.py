"""`pytest --benchmark` and the suites, seen from outside in a subprocess, on a machine with no usable GPU.

CUDA_VISIBLE_DEVICES="" hides any GPU from CUDA, so these tests check the no-GPU path everywhere.
"""
import json
import os
import subprocess
import sys

import pytest

from mfugap.measure import WindowConfig
from mfugap.plugin import SUITES_DIR, suite_names

NO_GPU = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def _pytest(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", *args],
                          cwd=tmp_path, env=NO_GPU, capture_output=True, text=True, timeout=300)


def test_suites_exist():
    assert "foundation" in suite_names()
    assert (SUITES_DIR / "test_foundation.py").is_file()


def test_benchmark_without_a_gpu_skips_every_suite_for_one_reason(tmp_path):
    proc = _pytest(tmp_path, "--benchmark", "--mfugap-results-dir", str(tmp_path / "results"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    collected = sum(1 for line in proc.stdout.splitlines() if line.startswith("SKIPPED"))
    assert collected >= 1
    reasons = {line.split(": ", 1)[1].split(": ", 1)[-1] for line in proc.stdout.splitlines()
               if line.startswith("SKIPPED")}
    assert len(reasons) == 1, reasons
    assert "no GPU:" in proc.stdout
    assert " passed" not in proc.stdout and "failed" not in proc.stdout
    assert not (tmp_path / "results").exists(), "a run with no rows must not write a results file"


def test_suites_without_benchmark_flag_are_skipped(tmp_path):
    proc = _pytest(tmp_path, str(SUITES_DIR))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GPU suites run only under `pytest --benchmark`" in proc.stdout


def test_benchmark_option_is_registered(tmp_path):
    proc = _pytest(tmp_path, "--help")
    assert "--benchmark " in proc.stdout and "--mfugap-quick" in proc.stdout


@pytest.mark.parametrize("name", suite_names())
def test_every_suite_has_a_lesson_and_docstrings(name):
    import importlib

    module = importlib.import_module(f"mfugap.suites.test_{name}")
    assert module.__doc__ and len(module.LESSON.split()) >= 20
    tests = [getattr(module, n) for n in dir(module) if n.startswith("test_")]
    assert tests and all(t.__doc__ for t in tests), "each benchmark states its formula in a docstring"


def test_suite_summaries_see_only_their_ok_rows_and_never_lose_the_run():
    from types import ModuleType, SimpleNamespace

    from mfugap.plugin import RunState

    state = RunState(SimpleNamespace(option=SimpleNamespace(mfugap_quick=False)))
    state.rows = [{"suite": "roofline", "status": "ok", "tflops": 1.0},
                  {"suite": "roofline", "status": "failed", "tflops": None},
                  {"suite": "other", "status": "ok", "tflops": 9.0}]
    counted = ModuleType("counted")
    counted.summarize = lambda rows: {"n": len(rows), "max": max(r["tflops"] for r in rows)}
    broken = ModuleType("broken")
    broken.summarize = lambda rows: 1 / 0
    state.suite_modules = {"roofline": counted, "other": broken, "plain": ModuleType("plain")}
    summaries = state.summaries()
    assert summaries["roofline"] == {"n": 1, "max": 1.0}
    assert summaries["other"] == {"error": "ZeroDivisionError: division by zero"}
    assert "plain" not in summaries


def test_quick_deselects_full_only_cases(tmp_path):
    (tmp_path / "test_cases.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('n', [1, pytest.param(2, marks=pytest.mark.full_only)])\n"
        "def test_case(n):\n    assert n\n")
    quick = _pytest(tmp_path, "--mfugap-quick", "test_cases.py")
    assert "1 passed, 1 deselected" in quick.stdout, quick.stdout
    full = _pytest(tmp_path, "test_cases.py")
    assert "2 passed" in full.stdout, full.stdout


CONFTEST_WITH_FAKE_GPU = """
import itertools
from mfugap import plugin
from tests.fake_events import FakeEvents
from tests.test_measure import FakeContext

# patched at import, before the session-scoped `gpu` fixture asks for the context
CONTEXT = FakeContext(FakeEvents(itertools.repeat(1.0)))
plugin.RunState.no_gpu_reason = lambda self: None
plugin.RunState.context = lambda self: CONTEXT
"""

INTERRUPTED_SUITE = """
from conftest import CONTEXT
from mfugap.measure import WindowConfig
from mfugap import plugin
from tests.test_measure import Axpy

plugin.RunState.window = lambda self: WindowConfig(window_s=0.01, warmup_s=0.0, min_reps=2)

def test_measured_first(measure):
    measure(Axpy(64, CONTEXT.clock))  # each launch advances the context's fake event clock by 1 ms

def test_interrupted_next():
    raise KeyboardInterrupt
"""


def _benchmark_on_fake_gpu(tmp_path, suite: str) -> subprocess.CompletedProcess:
    """`pytest --benchmark` over `suite`, in a subprocess whose GPU context is tests.test_measure's fake."""
    (tmp_path / "conftest.py").write_text(CONFTEST_WITH_FAKE_GPU)
    (tmp_path / "test_run.py").write_text(suite)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--benchmark",
                           "--mfugap-results-dir", str(tmp_path / "results"), "test_run.py"],
                          cwd=tmp_path, env={**NO_GPU, "PYTHONPATH": str(SUITES_DIR.parent)},
                          capture_output=True, text=True, timeout=300)


def test_ctrl_c_keeps_and_saves_the_rows_already_measured(tmp_path):
    proc = _benchmark_on_fake_gpu(tmp_path, INTERRUPTED_SUITE)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # pytest's "interrupted"
    (saved,) = (tmp_path / "results").rglob("*.json")
    run = json.loads(saved.read_text())
    (row,) = run["rows"]
    assert (row["label"], row["status"], row["kernel_ms_median"]) == ("axpy n=64", "ok", 1.0)
    assert row["tflops"] == 128 * row["reps"] / row["window_s"] / 1e12
    assert "mfugap: GPU utilization vs MFU" in proc.stdout and "axpy n=64" in proc.stdout


@pytest.mark.parametrize(("flags", "config", "budget_s"), [
    ((), WindowConfig(), 8 * 60),  # issue 4: the full run in at most 8 minutes on an H100
    (("--mfugap-quick",), WindowConfig.quick(), 90),
])
def test_the_windows_alone_fit_the_run_budget(tmp_path, flags, config, budget_s):
    """A lower bound, not a timing: every collected case measures at least one window after its warm-up.
    Setup, verification and launches longer than the window come on top, so this leaves them a margin
    of at least a quarter of the budget; adding cases past that fails here, before any GPU is needed."""
    proc = _pytest(tmp_path, "--benchmark", "--collect-only", "-q", *flags)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cases = sum(1 for line in proc.stdout.splitlines() if "::test_" in line)
    assert cases > 0
    least_s = cases * (config.window_s + config.warmup_s)
    assert least_s <= 0.75 * budget_s, f"{cases} cases"
    # what `mfugap run --list` and `pytest --benchmark --collect-only` tell the user
    assert f"mfugap: {cases} cases; their windows and warm-ups alone take at least {least_s:.0f} s" \
        in proc.stdout


BROKEN_CONTEXT_SUITE = """
from conftest import CONTEXT
from mfugap.measure import WindowConfig
from mfugap import plugin
from tests.test_measure import Axpy

plugin.RunState.window = lambda self: WindowConfig(window_s=0.01, warmup_s=0.0, min_reps=2)

class Faulting(Axpy):
    def launch(self, stream):
        CONTEXT.sticky_error = "cudaErrorIllegalAddress: an illegal memory access was encountered"
        raise RuntimeError(CONTEXT.sticky_error)

def test_1_measured(measure):
    measure(Axpy(64, CONTEXT.clock))

def test_2_faults(measure):
    measure(Faulting(64, CONTEXT.clock))

def test_3_never_runs(measure):
    measure(Axpy(32, CONTEXT.clock))
"""


def test_a_case_that_breaks_the_cuda_context_ends_the_run_and_keeps_the_rows(tmp_path):
    proc = _benchmark_on_fake_gpu(tmp_path, BROKEN_CONTEXT_SUITE)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "axpy n=64 left the CUDA context broken (cudaErrorIllegalAddress" in proc.stdout
    (saved,) = (tmp_path / "results").rglob("*.json")
    rows = json.loads(saved.read_text())["rows"]
    assert [(r["label"], r["status"]) for r in rows] == [("axpy n=64", "ok"), ("axpy n=64", "error")]
