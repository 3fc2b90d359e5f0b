"""The charts of `mfugap plot`, read back from the matplotlib objects: bars and points are the rows'
values, one per case (its newest ok row), datasheet rooflines are min(peak, I x bandwidth)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import mfugap
from mfugap import cli
from mfugap.results import build_run, write_run

pytest.importorskip("matplotlib", reason="matplotlib is not installed (the plots extra)")
import matplotlib.colors

from mfugap import plot  # only once matplotlib is known to import

GPU = {"name": "NVIDIA H100 80GB HBM3", "driver_version": "580.159.04", "sm_count": 132,
       "peaks_tflops": {"bf16": 989.4, "fp32": 66.9}, "mem_bw_gbps": 3350.0}
SWEEP = (0.25, 1.0, 4.0, 16.0, 64.0)  # FLOP/byte of a roofline-style workload's rows


def _row(label: str, **values: object) -> dict:
    row = {"suite": "demo", "workload": label, "label": label, "precision": "fp32", "status": "ok",
           "gpu_util_pct": 99.0, "sm_util_pct": 90.0, "mfu_pct": 10.0, "tflops": 6.0,
           "intensity_flop_per_byte": 2.0}
    return {**row, **values}


def _run(rows: list[dict], created_utc: str = "2026-11-25T12:00:00Z", gpu: dict = GPU) -> dict:
    return build_run(gpu, rows, command="pytest --benchmark", quick=False, created_utc=created_utc)


def _sweep() -> list[dict]:
    return [_row(f"sweep {i}", suite="roofline", workload="roofline_fp32", intensity_flop_per_byte=i,
                 tflops=min(66.9, 3.35 * i) * 0.9) for i in SWEEP]


def _bars(figure, label_start: str) -> dict[float, float]:
    """y position -> width of the bars whose legend label starts with `label_start`."""
    (container,) = [c for c in figure.axes[0].containers if c.get_label().startswith(label_start)]
    return {round(bar.get_y() + bar.get_height() / 2, 6): bar.get_width() for bar in container}


def test_gap_bars_are_the_rows_values_one_set_per_case():
    rows = [_row("spin", precision="none", gpu_util_pct=100.0, sm_util_pct=0.8, mfu_pct=0.0),
            _row("gemm", precision="bf16", gpu_util_pct=99.5, sm_util_pct=97.0, mfu_pct=71.3)]
    figure = plot.gap_chart([_run(rows)])
    for key, label in plot.GAP_BARS:
        widths = sorted(_bars(figure, label.split(" (")[0]).items())
        assert [w for _, w in widths] == [row[key] for row in rows], key
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels == ["demo: spin", "demo: gemm"]


def test_a_value_not_measured_gets_no_bar_and_reads_n_a():
    rows = [_row("on MIG", gpu_util_pct=None), _row("full GPU")]
    figure = plot.gap_chart([_run(rows)])
    util = _bars(figure, "GPU-Util")
    assert len(util) == 1 and list(util.values()) == [99.0]  # no zero-width bar standing for n/a
    assert [t.get_text() for t in figure.axes[0].texts] == ["n/a"]


def test_a_mig_slice_with_only_mfu_keeps_every_case_in_view_and_the_legend_in_its_colors():
    rows = [_row("gemm on 1g", gpu_util_pct=None, sm_util_pct=None, mfu_pct=61.0),
            {**_row("triad on 1g", gpu_util_pct=None, sm_util_pct=None, mfu_pct=1.2), "label": None}]
    figure = plot.gap_chart([_run(rows)])
    ax = figure.axes[0]
    assert ax.get_ylim() == (1.5, -0.5)  # both slots, first on top, n/a texts inside the axes
    texts = ax.texts
    assert len(texts) == 4 and all(-0.5 < t.get_position()[1] < 1.5 for t in texts)
    (legend,) = figure.legends
    colors = [matplotlib.colors.to_hex(h.get_facecolor()) for h in legend.legend_handles]
    assert colors == [matplotlib.colors.to_hex(f"C{i}") for i in range(len(plot.GAP_BARS))]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["demo: gemm on 1g", "demo: triad on 1g"]


def test_mfu_above_100_percent_is_drawn_whole():
    figure = plot.gap_chart([_run([_row("fp16 on a GeForce", mfu_pct=107.9)])])
    assert figure.axes[0].get_xlim()[1] >= 107.9 * 1.05
    assert plot.gap_chart([_run([_row("gemm")])]).axes[0].get_xlim() == (0.0, 105.0)


def test_only_ok_rows_are_drawn_and_the_newest_row_of_a_case_wins():
    old = _run([_row("gemm", mfu_pct=40.0), _row("triad", mfu_pct=1.0)], "2026-11-24T12:00:00Z")
    new = _run([_row("gemm", mfu_pct=70.0), _row("triad", status="failed", mfu_pct=99.0),
                _row("stalled", status="skipped")], "2026-11-25T12:00:00Z")
    cases = plot.latest_cases([new, old])  # file order is not time order
    assert [(row["label"], row["mfu_pct"]) for row in cases] == [("gemm", 70.0), ("triad", 1.0)]


@pytest.mark.parametrize(("lo", "hi"), [(0.1, 1000.0), (0.1, 5.0), (50.0, 1000.0)])
def test_roofline_vertices_follow_min_of_peak_and_bandwidth(lo, hi):
    peak, bw = 66.9, 3.35
    xs, ys = plot.roofline_vertices(lo, hi, peak, bw)
    assert xs[0] == lo and xs[-1] == hi
    grid = np.geomspace(lo, hi, 50)
    np.testing.assert_allclose(np.interp(grid, xs, ys), np.minimum(peak, grid * bw), rtol=1e-12)


def test_roofline_draws_every_case_at_its_intensity_and_joins_a_sweep():
    spin = _row("spin", precision="none", tflops=0.0, intensity_flop_per_byte=None)
    gemm = _row("gemm", precision="bf16", tflops=700.0, intensity_flop_per_byte=2730.0)
    figure = plot.roofline_chart([_run([*_sweep(), gemm, spin])])
    lines = {line.get_label(): line for line in figure.axes[0].lines}
    sweep = lines["roofline_fp32 (measured)"]
    np.testing.assert_array_equal(sweep.get_xdata(), SWEEP)
    np.testing.assert_allclose(sweep.get_ydata(), [min(66.9, 3.35 * i) * 0.9 for i in SWEEP])
    points = [line for line in figure.axes[0].lines if line.get_linestyle() == "None"]
    assert [(list(p.get_xdata()), list(p.get_ydata())) for p in points] == [([2730.0], [700.0])]
    for precision, peak in GPU["peaks_tflops"].items():
        datasheet = next(line for label, line in lines.items() if label.startswith(f"{precision} datasheet"))
        xs, ys = np.asarray(datasheet.get_xdata()), np.asarray(datasheet.get_ydata())
        np.testing.assert_allclose(ys, np.minimum(peak, xs * 3.35))
        assert xs.max() >= 4 * peak / 3.35  # the flat part shows
    assert [t.get_text() for t in figure.axes[0].texts] == ["gemm"]  # lone points are named


def test_cli_writes_both_charts_per_gpu_and_names_a_corrupt_file(tmp_path, capsys):
    a100 = {**GPU, "name": "NVIDIA A100-SXM4-80GB", "peaks_tflops": {"bf16": 312.0, "fp32": 19.5}}
    write_run(_run(_sweep()), tmp_path)
    write_run(_run(_sweep(), gpu=a100), tmp_path)
    (tmp_path / "broken.json").write_text("{")
    out = tmp_path / "charts"
    assert cli.main(["plot", "--results-dir", str(tmp_path), "--out", str(out)]) == cli.EXIT_FAILED
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.svg"))
    slugs = sorted({path.split("/")[0] for path in written})
    assert len(slugs) == 2 and written == [f"{s}/{c}.svg" for s in slugs for c in ("gap", "roofline")]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.json" in err[0]
    svg = (out / slugs[0] / "roofline.svg").read_text()
    assert svg.startswith("<?xml") and "<dc:date>" not in svg  # no timestamp: regenerated files diff cleanly


def test_charts_are_the_same_bytes_when_regenerated(tmp_path):
    run = _run(_sweep())
    first = plot.write_charts([run], tmp_path / "a")
    second = plot.write_charts([run], tmp_path / "b")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_png_format(tmp_path):
    (path, _) = plot.write_charts([_run(_sweep())], tmp_path, fmt="png")
    assert path.suffix == ".png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_plot_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.delitem(sys.modules, "mfugap.plot")
    monkeypatch.delattr(mfugap, "plot")
    assert cli.main(["plot", "--results-dir", str(tmp_path)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ".[plots]" in err


def test_no_results_is_said_and_writes_nothing(tmp_path, capsys):
    assert cli.main(["plot", "--results-dir", str(tmp_path)]) == cli.EXIT_OK
    assert "no results" in capsys.readouterr().err and not list(tmp_path.iterdir())



def test_a_hand_edited_gpu_entry_still_plots_inside_the_output_folder(tmp_path):
    gpu = {**GPU, "slug": "../../escape", "peaks_tflops": ["not", "a", "dict"], "mem_bw_gbps": "fast"}
    written = plot.write_charts([_run(_sweep(), gpu=gpu)], tmp_path)
    assert [p.parent for p in written] == [tmp_path / "escape"] * 2
    lines = [line.get_label() for line in plot.roofline_chart([_run(_sweep(), gpu=gpu)]).axes[0].lines]
    assert lines == ["roofline_fp32 (measured)"]  # no datasheet roofline without its figures


def test_a_gpu_without_a_usable_folder_name_is_named_and_the_rest_still_drawn(tmp_path, capsys):
    write_run(_run(_sweep()), tmp_path)
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps(_run(_sweep(), gpu={**GPU, "name": "!!!", "slug": ".."})))
    out = tmp_path / "charts"
    assert cli.main(["plot", "--results-dir", str(tmp_path), "--out", str(out)]) == cli.EXIT_FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "odd.json" in err[0] and "no usable folder name" in err[0]
    assert len(list(out.rglob("*.svg"))) == 2
