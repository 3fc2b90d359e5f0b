import json
import os
import subprocess
import sys

import pytest

from mfugap import cli
from mfugap.results import build_run, write_run

H100 = "NVIDIA H100 80GB HBM3"


def _gpu():
    return {"name": H100, "key": "h100-sxm", "slug": "nvidia-h100-80gb-hbm3", "driver_version": "580.1",
            "sm_count": 132, "peaks_tflops": {"bf16": 989.4, "fp32": 67.0}, "mem_bw_gbps": 3350.0}


def _row(**kw):
    return {"suite": "foundation", "workload": "stream_triad", "label": "stream_triad n=1024",
            "precision": "fp32", "status": "ok", "tflops": 0.5, "mfu_pct": 0.75, "gpu_util_pct": 99.0, **kw}


def test_specs_json_for_one_gpu(capsys):
    assert cli.main(["specs", H100, "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["key"] and entry["sm_count"] == 132 and entry["derived"] is False
    assert entry["peaks_tflops"]["bf16"] == pytest.approx(989.4)
    assert entry["mig_profile"] is None


def test_specs_table_lists_the_catalog(capsys):
    assert cli.main(["specs"]) == 0
    out = capsys.readouterr().out
    assert "H100" in out and "A100" in out and "L40S" in out


def test_specs_unknown_gpu_is_one_line_and_nonzero(capsys):
    assert cli.main(["specs", "Voodoo 5 6000"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Voodoo 5 6000" in err


def test_unknown_suite_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--suite", "nope"])
    assert exit_info.value.code == 2
    assert "foundation" in capsys.readouterr().err


def test_run_without_gpu_says_why_shows_recorded_tables_and_exits_3(tmp_path, monkeypatch, capsys):
    from mfugap.device import NoGpuError

    monkeypatch.setattr("mfugap.device.gpu_unavailable_reason",
                        lambda *a, **k: NoGpuError("no-driver", "NVIDIA driver not found"))
    write_run(build_run(_gpu(), [_row()], command="test", quick=False), tmp_path)
    assert cli.main(["run", "--results-dir", str(tmp_path)]) == cli.EXIT_NO_GPU
    captured = capsys.readouterr()
    assert "no GPU visible: NVIDIA driver not found" in captured.err
    assert H100 in captured.out and "stream_triad n=1024" in captured.out


def test_report_keeps_going_past_a_corrupt_file(tmp_path, capsys):
    write_run(build_run(_gpu(), [_row()], command="test", quick=False), tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    assert cli.main(["report", "--results-dir", str(tmp_path), "--format", "csv"]) == cli.EXIT_FAILED
    captured = capsys.readouterr()
    assert "broken.json" in captured.err and captured.err.count("\n") == 1
    assert "stream_triad" in captured.out


def test_markdown_report_links_the_charts_beside_the_results(tmp_path, capsys):
    path = write_run(build_run(_gpu(), [_row()], command="test", quick=False), tmp_path)
    assert cli.main(["report", "--results-dir", str(tmp_path), "--format", "markdown"]) == cli.EXIT_OK
    assert "## Charts" not in capsys.readouterr().out  # none drawn yet
    for chart in ("roofline.svg", "gap.svg"):
        (path.parent / chart).write_text("<svg/>")
    assert cli.main(["report", "--results-dir", str(tmp_path), "--format", "markdown"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    slug = path.parent.name
    assert out.split("## Charts", 1)[1].count("![") == 2
    assert f"![gap]({slug}/gap.svg)" in out and f"![roofline]({slug}/roofline.svg)" in out


def test_console_script_without_gpu_has_no_traceback(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "mfugap.cli", "run", "--results-dir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == cli.EXIT_NO_GPU
    assert "no GPU visible" in proc.stderr and "Traceback" not in proc.stderr


def test_run_passes_its_selection_to_the_suites(monkeypatch):
    import pytest as pytest_module

    seen = []
    monkeypatch.setattr("mfugap.device.gpu_unavailable_reason", lambda *a, **k: None)
    monkeypatch.setattr("mfugap.mig.children", lambda args: [])
    monkeypatch.setattr(pytest_module, "main", lambda args: seen.append(args) or 0)
    assert cli.main(["run", "--quick", "--suite", "gemm_ladder", "-k", "not naive"]) == cli.EXIT_OK
    (args,) = seen
    assert args[0].endswith("test_gemm_ladder.py") and "--benchmark" in args and "--mfugap-quick" in args
    assert args[args.index("-k") + 1] == "not naive"


def test_run_loads_the_plugin_itself_only_where_its_entry_point_is_missing(monkeypatch):
    import importlib.metadata

    assert cli.plugin_options() == []  # installed: pytest loads it through the entry point
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: [])  # a checkout on PYTHONPATH
    assert cli.plugin_options() == ["-p", "mfugap.plugin"]


def test_specs_pci_id_needs_a_name_and_a_hex_number(capsys):
    assert cli.main(["specs", "--pci-id", "0x2330"]) == cli.EXIT_USAGE
    assert capsys.readouterr().err.strip() == "mfugap specs: --pci-id needs a GPU name"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["specs", H100, "--pci-id", "zz"])
    assert exit_info.value.code == cli.EXIT_USAGE
    assert "needs a hexadecimal PCI device id such as 0x2330, got 'zz'" in capsys.readouterr().err


@pytest.mark.parametrize(("fmt", "expected"), [("json", "[]\n"), ("csv", None)])
def test_an_empty_report_in_a_machine_format_still_parses(tmp_path, capsys, fmt, expected):
    import csv
    import io

    assert cli.main(["report", "--results-dir", str(tmp_path), "--format", fmt]) == cli.EXIT_OK
    captured = capsys.readouterr()
    assert "no results under" in captured.err
    if expected is not None:
        assert captured.out == expected
    else:
        (header,) = list(csv.reader(io.StringIO(captured.out)))
        assert "workload" in header


@pytest.mark.parametrize(("pytest_code", "expected"), [(0, cli.EXIT_OK), (1, cli.EXIT_FAILED),
                                                       (2, cli.EXIT_INTERRUPTED), (3, cli.EXIT_FAILED),
                                                       (4, cli.EXIT_USAGE), (5, cli.EXIT_USAGE)])
def test_pytest_outcomes_map_to_the_documented_exit_codes(monkeypatch, capsys, pytest_code, expected):
    import pytest as pytest_module

    monkeypatch.setattr("mfugap.device.gpu_unavailable_reason", lambda *a, **k: None)
    monkeypatch.setattr("mfugap.mig.children", lambda args: [])
    monkeypatch.setattr(pytest_module, "main", lambda args: pytest_code)
    assert cli.main(["run", "-k", "nothing matches this"]) == expected
    assert ("no case selected" in capsys.readouterr().err) == (pytest_code == 5)


@pytest.mark.parametrize("command", ["specs", "mig h100-sxm --json"])
def test_a_closed_pipe_ends_quietly(command):
    """`mfugap specs | head`: the reader may leave before mfugap writes (`true` leaves at once); nothing
    on stderr, no traceback."""
    proc = subprocess.run(f"{sys.executable} -m mfugap.cli {command} | true; echo ${{PIPESTATUS[0]}}",
                          shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert proc.stderr == ""
    assert proc.stdout.strip() == str(cli.EXIT_FAILED)


def test_run_list_shows_the_cases_and_their_least_device_time_without_a_gpu(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "mfugap.cli", "run", "--list", "--quick", "--suite",
                           "foundation", "-k", "not spin"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == cli.EXIT_OK, proc.stdout + proc.stderr
    cases = [line for line in proc.stdout.splitlines() if "::test_" in line]
    assert len(cases) == 2 and not any("spin" in case for case in cases)
    # 2 quick windows of 0.8 s, each after 0.15 s of warm-up
    assert "mfugap: 2 cases; their windows and warm-ups alone take at least 2 s (0.8 s + 0.15 s each; " \
           "derived, not measured)" in proc.stdout
    assert "warning" not in proc.stdout.lower() and "Traceback" not in proc.stderr
