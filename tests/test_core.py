"""Units of the core: canonical key, per-field reasons, hashing, stat cache, atomic publish."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import xxhash

from buildlib.core.hashing import hash_file, tree_digest
from buildlib.core.key import canonical_json, diff_fields, key_of
from buildlib.core.statcache import Stamp, StatCache, settled
from buildlib.host.publish import publish, temp_dir_for


def test_key_is_order_independent_and_sensitive():
    a = {"build": {"max_batch_size": 8, "gemm_plugin": "auto"}, "target": {"arch": "sm90"}}
    b = {"target": {"arch": "sm90"}, "build": {"gemm_plugin": "auto", "max_batch_size": 8}}
    assert key_of(a) == key_of(b)
    assert key_of(a) != key_of({**a, "target": {"arch": "sm80"}})
    assert canonical_json(a) == '{"build":{"gemm_plugin":"auto","max_batch_size":8},"target":{"arch":"sm90"}}'
    assert len(key_of(a)) == 32


def test_diff_fields_names_each_changed_field():
    old = {"build": {"max_batch_size": 8, "x": None}, "toolchain": {"tensorrt_llm": "1.2.0"}}
    new = {"build": {"max_batch_size": 64, "x": 1}, "toolchain": {"tensorrt_llm": "1.2.1"}}
    assert diff_fields(old, new) == ["build.max_batch_size 8 -> 64", "build.x unset -> 1",
                                     "toolchain.tensorrt_llm 1.2.0 -> 1.2.1"]


def test_hash_file_matches_one_shot_xxh3(tmp_path: Path):
    p = tmp_path / "f"
    data = os.urandom(3 * 1024 * 1024 + 17)
    p.write_bytes(data)
    assert hash_file(p, buf_size=1 << 20) == xxhash.xxh3_128_hexdigest(data)


def test_tree_digest_and_stat_cache(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("buildlib.core.statcache.RACY_NS", 0)  # files here were written just now
    root = tmp_path / "ckpt"
    (root / "sub").mkdir(parents=True)
    (root / "a.safetensors").write_bytes(b"a" * 1000)
    (root / "sub/b.bin").write_bytes(b"b" * 10)
    (root / ".cache").mkdir()
    (root / ".cache/ignored").write_bytes(b"x")
    cache = StatCache(tmp_path / "stat.sqlite")
    d1 = tree_digest(root, cache)
    assert set(d1.files) == {"a.safetensors", "sub/b.bin"}
    assert d1.files["a.safetensors"] == (1000, xxhash.xxh3_128_hexdigest(b"a" * 1000))
    st = os.stat(root / "a.safetensors")
    assert cache.lookup(root / "a.safetensors", st) == d1.files["a.safetensors"][1]
    # touched but identical: the entry no longer matches (re-hash once), the digest is unchanged
    os.utime(root / "a.safetensors")
    assert cache.lookup(root / "a.safetensors", os.stat(root / "a.safetensors")) is None
    assert tree_digest(root, cache).digest == d1.digest
    # changed content, same size: new digest
    (root / "sub/b.bin").write_bytes(b"c" * 10)
    assert tree_digest(root, cache).digest != d1.digest


def test_racy_entries_are_not_trusted(tmp_path: Path):
    p = tmp_path / "fresh"
    p.write_bytes(b"x")
    cache = StatCache(tmp_path / "stat.sqlite")
    cache.store_many([(p, os.stat(p), "d")])  # written just now: might change within the same tick
    assert cache.lookup(p, os.stat(p)) is None


def test_settled_allows_for_coarse_timestamps():
    """A file whose stat might still change without its stat changing is not trusted yet."""
    def st(mtime_ns: int, ctime_ns: int) -> SimpleNamespace:
        return SimpleNamespace(st_mtime_ns=mtime_ns, st_ctime_ns=ctime_ns)

    now = 100 * 10**9
    assert settled(st(now - 10**9 + 7, now - 10**9 + 7), now)  # ns timestamps: 100 ms is enough
    assert not settled(st(now - 50_000_000, now - 50_000_000), now)
    assert not settled(st(now - 10**9, now - 10**9), now)  # whole seconds: a change in this tick is invisible
    assert settled(st(now - 3 * 10**9, now - 3 * 10**9), now)
    assert settled(None, now)


def test_prune_forgets_entries_of_files_and_dirs_that_are_gone(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("buildlib.core.statcache.RACY_NS", 0)
    keep, gone, edir = tmp_path / "keep", tmp_path / "gone", tmp_path / "engine"
    for p in (keep, gone):
        p.write_bytes(b"x")
    edir.mkdir()
    cache = StatCache(tmp_path / "stat.sqlite")
    cache.store_many([(p, os.stat(p), "d") for p in (keep, gone)])
    cache.store_stamps({str(edir): Stamp("k", True, "manifest.json", "-")})
    gone.unlink()
    edir.rmdir()
    assert cache.prune() == 2
    assert cache.lookup(keep, os.stat(keep)) == "d" and cache.stamps() == {}
    gone.write_bytes(b"x")
    assert cache.lookup(gone, os.stat(gone)) is None


def test_publish_replaces_atomically(tmp_path: Path):
    dest = tmp_path / "engines/m/sm90/tp1-pp1"
    for content in (b"old", b"new"):
        tmp = temp_dir_for(dest)
        (tmp / "rank0.engine").write_bytes(content)
        publish(tmp, dest)
    assert (dest / "rank0.engine").read_bytes() == b"new"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tp1-pp1"]


def test_diff_fields_compares_values_as_the_key_encodes_them():
    """A list read back from a manifest is the tuple the spec holds: no reason (it made a weights-only change of a
    LoRA model look structural, so it was rebuilt instead of refitted)."""
    assert diff_fields({"build": {"lora_dir": ["lora/a"]}}, {"build": {"lora_dir": ("lora/a",)}}) == []
    assert diff_fields({"build": {"lora_dir": ["lora/a"]}}, {"build": {"lora_dir": ("lora/b",)}}) == \
        ['build.lora_dir ["lora/a"] -> ["lora/b"]']
