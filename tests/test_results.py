"""The results store: file names, provenance, atomic writes, and loading next to broken files."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import mfugap
from mfugap import files
from mfugap.results import (
    ResultsError,
    build_run,
    git_provenance,
    gpu_slug,
    load_runs,
    validate_run,
    write_run,
)
from mfugap.schema import GPU_FIELDS, ROW_FIELDS, RUN_FIELDS, SCHEMA_ID, SCHEMA_VERSION

COMMIT = "0123456789abcdef0123456789abcdef01234567"
GPU = {"name": "NVIDIA H100 80GB HBM3", "driver_version": "560.35.03", "sm_count": 132,
       "peaks_tflops": {"bf16": 989.4, "fp32": 66.9}, "mem_bw_gbps": 3350.0}


def _rows() -> list[dict]:
    return [
        {"suite": "foundation", "workload": "gemm", "label": "gemm_bf16_4096", "precision": "bf16",
         "status": "ok", "tflops": 612.5, "mfu_pct": 61.9, "gpu_util_pct": 100.0,
         "flags": ["few_util_samples"]},
        {"suite": "memory", "workload": "stream_triad", "label": "triad_16GiB", "status": "skipped",
         "reason": "needs 16.0 GiB, 8.1 GiB free"},
    ]


def _run(**overrides: object) -> dict:
    run = build_run(GPU, _rows(), command="pytest --benchmark", quick=False,
                    lessons={"foundation": "busy is not useful"}, created_utc="2026-11-25T12:00:00Z")
    run["git_commit"], run["git_dirty"] = COMMIT, False
    run.update(overrides)
    return run


def _write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize(("name", "slug"), [
    ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"),
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "nvidia-h100-80gb-hbm3-mig-1g.10gb"),
    ("NVIDIA A100-SXM4-40GB", "nvidia-a100-sxm4-40gb"),
    ("  Tesla V100-SXM2-16GB  ", "tesla-v100-sxm2-16gb"),
    ("NVIDIA GeForce RTX 4090 (rev/2)", "nvidia-geforce-rtx-4090-rev-2"),
    ("../../etc", "etc"),
])
def test_gpu_slug(name: str, slug: str) -> None:
    assert gpu_slug(name) == slug
    assert re.fullmatch(r"[a-z0-9.-]+", slug)


@pytest.mark.parametrize("name", ["", "   ", "..", "/"])
def test_gpu_slug_refuses_names_without_a_folder_name(name: str) -> None:
    with pytest.raises(ResultsError):
        gpu_slug(name)


def test_git_provenance_outside_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_provenance(tmp_path) == (None, False)


def test_git_provenance_without_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert git_provenance() == (None, False)


def test_git_provenance_of_a_missing_folder(tmp_path: Path) -> None:
    assert git_provenance(tmp_path / "gone") == (None, False)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_provenance_in_a_checkout(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                              cwd=tmp_path, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    git("init", "-q")
    (tmp_path / "tracked.txt").write_text("a")
    git("add", "tracked.txt")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    (tmp_path / "untracked.txt").write_text("not part of the code that ran")
    assert git_provenance(tmp_path) == (head, False)
    (tmp_path / "tracked.txt").write_text("b")
    assert git_provenance(tmp_path) == (head, True)


def test_build_run_fills_every_field() -> None:
    gpu, rows = dict(GPU), _rows()
    run = build_run(gpu, rows, command="mfugap run", quick=True, lessons=None)
    assert list(run) == list(RUN_FIELDS)
    assert run["schema"] == SCHEMA_ID and run["schema_version"] == SCHEMA_VERSION
    assert run["mfugap_version"] == mfugap.__version__
    assert run["quick"] is True and run["command"] == "mfugap run" and run["lessons"] == {}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", run["created_utc"])
    assert set(GPU_FIELDS) <= set(run["gpu"]) and run["gpu"]["slug"] == "nvidia-h100-80gb-hbm3"
    for row in run["rows"]:
        assert set(ROW_FIELDS) <= set(row)
    assert run["rows"][1]["tflops"] is None and run["rows"][0]["tflops"] == 612.5
    assert gpu == GPU and rows == _rows(), "build_run must not change its arguments"
    assert validate_run(run) is run


def test_round_trip(tmp_path: Path) -> None:
    run = _run()
    path = write_run(run, tmp_path)
    assert path == tmp_path / "nvidia-h100-80gb-hbm3" / "20261125T120000Z-01234567.json"
    loaded, errors = load_runs(tmp_path)
    assert errors == []
    assert loaded == [(path, run)]
    assert loaded[0][1]["rows"] == run["rows"]


def test_file_name_without_git_and_with_an_offset_time(tmp_path: Path) -> None:
    path = write_run(_run(git_commit=None, created_utc="2026-11-25T13:30:00+01:30"), tmp_path)
    assert path.name == "20261125T120000Z-nogit.json"


def test_write_never_overwrites_and_leaves_no_temp_file(tmp_path: Path) -> None:
    first = write_run(_run(), tmp_path)
    before = first.read_bytes()
    second = write_run(_run(command="the second run"), tmp_path)
    third = write_run(_run(command="the third run"), tmp_path)
    assert first.read_bytes() == before
    assert [second.name, third.name] == [first.stem + "-1.json", first.stem + "-2.json"]
    assert json.loads(second.read_text())["command"] == "the second run"
    assert sorted(p.name for p in first.parent.iterdir()) == sorted([first.name, second.name, third.name])


def test_without_hard_links_the_run_is_still_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise PermissionError("hard links not allowed here")

    monkeypatch.setattr(files.os, "link", no_link)
    path = write_run(_run(), tmp_path)
    assert validate_run(json.loads(path.read_text())) and list(path.parent.iterdir()) == [path]


def test_a_failed_write_removes_the_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("read-only here")

    monkeypatch.setattr(files.os, "link", refuse)
    monkeypatch.setattr(files, "open", refuse, raising=False)
    with pytest.raises(PermissionError):
        write_run(_run(), tmp_path)
    assert list((tmp_path / "nvidia-h100-80gb-hbm3").iterdir()) == []


def test_invalid_run_is_not_written(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=r"^run not written: row 0 has no 'status'$"):
        write_run(_run(rows=[{"workload": "gemm"}]), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_floats_become_null(tmp_path: Path) -> None:
    run = _run()
    row = run["rows"][0]
    row["tflops"], row["mfu_pct"], row["mfu_alt_pct"] = math.nan, math.inf, {"fp32": -math.inf, "tf32": 4.5}
    path = write_run(run, tmp_path)

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} written to {path}")

    stored = json.loads(path.read_text(), parse_constant=no_constants)["rows"][0]
    assert stored["tflops"] is None and stored["mfu_pct"] is None
    assert stored["mfu_alt_pct"] == {"fp32": None, "tf32": 4.5}
    assert math.isnan(row["tflops"]), "the caller's run must not be changed"


def test_broken_files_give_one_line_each_and_do_not_stop_the_others(tmp_path: Path) -> None:
    good = write_run(_run(), tmp_path)
    folder = tmp_path / "other"
    bad = folder / "bad.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    foreign = _write_json(folder / "foreign.json", {"schema": "foo", "rows": []})
    newer = _write_json(folder / "newer.json", _run(schema_version=SCHEMA_VERSION + 1))
    array = _write_json(folder / "zlist.json", [1, 2])
    (folder / ".partial.json").write_text("{")  # hidden: a write in progress
    (folder / "x.json.tmp").write_text("{")

    loaded, errors = load_runs(tmp_path)

    assert [path for path, _ in loaded] == [good]
    assert errors == [
        f"{bad}: not valid JSON (line 1 column 2: Expecting property name enclosed in double quotes)",
        f"{foreign}: not a mfugap results file (schema 'foo')",
        f"{newer}: schema_version {SCHEMA_VERSION + 1} is newer than this mfugap reads ({SCHEMA_VERSION}): "
        "upgrade mfugap",
        f"{array}: not a JSON object (got an array)",
    ]


def test_load_from_a_missing_folder(tmp_path: Path) -> None:
    assert load_runs(tmp_path / "gone") == ([], [f"{tmp_path / 'gone'}: not a directory"])


@pytest.mark.parametrize(("change", "problem"), [
    ({"schema": None}, "not a mfugap results file (schema None)"),
    ({"schema_version": "1"}, "schema_version '1' is not a positive integer"),
    ({"gpu": None}, "no 'gpu' object"),
    ({"gpu": {"driver_version": "560.35.03"}}, "gpu has no name"),
    ({"rows": {}}, "no 'rows' list"),
    ({"rows": [{"workload": "gemm", "status": "ok"}, "gemm"]}, "row 1 is not an object"),
    ({"rows": [{"status": "ok"}]}, "row 0 has no 'workload'"),
    ({"rows": [{"workload": "gemm"}]}, "row 0 has no 'status'"),
    ({"created_utc": "yesterday"}, "created_utc 'yesterday' is not an ISO 8601 time"),
    ({"git_commit": "../../x"}, "git_commit '../../x' is not a hex commit hash"),
    ({"lessons": "oops"}, "'lessons' is not an object of texts"),
    ({"lessons": {"foundation": ["a", "b"]}}, "'lessons' is not an object of texts"),
    ({"summaries": ["x"]}, "'summaries' is not an object"),
    ({"rows": [{"workload": "gemm", "status": "ok", "suite": ["s"]}]},
     "row 0 has a 'suite' that is not a name"),
])
def test_validate_names_the_file_and_the_problem(change: dict, problem: str) -> None:
    with pytest.raises(ResultsError) as caught:
        validate_run(_run(**change), "results/x/run.json")
    assert str(caught.value) == f"results/x/run.json: {problem}"


def test_validate_without_schema_key() -> None:
    run = _run()
    del run["schema"]
    with pytest.raises(ResultsError, match=r"^not a mfugap results file \(no 'schema' key\)$"):
        validate_run(run)


@pytest.mark.parametrize("slug", ["..", "-", "../../escape", None, 5])
def test_a_hand_edited_slug_stays_inside_the_results_folder(slug) -> None:
    from mfugap.results import folder_name

    name = folder_name({"name": "NVIDIA H100 80GB HBM3", "slug": slug})
    assert "/" not in name and name not in (".", "..")
    assert name in ("escape", "nvidia-h100-80gb-hbm3")


def test_runs_written_in_the_same_second_load_in_the_order_written(tmp_path: Path) -> None:
    written = [write_run(_run(command=f"run {i}"), tmp_path) for i in range(12)]
    assert [p.name for p in written[:3]] == ["20261125T120000Z-01234567.json",
                                             "20261125T120000Z-01234567-1.json",
                                             "20261125T120000Z-01234567-2.json"]
    runs, errors = load_runs(tmp_path)
    assert not errors
    assert [run["command"] for _, run in runs] == [f"run {i}" for i in range(12)]  # "-10" after "-9"
