"""Fleet-speed paths: the models.yaml parse cache and batched stat-cache lookups (semantics only, no timing)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from buildlib import spec as spec_mod
from buildlib.errors import SpecError
from buildlib.hashing import digest_files, hash_file
from buildlib.spec import SPEC_CACHE, load_spec
from buildlib.statcache import StatCache
from tests.conftest import write_hf_checkpoint

MODELS = """\
defaults:
  backend: trtllm
  build: {max_batch_size: 8}
models:
  - name: llama
    checkpoint: ckpt/llama
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_hf_checkpoint(tmp_path / "ckpt/llama")
    (tmp_path / "models.yaml").write_text(MODELS)
    return tmp_path


def test_parse_cache_written_and_used(project: Path, monkeypatch: pytest.MonkeyPatch):
    first = load_spec(project / "models.yaml")
    assert (project / ".buildlib" / SPEC_CACHE).is_file()
    monkeypatch.setattr(spec_mod, "_parse", lambda *a: pytest.fail("parsed again despite a valid cache"))
    assert load_spec(project / "models.yaml") == first


def test_parse_cache_invalidates_on_edit(project: Path):
    load_spec(project / "models.yaml")
    (project / "models.yaml").write_text(MODELS.replace("max_batch_size: 8", "max_batch_size: 16"))
    assert load_spec(project / "models.yaml").models[0].build_options["max_batch_size"] == 16
    # Same size, same mtime: still re-keyed by content.
    st = os.stat(project / "models.yaml")
    (project / "models.yaml").write_text(MODELS.replace("max_batch_size: 8", "max_batch_size: 9"))
    os.utime(project / "models.yaml", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_spec(project / "models.yaml").models[0].build_options["max_batch_size"] == 9


def test_parse_cache_invalidates_on_code_change(project: Path, monkeypatch: pytest.MonkeyPatch):
    load_spec(project / "models.yaml")
    calls = []
    real = spec_mod._parse
    monkeypatch.setattr(spec_mod, "_parse", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(spec_mod, "SPEC_CACHE_SCHEMA", spec_mod.SPEC_CACHE_SCHEMA + 1)
    load_spec(project / "models.yaml")
    assert calls == [1]


def test_parse_cache_bad_edit_still_errors_and_writes_nothing(project: Path):
    load_spec(project / "models.yaml")
    cache = project / ".buildlib" / SPEC_CACHE
    before = cache.read_bytes()
    (project / "models.yaml").write_text(MODELS.replace("max_batch_size", "max_batch_sizee"))
    with pytest.raises(SpecError) as e:
        load_spec(project / "models.yaml")
    assert "max_batch_sizee" in str(e.value) and "models.yaml:3:" in str(e.value)
    assert cache.read_bytes() == before


def test_parse_cache_rechecks_checkpoint_dirs(project: Path):
    load_spec(project / "models.yaml")
    (project / "ckpt/llama").rename(project / "ckpt/gone")
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(project / "models.yaml")


def test_parse_cache_corrupt_file_is_a_miss(project: Path):
    load_spec(project / "models.yaml")
    (project / ".buildlib" / SPEC_CACHE).write_bytes(b"not a pickle")
    assert load_spec(project / "models.yaml").models[0].name == "llama"


def test_parse_cache_follows_work_dir(project: Path):
    (project / "models.yaml").write_text("work_dir: .wd\n" + MODELS)
    load_spec(project / "models.yaml")
    assert (project / ".wd" / SPEC_CACHE).is_file()
    assert not (project / ".buildlib").exists()


def _old(path: Path) -> None:
    t = time.time_ns() - 10**9  # outside the racy window
    os.utime(path, ns=(t, t))


def test_lookup_many_matches_lookup(tmp_path: Path):
    cache = StatCache(tmp_path / "c.sqlite")
    files = []
    for i in range(1200):  # more than one query's worth of paths
        p = tmp_path / f"f{i}"
        p.write_bytes(str(i).encode())
        _old(p)
        files.append(p)
    time.sleep(0.15)  # ctime is now: wait out the racy window
    got = digest_files(files[:1000], cache)
    stats = [(p, os.stat(p)) for p in files]
    many = cache.lookup_many(stats)
    assert many == [cache.lookup(p, st) for p, st in stats]
    assert many[:1000] == [got[p][1] for p in files[:1000]] and many[1000:] == [None] * 200
    assert cache.lookup_many([]) == []


def test_lookup_many_misses_on_changed_stat(tmp_path: Path):
    cache = StatCache(tmp_path / "c.sqlite")
    p = tmp_path / "f"
    p.write_bytes(b"x" * 10)
    _old(p)
    time.sleep(0.15)
    digest_files([p], cache)
    assert cache.lookup_many([(p, os.stat(p))]) == [hash_file(p)]
    os.utime(p)  # touched, identical
    assert cache.lookup_many([(p, os.stat(p))]) == [None]
    _old(p)
    time.sleep(0.15)  # utime set ctime to now: wait out the racy window so the entry is stored
    assert digest_files([p], cache)[p][1] == hash_file(p)  # re-hashed once, entry refreshed
    assert cache.lookup_many([(p, os.stat(p))]) == [hash_file(p)]


def test_hash_file_buffer_boundaries(tmp_path: Path):
    import xxhash

    for n in (0, 1, 4095, 4096, 8192, 8193, 3 * 4096 + 7):
        p = tmp_path / f"b{n}"
        data = os.urandom(n)
        p.write_bytes(data)
        assert hash_file(p, buf_size=4096) == xxhash.xxh3_128_hexdigest(data)


def test_naming_cpu_engines_runs_no_gpu_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`cpu` engines are named for this host's ISA from the CPU flags; nvidia-smi is probed only where an engine's
    GPU arch must be checked against the host (#15: a no-op over fresh engines never starts it)."""
    from buildlib.isa import host_isa
    from buildlib.plan import Planner
    from buildlib.spec import load_spec

    (tmp_path / "models.yaml").write_text(
        "defaults: {backend: aoti, dtype: float32}\nmodels:\n"
        "  - {name: t, checkpoint: {generate: tinyllama, seed: 0}, archs: [cpu, sm90]}\n")

    def probe() -> None:
        raise AssertionError("nvidia-smi probed")

    monkeypatch.setattr("buildlib.plan.detect_host", probe)
    planner = Planner(load_spec(tmp_path / "models.yaml"))
    assert [e.id for e in planner.engines()] == [f"t/{host_isa()}/tp1-pp1", "t/sm90/tp1-pp1"]
    with pytest.raises(AssertionError, match="probed"):
        planner.host  # noqa: B018 - a blocked/missing check does probe, once
