"""Render runs as the util-vs-MFU table: one table per GPU, rows grouped by suite, lessons, a legend.

The table is the product, so it has to teach: every header carries its unit, a value that was not
measured reads "n/a", a case that did not run shows why instead of numbers, the title names the peaks
used as denominators, and the legend defines every column the way DESIGN.md does.
"""
from __future__ import annotations

import csv
import io
import json
import math
import numbers
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from tabulate import tabulate

from mfugap.results import run_id

_WIDTH = 110
_CSV_KEYS = ("suite", "workload", "status", "reason")


def _sig3(value: float) -> str:
    """Three significant digits, no exponent (712, 71.2, 0.0712): rates here span six decades."""
    if value == 0 or not math.isfinite(value):
        return f"{value:.0f}"
    decimals = min(max(0, 2 - math.floor(math.log10(abs(value)))), 6)
    return f"{value:.{decimals}f}"


def _number(fmt: Callable[[float], str]) -> Callable[[object], str]:
    def cell(value: object) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return str(value)  # a hand-edited file: show what is there rather than fail
        return fmt(float(value))
    return cell


def _text(value: object) -> str:
    return "n/a" if value is None else str(value)


def _flags(value: object) -> str:
    return ",".join(str(flag) for flag in value) if isinstance(value, list) else _text(value)


_PCT = _number(lambda v: f"{v:.1f}")


def _alt_mfu(value: object) -> str:
    """{precision: MFU %} as `bf16:0.6`; `-` where the row has no other peak to be read against."""
    if not isinstance(value, dict) or not value:
        return "-"
    return ",".join(f"{precision}:{_PCT(pct)}" for precision, pct in value.items())
_WHOLE = _number(lambda v: f"{v:.0f}")
_RATE = _number(_sig3)


@dataclass(frozen=True)
class Column:
    header: str
    key: str
    fmt: Callable[[object], str]
    meaning: str
    numeric: bool = True


COLUMNS: tuple[Column, ...] = (
    Column("workload", "label", _text, "the measured case; rows are grouped by suite", numeric=False),
    Column("precision", "precision", _text,
           "math whose dense peak is the MFU denominator (none: the case does no math)", numeric=False),
    Column("GPU-Util %", "gpu_util_pct", _PCT,
           "NVML GPU-Util: share of time any kernel was running; one thread on one SM reads 100%"),
    Column("SM util %", "sm_util_pct", _PCT, "NVML GPM SM_UTIL: share of SMs busy over the window"),
    Column("tensor util %", "tensor_util_pct", _PCT,
           "NVML GPM ANY_TENSOR_UTIL: share of time the tensor cores were active"),
    Column("MFU %", "mfu_pct", _PCT,
           "model FLOP/s over the wall time of the window / dense datasheet peak of the row's precision"),
    Column("MFU other %", "mfu_alt_pct", _alt_mfu,
           "MFU against another precision's peak where that is telling: fp32 GEMMs against the bf16 "
           "tensor peak a model would use, fp16x2 FMAs and GEMV's CUDA-core math against fp32"),
    Column("MBU %", "mbu_pct", _PCT,
           "minimum DRAM bytes/s over the window / datasheet memory bandwidth"),
    Column("TFLOP/s", "tflops", _RATE,
           "model FLOPs (counted from the shape, never from counters) per second over the window"),
    Column("GB/s", "gbps", _RATE,
           "minimum DRAM bytes (each input read once, each output written once) per second over the window"),
    Column("roofline %", "roofline_pct", _PCT,
           "achieved / min(peak, intensity x bandwidth): low means badly written, not memory-bound"),
    Column("gap pts", "gap_pts", _PCT,
           "GPU-Util - MFU in percentage points: busy time that was not useful math"),
    Column("SM MHz", "sm_clock_mhz", _WHOLE, "mean SM clock over the window"),
    Column("power W", "power_w", _WHOLE, "mean board power over the window"),
    Column("flags", "flags", _flags, "warnings about the row, listed below", numeric=False),
)

FLAGS: tuple[tuple[str, str], ...] = (
    ("mfu_above_util", "MFU above GPU-Util, which cannot be: a sampling artefact, a wrong peak, "
                       "or clocks above the datasheet"),
    ("throttle:<reason>", "the clocks were held down in the window (power cap, thermal, HW slowdown): "
                          "the card can do more than this row shows"),
    ("other_processes", "other compute processes shared the GPU: GPU-Util counts their kernels too, "
                        "so it is meaningless for this row"),
    ("few_util_samples", "few NVML samples fell inside the window: GPU-Util is uncertain"),
    ("python_launch_bound", "short launches could not be replayed from a CUDA graph: Python's launch "
                            "overhead is in the timing (timing_note in the JSON says why)"),
)

_NOTES: tuple[tuple[str, str], ...] = (
    ("n/a", "not measured or not supported (GPU-Util on a MIG slice, GPM before Hopper); "
            "util_note and gpm_note in the JSON say why"),
    ("[n]", "after a workload: the row comes from run n in the title"),
)

_FIRST_NUMBER = next(i for i, column in enumerate(COLUMNS) if column.numeric)


def columns() -> list[tuple[str, str]]:
    """(header, row key) of every table column, in table order."""
    return [(column.header, column.key) for column in COLUMNS]


def legend() -> list[tuple[str, str]]:
    """(term, meaning) for every column, every flag and the table's conventions, in display order."""
    return ([(column.header, column.meaning) for column in COLUMNS]
            + [(f"flag {name}", meaning) for name, meaning in FLAGS] + list(_NOTES))


def render_run(run: dict, fmt: str = "table") -> str:
    """One run in one of FORMATS."""
    return render_runs([run], fmt)


def render_runs(runs: list[dict], fmt: str = "table") -> str:
    """Runs in one of FORMATS: one table per GPU, or csv rows, or the runs unchanged as a JSON list."""
    if fmt not in _RENDERERS:
        raise ValueError(f"unknown report format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return _RENDERERS[fmt](runs)


def by_gpu(runs: list[dict]) -> list[list[dict]]:
    """Runs grouped by GPU name, in the order the names first appear."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["gpu"]["name"], []).append(run)
    return list(groups.values())


def _cells(row: dict, run_number: int | None) -> list[str]:
    """One table row; a case that is not ok shows its status and reason where the numbers would be."""
    row = {**row, "label": row.get("label") or row.get("workload")}
    if row.get("status") == "ok":
        cells = [column.fmt(row.get(column.key)) for column in COLUMNS]
    else:
        cells = ["" if column.numeric else column.fmt(row.get(column.key)) for column in COLUMNS]
        reason = row.get("reason")
        cells[_FIRST_NUMBER] = f"{row.get('status')}: {reason}" if reason else str(row.get("status"))
    if run_number is not None:
        cells[0] += f" [{run_number}]"
    # A cell must stay on one line: the table format relies on one text line per row.
    return [" ".join(cell.split()) for cell in cells]


def _chunks(group: list[dict]) -> list[tuple[list[list[str]], str | None]]:
    """A GPU's rows grouped by suite, cut after each suite that has a lesson: (rows, 'suite: lesson')."""
    numbered = len(group) > 1
    by_suite: dict[str, list[list[str]]] = {}
    lessons: dict[str, str] = {}
    measured: dict[str, list[str]] = {}  # every run's summary, each after the lesson
    for n, run in enumerate(group, 1):
        lessons.update(run.get("lessons") or {})  # the later run's wording wins
        for suite, summary in (run.get("summaries") or {}).items():
            measured.setdefault(suite, []).append(
                f"measured{f' [{n}]' if numbered else ''}: {_summary_text(summary)}")
        for row in run["rows"]:
            by_suite.setdefault(row.get("suite") or "", []).append(_cells(row, n if numbered else None))
    chunks: list[tuple[list[list[str]], str | None]] = []
    pending: list[list[str]] = []
    for suite, rows in by_suite.items():
        pending += rows
        text = " ".join(filter(None, [lessons.get(suite), *measured.get(suite, [])]))
        if text:
            chunks.append((pending, f"{suite}: {text}"))
            pending = []
    if pending or not chunks:
        chunks.append((pending, None))
    return chunks


def _summary_text(summary: object) -> str:
    """A suite summary as flat `key value` text: nested dicts become `outer: key value, ...`."""
    if isinstance(summary, dict):
        parts = [f"{key}: {_summary_text(value)}" if isinstance(value, dict) else
                 f"{key} {_summary_text(value)}" for key, value in summary.items()]
        return "; ".join(parts) if any(isinstance(v, dict) for v in summary.values()) else ", ".join(parts)
    if isinstance(summary, float):
        return _sig3(summary)
    return _text(summary)


def _distinct(values: list[str]) -> str:
    return " or ".join(dict.fromkeys(values))


def title(group: list[dict]) -> str:
    """GPU, driver, SMs, the denominators of MFU and MBU, and the date and commit of each run."""
    gpus = [run["gpu"] for run in group]

    def peak(precision: str) -> str:
        return _distinct([_RATE(peaks.get(precision) if isinstance(peaks := gpu.get("peaks_tflops"), dict)
                                else None) for gpu in gpus])

    derived = " (derived from SMs x clock)" if any(gpu.get("peaks_derived") for gpu in gpus) else ""
    runs = [_run_text(run) for run in group]
    if len(runs) > 1:
        runs = [f"[{n}] {text}" for n, text in enumerate(runs, 1)]
    return "; ".join([
        gpus[0]["name"],
        f"driver {_distinct([_text(gpu.get('driver_version')) for gpu in gpus])}",
        f"{_distinct([_text(gpu.get('sm_count')) for gpu in gpus])} SMs",
        f"denominators bf16 {peak('bf16')} / fp32 {peak('fp32')} TFLOP/s{derived}, "
        f"{_distinct([_RATE(gpu.get('mem_bw_gbps')) for gpu in gpus])} GB/s",
        ("runs " if len(runs) > 1 else "run ") + ", ".join(runs),
    ])


def _run_text(run: dict) -> str:
    commit = run.get("git_commit")
    marks = [" dirty" if run.get("git_dirty") else "", " quick" if run.get("quick") else ""]
    return f"{run.get('created_utc')} {commit[:8] if commit else 'nogit'}{''.join(marks)}"


def _headers() -> list[str]:
    return [column.header for column in COLUMNS]


def _align() -> list[str]:
    return ["right" if column.numeric else "left" for column in COLUMNS]


def _plain_gpu(group: list[dict]) -> str:
    """One aligned table; each lesson is printed under the last row of its suite."""
    chunks = _chunks(group)
    rows = [row for chunk_rows, _ in chunks for row in chunk_rows]
    lines = tabulate(rows, _headers(), tablefmt="simple", disable_numparse=True,
                     colalign=_align()).splitlines()
    out, body = [title(group), *lines[:2]], iter(lines[2:])
    for chunk_rows, lesson in chunks:
        out += [next(body) for _ in chunk_rows]
        if lesson:
            out += textwrap.wrap(lesson, _WIDTH, initial_indent="  ^ ", subsequent_indent="    ")
    return "\n".join(out)


def _markdown_gpu(group: list[dict]) -> str:
    """A ### title, then a table per lesson boundary: Markdown cannot put text between table rows."""
    parts = [f"### {title(group)}"]
    for chunk_rows, lesson in _chunks(group):
        escaped = [[cell.replace("|", r"\|") for cell in row] for row in chunk_rows]
        parts.append(tabulate(escaped, _headers(), tablefmt="github", disable_numparse=True,
                              colalign=_align()))
        if lesson:
            parts.append(f"> {lesson}")
    return "\n\n".join(parts)


def _plain_legend() -> str:
    terms = legend()
    width = max(len(term) for term, _ in terms)
    return "\n".join(["Legend:", *(f"  {term:<{width}}  {meaning}" for term, meaning in terms)])


def _markdown_legend() -> str:
    return "\n".join(["**Legend**", "", *(f"- `{term}`: {meaning}" for term, meaning in legend())])


TARGETS_TITLE = "Performance targets per GPU (read off the rows by the suite summaries; newest measurement)"


def targets_table(runs: list[dict]) -> tuple[list[str], list[list[str]]] | None:
    """One row per target the suites' summaries read (their "targets" dicts), named '<suite>: <target>'
    (two suites may read a target of the same name), one column per GPU: the verdict of the newest run
    that measured it, else 'not measured'. None when no run has a target."""
    groups = by_gpu(runs)
    names: dict[str, None] = {}
    verdicts = []
    for group in groups:
        found: dict[str, str] = {}
        for run in group:  # oldest first: a later measurement replaces an earlier one
            for suite, summary in (run.get("summaries") or {}).items():
                targets = summary.get("targets") if isinstance(summary, dict) else None
                for target, verdict in (targets if isinstance(targets, dict) else {}).items():
                    name = f"{suite}: {target}"
                    names.setdefault(name)
                    if verdict != "not measured" or name not in found:
                        found[name] = _text(verdict)
        verdicts.append(found)
    if not names:
        return None
    headers = ["target", *(group[0]["gpu"]["name"] for group in groups)]
    return headers, [[name, *(found.get(name, "not measured") for found in verdicts)] for name in names]


def _targets_block(runs: list[dict], tablefmt: str, heading: str) -> list[str]:
    """The targets table under `heading`, as one block; none when no run has a target."""
    table = targets_table(runs)
    if table is None:
        return []
    headers, rows = table
    return [heading + tabulate(rows, headers, tablefmt=tablefmt, disable_numparse=True)]


def _text_report(runs: list[dict], gpu_block: Callable[[list[dict]], str], targets: list[str],
                 legend_block: str) -> str:
    blocks = [gpu_block(group) for group in by_gpu(runs)] or ["no runs"]
    return "\n\n".join([*blocks, *targets, legend_block]) + "\n"


def _render_table(runs: list[dict]) -> str:
    return _text_report(runs, _plain_gpu, _targets_block(runs, "simple", f"{TARGETS_TITLE}\n"),
                        _plain_legend())


def _render_markdown(runs: list[dict]) -> str:
    return _text_report(runs, _markdown_gpu, _targets_block(runs, "github", f"### {TARGETS_TITLE}\n\n"),
                        _markdown_legend())


def _render_csv(runs: list[dict]) -> str:
    """One header row, then every row of every run with raw, unrounded values; lists joined by commas."""
    keys = [*_CSV_KEYS, *(column.key for column in COLUMNS if column.key not in _CSV_KEYS)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["gpu", "run", *keys])
    for run in runs:
        for row in run["rows"]:
            writer.writerow([run["gpu"]["name"], run_id(run), *_csv_values(row, keys)])
    return out.getvalue()


def _csv_values(row: dict, keys: list[str]) -> list[object]:
    # As in the table, a case that is not ok has no numbers: a spreadsheet would average them in.
    hidden = set() if row.get("status") == "ok" else {column.key for column in COLUMNS if column.numeric}
    values = [None if key in hidden else row.get(key) for key in keys]
    return [",".join(map(str, value)) if isinstance(value, list)
            else ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict)
            else value for value in values]


def _render_json(runs: list[dict]) -> str:
    return json.dumps(runs, indent=1) + "\n"


_RENDERERS: dict[str, Callable[[list[dict]], str]] = {
    "table": _render_table,
    "markdown": _render_markdown,
    "csv": _render_csv,
    "json": _render_json,
}
FORMATS = tuple(_RENDERERS)
