"""Atomic file and folder writes: a crash never leaves a half-written file or folder in place.

A file is written to a temporary name in the same folder, flushed to disk, then ``os.replace``d
onto its final name (atomic on POSIX and Windows within one file system). A folder is filled under
a temporary name next to its final place and renamed into place only once complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb"):
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path``.

    The file is flushed and fsynced before the ``os.replace``; on an exception it is deleted and
    ``path`` is left as it was.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:  # name the file the caller asked for, not our temporary one
        raise type(exc)(exc.errno, f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise type(exc)(exc.errno, f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_save_npy(path, array: np.ndarray) -> None:
    """``np.save`` ``array`` to ``path`` atomically (the name is used as given, no ``.npy`` added)."""
    with atomic_open(path) as f:
        np.save(f, array, allow_pickle=False)


def publish_dir(tmp_dir, final_dir) -> bool:
    """Rename the complete folder ``tmp_dir`` to ``final_dir``; return False if ``final_dir`` exists.

    When another process published ``final_dir`` first, ``tmp_dir`` is removed and False returned
    (the caller then uses the existing folder); an existing folder is never overwritten.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    try:
        # os.rename of a folder onto an existing non-empty folder fails on every platform, and we
        # check first so that an existing *empty* folder (which POSIX would replace) is kept too.
        if final_dir.exists():
            raise FileExistsError(final_dir)
        os.rename(tmp_dir, final_dir)
    except OSError:
        if final_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
            return False
        raise
    _fsync_dir(final_dir.parent)
    return True


@contextlib.contextmanager
def staging_dir(final_dir):
    """Yield a fresh temporary folder next to ``final_dir``; publish it there if the block succeeds.

    On an exception the temporary folder is deleted and nothing appears under ``final_dir``. The
    context value is the temporary folder's ``Path``; after the block, ``published`` on the
    returned holder says whether this call created ``final_dir`` (False: someone else did first).
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.", suffix=".tmp"))
    holder = _Staged(tmp)
    try:
        yield holder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    holder.published = publish_dir(tmp, final_dir)


class _Staged:
    """What :func:`staging_dir` yields: ``path`` (the temporary folder) and ``published``."""

    def __init__(self, path: Path):
        self.path = path
        self.published = False


@contextlib.contextmanager
def writer_lock(target):
    """Hold the one-writer lock of folder ``target`` (a ``.NAME.lock`` file next to it).

    An advisory ``flock``: the kernel releases it when the process dies, so a killed writer never
    blocks the next one, and it is held per open file, so two writers in one process conflict too.
    A second writer gets a ValueError naming the first one's process instead of racing it.
    """
    import fcntl

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target.parent / f".{target.name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise ValueError(f"another process ({owner}) is writing {target}; wait for it to finish "
                             f"or stop it") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race a waiting writer)


def sha256_file(path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks (how catalogs and indexes check their files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def replace_dir(new_dir, final_dir) -> None:
    """Put the complete folder ``new_dir`` in the place of ``final_dir`` (which may not exist); the
    old folder is removed only once the new one is in place, so ``final_dir`` is never half there.
    The caller holds ``final_dir``'s :func:`writer_lock`."""
    new_dir, final_dir = Path(new_dir), Path(final_dir)
    old = final_dir.with_name(final_dir.name + ".old")
    if final_dir.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final_dir, old)
    os.rename(new_dir, final_dir)
    shutil.rmtree(old, ignore_errors=True)
