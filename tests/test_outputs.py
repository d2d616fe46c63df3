"""spdsim.contract.files: --out never deletes what spdsim did not write; paths are checked before any work."""

from __future__ import annotations

import os
import stat

import pytest

from spdsim.contract.files import MARKER, check_out_dir, check_out_file, write_dir, write_file
from spdsim.errors import SpdsimError


def test_a_foreign_non_empty_directory_is_refused_and_kept(tmp_path):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("notes\n")
    for force in (False, True):
        with pytest.raises(SpdsimError, match="non-empty directory spdsim did not make"):
            write_dir(tmp_path / "keep", {"a.txt": lambda: "a"}, force=force)
    assert sorted(p.name for p in (tmp_path / "keep").iterdir()) == ["notes.txt"]


def test_an_own_directory_needs_force_which_replaces_only_its_own_files(tmp_path):
    out = write_dir(tmp_path / "run", {"a.txt": lambda: "1", "b.txt": lambda: "1"}, force=False)
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(SpdsimError, match="--force"):
        check_out_dir(out, force=False)
    write_dir(out, {"a.txt": lambda: "2"}, force=True)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "a.txt", "notes.txt"]  # b.txt was spdsim's
    assert (out / "a.txt").read_text() == "2" and (out / "notes.txt").read_text() == "mine\n"


def test_the_current_directory_and_the_empty_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(SpdsimError, match="did not make"):
        check_out_dir(".")
    with pytest.raises(SpdsimError, match="empty path"):
        check_out_dir("")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.txt"]


def test_unwritable_and_misplaced_paths_are_refused_before_any_work(tmp_path):
    (tmp_path / "t.png").mkdir()
    (tmp_path / "afile").write_text("a")
    with pytest.raises(SpdsimError, match="is a directory"):
        check_out_file(tmp_path / "t.png", (".png",))
    with pytest.raises(SpdsimError, match="is not a directory"):
        check_out_file(tmp_path / "afile" / "x.csv", (".csv",))
    with pytest.raises(SpdsimError, match="cannot write under"):
        check_out_dir("/proc/x")
    with pytest.raises(SpdsimError, match=r"must end in \.csv"):
        check_out_file(tmp_path / "results.txt", (".csv",))


def test_files_get_the_ordinary_mode_and_no_temporary_is_left(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_file(tmp_path / "t.csv", lambda temporary: temporary.write_text("a,b\n"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    with pytest.raises(RuntimeError):
        write_file(tmp_path / "u.csv", lambda temporary: (_ for _ in ()).throw(RuntimeError("disk full")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]
