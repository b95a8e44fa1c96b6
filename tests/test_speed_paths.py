"""Fleet-speed paths: the models.yaml parse cache and batched stat-cache lookups (semantics only, no timing)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from buildlib.core.errors import SpecError
from buildlib.core.hashing import digest_files, hash_file
from buildlib.core.statcache import StatCache
from buildlib.spec import load as spec_mod
from buildlib.spec.load import SPEC_CACHE, load_spec
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
    from buildlib.host.isa import host_isa
    from buildlib.plan.planner import Planner
    from buildlib.spec.load import load_spec

    (tmp_path / "models.yaml").write_text(
        "defaults: {backend: aoti, dtype: float32}\nmodels:\n"
        "  - {name: t, checkpoint: {generate: tinyllama, seed: 0}, archs: [cpu, sm90]}\n")

    def probe() -> None:
        raise AssertionError("nvidia-smi probed")

    monkeypatch.setattr("buildlib.plan.planner.detect_host", probe)
    planner = Planner(load_spec(tmp_path / "models.yaml"))
    assert [e.id for e in planner.engines()] == [f"t/{host_isa()}/tp1-pp1", "t/sm90/tp1-pp1"]
    with pytest.raises(AssertionError, match="probed"):
        planner.host  # noqa: B018 - a blocked/missing check does probe, once



def test_key_template_gives_key_of():
    """KeyTemplate (a model's shared fields encoded once) makes exactly key_of's bytes, whichever fields are own
    and whichever shared ones come encoded already; canonical_json is json.dumps with the canonical options."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from buildlib.core.key import KeyTemplate, canonical_json, key_of

    leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.floats(allow_nan=False,
                                                                                   allow_infinity=False)
    value = st.recursive(leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids,
                                                                                          max_size=3), max_leaves=8)

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.text(max_size=6), value, min_size=1, max_size=6), st.data())
    def check(fields: dict, data: st.DataObject) -> None:
        own = tuple(data.draw(st.lists(st.sampled_from(sorted(fields)), unique=True)))
        shared = {k: v for k, v in fields.items() if k not in own}
        assert KeyTemplate(shared, own).key(*(fields[k] for k in own)) == key_of(fields)
        encoded = {k: canonical_json(v) for k, v in shared.items() if data.draw(st.booleans())}  # made already
        assert KeyTemplate(shared, own, encoded).key(*(fields[k] for k in own)) == key_of(fields)
        # canonical_json's one C encoder gives json.dumps' bytes: keys of engines built before it are unchanged
        assert canonical_json(fields) == json.dumps(fields, sort_keys=True, separators=(",", ":"),
                                                    ensure_ascii=False, allow_nan=False)

    check()


def _tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.safetensors").write_bytes(b"a" * 1000)
    (root / "sub" / "b.bin").write_bytes(b"b" * 10)


def test_tree_stamp_skips_listing_and_hashing_until_something_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A checkpoint's tree stamp (#15) proves its digest with stats alone; each kind of change is noticed."""
    from buildlib.core import hashing
    from buildlib.core.hashing import tree_digest

    monkeypatch.setattr("buildlib.core.statcache.RACY_NS", 0)  # the files here were written just now
    root, outside = tmp_path / "ckpt", tmp_path / "outside"
    _tree(root)
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "c.bin").write_bytes(b"c")
    (root / "linked").symlink_to(outside)  # a linked dir (a Hugging Face snapshot links into its blobs)
    cache = StatCache(tmp_path / "c.sqlite")
    first = tree_digest(root, cache)
    assert set(first.files) == {"a.safetensors", "sub/b.bin", "linked/deep/c.bin"}

    real_list = hashing.list_files
    listed = []
    monkeypatch.setattr(hashing, "list_files", lambda *a: listed.append(1) or real_list(*a))
    again = tree_digest(root, cache)
    assert again == first and listed == []  # the stamp held: no listing, no lookups, no hashing

    def changed(what: str) -> str:
        got = tree_digest(root, cache)
        assert listed, f"{what}: the stamp still held"
        listed.clear()
        return got.digest

    digests = {first.digest}
    (root / "sub" / "b.bin").write_bytes(b"B" * 10)  # rewritten in place, same size
    digests.add(changed("rewritten"))
    (root / "sub" / "new.bin").write_bytes(b"n")
    digests.add(changed("added in a subdir"))
    (root / "sub" / "new.bin").unlink()
    assert changed("removed") in digests
    (outside / "deep" / "d.bin").write_bytes(b"d")  # inside a linked dir, two levels down
    last = changed("added in a linked dir")
    digests.add(last)
    assert len(digests) == 4
    (root / ".cache").mkdir()  # a dot-entry changes the dir's mtime, not the digest (dot-entries shape no model)
    assert tree_digest(root, cache).digest == last


def test_racy_tree_is_not_stamped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from buildlib.core import hashing
    from buildlib.core.hashing import tree_digest

    root = tmp_path / "ckpt"
    _tree(root)  # written just now: within the racy window, a later change might not show in the stats
    cache = StatCache(tmp_path / "c.sqlite")
    first = tree_digest(root, cache)
    real_list = hashing.list_files
    listed = []
    monkeypatch.setattr(hashing, "list_files", lambda *a: listed.append(1) or real_list(*a))
    assert tree_digest(root, cache) == first and listed == [1]


def test_each_checkpoint_is_hashed_once_however_many_engines_use_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """#15: two models on one checkpoint dir, 2 archs x 3 parallel configs each: every file hashed once per run."""
    from buildlib.core import hashing
    from buildlib.plan.planner import Planner

    write_hf_checkpoint(tmp_path / "ckpt/llama")
    (tmp_path / "models.yaml").write_text(
        "defaults: {backend: trtllm, archs: [sm90, sm80], parallel: [{tp: 1}, {tp: 2}, {tp: 4}]}\nmodels:\n"
        "  - {name: a, checkpoint: ckpt/llama}\n  - {name: b, checkpoint: ckpt/llama, dtype: float16}\n")
    hashed: list[str] = []
    real = hashing.hash_file
    monkeypatch.setattr(hashing, "hash_file", lambda p, *a: hashed.append(str(p)) or real(p, *a))
    planner = Planner(load_spec(tmp_path / "models.yaml"))
    assert len(planner.engines()) == 12
    planner.states()
    files = sorted(str(p) for p in hashing.list_files(tmp_path / "ckpt/llama"))
    assert sorted(hashed) == files


def test_gpu_probe_reads_nvidia_smi_once_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """GpuProbe starts `nvidia-smi --query-gpu` when made and reads it on first use (what detect_gpus gives),
    restricted by CUDA_VISIBLE_DEVICES as CUDA would; no nvidia-smi on PATH means no GPUs."""
    from buildlib.host.gpu import GpuProbe, detect_gpus
    from tests.conftest import A100, H100
    from tests.standins import standin_env

    env = standin_env(tmp_path / "s", gpus=[H100, A100])
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("STANDIN_GPUS", env["STANDIN_GPUS"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    probe = GpuProbe()
    gpus = probe.gpus()
    assert [(g.index, g.arch, g.name) for g in gpus] == [(0, "sm90", H100["name"]), (1, "sm80", A100["name"])]
    assert not probe.running and probe.gpus() is gpus and detect_gpus() == gpus
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [g.arch for g in GpuProbe().gpus()] == ["sm80"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert GpuProbe().gpus() == () and not GpuProbe().running


def test_gc_paused_over_a_bulk_and_the_loader_resumes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """gc_paused() stops cyclic collection inside its block and restores what it found (nested too); the doit
    loader pauses it from its config to its tasks and then leaves it running, the heap frozen (buildlib.gcpause)."""
    import gc

    from buildlib.cli.plugin import EngineLoader
    from buildlib.core.gcpause import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    (tmp_path / "models.yaml").write_text(
        "defaults: {backend: aoti, dtype: float32}\nmodels:\n"
        "  - {name: t, checkpoint: {generate: tinyllama, seed: 0}, archs: [sm90]}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "no-nvidia-smi"))
    loader = EngineLoader()
    loader.setup({"models": "models.yaml"})
    frozen = gc.get_freeze_count()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # the loader installs its own
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    try:
        loader.load_doit_config()
        assert not gc.isenabled()

        class Run:
            name, needs_tasks = "run", True

        names = [t.name for t in loader.load_tasks(Run(), [])]
        assert "checkpoint:t" in names and gc.isenabled() and gc.get_freeze_count() > frozen
    finally:
        gc.enable()
        gc.unfreeze()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_models_sharing_a_build_share_its_encoding_not_their_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The planner resolves and encodes a build once per distinct (options, architecture) (#15): three models
    with one build and one with another make two encodings; every engine's key is still key_of its own fields.
    (A build with a list-valued option, not memoized, is keyed in test_trtllm_contract's LoRA tests.)"""
    from buildlib.core.key import key_of
    from buildlib.plan import keys as plan_mod
    from buildlib.plan.planner import Planner

    write_hf_checkpoint(tmp_path / "ckpt/llama")
    (tmp_path / "models.yaml").write_text(
        "defaults: {backend: aoti, dtype: float32, archs: [sm90], build: {max_batch_size: 2}}\nmodels:\n"
        "  - {name: a, checkpoint: ckpt/llama}\n  - {name: b, checkpoint: ckpt/llama, dtype: float16}\n"
        "  - {name: c, checkpoint: ckpt/llama}\n  - {name: d, checkpoint: ckpt/llama, build: {max_batch_size: 3}}\n")
    encoded: list[int] = []
    real = plan_mod.canonical_json
    monkeypatch.setattr(plan_mod, "canonical_json", lambda v: encoded.append(1) or real(v))
    planner = Planner(load_spec(tmp_path / "models.yaml"))
    keys = []
    for e in planner.engines():
        got = planner.keyed_fields(e)
        assert got is not None and got[1] == key_of(got[0])
        keys.append(got[1])
    assert len(encoded) == 2  # a, b and c share a build (dtype is a convert field); d has its own
    assert keys[0] == keys[2] and len(set(keys)) == 3  # a and c: one engine twice over (no model name in a key)
