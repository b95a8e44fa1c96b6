"""Atomic publication of a built directory, and the per-engine lock that serializes builders."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under root, so a rename after it publishes durable bytes."""
    for dirpath, _, filenames in os.walk(root):
        for f in filenames:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def lock_path(dest: Path) -> Path:
    """`.<name>.lock` beside dest: the file `locked(dest)` holds."""
    return dest.parent / f".{dest.name}.lock"


def failed_log(dest: Path) -> Path:
    """`.<name>.failed.log` beside dest: the log a failed build of dest leaves for the user and CI."""
    return dest.parent / f".{dest.name}.failed.log"


def aside_path(dest: Path) -> Path:
    """A fresh `.<name>.old-<id>` beside dest: where dest is renamed before it is deleted."""
    return dest.parent / f".{dest.name}.old-{os.urandom(6).hex()}"


def temp_dir_for(dest: Path) -> Path:
    """A fresh temp dir beside dest (same filesystem, so the final rename is atomic)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.urandom(6).hex()}"
    tmp.mkdir()
    return tmp


def remove_aside(dest: Path) -> None:
    """Remove what was set aside beside dest (aside_path: dirs or files); garbage to every process, so no lock."""
    for p in dest.parent.glob(f".{dest.name}.old-*"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)


def clean_leftovers(dest: Path) -> None:
    """Remove temp/old dirs that a killed build left beside dest (call with the lock held)."""
    if dest.parent.is_dir():
        for p in dest.parent.glob(f".{dest.name}.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
        remove_aside(dest)


def publish(tmp: Path, dest: Path) -> None:
    """Replace dest by tmp. A crash at any instant leaves the old dir, or none, or the new one:
    the manifest inside tmp was written last, so a half-built dir is never published."""
    fsync_tree(tmp)
    old = None
    if dest.exists():
        old = aside_path(dest)
        os.rename(dest, old)
    os.rename(tmp, dest)
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def locked(dest: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive OS lock per output dir (`.<name>.lock` beside it), held across processes and
    hosts sharing a POSIX filesystem, so two concurrent runs never build one engine twice.
    The OS releases it if the holder dies. on_wait is called once if another holder makes us wait."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path(dest), "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def tree_size(p: Path) -> int:
    """Bytes under p (lstat: links are not followed); 0 if it is gone."""
    try:
        st = p.lstat()
    except OSError:
        return 0
    if not p.is_dir() or p.is_symlink():
        return st.st_size
    total = 0
    for dirpath, _, files in os.walk(p):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total
