"""A persistent stat cache (sqlite, WAL): what was derived from files, trusted while their stats are unchanged.

Three tables: file digests, (path, device, inode, size, mtime_ns, ctime_ns) -> xxh3-128; engine
stamps, engine dir -> (key, validated, the stats of its manifest, validation.json and outputs, the build
its manifest records) when it was last proven fresh; and tree stamps, input dir (a checkpoint) -> (its
Merkle digest and per-file entries, the stats of every dir and file in it) when it was last digested.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

# A file modified within this window of being hashed might change again within the same
# timestamp tick ("racy" entries, as git calls them); such entries are not trusted later.
RACY_NS = 100_000_000
COARSE_RACY_NS = 2_000_000_000  # FAT's 2 s, the coarsest timestamps in use

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
  path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER,
  mtime_ns INTEGER, ctime_ns INTEGER, digest TEXT
);
CREATE TABLE IF NOT EXISTS engine_stamps (dir TEXT PRIMARY KEY, key TEXT, validated INTEGER, names TEXT, sig TEXT,
  built TEXT);
CREATE TABLE IF NOT EXISTS trees (dir TEXT PRIMARY KEY, digest TEXT, files TEXT, names TEXT, sig TEXT)
"""


class Stamp(NamedTuple):
    """An engine dir proven fresh for `key`: while the files `names` (manifest first) still have the
    stats `sig`, their contents are the ones that were checked, so the engine is still fresh.
    (A NamedTuple: a no-op over 10,000 engines loads 10,000, and a frozen dataclass is ~5x slower to make.)"""

    key: str
    validated: bool
    names: str  # "\n"-joined, as stored: split only where the stamp is checked (buildlib.fanout's processes)
    sig: str
    built: str = ""  # the build the manifest records, "seconds gpus" ("" if none): a plan's estimates read it here


def identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What a file's stat must still match for what was derived from it to hold:
    (device, inode, size, mtime_ns, ctime_ns)."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def stats_of(base: str, names: Iterable[str]) -> list[os.stat_result | None]:
    """The stat of each base/name (links followed), None where it is missing. Names are relative (a plain
    join, not os.path.join: an absolute name in a damaged manifest still resolves under base)."""
    out: list[os.stat_result | None] = []
    for name in names:
        try:
            out.append(os.stat(f"{base}/{name}"))
        except OSError:
            out.append(None)
    return out


def signature(stats: Iterable[os.stat_result | None]) -> str:
    """The stats as one string, `dev:ino:size:mtime_ns:ctime_ns` each (identity()); a missing file is `-`
    (so one that appears later changes it). One f-string per stat: this runs ~70,000 times on a no-op
    over 10,000 engines."""
    return ",".join(["-" if st is None else f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
                     for st in stats])


def stats_hold(base: str, names: Iterable[str], sig: str) -> bool:
    """Whether base/name of every name still has the stats recorded as `sig` (a stamp holds)."""
    return signature(stats_of(base, names)) == sig


def settled(st: os.stat_result | None, now_ns: int) -> bool:
    """Not modified within RACY_NS of now: a later change would show in its stat. Whole-second
    timestamps (FAT, some NFS/SMB mounts) get COARSE_RACY_NS, as a change within the same tick is invisible."""
    if st is None:
        return True
    coarse = st.st_mtime_ns % 1_000_000_000 == 0 and st.st_ctime_ns % 1_000_000_000 == 0
    return now_ns - max(st.st_mtime_ns, st.st_ctime_ns) > (COARSE_RACY_NS if coarse else RACY_NS)


class StatCache:
    """Skips re-reading unchanged files. Safe for concurrent processes (sqlite WAL, busy timeout);
    a touched-but-identical file is hashed once more and its entry refreshed."""

    def __init__(self, db_path: Path):
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.path = db_path
        self._local = threading.local()
        self._lock = threading.Lock()

    @property
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._local.db = db
        return db

    def lookup(self, path: Path | str, st: os.stat_result) -> str | None:
        row = self._db.execute(
            "SELECT dev, ino, size, mtime_ns, ctime_ns, digest FROM files WHERE path = ?", (os.fspath(path),)
        ).fetchone()
        if row and row[:5] == identity(st):
            return row[5]
        return None

    def lookup_many(self, items: list[tuple[Path | str, os.stat_result]]) -> list[str | None]:
        """lookup() for many files in a few queries (one per 500 paths): a no-op over thousands of files
        costs their stats plus a handful of sqlite round trips."""
        rows: dict[str, tuple] = {}
        keys = [os.fspath(p) for p, _ in items]
        uniq = list(dict.fromkeys(keys))
        for i in range(0, len(uniq), 500):
            chunk = uniq[i:i + 500]
            marks = ",".join("?" * len(chunk))
            q = f"SELECT path, dev, ino, size, mtime_ns, ctime_ns, digest FROM files WHERE path IN ({marks})"
            for r in self._db.execute(q, chunk):
                rows[r[0]] = r[1:]
        out: list[str | None] = []
        for k, (_, st) in zip(keys, items, strict=True):
            row = rows.get(k)
            ok = row is not None and row[:5] == identity(st)
            out.append(row[5] if ok else None)  # type: ignore[index]
        return out

    def store_many(self, entries: list[tuple[Path, os.stat_result, str]]) -> None:
        now = time.time_ns()
        rows = [
            (os.fspath(p), *identity(st), d)
            for p, st, d in entries
            if settled(st, now)
        ]
        if rows:
            with self._lock:
                self._db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?)", rows)

    def stamps(self) -> dict[str, Stamp]:
        """Every engine stamp, in one query: a no-op over a fleet re-proves each fresh engine with
        stats alone, instead of parsing its manifest and validation.json and looking up each output."""
        return {d: Stamp(k, bool(v), n, sig, b) for d, k, v, n, sig, b in
                self._db.execute("SELECT dir, key, validated, names, sig, built FROM engine_stamps")}

    def store_stamps(self, stamps: dict[str, Stamp]) -> None:
        if stamps:
            with self._lock:
                self._db.executemany("INSERT OR REPLACE INTO engine_stamps VALUES (?,?,?,?,?,?)",
                                     [(d, s.key, int(s.validated), s.names, s.sig, s.built)
                                      for d, s in stamps.items()])

    def tree_stamps(self, dirs: list[str]) -> dict[str, tuple[str, str, tuple[str, ...], str]]:
        """The tree stamps of these dirs, in a few queries (one per 500): dir -> (digest, files as JSON, names, sig)."""
        out = {}
        for i in range(0, len(dirs), 500):
            chunk = dirs[i:i + 500]
            q = f"SELECT dir, digest, files, names, sig FROM trees WHERE dir IN ({','.join('?' * len(chunk))})"
            out.update({d: (dg, f, tuple(n.split("\n")), sig) for d, dg, f, n, sig in self._db.execute(q, chunk)})
        return out

    def store_tree_stamps(self, rows: list[tuple[str, str, str, tuple[str, ...], str]]) -> None:
        """(dir, digest, files as JSON, names, sig) rows, in one transaction."""
        if rows:
            with self._lock:
                self._db.executemany("INSERT OR REPLACE INTO trees VALUES (?,?,?,?,?)",
                                     [(d, dg, f, "\n".join(n), sig) for d, dg, f, n, sig in rows])

    def prune(self) -> int:
        """Forget entries for files and engine dirs that no longer exist (entries for changed files
        are harmless: their stats no longer match). Returns how many were dropped."""
        gone_files = [(p,) for (p,) in self._db.execute("SELECT path FROM files") if not os.path.exists(p)]
        gone_dirs = [(d,) for (d,) in self._db.execute("SELECT dir FROM engine_stamps") if not os.path.isdir(d)]
        gone_trees = [(d,) for (d,) in self._db.execute("SELECT dir FROM trees") if not os.path.isdir(d)]
        with self._lock:
            self._db.executemany("DELETE FROM files WHERE path = ?", gone_files)
            self._db.executemany("DELETE FROM engine_stamps WHERE dir = ?", gone_dirs)
            self._db.execute("DROP TABLE IF EXISTS stamps")  # engine stamps as kept before build records
            self._db.executemany("DELETE FROM trees WHERE dir = ?", gone_trees)
        return len(gone_files) + len(gone_dirs) + len(gone_trees)
