"""The one way mfugap writes files: never over an existing one, readable by others, links or none."""
from __future__ import annotations

import errno
import os
import stat

import pytest

from mfugap import files


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_new_file_gets_the_mode_the_umask_gives(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = files.write_new([tmp_path / "run.json"], "{}\n")
    finally:
        os.umask(old)
    assert _mode(path) == 0o666 & ~umask
    assert os.umask(old) == old  # reading the umask left it as it was


def test_taken_names_are_skipped_and_never_overwritten(tmp_path):
    (tmp_path / "a.json").write_text("first")
    names = [tmp_path / "a.json", tmp_path / "a-1.json", tmp_path / "a-2.json"]
    assert files.write_new(names, "second") == tmp_path / "a-1.json"
    assert files.write_new(names, "third") == tmp_path / "a-2.json"
    assert [p.read_text() for p in names] == ["first", "second", "third"]
    with pytest.raises(FileExistsError):
        files.write_new(names, "fourth")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-1.json", "a-2.json", "a.json"]  # no temp left


def test_without_hard_links_the_text_still_lands_exclusively(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "a.json").write_text("first")
    names = [tmp_path / "a.json", tmp_path / "a-1.json"]
    assert files.write_new(names, "second") == tmp_path / "a-1.json"
    assert (tmp_path / "a.json").read_text() == "first"
    assert (tmp_path / "a-1.json").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-1.json", "a.json"]


def test_the_folder_is_made_where_missing(tmp_path):
    path = files.write_new([tmp_path / "gpu" / "run.json"], "x")
    assert path.read_text() == "x"
