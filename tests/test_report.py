"""The report: formatted numbers, reasons instead of numbers, one table per GPU, formats, lessons, legend."""
from __future__ import annotations

import csv
import io
import json

import pytest

from mfugap.report import FORMATS, TARGETS_TITLE, columns, legend, render_run, render_runs, targets_table
from mfugap.results import build_run, run_id

H100 = {"name": "NVIDIA H100 80GB HBM3", "driver_version": "560.35.03", "sm_count": 132,
        "peaks_tflops": {"bf16": 989.4, "fp32": 66.9}, "mem_bw_gbps": 3350.0}
A100 = {"name": "NVIDIA A100-SXM4-40GB", "driver_version": "550.54.15", "sm_count": 108,
        "peaks_tflops": {"bf16": 312.0, "fp32": 19.5}, "mem_bw_gbps": 1555.0}
REASON = "needs 12.0 GiB, 8.1 GiB free"


def _gemm(**overrides: object) -> dict:
    # Rates are chosen so that three significant digits need no exponent and keep no trailing zero.
    row = {"suite": "foundation", "workload": "gemm", "label": "gemm_bf16", "precision": "bf16",
           "status": "ok", "gpu_util_pct": 99.87, "sm_util_pct": 97.25, "tensor_util_pct": 81.04,
           "mfu_pct": 61.93, "mbu_pct": 2.06, "tflops": 612.7, "gbps": 0.04567, "roofline_pct": 61.95,
           "gap_pts": 37.94, "sm_clock_mhz": 1754.6, "power_w": 688.2,
           "flags": ["mfu_above_util", "throttle:sw_power_cap"]}
    return {**row, **overrides}


def _skipped() -> dict:
    # Leftover numbers on a case that did not run must still not be shown.
    return _gemm(suite="memory", workload="stream_triad", label="triad_big", precision="fp32",
                 status="skipped", reason=REASON, flags=[])


def _run(gpu: dict, rows: list[dict], lessons: dict | None = None, commit: str = "ab" * 20,
         created_utc: str = "2026-11-25T12:00:00Z") -> dict:
    run = build_run(gpu, rows, command="pytest --benchmark", quick=False, lessons=lessons,
                    created_utc=created_utc)
    run["git_commit"], run["git_dirty"] = commit, False
    return run


def _line(text: str, label: str) -> str:
    """The one line that starts with label in its first column (legend lines are indented)."""
    (line,) = [line for line in text.splitlines() if line.split(" ", 1)[0] == label]
    return line


def _expected_cells(row: dict) -> list[str]:
    """The table row computed from the row: one decimal for percents, three digits for rates."""
    pct = [f"{row[key]:.1f}" for key in ("gpu_util_pct", "sm_util_pct", "tensor_util_pct", "mfu_pct",
                                         "mbu_pct")]
    rates = [f"{row[key]:.3g}" for key in ("tflops", "gbps")]
    alt = ",".join(f"{p}:{v:.1f}" for p, v in row.get("mfu_alt_pct", {}).items()) or "-"
    return [row["label"], row["precision"], *pct[:4], alt, pct[4], *rates, f"{row['roofline_pct']:.1f}",
            f"{row['gap_pts']:.1f}", f"{row['sm_clock_mhz']:.0f}", f"{row['power_w']:.0f}",
            ",".join(row["flags"])]


def test_columns_are_in_table_order() -> None:
    assert [key for _, key in columns()] == [
        "label", "precision", "gpu_util_pct", "sm_util_pct", "tensor_util_pct", "mfu_pct", "mfu_alt_pct",
        "mbu_pct", "tflops", "gbps", "roofline_pct", "gap_pts", "sm_clock_mhz", "power_w", "flags"]
    header = _line(render_run(_run(H100, [_gemm()])), "workload")
    positions = [header.index(title) for title, _ in columns()]
    assert positions == sorted(positions)


def test_table_shows_the_formatted_numbers() -> None:
    row = _gemm()
    line = _line(render_run(_run(H100, [row])), row["label"])
    assert line.split() == _expected_cells(row)
    fp32_rung = _gemm(label="rung_3", precision="fp32", mfu_alt_pct={"bf16": 0.5678})
    line = _line(render_run(_run(H100, [fp32_rung])), "rung_3")
    assert line.split() == _expected_cells(fp32_rung) and "bf16:0.6" in line.split()


def test_missing_values_read_n_a() -> None:
    row = _gemm(gpu_util_pct=None, gap_pts=None, sm_util_pct=None, flags=[])
    cells = _line(render_run(_run(H100, [row])), row["label"]).split()
    expected = _expected_cells({**row, "gpu_util_pct": 0, "gap_pts": 0, "sm_util_pct": 0})[:-1]
    for i, key in ((2, "gpu_util_pct"), (3, "sm_util_pct"), (11, "gap_pts")):
        assert columns()[i][1] == key
        expected[i] = "n/a"
    assert cells == expected


def test_a_hand_edited_peaks_entry_reads_n_a_in_the_title() -> None:
    text = render_run(_run({**H100, "peaks_tflops": [989.4, 66.9]}, [_gemm()]))
    assert "denominators bf16 n/a / fp32 n/a TFLOP/s" in text.splitlines()[0]


def test_label_falls_back_to_workload() -> None:
    text = render_run(_run(H100, [_gemm(label=None)]))
    assert _line(text, "gemm").split()[1] == "bf16"


def test_skipped_row_shows_its_reason_and_no_numbers() -> None:
    text = render_run(_run(H100, [_gemm(), _skipped()]))
    line = _line(text, "triad_big")
    assert f"skipped: {REASON}" in line
    assert line.replace(f"skipped: {REASON}", "").split() == ["triad_big", "fp32"]


def test_one_table_per_gpu() -> None:
    runs = [_run(H100, [_gemm()]), _run(A100, [_gemm()]),
            _run(H100, [_gemm(label="gemm_again")], commit="cd" * 20, created_utc="2026-11-26T08:00:00Z")]
    text = render_runs(runs)
    lines = text.splitlines()
    assert sum(line.startswith("workload ") for line in lines) == 2
    (h100_title,) = [line for line in lines if line.startswith(H100["name"])]
    assert "driver 560.35.03" in h100_title and "132 SMs" in h100_title
    assert "bf16 989 / fp32 66.9 TFLOP/s" in h100_title and "3350 GB/s" in h100_title
    assert "[1] 2026-11-25T12:00:00Z abababab" in h100_title
    assert "[2] 2026-11-26T08:00:00Z cdcdcdcd" in h100_title
    assert _line(text, "gemm_again").split()[1] == "[2]"
    (a100_title,) = [line for line in lines if line.startswith(A100["name"])]
    assert "run 2026-11-25T12:00:00Z abababab" in a100_title and "[1]" not in a100_title
    assert lines.index(h100_title) < lines.index(a100_title)
    assert lines.index(_line(text, "gemm_again")) < lines.index(a100_title)


def test_markdown_has_pipes_and_a_heading_per_gpu() -> None:
    text = render_runs([_run(H100, [_gemm(), _skipped()]), _run(A100, [_gemm()])], "markdown")
    headings = [line for line in text.splitlines() if line.startswith("### ")]
    assert [h.removeprefix("### ").split(";")[0] for h in headings] == [H100["name"], A100["name"]]
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert all(line.endswith("|") for line in table_lines)
    assert any(set(line) <= set("|-: ") for line in table_lines), "no header separator row"
    assert any("| gemm_bf16" in line for line in table_lines)


def test_markdown_escapes_pipes_in_cells() -> None:
    text = render_run(_run(H100, [_gemm(status="error", reason="a|b")]), "markdown")
    assert r"error: a\|b" in text


def test_csv_has_raw_values() -> None:
    run = _run(H100, [_gemm(), _skipped()])
    records = list(csv.DictReader(io.StringIO(render_run(run, "csv"))))
    assert len(records) == 2
    assert list(records[0])[:2] == ["gpu", "run"]
    gemm, skipped = records
    assert gemm["gpu"] == H100["name"] and gemm["run"] == run_id(run)
    for _, key in columns():
        value = run["rows"][0][key]
        if isinstance(value, float):
            assert float(gemm[key]) == value, key
    assert gemm["flags"].split(",") == run["rows"][0]["flags"]
    assert gemm["label"] == "gemm_bf16" and gemm["status"] == "ok" and gemm["reason"] == ""
    assert skipped["status"] == "skipped" and skipped["reason"] == REASON
    assert skipped["tflops"] == "" and skipped["mfu_pct"] == ""


def test_csv_writes_other_peaks_as_key_value_pairs() -> None:
    row = _gemm(precision="fp32", mfu_alt_pct={"bf16": 0.5678, "tf32": 4.25})
    (record,) = csv.DictReader(io.StringIO(render_run(_run(H100, [row]), "csv")))
    assert record["mfu_alt_pct"] == "bf16=0.5678,tf32=4.25"


def test_csv_writes_none_as_empty() -> None:
    records = list(csv.DictReader(io.StringIO(render_run(_run(H100, [_gemm(mfu_pct=None)]), "csv"))))
    assert records[0]["mfu_pct"] == ""


def test_json_is_the_runs_unchanged() -> None:
    runs = [_run(H100, [_gemm(), _skipped()]), _run(A100, [_gemm()])]
    assert json.loads(render_runs(runs, "json")) == runs


def test_rows_grouped_by_suite_with_the_lesson_under_its_suite() -> None:
    rows = [_gemm(label="first"), _skipped(), _gemm(label="second")]
    lesson = "One spinning thread reads 100% GPU-Util: busy is not useful."
    text = render_run(_run(H100, rows, lessons={"foundation": lesson}))
    lines = text.splitlines()
    (lesson_line,) = [i for i, line in enumerate(lines) if "foundation: One spinning thread" in line]
    order = [lines.index(_line(text, label)) for label in ("first", "second", "triad_big")]
    assert order[0] < order[1] < lesson_line < order[2]
    assert "busy is not useful." in " ".join(lines[lesson_line:lesson_line + 2])


def test_lessons_in_markdown_but_not_in_csv() -> None:
    run = _run(H100, [_gemm(), _skipped()], lessons={"foundation": "busy is not useful"})
    markdown = render_run(run, "markdown")
    assert "> foundation: busy is not useful" in markdown
    assert markdown.index("| gemm_bf16") < markdown.index("busy is not useful") < markdown.index("triad_big")
    assert "busy is not useful" not in render_run(run, "csv")


def test_legend_lists_every_column_and_flag() -> None:
    terms = [term for term, _ in legend()]
    assert [header for header, _ in columns()] == terms[:len(columns())]
    for flag in ("mfu_above_util", "throttle:<reason>", "other_processes", "few_util_samples"):
        assert f"flag {flag}" in terms
    for fmt in ("table", "markdown"):
        text = render_run(_run(H100, [_gemm()]), fmt)
        legend_text = text[text.index("Legend"):]
        for term, meaning in legend():
            assert term in legend_text and meaning in legend_text, (fmt, term)


def test_unknown_format_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="html") as caught:
        render_run(_run(H100, [_gemm()]), "html")
    for fmt in FORMATS:
        assert fmt in str(caught.value)


def test_no_runs() -> None:
    assert render_runs([]).startswith("no runs")
    assert json.loads(render_runs([], "json")) == []
    assert render_runs([], "csv").count("\n") == 1


def test_suite_summary_is_printed_under_its_suite() -> None:
    run = _run(H100, [_gemm(suite="roofline")], lessons={"roofline": "The sweep climbs to the ridge."})
    run["summaries"] = {"roofline": {"bf16": {"ridge_flop_per_byte": 295.4, "plateau_tflops": 701.0}}}
    text = render_run(run, "table")
    note = text[text.index("^ roofline:"):]
    assert "The sweep climbs to the ridge." in note
    assert "measured: bf16: ridge_flop_per_byte 295, plateau_tflops 701" in " ".join(note.split())
    assert "measured: bf16" in render_run(run, "markdown")


def test_every_runs_summary_stays_under_the_newest_lesson() -> None:
    full = _run(H100, [_gemm()], lessons={"foundation": "Old wording."})
    full["summaries"] = {"foundation": {"targets": {"cuBLAS bf16": "79.1 (met: >= 75)"}}}
    quick = _run(H100, [_gemm()], lessons={"foundation": "New wording."}, created_utc="2026-11-26T12:00:00Z")
    quick["summaries"] = {"foundation": {"targets": {"cuBLAS bf16": "not measured"}}}
    note = " ".join(render_runs([full, quick], "table").split())
    assert "foundation: New wording. measured [1]: targets: cuBLAS bf16 79.1 (met: >= 75) measured [2]: " \
           "targets: cuBLAS bf16 not measured" in note
    assert "Old wording." not in note


def _with_targets(gpu: dict, created_utc: str, **targets: str) -> dict:
    run = _run(gpu, [_gemm()], created_utc=created_utc)
    run["summaries"] = {"foundation": {"targets": targets, "other": 1.0}}
    return run


def test_targets_table_has_a_row_per_target_and_a_column_per_gpu() -> None:
    runs = [
        _with_targets(H100, "2026-11-25T12:00:00Z", triad="91.2 (met: >= 90)", cublas="not measured"),
        _with_targets(A100, "2026-11-25T13:00:00Z", triad="84 (missed: >= 90)"),
        # a later quick run of the H100 measured cuBLAS, and not the triad: the earlier triad stands
        _with_targets(H100, "2026-11-26T12:00:00Z", triad="not measured", cublas="79.1 (met: >= 75)"),
    ]
    headers, rows = targets_table(runs)
    assert headers == ["target", H100["name"], A100["name"]]
    assert rows == [["foundation: triad", "91.2 (met: >= 90)", "84 (missed: >= 90)"],
                    ["foundation: cublas", "79.1 (met: >= 75)", "not measured"]]
    text = render_runs(runs, "table")
    assert text.index(TARGETS_TITLE) > text.rindex(A100["name"] + ";")  # after the GPU tables
    assert text.index(TARGETS_TITLE) < text.index("Legend:")
    assert f"### {TARGETS_TITLE}" in render_runs(runs, "markdown")
    assert TARGETS_TITLE not in render_runs(runs, "csv")


def test_a_target_two_suites_read_keeps_both_verdicts() -> None:
    run = _run(H100, [_gemm()])
    run["summaries"] = {"foundation": {"targets": {"triad MBU %": "91 (met: >= 90)"}},
                        "memory_bound": {"targets": {"triad MBU %": "89.9 (missed: >= 90)"}}}
    assert targets_table([run])[1] == [["foundation: triad MBU %", "91 (met: >= 90)"],
                                       ["memory_bound: triad MBU %", "89.9 (missed: >= 90)"]]


def test_no_targets_no_targets_table() -> None:
    run = _run(H100, [_gemm()])
    assert targets_table([run]) is None and TARGETS_TITLE not in render_runs([run], "table")
    run["summaries"] = {"roofline": {"targets": "hand-edited"}}
    assert targets_table([run]) is None
