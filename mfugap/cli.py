"""Command line: `mfugap run | report | plot | specs | mig | selftest | trace`.

Exit codes: 0 ok; 1 a case failed or a results file could not be read; 2 bad usage, unknown name or no
case selected; 3 no GPU visible (the reason is printed, with the recorded tables); 130 interrupted.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tabulate import tabulate

from mfugap import catalog

if TYPE_CHECKING:
    from mfugap.device import DeviceInfo

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_GPU, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
REPORT_FORMATS = ("table", "markdown", "csv", "json")


def _parser() -> argparse.ArgumentParser:
    from mfugap.plugin import suite_names

    parser = argparse.ArgumentParser(prog="mfugap", description="GPU utilization vs Model FLOP Utilization")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{run,report,plot,specs,mig,selftest,trace}")

    run = sub.add_parser("run", help="run the GPU suites, print the table, save the results")
    run.add_argument("--quick", action="store_true", help="fewer cases, smaller sizes, 0.8 s windows")
    run.add_argument("--suite", action="append", choices=suite_names(), metavar="NAME",
                     help=f"suite to run (repeatable; default all): {', '.join(suite_names())}")
    run.add_argument("-k", dest="keyword", metavar="EXPR",
                     help="only the cases matching this pytest -k expression, e.g. \"not naive\"")
    run.add_argument("--results-dir", type=Path, help="where results go (default: the checkout's results/)")
    run.add_argument("--no-save", action="store_true", help="do not write a results file")
    run.add_argument("--list", action="store_true",
                     help="list the cases the run would measure, and the least device time they need "
                          "(no GPU needed)")

    report = sub.add_parser("report", help="print the tables of every results file")
    report.add_argument("--results-dir", type=Path, help="folder to read (default: the checkout's results/)")
    report.add_argument("--format", choices=REPORT_FORMATS, default="table")

    plot = sub.add_parser("plot", help="draw each GPU's gap and roofline charts from every results file")
    plot.add_argument("--results-dir", type=Path, help="folder to read (default: the checkout's results/)")
    plot.add_argument("--out", type=Path, help="where <gpu>/gap.svg and <gpu>/roofline.svg go "
                                               "(default: the results folder)")
    plot.add_argument("--format", choices=("svg", "png"), default="svg")

    specs = sub.add_parser("specs", help="print the hardware catalog, or one GPU's entry")
    specs.add_argument("name", nargs="?", help='NVML name, e.g. "NVIDIA H100 80GB HBM3" or "... MIG 1g.10gb"')
    specs.add_argument("--pci-id", type=_pci_id, help="PCI device id in hex, e.g. 0x2321 (needs NAME)")
    specs.add_argument("--json", action="store_true", help="print one JSON object (needs NAME)")

    mig = sub.add_parser("mig", help="MIG fragmentation: SMs used and idle in each full layout of a GPU")
    mig.add_argument("name", help='NVML name or catalog key, e.g. "NVIDIA H100 80GB HBM3" or h100-sxm')
    mig.add_argument("--json", action="store_true", help="print one JSON object")

    sub.add_parser("selftest", help="verify every kernel (on the GPU, or what the CPU can check)")

    trace = sub.add_parser("trace", help="record this GPU's raw NVML answers (idle, spin, GEMM) as test data")
    trace.add_argument("--out", type=Path,
                       help="file to write (default: tests/data/traces/<gpu>-<driver>.json in the checkout)")
    trace.add_argument("--seconds", type=_phase_seconds, default=2.0, help="length of each phase (default 2)")
    return parser


def _pci_id(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"needs a hexadecimal PCI device id such as 0x2330, got {text!r}") from None


def _phase_seconds(text: str) -> float:
    # GPM needs samples > 0.1 s apart and NVML samples every 1/6 to 1 s: shorter phases show nothing
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds >= 0.5:
        raise argparse.ArgumentTypeError(f"needs a number of seconds >= 0.5, got {text!r}")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        commands = {"run": _run, "report": _report, "plot": _plot, "specs": _specs, "mig": _mig,
                    "selftest": _selftest, "trace": _trace}
        code = commands[args.command](args)
        sys.stdout.flush()  # a reader gone shows up here, where it can be handled, and not at exit
        return code
    except KeyboardInterrupt:
        print("mfugap: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`mfugap specs | head`): say nothing more, and let Python's exit flush of
        # stdout go nowhere rather than fail a second time
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def _specs(args: argparse.Namespace) -> int:
    if args.name is None:
        if args.json or args.pci_id is not None:
            print(f"mfugap specs: {'--json' if args.json else '--pci-id'} needs a GPU name", file=sys.stderr)
            return EXIT_USAGE
        headers, rows = catalog.specs_table()
        print(tabulate(rows, headers=headers, tablefmt="simple", missingval="-"))
        return EXIT_OK
    try:
        resolved = catalog.resolve(args.name, args.pci_id)
    except catalog.UnknownGpuError as exc:
        print(f"mfugap specs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    entry = catalog.spec_to_json(resolved)
    if args.json:
        print(json.dumps(entry, indent=1))
    else:
        print(tabulate([(k, json.dumps(v) if isinstance(v, dict) else v) for k, v in entry.items()],
                       tablefmt="plain"))
    return EXIT_OK


def _mig(args: argparse.Namespace) -> int:
    from mfugap import mig

    try:
        table = mig.fragmentation(mig.lookup(args.name))
    except mig.MigTableError as exc:
        print(f"mfugap mig: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(table.to_json(), indent=1) if args.json else mig.render(table))
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from mfugap.plugin import default_results_dir
    from mfugap.report import render_runs
    from mfugap.results import load_runs

    folder = args.results_dir or default_results_dir()
    runs, errors = load_runs(folder)
    for error in errors:
        print(f"mfugap report: {error}", file=sys.stderr)
    if runs or args.format in ("json", "csv"):  # machine formats stay parseable: `[]`, a header line
        print(render_runs([run for _, run in runs], args.format), end="")  # it ends its last line
    if runs and args.format == "markdown":
        print(_chart_links(folder), end="")
    if not runs and not errors:
        print(f"mfugap report: no results under {folder}", file=sys.stderr)
    return EXIT_FAILED if errors else EXIT_OK


def _plot(args: argparse.Namespace) -> int:
    from mfugap.plugin import default_results_dir
    from mfugap.results import ResultsError, folder_name, load_runs

    try:
        from mfugap import plot
    except ImportError as exc:  # matplotlib is an optional extra
        print(f"mfugap plot: needs matplotlib ({exc}): pip install -e \".[plots]\"", file=sys.stderr)
        return EXIT_USAGE
    folder = args.results_dir or default_results_dir()
    runs, errors = load_runs(folder)
    drawable = []
    for path, run in runs:
        try:
            folder_name(run["gpu"])  # where its charts would go
            drawable.append(run)
        except ResultsError as exc:
            errors.append(f"{path}: {exc}")
    for error in errors:
        print(f"mfugap plot: {error}", file=sys.stderr)
    if not runs and not errors:
        print(f"mfugap plot: no results under {folder}", file=sys.stderr)
    for path in plot.write_charts(drawable, args.out or folder, args.format):
        print(f"mfugap plot: wrote {path}")
    return EXIT_FAILED if errors else EXIT_OK


def _chart_links(folder: Path) -> str:
    """Markdown images of the charts `mfugap plot` left in the GPU folders, as paths relative to the
    results folder, where `mfugap report --format markdown > results/README.md` puts the page."""
    images = sorted(p for p in folder.glob("*/*") if p.suffix in (".svg", ".png"))
    if not images:
        return ""
    lines = ["", "## Charts", "", "Drawn by `mfugap plot` from the same results files."]
    for gpu_folder, charts in itertools.groupby(images, key=lambda p: p.parent):
        lines += ["", f"### {gpu_folder.name}", ""]
        lines += [f"![{p.stem}]({p.relative_to(folder).as_posix()})" for p in charts]
    return "\n".join(lines) + "\n"


def _run(args: argparse.Namespace) -> int:
    import pytest

    from mfugap import mig
    from mfugap.device import gpu_unavailable_reason
    from mfugap.plugin import SUITES_DIR

    paths = [str(SUITES_DIR / f"test_{name}.py") for name in args.suite or []] or [str(SUITES_DIR)]
    # mfugap is imported before pytest starts, so pytest cannot rewrite its asserts, and says so
    base = [*plugin_options(), "--benchmark", "-p", "no:cacheprovider",
            "-W", "ignore::pytest.PytestAssertRewriteWarning"]
    selection = ["--mfugap-quick"] * args.quick + (["-k", args.keyword] if args.keyword else [])
    if args.list:
        return _exit_code(pytest.main([*paths, *base, "--collect-only", "-q", *selection]))
    reason = gpu_unavailable_reason()
    if reason is not None:
        print(f"mfugap run: no GPU visible: {reason}", file=sys.stderr)
        print("mfugap run: showing the recorded tables instead", file=sys.stderr)
        _report(argparse.Namespace(results_dir=args.results_dir, format="table"))
        return EXIT_NO_GPU
    options = [*base, "-rfEs", *selection]
    options += ["--mfugap-no-save"] * args.no_save
    if args.results_dir:
        options += ["--mfugap-results-dir", str(args.results_dir)]
    # MIG enabled: one process per instance, since a CUDA process sees only one; the worst child decides
    # (EXIT_OK < EXIT_FAILED < EXIT_INTERRUPTED).
    children = mig.children([*paths, *options])
    if children:
        return max(_exit_code(code) for code in mig.run_children(children))
    return _exit_code(pytest.main([*paths, *options]))


def plugin_options() -> list[str]:
    """`-p mfugap.plugin` where the plugin's entry point is not installed (a checkout run through
    PYTHONPATH); nothing where it is, since pytest refuses the same plugin under a second name."""
    from importlib.metadata import entry_points

    return [] if entry_points(group="pytest11", name="mfugap") else ["-p", "mfugap.plugin"]


def _exit_code(pytest_code: int) -> int:
    import pytest

    if pytest_code == pytest.ExitCode.INTERRUPTED:
        return EXIT_INTERRUPTED
    if pytest_code == pytest.ExitCode.USAGE_ERROR:  # a -k expression pytest cannot parse, say
        return EXIT_USAGE
    if pytest_code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("mfugap run: no case selected: check -k and --suite", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK if pytest_code == pytest.ExitCode.OK else EXIT_FAILED


def _selftest(args: argparse.Namespace) -> int:
    from mfugap import selftest
    from mfugap.device import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is None:
        import cupy  # the catalog is not needed to check kernels, so an unknown GPU can be checked too

        capability = cupy.cuda.Device().compute_capability  # e.g. "90"
        lines = selftest.gpu_lines(selftest.kernel_modules(), cupy.cuda.Stream(non_blocking=True),
                                   compute_capability=(int(capability[:-1]), int(capability[-1])))
    else:
        # The simulator must be chosen before numba.cuda is first imported, i.e. before the kernels are.
        os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
        print(f"mfugap selftest: no GPU visible ({reason}): running the CPU checks only (in a source "
              "checkout, `pytest tests/test_host_cuda.py` also runs every CUDA C kernel on the CPU)",
              file=sys.stderr, flush=True)
        modules = selftest.kernel_modules()
        lines = itertools.chain(
            (selftest.Line("skipped", w.label, "needs a GPU")
             for m in modules for w in getattr(m, "selftest_cases", list)()),
            selftest.simulator_lines(modules))
    failed = 0
    for line in itertools.chain(selftest.import_lines(), lines, selftest.compile_lines()):
        print(line, flush=True)
        failed += line.status == "failed"
    return EXIT_FAILED if failed else EXIT_OK


def _trace(args: argparse.Namespace) -> int:
    from mfugap import trace
    from mfugap.device import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is not None:
        print(f"mfugap trace: no GPU visible: {reason}", file=sys.stderr)
        return EXIT_NO_GPU
    nvml, device, stream = trace.open_gpu()
    out = args.out or trace.default_path(device.name, device.driver_version)
    refusal = _trace_refusal(device, out)
    if refusal is not None:
        print(f"mfugap trace: {refusal}", file=sys.stderr)
        return EXIT_USAGE
    if device.other_processes:
        print(f"mfugap trace: warning: {len(device.other_processes)} other process(es) on the GPU: its "
              f"NVML util is not this trace's alone", file=sys.stderr)
    print(f"mfugap trace: recording {device.name}: idle, spin and GEMM phases of {args.seconds:g} s each",
          file=sys.stderr, flush=True)
    try:
        recorded = trace.record(nvml, device.handle, trace.gpu_phases(stream, args.seconds))
        print(trace.summary_text(recorded), flush=True)  # first: what was seen survives a failed write
        path = trace.write(recorded, out)
    except trace.TraceError as exc:
        print(f"mfugap trace: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"mfugap trace: wrote {path}")
    return EXIT_OK


def _trace_refusal(device: DeviceInfo, out: Path) -> str | None:
    """Why a trace must not be recorded here, before minutes of recording are spent; None if it may."""
    if device.is_mig:
        return "this process sees a MIG instance, which has no GPU-Util; trace a GPU with MIG disabled"
    if out.exists():  # write() refuses again at the end, should the file appear meanwhile
        return f"{out} exists and is never overwritten; choose another file with --out"
    folder = next(p for p in out.resolve().parents if p.exists())  # the root exists, so one does
    if not folder.is_dir():
        return f"{folder} is a file, not a folder: {out} cannot be written there; choose another --out"
    return None


if __name__ == "__main__":
    sys.exit(main())
