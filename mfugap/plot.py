"""Charts of recorded runs, one pair per GPU: the gap (GPU-Util, SM util and MFU side by side for every
case) and the roofline (every case at its arithmetic intensity under the datasheet roofline).

Every bar and point is a measured value from a results file; the roofline lines are the catalog's
datasheet figures the run used as denominators, and say so. Each case appears once: its newest ok row.
matplotlib is optional (`pip install -e ".[plots]"`); nothing else in mfugap needs it.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure  # no pyplot: no global state, no display backend
from matplotlib.patches import Patch

from mfugap.report import by_gpu, title
from mfugap.results import folder_name

FORMATS = ("svg", "png")
# bars of the gap chart, top to bottom within a case: (row key, legend label)
GAP_BARS = (("gpu_util_pct", "GPU-Util % (NVML: time any kernel ran)"),
            ("sm_util_pct", "SM util % (GPM: share of SMs busy)"),
            ("mfu_pct", "MFU % (useful FLOP/s / dense peak)"))
SERIES_MIN_POINTS = 3  # one workload at this many intensities is drawn as a measured line (a sweep)


def latest_cases(group: list[dict]) -> list[dict]:
    """The newest ok row of each (suite, label) over a GPU's runs, in first-seen order."""
    newest: dict[tuple[str, str], tuple[str, dict]] = {}
    for run in group:
        stamp = str(run.get("created_utc") or "")
        for row in run["rows"]:
            if row.get("status") != "ok":
                continue
            key = (row.get("suite") or "", row.get("label") or row.get("workload") or "")
            if key not in newest or stamp >= newest[key][0]:
                newest[key] = (stamp, row)
    return [row for _, row in newest.values()]


def _measured(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _figure(height_in: float) -> tuple[Figure, Any]:
    figure = Figure(figsize=(11, height_in), layout="constrained")
    return figure, figure.add_subplot()


def _suptitle(figure: Figure, group: list[dict], what: str) -> None:
    figure.suptitle("\n".join(textwrap.wrap(f"{what}: {title(group)}", 120)), fontsize=9)


def gap_chart(group: list[dict]) -> Figure:
    """Horizontal bars per case: GPU-Util, SM util and MFU; a value not measured reads n/a."""
    cases = latest_cases(group)
    figure, ax = _figure(1.8 + 0.42 * max(len(cases), 1))
    height = 0.8 / len(GAP_BARS)
    for i, (key, label) in enumerate(GAP_BARS):
        offset = (i - (len(GAP_BARS) - 1) / 2) * height
        ys = [n + offset for n, row in enumerate(cases) if _measured(row.get(key))]
        widths = [row[key] for row in cases if _measured(row.get(key))]
        ax.barh(ys, widths, height, label=label, color=f"C{i}")
        for n, row in enumerate(cases):
            if not _measured(row.get(key)):
                ax.text(1, n + offset, "n/a", va="center", fontsize=6, color=f"C{i}")
    ax.set_yticks(range(len(cases)), [f"{row.get('suite')}: {row.get('label') or row.get('workload')}"
                                      for row in cases], fontsize=7)
    # every case's slot shown, first on top as in the table, whatever has bars (a MIG slice: MFU only)
    ax.set_ylim(max(len(cases), 1) - 0.5, -0.5)
    values = [row[key] for row in cases for key, _ in GAP_BARS if _measured(row.get(key))]
    ax.set_xlim(0, max(105, 1.05 * max(values, default=0)))  # MFU above 100% is shown, not cut off
    ax.set_xlabel("percent")
    ax.grid(axis="x", alpha=0.3)
    # legend entries made here: a series with no bar at all would get the first color from matplotlib
    handles = [Patch(color=f"C{i}", label=label) for i, (_, label) in enumerate(GAP_BARS)]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(GAP_BARS), fontsize=7)
    _suptitle(figure, group, "GPU-Util vs MFU")
    return figure


def roofline_vertices(lo: float, hi: float, peak: float, bw_tbps: float) -> tuple[list, list]:
    """Vertices of min(peak, I x bandwidth) for I in [lo, hi], the ridge point included."""
    ridge = peak / bw_tbps
    xs = sorted({lo, hi, *([ridge] if lo < ridge < hi else [])})
    return xs, [min(peak, x * bw_tbps) for x in xs]


def roofline_chart(group: list[dict]) -> Figure:
    """Log-log TFLOP/s against FLOP/byte: each precision's datasheet roofline, each case as a point,
    and each workload measured at SERIES_MIN_POINTS or more intensities joined into a line."""
    cases = [row for row in latest_cases(group)
             if _measured(row.get("intensity_flop_per_byte")) and row["intensity_flop_per_byte"] > 0
             and _measured(row.get("tflops")) and row["tflops"] > 0]
    figure, ax = _figure(6.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    gpu = group[-1]["gpu"]
    peaks = gpu.get("peaks_tflops") if isinstance(gpu.get("peaks_tflops"), dict) else {}
    bw_tbps = gpu["mem_bw_gbps"] / 1000 if _measured(gpu.get("mem_bw_gbps")) else 0
    precisions = list(dict.fromkeys(row.get("precision") for row in cases))
    colors = {p: f"C{i}" for i, p in enumerate(precisions)}
    if cases:
        intensities = [row["intensity_flop_per_byte"] for row in cases]
        lo, hi = min(intensities) / 2, max(intensities) * 2
        for precision in precisions:
            peak = peaks.get(precision)
            if _measured(peak) and peak > 0 and bw_tbps > 0:
                # past the ridge, so the flat part shows even when every case is memory-bound
                xs, ys = roofline_vertices(lo, max(hi, 4 * peak / bw_tbps), peak, bw_tbps)
                ax.plot(xs, ys, "--", color=colors[precision], linewidth=1,
                        label=f"{precision} datasheet roofline ({peak:g} TFLOP/s, {bw_tbps:g} TB/s)")
    series: dict[tuple, list[dict]] = {}
    for row in cases:
        series.setdefault((row.get("suite"), row.get("workload"), row.get("precision")), []).append(row)
    for (_suite, workload, precision), rows in series.items():
        rows.sort(key=lambda r: r["intensity_flop_per_byte"])
        xs = [r["intensity_flop_per_byte"] for r in rows]
        ys = [r["tflops"] for r in rows]
        if len(set(xs)) >= SERIES_MIN_POINTS:
            ax.plot(xs, ys, "o-", color=colors[precision], markersize=3, label=f"{workload} (measured)")
            continue
        ax.plot(xs, ys, "o", color=colors[precision], markersize=4, linestyle="none")
        for r in rows:
            ax.annotate(r.get("label"), (r["intensity_flop_per_byte"], r["tflops"]), fontsize=5,
                        xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("arithmetic intensity (model FLOPs / minimum DRAM bytes)")
    ax.set_ylabel("achieved TFLOP/s (over the window)")
    ax.grid(which="both", alpha=0.2)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", fontsize=7)
    _suptitle(figure, group, "Roofline")
    return figure


CHARTS = {"gap": gap_chart, "roofline": roofline_chart}


def write_charts(runs: list[dict], out_dir: Path, fmt: str = "svg") -> list[Path]:
    """Every chart of every GPU as `<out_dir>/<gpu slug>/<chart>.<fmt>` (replacing older charts: they
    are derived from the results files, which are never replaced). Returns the paths written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown chart format {fmt!r}: choose one of {', '.join(FORMATS)}")
    written = []
    with matplotlib.rc_context({"svg.hashsalt": "mfugap"}):  # stable ids: regenerated files diff cleanly
        for group in by_gpu(runs):
            folder = Path(out_dir) / folder_name(group[-1]["gpu"])
            folder.mkdir(parents=True, exist_ok=True)
            for name, chart in CHARTS.items():
                path = folder / f"{name}.{fmt}"
                metadata = {"Date": None} if fmt == "svg" else {"Software": None}
                chart(group).savefig(path, format=fmt, metadata=metadata, dpi=150)
                written.append(path)
    return written
