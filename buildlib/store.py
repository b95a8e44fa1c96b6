"""Shared engine store: engine dirs content-addressed by engine key, on a filesystem path or S3.

An entry is `<store>/<key>/` holding an engine's outputs, manifest.json and build.log
(never validation.json / validate.log: validation is per host). Builders pull an entry
before building and push one after; every pulled file is hashed while it is written and
compared with the entry's manifest, so a corrupt store can cost a rebuild, never a bad
engine.

Backends (one small protocol, `Store`; a backend is a class):
- `DirStore` - a local or shared (NFS, Lustre, ...) directory. A push copies into
  `<root>/.incoming/<key>-<uuid>/`, fsyncs, then renames it to `<root>/<key>`: rename(2)
  is atomic and refuses to replace a non-empty dir, so the entry appears whole, the
  first pusher wins and a second one discards its copy.
- `S3Store` - any S3-compatible object store, through boto3. Objects are immutable
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

import errno
import io
import json
import mmap
import os
import re
import shutil
import socket
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

import xxhash

from .confine import claim, refusal
from .errors import UserError
from .key import key_of
from .manifest import MANIFEST, NOT_OUTPUTS, Manifest, read_manifest
from .publish import fsync_dir, fsync_tree

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
    def _get_note(self, name: str) -> bytes | None:
        """A small named note beside the entries (`.structure/<key>`), or None."""

    @abstractmethod
    def _put_note(self, name: str, data: bytes) -> None:
        """Write a note whole (a reader sees the old one or the new one)."""

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
    """(relpath, size) of what a push sends: the outputs, build.log if present, manifest.json last.

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
    if (src / BUILD_LOG).is_file():
        files.append((BUILD_LOG, (src / BUILD_LOG).stat().st_size))
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


# -- a directory ----------------------------------------------------------------------------

class DirStore(Store):
    """`<root>/<key>/` on a local or shared filesystem; `.incoming/` and `.trash/` hold work in flight."""

    def __init__(self, root: Path, url: str | None = None):
        self.root = root
        self.url = url or str(root)

    def _entry(self, key: str) -> Path:
        return self.root / check_key(key)

    def has(self, key: str) -> bool:
        return (self._entry(key) / MANIFEST).is_file()

    def pull(self, key: str, dest: Path) -> Manifest:
        """Copy and verify in one pass per file, files in parallel, largest first.

        Optimizations: each file is read once into a reused 1 MiB buffer that is hashed and
        written from the same memory (no re-read to verify); the buffer is page-aligned (an
        anonymous mmap, not a bytearray, whose malloc'd data sits 16 bytes into a page: the
        kernel's copies into it ran 5x slower on the AMD EPYC VM we measured, and the whole
        verified copy 1.3x slower); POSIX_FADV_SEQUENTIAL doubles read-ahead on cold or
        network filesystems; files are copied by up to 4 threads, because reads, writes and
        xxh3 all release the GIL (an engine is one file per rank).
        """
        entry = self._entry(key)
        where = f"{self.url}/{key}"
        try:
            data = (entry / MANIFEST).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None
        m = _parse_manifest(data, key, where)
        todo = sorted(m.outputs.items(), key=lambda kv: -kv[1][0])
        try:
            if todo:
                from concurrent.futures import ThreadPoolExecutor  # ~5 ms to import (logging): not on a no-op

                with ThreadPoolExecutor(min(4, len(todo))) as pool:
                    for rel, size, digest in pool.map(lambda kv: self._copy_hashing(entry, dest, kv[0]), todo):
                        _check(where, rel, m.outputs[rel], size, digest)
                        self._done(rel, size)
            want_log = log_digest(m)
            if want_log is not None and os.path.lexists(entry / BUILD_LOG):
                rel, size, digest = self._copy_hashing(entry, dest, BUILD_LOG)
                _check(where, rel, want_log, size, digest)
        except FileNotFoundError as e:
            if not entry.exists():
                raise KeyError(key) from None  # removed while we pulled
            missing = Path(e.filename).relative_to(entry) if e.filename and str(e.filename).startswith(str(entry)) \
                else e.filename
            raise StoreCorrupt(f"{where}/{missing}: missing from the store entry") from None
        (dest / MANIFEST).write_bytes(data)
        return m

    @staticmethod
    def _copy_hashing(entry: Path, dest: Path, rel: str) -> tuple[str, int, str]:
        h = xxhash.xxh3_128()
        buf = mmap.mmap(-1, COPY_BUF)  # page-aligned; unmapped when collected (views may outlive an error)
        view = memoryview(buf)
        size = 0
        path = entry / rel
        # Links are never followed: an entry's files are its own (O_NOFOLLOW on the file, realpath for its dirs).
        if os.path.realpath(path.parent) != os.path.join(os.path.realpath(entry), *PurePosixPath(rel).parts[:-1]):
            raise StoreCorrupt(f"{entry}/{rel}: lies behind a link; the store entry is corrupt")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StoreCorrupt(f"{entry}/{rel}: is a link; the store entry is corrupt") from None
            raise
        with open(fd, "rb", buffering=0) as src, _open_dest(dest, rel) as out:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(src.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while n := src.readinto(buf):
                chunk = view[:n]
                h.update(chunk)
                _write_all(out, chunk)
                size += n
        return rel, size, h.hexdigest()

    def push(self, key: str, src: Path) -> bool:
        """Copy into `.incoming/`, fsync every file and dir, then one rename publishes the entry.

        Optimization: shutil.copyfile uses sendfile(2) on Linux (an in-kernel copy with no
        user-space buffer), and an already published key returns before copying anything.
        """
        files = entry_files(src, key)
        target = self._entry(key)
        if self.has(key):
            return False
        incoming = self.root / ".incoming" / f"{key}-{os.urandom(6).hex()}"
        try:
            try:
                claim(self.root)
                incoming.mkdir(parents=True)
            except PermissionError:
                raise StoreError(f"cannot write to store dir {self.root}: permission denied; give this user write "
                                 "access to it (shared stores: a common group and a setgid dir)") from None
            for rel, size in files:  # manifest.json last
                (incoming / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, incoming / rel)
                self._done(rel, size)
            fsync_tree(incoming)
            try:
                os.rename(incoming, target)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    return False  # another pusher won; ours is discarded below
                raise
            fsync_dir(self.root)
            return True
        finally:
            shutil.rmtree(incoming, ignore_errors=True)

    def _get_note(self, name: str) -> bytes | None:
        try:
            return (self.root / name).read_bytes()
        except OSError:
            return None

    def _put_note(self, name: str, data: bytes) -> None:
        path = self.root / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror}") from None

    def keys(self) -> Iterator[str]:
        try:
            names = sorted(os.listdir(self.root))
        except OSError as e:
            raise StoreError(f"cannot list store dir {self.root}: {e.strerror}; check the mount and permissions") from e
        for name in names:
            if not name.startswith(".") and _KEY_RE.fullmatch(name) and self.has(name):
                yield name

    def entry_names(self, key: str) -> list[str]:
        entry = self._entry(key)
        out = []
        for dirpath, dirs, files in os.walk(entry):  # links are listed, never followed
            out += [os.path.relpath(os.path.join(dirpath, f), entry) for f in files + [d for d in dirs
                    if os.path.islink(os.path.join(dirpath, d))]]
        return sorted(out)

    def remove(self, key: str) -> None:
        """Rename into `.trash/` (the entry vanishes atomically), then delete it and older leftovers."""
        trash = self.root / ".trash"
        trash.mkdir(exist_ok=True)
        with suppress(FileNotFoundError):
            os.rename(self._entry(key), trash / f"{key}-{os.urandom(6).hex()}")
        for p in trash.iterdir():
            shutil.rmtree(p, ignore_errors=True)


# -- S3-compatible object storage -----------------------------------------------------------

class S3Store(Store):
    """`s3://bucket/prefix`: immutable uploads `<prefix>/<key>/<upload-id>/...`, committed by `<key>/ref.json`."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None,
                 part_size: int = 64 * MiB, download_part_size: int = 16 * MiB, concurrency: int = 4,
                 client: Any = None):
        """Transfer settings, each an optimization:

        - uploads: 64 MiB multipart parts (threshold 64 MiB), `concurrency` parts in flight;
          files are passed by name so s3transfer reads each part from disk as it is sent
          (a file object would be buffered a part at a time). s3transfer grows parts for
          files beyond 10,000 parts.
        - downloads: 16 MiB ranged GETs, `concurrency` in flight, into a HashingWriter; the
          in-order window is capped at 2*concurrency parts (~128 MiB worst case) instead of
          s3transfer's default 10 parts of any size. Bytes reach the writer in 1 MiB pieces
          (not 256 KiB): 4x fewer Python-level write+hash calls, measured 1.4x faster pulls;
          the write queue is capped at 32 pieces (32 MiB).
        - every file of an entry is submitted at once to one transfer manager per operation,
          so small files (config.json, many ranks below the threshold) overlap too.
        """
        try:
            import boto3
            from boto3.s3.transfer import TransferConfig
            from botocore.config import Config
        except ImportError:
            raise StoreError("s3:// stores need boto3: pip install 'enginebuild[store]'") from None
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.endpoint = endpoint
        if client is None:
            compat: dict[str, Any] = {}
            if endpoint:
                # S3-compatible servers: path-style URLs (no per-bucket DNS), and CRC checksums only
                # where an API requires them (boto3 >= 1.36 sends them on every upload, which some
                # servers reject); our own xxh3 check on pull covers integrity end to end.
                compat["s3"] = {"addressing_style": "path"}
                if "AWS_REQUEST_CHECKSUM_CALCULATION" not in os.environ:
                    compat.update(request_checksum_calculation="when_required",
                                  response_checksum_validation="when_required")
            cfg = Config(max_pool_connections=max(10, 2 * concurrency + 2), retries={"mode": "standard"},
                         connect_timeout=10, read_timeout=120, **compat)
            client = boto3.client("s3", endpoint_url=endpoint, config=cfg)
        self.client = client
        self.upload_config = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size,
                                            max_concurrency=concurrency)
        self.download_config = TransferConfig(multipart_threshold=download_part_size,
                                              multipart_chunksize=download_part_size, max_concurrency=concurrency,
                                              io_chunksize=MiB, max_io_queue=32)
        self.download_config.max_in_memory_download_chunks = 2 * concurrency  # not a boto3 TransferConfig argument

    # -- naming
    def _base(self, key: str) -> str:
        return f"{self.prefix}/{check_key(key)}/" if self.prefix else f"{check_key(key)}/"

    def _where(self, key: str) -> str:
        return f"{self.url}/{key}"

    # -- errors
    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn boto errors the user can fix into one StoreError that says how."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        try:
            yield
        except NoCredentialsError:
            raise StoreError(f"{self.url}: no AWS credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                             "(or AWS_PROFILE)") from None
        except EndpointConnectionError as e:
            raise StoreError(f"{self.url}: cannot reach {e.kwargs.get('endpoint_url', 'the S3 endpoint')}; "
                             f"check {ENV_S3_ENDPOINT} / AWS_ENDPOINT_URL and the network") from None
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                raise StoreError(f"{self.url}: bucket {self.bucket} does not exist; create it or fix "
                                 f"`store:` in models.yaml / {ENV_STORE}") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise StoreError(f"{self.url}: access denied while {what} ({code}); check the AWS credentials "
                                 "and the bucket policy") from None
            raise

    @staticmethod
    def _code(e: Exception) -> str:
        return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))

    def _get_small(self, obj: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=obj)["Body"].read()
        except ClientError as e:
            if self._code(e) in ("NoSuchKey", "404"):
                return None
            raise

    def _note(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _get_note(self, name: str) -> bytes | None:
        with self._errors("reading a note"):
            return self._get_small(self._note(name))

    def _put_note(self, name: str, data: bytes) -> None:
        with self._errors("writing a note"):
            self.client.put_object(Bucket=self.bucket, Key=self._note(name), Body=data)

    def _ref(self, key: str) -> dict[str, Any] | None:
        data = self._get_small(self._base(key) + REF)
        if data is None:
            return None
        try:
            ref = json.loads(data)
            if not isinstance(ref.get("upload"), str) or not isinstance(ref.get("files"), dict):
                raise ValueError
            return ref
        except (ValueError, AttributeError):
            raise StoreCorrupt(f"{self._where(key)}/{REF}: not a valid commit record") from None

    def _transfer(self, config: Any) -> Any:
        from boto3.s3.transfer import create_transfer_manager

        return create_transfer_manager(self.client, config)

    # -- protocol
    def has(self, key: str) -> bool:
        """A GET of the tiny ref.json rather than a HEAD: same cost, and a missing bucket says
        NoSuchBucket (a HEAD's bodiless 404 would read as "key absent" and hide the mistake)."""
        with self._errors("checking an entry"):
            return self._get_small(self._base(key) + REF) is not None

    def pull(self, key: str, dest: Path) -> Manifest:
        """Resolve ref.json -> upload id, read the manifest, then stream every file through a HashingWriter."""
        where = self._where(key)
        with self._errors("pulling"):
            ref = self._ref(key)
            if ref is None:
                raise KeyError(key)
            base = self._base(key) + ref["upload"] + "/"
            data = self._get_small(base + MANIFEST)
            if data is None:
                raise StoreCorrupt(f"{where}: {MANIFEST} of upload {ref['upload']} is missing")
            m = _parse_manifest(data, key, where)
            files: list[tuple[str, list]] = [(rel, m.outputs[rel])
                                             for rel in sorted(m.outputs, key=lambda r: -m.outputs[r][0])]
            want_log = log_digest(m)
            if want_log is not None and BUILD_LOG in ref["files"]:
                files.append((BUILD_LOG, want_log))
            self._download_all(base, dest, files, where)
        (dest / MANIFEST).write_bytes(data)
        return m

    def _download_all(self, base: str, dest: Path, files: list[tuple[str, list]], where: str) -> None:
        from botocore.exceptions import ClientError

        expected = dict(files)
        with self._transfer(self.download_config) as tm:
            opened = []
            try:
                for rel, _ in files:
                    f = _open_dest(dest, rel)
                    w = HashingWriter(f)
                    opened.append((rel, f, w, tm.download(self.bucket, base + rel, w)))
                for rel, f, w, fut in opened:
                    try:
                        fut.result()
                    except ClientError as e:
                        if self._code(e) in ("404", "NoSuchKey"):
                            raise StoreCorrupt(f"{where}/{rel}: missing from the store entry") from None
                        raise
                    f.close()
                    _check(where, rel, expected[rel], w.size, w.hexdigest())
                    self._done(rel, w.size)
            except BaseException:
                for _, _, _, fut in opened:
                    fut.cancel()
                raise
            finally:
                for _, f, _, _ in opened:
                    f.close()

    def push(self, key: str, src: Path) -> bool:
        """Upload every file under a fresh upload id, then commit ref.json with If-None-Match: *.

        A push that loses the race (or finds the key committed) deletes its own upload and
        returns False; one killed half-way leaves an unreferenced upload, invisible to has()
        and pull() (incomplete multipart parts are dropped by a bucket lifecycle rule
        AbortIncompleteMultipartUpload, or by remove(key)).
        """
        files = entry_files(src, key)
        with self._errors("pushing"):
            if self.has(key):
                return False
            upload = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.urandom(6).hex()}"
            base = self._base(key) + upload + "/"
            with self._transfer(self.upload_config) as tm:
                futs = [(rel, size, tm.upload(str(src / rel), self.bucket, base + rel)) for rel, size in files]
                try:
                    for rel, size, fut in futs:
                        fut.result()
                        self._done(rel, size)
                except BaseException:
                    for _, _, fut in futs:
                        fut.cancel()
                    raise
            ref = {"schema": 1, "key": key, "upload": upload, "files": dict(files),
                   "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": socket.gethostname()}
            if self._commit(key, upload, json.dumps(ref, indent=1, sort_keys=True).encode()):
                return True
            self._delete(self._list(base))
            return False

    def _commit(self, key: str, upload: str, body: bytes) -> bool:
        """Write ref.json only if absent; True if ours is the committed one.

        AWS S3 (since 2024-08), MinIO, Ceph RGW and moto implement If-None-Match: * on PUT:
        412 means another pusher won. A 409 (concurrent conditional write in flight) is
        retried. A server without conditional writes (501/NotImplemented) gets a HEAD check
        then a plain PUT; between the two lies a window of one round trip in which two
        pushers may both write ref.json (the last one wins; both uploads are complete and
        hold the same engine key, so the entry is valid either way). Afterwards the ref is
        read back, so a pusher whose ref was overwritten reports False and deletes its upload.
        """
        from botocore.exceptions import ClientError

        obj = self._base(key) + REF
        for attempt in range(6):
            try:
                self.client.put_object(Bucket=self.bucket, Key=obj, Body=body, IfNoneMatch="*",
                                       ContentType="application/json")
                break
            except ClientError as e:
                code = self._code(e)
                if code in ("PreconditionFailed", "412"):
                    return False
                if code in ("ConditionalRequestConflict", "409") and attempt < 5:
                    time.sleep(0.05 * 2**attempt)  # backoff before retrying a conflicted write
                    continue
                if code in ("NotImplemented", "501"):
                    if self.has(key):
                        return False
                    self.client.put_object(Bucket=self.bucket, Key=obj, Body=body, ContentType="application/json")
                    break
                raise
        ref = self._ref(key)
        return ref is not None and ref["upload"] == upload

    def _list(self, prefix: str) -> Iterator[str]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", ()):
                yield obj["Key"]

    def _delete(self, objs: Iterable[str]) -> None:
        batch: list[str] = []
        for o in [*objs, None]:
            if o is not None:
                batch.append(o)
            if batch and (o is None or len(batch) == 1000):
                self.client.delete_objects(Bucket=self.bucket,
                                           Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
                batch = []

    def keys(self) -> Iterator[str]:
        """One listing of the prefix (a few objects per entry), keeping the `<key>/ref.json` ones."""
        root = f"{self.prefix}/" if self.prefix else ""
        with self._errors("listing"):
            for obj in self._list(root):
                parts = obj[len(root):].split("/")
                if len(parts) == 2 and parts[1] == REF and _KEY_RE.fullmatch(parts[0]):
                    yield parts[0]

    def entry_names(self, key: str) -> list[str]:
        with self._errors("listing an entry"):
            ref = self._ref(key)
        return sorted(ref["files"]) if ref else []

    def remove(self, key: str) -> None:
        """Delete ref.json first (the entry vanishes atomically), then its uploads and stray multipart parts."""
        base = self._base(key)
        with self._errors("removing"):
            self.client.delete_object(Bucket=self.bucket, Key=base + REF)
            self._delete(self._list(base))
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=base)
            for page in pages:
                for up in page.get("Uploads", ()):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])


# -- configuration ----------------------------------------------------------------------------

def open_store(url: str, work_dir: Path) -> Store:
    """A store from a URL: `/abs/path`, `relative/path` (to the cwd), `file:///abs/path`, `s3://bucket/prefix`.

    S3: endpoint from BUILDLIB_S3_ENDPOINT or AWS_ENDPOINT_URL (unset: AWS), credentials
    from the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...).
    `work_dir` is the project's work dir, reserved for local store state; nothing is kept there yet.
    """
    del work_dir
    raw = url.strip()
    if not raw:
        raise StoreError(f"empty store URL; set `store:` in models.yaml or {ENV_STORE} to a path or s3://bucket/prefix")
    scheme = raw.split("://", 1)[0].lower() if "://" in raw else ""
    if scheme == "s3":
        p = urlparse(raw)
        if not p.netloc:
            raise StoreError(f"store URL {raw!r} names no bucket; write s3://<bucket>/<prefix>")
        endpoint = os.environ.get(ENV_S3_ENDPOINT) or os.environ.get("AWS_ENDPOINT_URL") or None
        return S3Store(p.netloc, unquote(p.path), endpoint=endpoint)
    if scheme == "file":
        p = urlparse(raw)
        if p.netloc not in ("", "localhost"):
            raise StoreError(f"store URL {raw!r} names host {p.netloc!r}; write file:///abs/path "
                             "(mount the share and give its local path)")
        root = Path(unquote(p.path))
    elif scheme:
        raise StoreError(f"store URL {raw!r}: unsupported scheme {scheme!r}; use a path, file:///path "
                         "or s3://bucket/prefix")
    else:
        root = Path(raw).expanduser()
    root = root if root.is_absolute() else Path.cwd() / root
    if not root.is_dir():
        raise StoreError(f"store dir {root} does not exist; create it (mkdir -p {root}) or fix `store:` "
                         f"in models.yaml / {ENV_STORE} (is the shared filesystem mounted?)")
    why = refusal(root, "store", None)
    if why:
        raise StoreError(f"store dir {root} {why}")
    return DirStore(root, raw if scheme else str(root))


def configured_store(project_store: str | None, work_dir: Path) -> Store | None:
    """The store to use: BUILDLIB_STORE if set (empty or `none` turns the store off), else models.yaml `store:`."""
    url = os.environ.get(ENV_STORE)
    if url is None:
        url = project_store
    if url is None or url.strip().lower() in ("", "none", "off"):
        return None
    return open_store(url, work_dir)
