"""pytest plugin (entry point `pytest11`): `pytest --benchmark` runs the GPU suites in suites/ and
prints the utilization-vs-MFU table; plain `pytest` runs the CPU tests and skips the suites.

pytest-benchmark's `extra_info` reaches only its JSON and its terminal table takes no custom columns,
so rows are also kept here, saved as a results file and printed by our own terminal summary.
"""
from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Container, Iterable
from pathlib import Path
from typing import Any

import pytest

import mfugap.suites
from mfugap import measure as harness
from mfugap.catalog import UnknownGpuError
from mfugap.device import NoGpuError, gpu_unavailable_reason
from mfugap.files import checkout_dir
from mfugap.report import render_run
from mfugap.results import ResultsError, build_run, write_run

SUITES_DIR = Path(mfugap.suites.__file__).resolve().parent
STATE_KEY = pytest.StashKey["RunState"]()


def suite_names() -> list[str]:
    return sorted(p.stem.removeprefix("test_") for p in SUITES_DIR.glob("test_*.py"))


def quick_subset(values: Iterable[Any], keep: Container[Any]) -> list[Any]:
    """Parametrize values; those not in `keep` are marked full_only, so --mfugap-quick leaves them out."""
    return [v if v in keep else pytest.param(v, marks=pytest.mark.full_only) for v in values]


def default_results_dir() -> Path:
    """results/ of the checkout mfugap runs from; ./results when installed elsewhere."""
    return checkout_dir("results")


class RunState:
    """Rows measured in this pytest session, the GPU they came from, and where they were saved."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.rows: list[dict] = []
        self.lessons: dict[str, str] = {}
        self.suite_modules: dict[str, Any] = {}
        self.run: dict | None = None
        self.saved: Path | None = None
        self.save_error: str | None = None
        self._context: harness.GpuContext | None = None
        self._no_gpu: str | None = None
        self._probed = False

    def no_gpu_reason(self) -> str | None:
        if not self._probed:
            self._probed = True
            reason = gpu_unavailable_reason()
            self._no_gpu = None if reason is None else str(reason)
        return self._no_gpu

    def context(self) -> harness.GpuContext:
        if self._context is None:
            self._context = harness.GpuContext.open()
        return self._context

    def window(self) -> harness.WindowConfig:
        return harness.WindowConfig.quick() if self.config.option.mfugap_quick else harness.WindowConfig()

    def run_dict(self) -> dict:
        return build_run(self.context().gpu_json(), self.rows, command=_command_line(),
                         quick=bool(self.config.option.mfugap_quick), lessons=self.lessons,
                         summaries=self.summaries())

    def summaries(self) -> dict[str, dict]:
        """Each suite with a `summarize(rows)` function gets its summary of its own ok rows."""
        out = {}
        for suite, module in self.suite_modules.items():
            summarize = getattr(module, "summarize", None)
            if summarize is None:
                continue
            rows = [r for r in self.rows if r["suite"] == suite and r["status"] == "ok"]
            try:
                out[suite] = json.loads(json.dumps(summarize(rows), default=str))
            except Exception as exc:  # a broken summary must not lose the rows
                out[suite] = {"error": f"{type(exc).__name__}: {exc}"}
        return out


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mfugap", "mfugap: GPU utilization vs MFU")
    group.addoption("--benchmark", action="store_true", dest="mfugap_benchmark",
                    help="run the GPU suites (suites/ when no path is given) and print the util-vs-MFU table")
    # prefixed: the plugin loads in every pytest of an environment mfugap is installed in, and pytest
    # refuses an option two plugins add
    group.addoption("--mfugap-quick", action="store_true", dest="mfugap_quick",
                    help="fewer cases, smaller sizes, 0.8 s windows")
    group.addoption("--mfugap-results-dir", dest="mfugap_results_dir", default=None,
                    help="where the run's results file goes (default: the checkout's results/)")
    group.addoption("--mfugap-no-save", action="store_true", dest="mfugap_no_save",
                    help="do not write a results file")


def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser,
                                  args: list[str]) -> None:
    namespace = early_config.known_args_namespace
    if getattr(namespace, "mfugap_benchmark", False) and not namespace.file_or_dir:
        args.append(str(SUITES_DIR))


def pytest_configure(config: pytest.Config) -> None:
    config.stash[STATE_KEY] = RunState(config)
    config.addinivalue_line("markers", "gpu: needs a visible NVIDIA GPU; skipped with the reason otherwise")
    config.addinivalue_line("markers",
                            "full_only: a case --mfugap-quick leaves out (deselected, not skipped)")


def _is_suite(item: pytest.Item) -> bool:
    return SUITES_DIR in Path(str(item.path)).resolve().parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[STATE_KEY]
    if config.option.mfugap_quick:
        left_out = [item for item in items if item.get_closest_marker("full_only")]
        if left_out:
            config.hook.pytest_deselected(items=left_out)
            items[:] = [item for item in items if not item.get_closest_marker("full_only")]
    for item in items:
        suite = _is_suite(item)
        if suite and not config.option.mfugap_benchmark:
            item.add_marker(pytest.mark.skip(reason="GPU suites run only under `pytest --benchmark`"))
        elif (suite or item.get_closest_marker("gpu")) and state.no_gpu_reason():
            item.add_marker(pytest.mark.skip(reason=f"no GPU: {state.no_gpu_reason()}"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """With --collect-only, how much device time the selected suite cases need at the least."""
    config = session.config
    cases = [item for item in session.items if _is_suite(item)]
    if config.option.collectonly and config.option.mfugap_benchmark and cases:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(windows_estimate(len(cases), config.stash[STATE_KEY].window()))


def windows_estimate(cases: int, config: harness.WindowConfig) -> str:
    """Every case measures one window after its warm-up: a lower bound on a run's device time (setup,
    verification and launches longer than a window come on top), derived, not measured."""
    seconds = cases * (config.window_s + config.warmup_s)
    return (f"mfugap: {cases} cases; their windows and warm-ups alone take at least {seconds:.0f} s "
            f"({config.window_s:g} s + {config.warmup_s:g} s each; derived, not measured)")


@pytest.fixture(scope="session")
def gpu(request: pytest.FixtureRequest) -> harness.GpuContext:
    """The GPU under test; the test is skipped with the reason when none is usable."""
    try:
        return request.config.stash[STATE_KEY].context()
    except NoGpuError as exc:
        pytest.skip(f"no GPU: {exc}")
    except UnknownGpuError as exc:
        pytest.fail(f"no peak to measure MFU against: {exc}", pytrace=False)


@pytest.fixture
def quick(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.option.mfugap_quick)


@pytest.fixture
def measure(request: pytest.FixtureRequest, gpu: harness.GpuContext, benchmark: Any) -> Any:
    """measure(workload) -> row: the harness measures one workload and the row joins the run's table.

    `context` replaces the session's GPU context for one case, e.g. a green-context SM partition.
    """
    state = request.config.stash[STATE_KEY]
    suite = Path(str(request.node.path)).stem.removeprefix("test_")
    lesson = getattr(request.module, "LESSON", None)
    state.suite_modules[suite] = request.module

    def run(workload: Any, context: harness.GpuContext | None = None) -> dict:
        row = benchmark.pedantic(harness.measure, args=(workload, context or gpu, state.window(), suite),
                                 rounds=1, iterations=1)
        benchmark.extra_info.update(json.loads(json.dumps(row, default=str)))
        state.rows.append(row)
        if lesson:
            state.lessons[suite] = " ".join(lesson.split())
        _progress(request.config, row)
        if row["status"] == "error":
            _stop_if_broken(context or gpu, row)
        if row["status"] in ("failed", "error"):
            pytest.fail(f"{row['label']}: {row['reason']}", pytrace=False)
        if row["status"] == "skipped":
            pytest.skip(f"{row['label']}: {row['reason']}")
        return row

    return run


def _stop_if_broken(context: harness.GpuContext, row: dict) -> None:
    """End the run when a case left the CUDA context unusable: the rows so far are saved, and the
    message says which case to leave out."""
    reason = context.broken()
    if reason:
        pytest.exit(f"mfugap: {row['label']} left the CUDA context broken ({reason}); nothing after it can "
                    "run in this process. The rows measured so far are saved; rerun without that case "
                    "(-k, --suite).", returncode=1)


def _progress(config: pytest.Config, row: dict) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    if row["status"] != "ok":
        text = f"{row['status']}: {row['reason']}"
    else:
        text = (f"{_fmt(row['tflops'], '.2f')} TFLOP/s, {_fmt(row['gbps'], '.0f')} GB/s, "
                f"MFU {_fmt(row['mfu_pct'], '.1f')}%, GPU-Util {_fmt(row['gpu_util_pct'], '.0f')}%")
    reporter.write_line(f"  mfugap {row['label']}: {text}")


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Runs on Ctrl-C too, so rows measured before an interrupt are kept."""
    state = session.config.stash.get(STATE_KEY, None)
    if state is None or not state.rows:
        return
    state.run = state.run_dict()
    if session.config.option.mfugap_no_save:
        return
    folder = Path(session.config.option.mfugap_results_dir or default_results_dir())
    try:
        state.saved = write_run(state.run, folder)
    except (OSError, ResultsError) as exc:
        state.save_error = f"could not save results under {folder}: {exc}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    state = terminalreporter.config.stash.get(STATE_KEY, None)
    if state is None or state.run is None:
        return
    terminalreporter.section("mfugap: GPU utilization vs MFU")
    terminalreporter.write_line(render_run(state.run, "table"))
    if state.saved:
        terminalreporter.write_line(f"results saved to {state.saved}")
    if state.save_error:
        terminalreporter.write_line(state.save_error, red=True)


def _command_line() -> str:
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
