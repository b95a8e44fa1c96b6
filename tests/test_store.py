"""The shared engine store (buildlib.store): a directory and a real S3-compatible server (moto, own process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from buildlib.core.hashing import hash_file
from buildlib.core.key import key_of
from buildlib.core.manifest import Manifest, check_outputs, read_manifest, record_outputs, write_manifest
from buildlib.store.base import Store, StoreCorrupt, StoreError
from buildlib.store.dir import DirStore
from buildlib.store.open import configured_store, open_store
from buildlib.store.s3 import S3Store
from tests.conftest import _free_port

REPO = Path(__file__).resolve().parent.parent
# Real keys: a store entry is used only if its manifest's fields hash to its key.
FIELDS_A, FIELDS_B = {"test": "a"}, {"test": "b"}
KEY, KEY2 = key_of(FIELDS_A), key_of(FIELDS_B)
FIELDS = {KEY: FIELDS_A, KEY2: FIELDS_B}
MiB = 1 << 20

# A pusher in its own process: "kill-after-files N" SIGKILLs itself after N files are stored,
# "kill-after-parts N" after N multipart parts (S3), "race" waits for a line on stdin first.
CHILD = r"""
import os, signal, sys
from pathlib import Path
from buildlib.store.open import open_store
url, key, src, mode, arg = sys.argv[1:6]
store = open_store(url, Path(src))
count = [0]
def die(*_a, **_k):
    count[0] += 1
    if count[0] >= int(arg):
        os.kill(os.getpid(), signal.SIGKILL)
if mode == "kill-after-files":
    store.on_file = die
elif mode == "kill-after-parts":
    store.upload_config.multipart_threshold = store.upload_config.multipart_chunksize = 5 << 20
    store.client.meta.events.register("after-call.s3.UploadPart", die)
elif mode == "race":
    print("ready", flush=True)
    sys.stdin.readline()
print(store.push(key, Path(src)), flush=True)
"""


@pytest.fixture(params=["dir", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "dir":
        (tmp_path / "store").mkdir()
        return open_store(str(tmp_path / "store"), tmp_path)
    request.getfixturevalue("s3_env")
    bucket = f"engines-{uuid.uuid4().hex[:12]}"
    s = open_store(f"s3://{bucket}/fleet/v1", tmp_path)
    assert isinstance(s, S3Store)
    s.client.create_bucket(Bucket=bucket)
    return s


def make_engine(d: Path, key: str = KEY, big: int = 3 * MiB) -> Path:
    """A published-looking engine dir: outputs (one in a subdir), build.log, validation files, manifest last."""
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"version": "test"}\n')
    (d / "rank0.engine").write_bytes(os.urandom(big))
    (d / "sub").mkdir()
    (d / "sub" / "rank1.engine").write_bytes(os.urandom(big // 3 + 1))
    (d / "build.log").write_text("built by a test\n")
    (d / "validation.json").write_text('{"ok": true}\n')
    (d / "validate.log").write_text("validated\n")
    log = d / "build.log"
    write_manifest(d, Manifest(key, FIELDS[key], record_outputs(d, None), name="test/engine",
                               built={"log": [log.stat().st_size, hash_file(log)]}))
    return d


def run_child(store: Store, key: str, src: Path, mode: str, arg: int = 0, **kw: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", CHILD, store.url, key, str(src), mode, str(arg)],
                            cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def assert_absent(store: Store, key: str, tmp_path: Path) -> None:
    assert not store.has(key)
    assert key not in list(store.keys())
    dest = tmp_path / f"absent-{uuid.uuid4().hex[:6]}"
    dest.mkdir()
    with pytest.raises(KeyError):
        store.pull(key, dest)


def pull_and_verify(store: Store, key: str, src: Path, tmp_path: Path) -> Path:
    dest = tmp_path / f"pulled-{uuid.uuid4().hex[:6]}"
    dest.mkdir()
    m = store.pull(key, dest)
    assert m.key == key
    on_disk = read_manifest(dest)
    assert on_disk is not None and on_disk.key == key and on_disk.outputs == m.outputs
    assert check_outputs(dest, on_disk, None) == []
    for rel in m.outputs:
        assert (dest / rel).read_bytes() == (src / rel).read_bytes()
    assert (dest / "build.log").read_text() == "built by a test\n"
    assert not (dest / "validation.json").exists() and not (dest / "validate.log").exists()
    return dest


def test_push_pull_round_trip(store: Store, tmp_path: Path) -> None:
    src = make_engine(tmp_path / "engine")
    assert_absent(store, KEY, tmp_path)
    seen: list[tuple[str, int]] = []
    store.on_file = lambda rel, size: seen.append((rel, size))
    assert store.push(KEY, src) is True
    assert {r for r, _ in seen} == {"config.json", "rank0.engine", "sub/rank1.engine", "build.log", "manifest.json"}
    assert store.has(KEY)
    assert list(store.keys()) == [KEY]
    assert store.push(KEY, src) is False  # first writer wins; nothing overwritten
    pull_and_verify(store, KEY, src, tmp_path)


def test_corrupt_object_is_reported(store: Store, tmp_path: Path) -> None:
    src = make_engine(tmp_path / "engine")
    assert store.push(KEY, src)
    if isinstance(store, DirStore):
        p = store.root / KEY / "rank0.engine"
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    else:
        assert isinstance(store, S3Store)
        objs = [k for k in store._list(f"{store.prefix}/{KEY}/") if k.endswith("/rank0.engine")]
        assert len(objs) == 1
        data = bytearray(store.client.get_object(Bucket=store.bucket, Key=objs[0])["Body"].read())
        data[len(data) // 2] ^= 0xFF
        store.client.put_object(Bucket=store.bucket, Key=objs[0], Body=bytes(data))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(StoreCorrupt, match=r"rank0\.engine"):
        store.pull(KEY, dest)
    assert not (dest / "manifest.json").exists()  # never looks like a finished engine
    store.remove(KEY)  # what the caller does before rebuilding and pushing again
    assert store.push(KEY, src)
    pull_and_verify(store, KEY, src, tmp_path)


def test_missing_object_is_reported(store: Store, tmp_path: Path) -> None:
    src = make_engine(tmp_path / "engine")
    assert store.push(KEY, src)
    if isinstance(store, DirStore):
        (store.root / KEY / "sub" / "rank1.engine").unlink()
    else:
        assert isinstance(store, S3Store)
        obj = next(k for k in store._list(f"{store.prefix}/{KEY}/") if k.endswith("/sub/rank1.engine"))
        store.client.delete_object(Bucket=store.bucket, Key=obj)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(StoreCorrupt, match=r"sub/rank1\.engine: missing"):
        store.pull(KEY, dest)


def test_killed_push_is_invisible(store: Store, tmp_path: Path) -> None:
    src = make_engine(tmp_path / "engine")
    child = run_child(store, KEY, src, "kill-after-files", 2)
    _, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err
    assert_absent(store, KEY, tmp_path)
    assert store.push(KEY, src) is True  # leftovers of the killed push do not get in the way
    pull_and_verify(store, KEY, src, tmp_path)


def test_killed_multipart_upload_is_invisible(s3_env: str, tmp_path: Path) -> None:
    bucket = f"engines-{uuid.uuid4().hex[:12]}"
    store = open_store(f"s3://{bucket}", tmp_path)
    assert isinstance(store, S3Store)
    store.client.create_bucket(Bucket=bucket)
    src = make_engine(tmp_path / "engine", big=24 * MiB)  # 5 parts of 5 MiB
    child = run_child(store, KEY, src, "kill-after-parts", 1)
    _, err = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL, err
    assert store.client.list_multipart_uploads(Bucket=bucket).get("Uploads"), "killed mid-multipart"
    assert_absent(store, KEY, tmp_path)
    store.remove(KEY)  # also aborts the dangling multipart upload
    assert not store.client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert store.push(KEY, src)
    pull_and_verify(store, KEY, src, tmp_path)


def test_concurrent_pushers_one_wins(store: Store, tmp_path: Path) -> None:
    src = make_engine(tmp_path / "engine", big=8 * MiB)
    children = [run_child(store, KEY, src, "race", stdin=subprocess.PIPE) for _ in range(2)]
    for c in children:  # both have imported and opened the store: start them together
        assert c.stdout is not None and c.stdout.readline().strip() == "ready"
    for c in children:
        assert c.stdin is not None
        c.stdin.write("go\n")
        c.stdin.flush()
    results = []
    for c in children:
        out, err = c.communicate(timeout=120)
        assert c.returncode == 0, err
        results.append(out.strip())
    assert sorted(results) == ["False", "True"]
    pull_and_verify(store, KEY, src, tmp_path)
    if isinstance(store, DirStore):
        assert not any((store.root / ".incoming").iterdir())  # the loser discarded its copy
    else:
        assert isinstance(store, S3Store)
        uploads = {k.split("/")[3] for k in store._list(f"{store.prefix}/{KEY}/") if not k.endswith("/ref.json")}
        assert len(uploads) == 1  # the loser deleted its upload


def test_keys_and_remove(store: Store, tmp_path: Path) -> None:
    a = make_engine(tmp_path / "a", KEY, big=1024)
    b = make_engine(tmp_path / "b", KEY2, big=1024)
    assert store.push(KEY, a) and store.push(KEY2, b)
    assert sorted(store.keys()) == [KEY, KEY2]
    store.remove(KEY)
    assert_absent(store, KEY, tmp_path)
    assert list(store.keys()) == [KEY2]
    store.remove(KEY)  # absent: nothing to do
    pull_and_verify(store, KEY2, b, tmp_path)


def test_structure_notes_name_a_published_entry(store: Store, tmp_path: Path) -> None:
    """by_structure (refit, #14): the last noted entry of a structure, while it is published; notes are no keys."""
    skey = "f" * 32
    assert store.by_structure(skey) is None
    a = make_engine(tmp_path / "a", KEY, big=1024)
    assert store.push(KEY, a)
    store.note_structure(skey, KEY)
    assert store.by_structure(skey) == KEY and list(store.keys()) == [KEY]
    store.note_structure(skey, KEY2)  # noted but never pushed: not a source
    assert store.by_structure(skey) is None
    store.note_structure(skey, KEY)
    store.remove(KEY)
    assert store.by_structure(skey) is None
    with pytest.raises(ValueError):
        store.note_structure("../escape", KEY)


def test_push_refuses_a_dir_that_is_not_that_engine(store: Store, tmp_path: Path) -> None:
    src = make_engine(tmp_path / "engine")
    with pytest.raises(ValueError, match="is for key"):
        store.push(KEY2, src)
    (src / "rank0.engine").write_bytes(b"short")
    with pytest.raises(ValueError, match="rebuild the engine"):
        store.push(KEY, src)
    with pytest.raises(ValueError, match="invalid store key"):
        store.has("../escape")
    assert not store.has(KEY)


def test_manifest_of_another_key_is_corrupt(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    make_engine(root / KEY2, KEY)  # an entry whose manifest names another key
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(StoreCorrupt, match="names key"):
        DirStore(root).pull(KEY2, dest)


def test_open_store_urls(s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "st").mkdir()
    assert isinstance(open_store(str(tmp_path / "st"), tmp_path), DirStore)
    assert open_store(f"file://{tmp_path}/st", tmp_path).root == tmp_path / "st"  # type: ignore[attr-defined]
    monkeypatch.chdir(tmp_path)
    assert open_store("st", tmp_path).root == tmp_path / "st"  # type: ignore[attr-defined]
    s3 = open_store("s3://my-bucket/a/b/", tmp_path)
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix, s3.url) == ("my-bucket", "a/b", "s3://my-bucket/a/b")
    assert s3.endpoint == s3_env
    for bad, fix in [("gs://b/x", "unsupported scheme"), ("s3:///x", "names no bucket"),
                     ("file://nas/x", "file:///abs/path"), (str(tmp_path / "nope"), "mkdir -p"),
                     ("  ", "set `store:`")]:
        with pytest.raises(StoreError, match=fix):
            open_store(bad, tmp_path)


def test_configured_store_env_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.delenv("BUILDLIB_STORE", raising=False)
    assert configured_store(None, tmp_path) is None
    assert configured_store(str(tmp_path / "a"), tmp_path).url == str(tmp_path / "a")  # type: ignore[union-attr]
    monkeypatch.setenv("BUILDLIB_STORE", str(tmp_path / "b"))
    assert configured_store(str(tmp_path / "a"), tmp_path).url == str(tmp_path / "b")  # type: ignore[union-attr]
    monkeypatch.setenv("BUILDLIB_STORE", "")
    assert configured_store(str(tmp_path / "a"), tmp_path) is None


def test_unreachable_s3_is_a_user_error(s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUILDLIB_S3_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StoreError, match="cannot reach"):
        open_store("s3://engines/x", tmp_path).has(KEY)
    monkeypatch.setenv("BUILDLIB_S3_ENDPOINT", s3_env)
    with pytest.raises(StoreError, match="does not exist"):
        open_store(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}", tmp_path).has(KEY)


PULL_MANY_LARGE = r"""
import sys
from pathlib import Path
from buildlib.store.s3 import S3Store
bucket, key, dest, endpoint = sys.argv[1:5]
store = S3Store(bucket, "many", endpoint=endpoint, download_part_size=256 << 10, concurrency=2)
print(store.pull(key, Path(dest)).key)
"""


def test_an_entry_of_several_large_files_pulls_from_s3(s3_env: str, tmp_path: Path) -> None:
    """Files of more download parts than the in-order window holds (2 x concurrency): with response checksums
    `when_required`, s3transfer (0.19) let a file's first part hold the window while it scheduled the rest, and the
    pull hung forever on any S3-compatible endpoint. Pulled in a child, so a hang fails instead of stalling."""
    bucket = f"engines-{uuid.uuid4().hex[:12]}"
    store = S3Store(bucket, "many", endpoint=s3_env, download_part_size=256 << 10, concurrency=2)
    store.client.create_bucket(Bucket=bucket)
    src = tmp_path / "engine"
    src.mkdir()
    for i in range(5):
        (src / f"rank{i}.engine").write_bytes(os.urandom(2 * MiB + i))
    (src / "config.json").write_text("{}\n")
    write_manifest(src, Manifest(KEY, FIELDS_A, record_outputs(src, None), name="test/engine"))
    assert store.push(KEY, src)
    dest = tmp_path / "dest"
    dest.mkdir()
    r = subprocess.run([sys.executable, "-c", PULL_MANY_LARGE, bucket, KEY, str(dest), s3_env], cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO), "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == KEY, r.stderr
    for i in range(5):
        assert (dest / f"rank{i}.engine").read_bytes() == (src / f"rank{i}.engine").read_bytes()
