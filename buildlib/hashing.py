"""Content digests: xxh3-128 of files (parallel, streamed) and Merkle digests of directories."""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import xxhash

from .key import canonical_json
from .statcache import StatCache, identity

BUF_SIZE = 8 << 20  # 8 MiB reads: large enough to run at disk speed, small enough to bound memory.
_BUFS = threading.local()


def _buffer(size: int) -> mmap.mmap:
    """A page-aligned read buffer (anonymous mmap), one per thread and reused: reads into it run
    ~30% faster than into a bytearray here (aligned copies, no per-file allocation or page faults)."""
    buf = getattr(_BUFS, "buf", None)
    if buf is None or len(buf) != size:
        buf = _BUFS.buf = mmap.mmap(-1, size)
    return buf


def hash_file(path: Path | str, buf_size: int = BUF_SIZE) -> str:
    """xxh3-128 of one file, read in fixed-size chunks into one reused buffer (memory is O(buf_size)).

    xxhash releases the GIL while hashing a large buffer, and file reads release it too,
    so several threads hash several files at close to the disk's rate.
    """
    h = xxhash.xxh3_128()
    buf = _buffer(buf_size)
    with memoryview(buf) as view, open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            if n == buf_size:
                h.update(buf)
            else:
                with view[:n] as part:
                    h.update(part)
    return h.hexdigest()


def _workers(n_files: int) -> int:
    return max(1, min(n_files, (os.cpu_count() or 1) * 2, 16))


def digest_files(paths: Iterable[Path], cache: StatCache | None = None) -> dict[Path, tuple[int, str]]:
    """(size, digest) for each path; unchanged files cost one stat, the rest are hashed in parallel."""
    out: dict[Path, tuple[int, str]] = {}
    todo: list[tuple[Path, os.stat_result]] = []
    stats = [(p, os.stat(p)) for p in paths]
    hits = cache.lookup_many(stats) if cache and stats else [None] * len(stats)
    for (p, st), hit in zip(stats, hits, strict=True):
        if hit is not None:
            out[p] = (st.st_size, hit)
        else:
            todo.append((p, st))
    if todo:
        # Largest first so one big shard does not start last and stretch the wall time.
        todo.sort(key=lambda t: -t[1].st_size)
        from concurrent.futures import ThreadPoolExecutor  # ~5 ms to import (logging): not on a no-op

        with ThreadPoolExecutor(_workers(len(todo))) as pool:
            digests = list(pool.map(lambda t: hash_file(t[0]), todo))
        fresh = []
        for (p, st), d in zip(todo, digests, strict=True):
            out[p] = (st.st_size, d)
            if identity(st) == identity(os.stat(p)):  # not rewritten while we read it: safe to remember
                fresh.append((p, st, d))
        if cache:
            cache.store_many(fresh)
    return out


def list_files(root: Path) -> list[Path]:
    """Every regular file under root (following symlinks, as in Hugging Face cache snapshots),
    skipping dot-entries such as .git/ or .cache/ that do not shape a model."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return files


@dataclass(frozen=True)
class TreeDigest:
    """A directory's Merkle digest plus the per-file entries it was computed from."""

    digest: str
    files: dict[str, tuple[int, str]]  # relpath -> (size, xxh3-128)


def merkle(files: dict[str, tuple[int, str]]) -> str:
    return xxhash.xxh3_128_hexdigest(canonical_json(sorted([r, s, d] for r, (s, d) in files.items())).encode())


def tree_digest(root: Path, cache: StatCache | None = None) -> TreeDigest:
    """Merkle digest over (sorted relpath, size, xxh3 of each file) of a checkpoint dir."""
    return tree_digests([root], cache)[root]


def tree_digests(roots: list[Path], cache: StatCache | None = None) -> dict[Path, TreeDigest]:
    """tree_digest of each root, with all their files in one digest_files call: one batched stat-cache
    lookup for a whole fleet's checkpoints, and new files hashed in parallel across checkpoints."""
    listed = {root: list_files(root) for root in roots}
    got = digest_files([p for paths in listed.values() for p in paths], cache)
    out = {}
    for root, paths in listed.items():
        cut = len(root.as_posix().rstrip("/")) + 1  # list_files yields root/...: slicing is Path.relative_to, faster
        files = {p.as_posix()[cut:]: got[p] for p in paths}
        out[root] = TreeDigest(merkle(files), files)
    return out
