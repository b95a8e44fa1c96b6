"""Shared engine store: engine dirs content-addressed by engine key, on a filesystem path or S3.

An entry is `<store>/<key>/` holding an engine's outputs, manifest.json and build.log
(never validation.json / validate.log: validation is per host). Builders pull an entry
before building and push one after; every pulled file is hashed while it is written and
compared with the entry's manifest, so a corrupt store can cost a rebuild, never a bad
engine.

Backends (one small protocol, `Store`; a backend is a class; buildlib.store.open makes one from a URL):
- `DirStore` (buildlib.store.dir) - a local or shared (NFS, Lustre, ...) directory. A push copies into
  `<root>/.incoming/<key>-<uuid>/`, fsyncs, then renames it to `<root>/<key>`: rename(2)
  is atomic and refuses to replace a non-empty dir, so the entry appears whole, the
  first pusher wins and a second one discards its copy.
- `S3Store` (buildlib.store.s3) - any S3-compatible object store, through boto3. Objects are immutable
  uploads under `<prefix>/<key>/<upload-id>/<relpath>`; the entry is published by one
  small commit object `<prefix>/<key>/ref.json` naming the upload id, written last with
  `If-None-Match: *` (first writer wins, atomically on AWS S3 and servers that support
  conditional writes). A killed push leaves only unreferenced objects: invisible.

Why boto3 (and no fsspec/s3fs layer): it is what we deploy with, it reads the standard
AWS credential chain and `AWS_ENDPOINT_URL`, and its transfer manager (s3transfer, used
through `TransferConfig`) streams: uploads send each file as multipart parts read from
disk on demand, downloads run concurrent ranged GETs and hand us the bytes in order.
Nothing is ever whole in memory, and one dependency replaces two layers of adapters.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import xxhash

from ..core.errors import UserError
from ..core.key import key_of
from ..core.manifest import MANIFEST, NOT_OUTPUTS, SIGNATURE, Manifest, read_manifest

ENV_STORE = "BUILDLIB_STORE"
ENV_S3_ENDPOINT = "BUILDLIB_S3_ENDPOINT"
BUILD_LOG = "build.log"
REF = "ref.json"
MiB = 1 << 20
# 1 MiB copy buffers: large enough to amortize syscalls, small enough to stay in cache while
# xxh3 and write() touch it (1, 4 and 8 MiB measured within noise of each other).
COPY_BUF = 1 * MiB
_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
STRUCTURE_NOTES = ".structure"  # <store>/.structure/<structure key>: the key of an entry with that structure

# Called after each file is stored (push) or restored (pull) with (relpath, size):
# progress reporting, and the hook tests use to kill a push half-way.
FileHook = Callable[[str, int], None]


class StoreError(UserError):
    """The store cannot be used as configured (bad URL, unreachable, no credentials, no bucket)."""


class StoreCorrupt(Exception):
    """A pulled entry does not match its manifest; the message names the file. Discard what was pulled."""


class Store(ABC):
    """A content-addressed set of published engine dirs, one per engine key."""

    url: str
    on_file: FileHook | None = None

    @abstractmethod
    def has(self, key: str) -> bool:
        """True only for a completely published entry."""

    @abstractmethod
    def pull(self, key: str, dest: Path) -> Manifest:
        """Stream the entry into the existing empty dir `dest`, verifying each output against the
        manifest; manifest.json is written last. KeyError if absent, StoreCorrupt on a mismatch."""

    @abstractmethod
    def push(self, key: str, src: Path) -> bool:
        """Publish the engine dir `src` atomically; False if the key was already there (first wins)."""

    @abstractmethod
    def keys(self) -> Iterator[str]:
        """Published keys."""

    @abstractmethod
    def remove(self, key: str) -> None:
        """Unpublish an entry (atomically first, then delete its files); absent keys are ignored."""

    @abstractmethod
    def entry_names(self, key: str) -> list[str]:
        """Every file an entry holds (relpaths), whether or not its manifest lists it (for `doit verify`)."""

    @abstractmethod
    def entry_size(self, key: str) -> int | None:
        """Bytes of an entry where the store can tell cheaply (for `doit gc`), else None."""

    @abstractmethod
    def scoped(self, sub: str) -> Store:
        """The same kind of store under `<this store>/<sub>/` (a signer's entries: buildlib.store.guarded)."""

    @abstractmethod
    def names(self, sub: str) -> list[str]:
        """The names directly under `<this store>/<sub>/` (the signers a store holds entries of), sorted."""

    @abstractmethod
    def _get_note(self, name: str) -> bytes | None:
        """A small named note beside the entries (`.structure/<key>`), or None."""

    @abstractmethod
    def _put_note(self, name: str, data: bytes) -> None:
        """Write a note whole (a reader sees the old one or the new one)."""

    def _list_notes(self, prefix: str) -> list[str]:
        """The notes directly under `prefix/` (names relative to it), sorted."""
        return self.names(prefix)

    def note_structure(self, structure: str, key: str) -> None:
        """Remember that entry `key` has this structure key (buildlib.structure), so a host whose checkpoint
        differs from it in weights only can refit it instead of building. The last push of a structure wins."""
        self._put_note(f"{STRUCTURE_NOTES}/{check_key(structure)}", key.encode())

    def by_structure(self, structure: str) -> str | None:
        """The key of a published entry with this structure key, if one was noted and is still there."""
        data = self._get_note(f"{STRUCTURE_NOTES}/{check_key(structure)}")
        key = data.decode("ascii", "replace").strip() if data else ""
        return key if _KEY_RE.fullmatch(key) and self.has(key) else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _done(self, rel: str, size: int) -> None:
        if self.on_file is not None:
            self.on_file(rel, size)


# -- helpers shared by the backends ---------------------------------------------------------

def check_key(key: str) -> str:
    if not _KEY_RE.fullmatch(key):
        raise ValueError(f"invalid store key {key!r}: expected an engine key (letters, digits, '._-', no '/')")
    return key


def _safe_rel(rel: str, where: str) -> str:
    """A manifest relpath that stays inside the entry (the manifest comes from a shared store)."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or rel in NOT_OUTPUTS:
        raise StoreCorrupt(f"{where}/{MANIFEST}: output path {rel!r} is not a plain relative path")
    return p.as_posix()


def _parse_manifest(data: bytes, key: str, where: str) -> Manifest:
    """Parse manifest bytes with manifest.read_manifest (one schema check), and check its key."""
    with tempfile.TemporaryDirectory(prefix="buildlib-manifest-") as d:
        Path(d, MANIFEST).write_bytes(data)
        m = read_manifest(Path(d))
    if m is None:
        raise StoreCorrupt(f"{where}/{MANIFEST}: unreadable or of another schema")
    if m.key != key:
        raise StoreCorrupt(f"{where}/{MANIFEST}: names key {m.key}, not {key}")
    try:
        recomputed = key_of(m.fields)
    except (TypeError, ValueError):
        recomputed = None
    if recomputed != key:  # an entry edited to pass for another engine: its fields do not hash to its key
        raise StoreCorrupt(f"{where}/{MANIFEST}: its fields do not hash to its key {key}")
    for rel in m.outputs:
        _safe_rel(rel, where)
    return m


def log_digest(m: Manifest) -> list | None:
    """[size, xxh3-128] of build.log as the manifest records it (manifests before this record none: then
    the log is not restored, since nothing could vouch for it)."""
    got = m.built.get("log")
    return got if isinstance(got, list) and len(got) == 2 else None


def entry_files(src: Path, key: str) -> list[tuple[str, int]]:
    """(relpath, size) of what a push sends: the outputs, build.log and the signature if present, manifest.json
    last.

    Checks that `src` is a published engine dir of `key` whose outputs all exist at their
    recorded sizes (a cheap stat each; contents are verified by every pull instead).
    """
    m = read_manifest(src)
    if m is None:
        raise ValueError(f"{src} has no readable {MANIFEST}: push only published engine dirs")
    if m.key != key:
        raise ValueError(f"{src}/{MANIFEST} is for key {m.key}, not {key}: push the engine dir of that key")
    files: list[tuple[str, int]] = []
    for rel, (size, _) in sorted(m.outputs.items()):
        try:
            actual = os.stat(src / rel).st_size
        except OSError:
            raise ValueError(f"{src}/{rel} is in the manifest but missing: rebuild the engine, then push") from None
        if actual != size:
            raise ValueError(f"{src}/{rel} has {actual} bytes, manifest says {size}: rebuild the engine, then push")
        files.append((rel, size))
    extras = (BUILD_LOG, SIGNATURE) if log_digest(m) is not None else (SIGNATURE,)  # a log no pull could verify
    for extra in extras:  # is not sent
        if (src / extra).is_file():
            files.append((extra, (src / extra).stat().st_size))
    files.append((MANIFEST, (src / MANIFEST).stat().st_size))
    return files


def _write_all(f: io.RawIOBase, view: memoryview) -> None:
    """write() of a regular file may be short (signals, quotas); loop until all of it is written."""
    while view:
        view = view[f.write(view) or 0:]


class HashingWriter(io.RawIOBase):
    """A write-only, NON-seekable file that hashes (xxh3-128) and counts what it writes.

    Being non-seekable is the optimization's key: s3transfer then keeps concurrent ranged
    GETs but delivers their bytes in order (a bounded sliding window), so the digest is
    computed while downloading, in one pass, instead of writing then re-reading the file.
    """

    def __init__(self, f: io.RawIOBase):
        super().__init__()
        self._f = f
        self._h = xxhash.xxh3_128()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        self._h.update(view)
        _write_all(self._f, view)
        self.size += len(view)
        return len(view)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def _check(where: str, rel: str, want: list, size: int, digest: str) -> None:
    if size != want[0]:
        raise StoreCorrupt(f"{where}/{rel}: {size} bytes, manifest says {want[0]}; the store entry is corrupt")
    if digest != want[1]:
        raise StoreCorrupt(f"{where}/{rel}: xxh3-128 {digest} != manifest {want[1]}; the store entry is corrupt")


def _open_dest(dest: Path, rel: str) -> io.FileIO:
    path = dest / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "wb", buffering=0)
