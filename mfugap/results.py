"""The results store: build, validate, write and load run files (the format is in schema.py).

One JSON file per run under results/<gpu slug>/. A file is written once and never replaced, and it
appears complete or not at all, so a crash or two runs finishing at once cannot damage a measurement.
"""
from __future__ import annotations

import itertools
import json
import math
import numbers
import re
import reprlib
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from mfugap import __version__
from mfugap.files import write_new
from mfugap.schema import GPU_FIELDS, RUN_FIELDS, SCHEMA_ID, SCHEMA_VERSION, empty_row

_PACKAGE_DIR = Path(__file__).resolve().parent
_GIT_TIMEOUT_S = 10
_COMMIT = re.compile(r"[0-9a-f]{7,64}")
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


class ResultsError(ValueError):
    """A run that cannot be written, or a file that is not a readable run. The message is one line."""


def gpu_slug(name: str) -> str:
    """Folder name for a GPU: lower case, runs of other characters as one '-', only [a-z0-9.-]."""
    slug = re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.")
    if not slug:
        raise ResultsError(f"GPU name {reprlib.repr(name)} gives no usable folder name")
    return slug


def git_provenance(repo_dir: Path | None = None) -> tuple[str | None, bool]:
    """(commit, dirty) of the checkout holding repo_dir (default: this package); (None, False) if none."""
    cwd = repo_dir or _PACKAGE_DIR
    commit = _git(cwd, "rev-parse", "HEAD")
    if commit is None:
        return None, False
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    # When git cannot say, do not vouch for a clean tree: the commit might not be the code that ran.
    return commit, status is None or bool(status)


def _git(cwd: Path, *args: str) -> str | None:
    """Stripped stdout of a git command, or None when git is missing, fails or hangs."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, encoding="utf-8",
                              errors="replace", timeout=_GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def build_run(gpu: dict, rows: list[dict], *, command: str, quick: bool,
              lessons: dict[str, str] | None = None, summaries: dict[str, dict] | None = None,
              created_utc: str | None = None) -> dict:
    """A run with every RUN_FIELDS key, its gpu completed with GPU_FIELDS and its rows with ROW_FIELDS."""
    commit, dirty = git_provenance()
    gpu = {**dict.fromkeys(GPU_FIELDS), **gpu}
    gpu["slug"] = gpu["slug"] or gpu_slug(gpu["name"] or "")
    values = {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "mfugap_version": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "created_utc": created_utc or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "quick": quick,
        "gpu": gpu,
        "rows": [{**empty_row(), **row} for row in rows],
        "lessons": dict(lessons or {}),
        "summaries": dict(summaries or {}),
    }
    # Indexing by RUN_FIELDS fails loudly here if the schema gains a key this function does not fill.
    return {key: values[key] for key in RUN_FIELDS}


def run_id(run: dict) -> str:
    """'<created_utc as 20261125T120000Z>-<commit[:8] or nogit>': file stem and name of a run."""
    created = _parse_utc(run.get("created_utc")).strftime("%Y%m%dT%H%M%SZ")
    commit = run.get("git_commit")
    return f"{created}-{commit[:8] if commit else 'nogit'}"


def _parse_utc(value: object) -> datetime:
    """An ISO 8601 time as aware UTC; a time without offset is taken as UTC, as the key name says."""
    text = value if isinstance(value, str) else ""
    try:
        # Python 3.10's fromisoformat does not accept the 'Z' suffix.
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise ResultsError(f"created_utc {reprlib.repr(value)} is not an ISO 8601 time") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def validate_run(obj: object, where: str = "") -> dict:
    """obj if it is a run this version can read; else ResultsError '<where>: <problem>' on one line."""
    if not isinstance(obj, dict):
        kind = _JSON_TYPES.get(type(obj), type(obj).__name__)
        raise _error(where, f"not a JSON object (got {kind})")
    problem = _header_problem(obj) or _gpu_problem(obj) or _rows_problem(obj) or _suites_problem(obj)
    if problem:
        raise _error(where, problem)
    return obj


def _error(where: str, problem: str) -> ResultsError:
    return ResultsError(f"{where}: {problem}" if where else problem)


def _header_problem(run: dict) -> str | None:
    if "schema" not in run:
        return "not a mfugap results file (no 'schema' key)"
    if run["schema"] != SCHEMA_ID:
        return f"not a mfugap results file (schema {reprlib.repr(run['schema'])})"
    version = run.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return f"schema_version {reprlib.repr(version)} is not a positive integer"
    if version > SCHEMA_VERSION:
        return f"schema_version {version} is newer than this mfugap reads ({SCHEMA_VERSION}): upgrade mfugap"
    commit = run.get("git_commit")
    if commit is not None and not (isinstance(commit, str) and _COMMIT.fullmatch(commit)):
        return f"git_commit {reprlib.repr(commit)} is not a hex commit hash"
    try:
        _parse_utc(run.get("created_utc"))
    except ResultsError as e:
        return str(e)
    return None


def _gpu_problem(run: dict) -> str | None:
    gpu = run.get("gpu")
    if not isinstance(gpu, dict):
        return "no 'gpu' object"
    name = gpu.get("name")
    if not isinstance(name, str) or not name.strip():
        return "gpu has no name"
    return None


def _rows_problem(run: dict) -> str | None:
    rows = run.get("rows")
    if not isinstance(rows, list):
        return "no 'rows' list"
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            return f"row {i} is not an object"
        for key in ("workload", "status"):
            if not isinstance(row.get(key), str) or not row[key]:
                return f"row {i} has no '{key}'"
    return None


def _suites_problem(run: dict) -> str | None:
    """The per-suite texts the report files rows under: lessons are text, summaries objects, suites names."""
    lessons, summaries = run.get("lessons"), run.get("summaries")
    texts = isinstance(lessons, dict) and all(isinstance(text, str) for text in lessons.values())
    if lessons is not None and not texts:
        return "'lessons' is not an object of texts"
    if summaries is not None and not isinstance(summaries, dict):
        return "'summaries' is not an object"
    for i, row in enumerate(run["rows"]):
        if row.get("suite") is not None and not isinstance(row["suite"], str):
            return f"row {i} has a 'suite' that is not a name"
    return None


def folder_name(gpu: dict) -> str:
    """The results folder of a run's GPU: its recorded slug, else one made from its name, made safe
    either way (a hand-edited slug cannot point outside the results folder). ResultsError when
    neither gives a name."""
    slug = gpu.get("slug")
    if isinstance(slug, str):
        try:
            return gpu_slug(slug)
        except ResultsError:
            pass  # "..", "-": fall back to the name
    return gpu_slug(gpu["name"])


def write_run(run: dict, results_dir: Path) -> Path:
    """Write a valid run to results_dir/<gpu slug>/<run_id>[-n].json, never over an existing file."""
    validate_run(run, "run not written")
    folder = Path(results_dir) / folder_name(run["gpu"])
    # JSON has no NaN or Infinity: a non-finite number is stored as null, like any value not measured.
    text = json.dumps(_finite(run), indent=1, sort_keys=False, allow_nan=False) + "\n"
    stem = run_id(run)
    names = (folder / (f"{stem}-{n}.json" if n else f"{stem}.json") for n in itertools.count())
    return write_new(names, text)


def _finite(value: object) -> object:
    """A copy with non-finite floats as None, and numeric scalars (NumPy's too) as plain int and float."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    number = float(value)
    return number if math.isfinite(number) else None


def load_runs(results_dir: Path) -> tuple[list[tuple[Path, dict]], list[str]]:
    """Every readable run under results_dir (sorted by path) and one line per file that is not one."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return [], [f"{results_dir}: not a directory"]
    runs: list[tuple[Path, dict]] = []
    errors: list[str] = []
    for path in sorted(results_dir.rglob("*.json"), key=_file_order):
        if any(part.startswith(".") for part in path.relative_to(results_dir).parts):
            continue  # temporary files of a write in progress, editor backups, hidden folders
        try:
            runs.append((path, _read_run(path)))
        except ResultsError as e:
            errors.append(str(e))
    return runs, errors


def _file_order(path: Path) -> tuple:
    """Folder, then name, with write_run's same-second sibling '<time>-<commit>-<n>.json' after
    '<time>-<commit>.json' and in n's order (a plain sort puts '-1' first and '-10' before '-2')."""
    parts = path.stem.split("-")
    if len(parts) == 3 and parts[2].isdigit():
        return path.parent.parts, "-".join(parts[:2]), int(parts[2])
    return path.parent.parts, path.stem, 0


def _read_run(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise ResultsError(f"{path}: cannot be read ({e.strerror})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    return validate_run(obj, str(path))
