"""Atomic writes: the target is replaced whole or not at all, and no temporary file is left."""

import numpy as np
import pytest

from clipbranches_widgets._atomic import atomic_open, atomic_save_npy, atomic_write_text, staging_dir


def test_atomic_file_writes(tmp_path):
    target = tmp_path / "manifest.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    atomic_save_npy(tmp_path / "codes.npy", np.arange(5, dtype=np.uint8))
    assert np.load(tmp_path / "codes.npy").tolist() == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.npy", "manifest.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "manifest.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_staging_dir_publishes_only_complete_folders(tmp_path):
    final = tmp_path / "index"
    with pytest.raises(RuntimeError):
        with staging_dir(final) as staged:
            (staged.path / "a").write_text("x")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with staging_dir(final) as staged:
        (staged.path / "a").write_text("x")
    assert staged.published and (final / "a").read_text() == "x"
    with staging_dir(final) as second:  # someone published first: the existing folder is kept
        (second.path / "a").write_text("y")
    assert not second.published and (final / "a").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_errors_name_the_target_not_the_temporary_file(tmp_path):
    from clipbranches_widgets._atomic import atomic_write_text

    target = tmp_path / "no-such-folder" / "session.json"
    with pytest.raises(FileNotFoundError) as err:
        atomic_write_text(target, "{}")
    assert str(target) in str(err.value) and ".tmp" not in str(err.value)
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(OSError) as err:  # replacing a folder with a file
        atomic_write_text(tmp_path / "a-folder", "{}")
    assert str(tmp_path / "a-folder") in str(err.value) and ".tmp" not in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["a-folder"]  # no temporary file left
