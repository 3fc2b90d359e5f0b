"""Writing files that others read while we write and that must never replace an earlier file."""
from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO


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
        # mkstemp's file is private (0600), and a link keeps the mode: give it the mode open() would
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            _write_durably(out, text)
        for name in itertools.chain([first], map(Path, names)):
            try:
                _publish(tmp, name, text)
                return name
            except FileExistsError:
                continue
        raise FileExistsError(f"{first} exists")
    finally:
        tmp.unlink()


def _publish(tmp: Path, name: Path, text: str) -> None:
    """tmp's text under `name`; FileExistsError where `name` exists. The link makes the file appear whole.
    Where the file system has no hard links (some network and FUSE mounts), the text is written to `name`
    opened exclusively instead: that never overwrites either, but a reader may meet it half-written."""
    try:
        os.link(tmp, name)
    except FileExistsError:
        raise
    except OSError:
        with open(name, "x", encoding="utf-8") as out:
            _write_durably(out, text)


def _write_durably(out: TextIO, text: str) -> None:
    out.write(text)
    out.flush()
    os.fsync(out.fileno())


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def checkout_dir(subdir: str) -> Path:
    """`subdir` of the checkout mfugap runs from (an editable install), else of the working directory."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / subdir.split("/")[0]).is_dir():
        return checkout / subdir
    return Path.cwd() / subdir
