"""Writing files that others read while we write and that must never replace an earlier file."""
from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def write_new(candidates: Iterable[Path], text: str) -> Path:
    """Write `text` durably under the first of `candidates` that does not exist yet, and return it.

    The text goes to a hidden `.<name>.<random>.tmp` file in the same folder first (readers skip those),
    is fsynced, then hard-linked to its name: unlike a rename, a link fails where the name exists, so
    even a concurrent writer never overwrites a file. FileExistsError when every candidate exists.
    """
    names = iter(candidates)
    first = Path(next(names))
    first.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{first.name}.", suffix=".tmp", dir=first.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        for name in itertools.chain([first], map(Path, names)):
            try:
                os.link(tmp, name)
                return name
            except FileExistsError:
                continue
        raise FileExistsError(f"{first} exists")
    finally:
        tmp.unlink()


def checkout_dir(subdir: str) -> Path:
    """`subdir` of the checkout mfugap runs from (an editable install), else of the working directory."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / subdir.split("/")[0]).is_dir():
        return checkout / subdir
    return Path.cwd() / subdir
