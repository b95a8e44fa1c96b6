"""A persistent stat cache (sqlite, WAL): (path, device, inode, size, mtime_ns, ctime_ns) -> digest."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

# A file modified within this window of being hashed might change again within the same
# timestamp tick ("racy" entries, as git calls them); such entries are not trusted later.
RACY_NS = 100_000_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
  path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER,
  mtime_ns INTEGER, ctime_ns INTEGER, digest TEXT
)"""


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
            db.execute(_SCHEMA)
            self._local.db = db
        return db

    def lookup(self, path: Path | str, st: os.stat_result) -> str | None:
        row = self._db.execute(
            "SELECT dev, ino, size, mtime_ns, ctime_ns, digest FROM files WHERE path = ?", (os.fspath(path),)
        ).fetchone()
        if row and row[:5] == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
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
            ok = row is not None and row[:5] == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            out.append(row[5] if ok else None)  # type: ignore[index]
        return out

    def store_many(self, entries: list[tuple[Path, os.stat_result, str]]) -> None:
        now = time.time_ns()
        rows = [
            (os.fspath(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, d)
            for p, st, d in entries
            if now - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS
        ]
        if rows:
            with self._lock:
                self._db.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?)", rows)
