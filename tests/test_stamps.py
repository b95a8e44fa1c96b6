"""Engine stamps: a fresh engine is re-proven by stats alone, and any change to what was checked is noticed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from buildlib.core.manifest import VALIDATION, Manifest, record_outputs, write_json_durably, write_manifest
from buildlib.plan import planner as plan_mod
from buildlib.plan.planner import Planner
from buildlib.plan.state import BLOCKED, FRESH, EngineState
from buildlib.spec.load import load_spec
from tests.conftest import write_hf_checkpoint

MODELS = """\
defaults:
  backend: aoti
  dtype: float32
  archs: [sm90]
  build: {max_batch_size: 2, max_input_len: 16, max_seq_len: 32}
models:
  - name: a
    checkpoint: ckpt/a
  - name: b
    checkpoint: ckpt/b
"""


def _planner(root: Path) -> Planner:
    return Planner(load_spec(root / "models.yaml"))


def _make_fresh(root: Path) -> None:
    """Write every engine as a build does (outputs, manifest, validation.json), without building."""
    p = _planner(root)
    for e in p.engines():
        st = p.state(e)
        assert st.key and st.fields
        d = e.dir(p.spec.project)
        d.mkdir(parents=True)
        (d / "model.pt2").write_bytes(st.key.encode() * 100)
        ckpt = p.checkpoint(e.model)
        assert ckpt is not None
        write_manifest(d, Manifest(st.key, st.fields, record_outputs(d, p.cache),
                                   {k: list(v) for k, v in ckpt.files.items()}, e.id))
        write_json_durably(d / VALIDATION, {"key": st.key, "ok": True})


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr("buildlib.core.statcache.RACY_NS", 0)  # the files here were written just now
    root = tmp_path / "repo"
    root.mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        write_hf_checkpoint(root / "ckpt" / name, seed=seed)
    (root / "models.yaml").write_text(MODELS)
    _make_fresh(root)
    first = _planner(root).states()  # proves both fresh the long way, and saves their stamps
    assert [s.state for s in first] == [FRESH, FRESH] and all(s.validated for s in first)
    return root


def _states_by_stamp_only(root: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    """states() in a new planner where reading a manifest fails the test: only stamps may answer."""
    def no_read(*_a: object) -> None:
        raise AssertionError("a manifest was read")

    with monkeypatch.context() as m:
        m.setattr(plan_mod, "read_manifest", no_read)
        return _planner(root).states()


def _why_not_fresh(s: EngineState) -> list[str]:
    """The reasons an engine is not fresh (this host has no sm90 GPU: blocked, its first reason says so)."""
    assert s.state != FRESH
    return s.reasons[1:] if s.state == BLOCKED else s.reasons


def test_fresh_engines_are_reproven_by_stats_alone(fleet: Path, monkeypatch: pytest.MonkeyPatch):
    got = _states_by_stamp_only(fleet, monkeypatch)
    assert [(s.engine.id, s.state, s.validated) for s in got] == [("a/sm90/tp1-pp1", FRESH, True),
                                                                   ("b/sm90/tp1-pp1", FRESH, True)]


def test_output_changed_in_place_with_its_size_and_mtime_kept_is_stale(fleet: Path):
    out = fleet / "engines/a/sm90/tp1-pp1/model.pt2"
    st = out.stat()
    data = bytearray(out.read_bytes())
    data[7] ^= 0xFF
    out.write_bytes(bytes(data))
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))  # only the ctime tells
    states = {s.engine.id: s for s in _planner(fleet).states()}
    assert _why_not_fresh(states["a/sm90/tp1-pp1"]) == ["output model.pt2 altered"]
    assert states["b/sm90/tp1-pp1"].state == FRESH


def test_removed_validation_is_noticed(fleet: Path):
    (fleet / "engines/b/sm90/tp1-pp1" / VALIDATION).unlink()
    states = {s.engine.id: s for s in _planner(fleet).states()}
    assert states["b/sm90/tp1-pp1"].state == FRESH and not states["b/sm90/tp1-pp1"].validated
    assert states["a/sm90/tp1-pp1"].validated


def test_a_stamp_is_for_one_key(fleet: Path):
    (fleet / "models.yaml").write_text(MODELS.replace("max_seq_len: 32", "max_seq_len: 24"))
    states = _planner(fleet).states()
    assert [_why_not_fresh(s) for s in states] == [["build.max_seq_len 32 -> 24"]] * 2


def test_changed_checkpoint_is_stale_despite_the_stamp(fleet: Path):
    shard = fleet / "ckpt/b/model-00001-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # a weight byte: the header stays valid
    states = {s.engine.id: s for s in _planner(fleet).states()}
    # (this fleet's manifests are written without a structure record: weights and structure cannot be told apart)
    assert _why_not_fresh(states["b/sm90/tp1-pp1"]) == ["checkpoint model-00001-of-00002.safetensors changed"]
    assert states["a/sm90/tp1-pp1"].state == FRESH


def test_racy_files_get_no_stamp(tmp_path: Path):
    """Files written within the racy window of the check might change again unseen: no stamp then."""
    root = tmp_path / "repo"
    root.mkdir()
    write_hf_checkpoint(root / "ckpt/a", seed=1)
    write_hf_checkpoint(root / "ckpt/b", seed=2)
    (root / "models.yaml").write_text(MODELS)
    _make_fresh(root)
    p = _planner(root)
    assert [s.state for s in p.states()] == [FRESH, FRESH]
    assert p.cache.stamps() == {}


def test_estimates_take_build_records_from_stamps(fleet: Path, monkeypatch: pytest.MonkeyPatch):
    """A stamp keeps the build its manifest records, so a plan's estimate for an unbuilt engine reads no
    manifest of its model's fresh engines (#15: 5,000 of them took a plan of 10,000 engines 0.3 s)."""
    from buildlib.core.manifest import read_manifest
    from buildlib.plan import estimate as sched

    edir = fleet / "engines/a/sm90/tp1-pp1"
    m = read_manifest(edir)
    assert m is not None
    write_manifest(edir, Manifest(m.key, m.fields, m.outputs, m.checkpoint_files, m.name,
                                  {"seconds": 120.0, "gpus": [0, 1]}))
    assert [s.state for s in _planner(fleet).states()] == [FRESH, FRESH]  # re-proven the long way: a new stamp
    assert _planner(fleet).cache.stamps()[str(edir)].built == "120.0 2"
    (fleet / "models.yaml").write_text(MODELS.replace("    checkpoint: ckpt/a\n",
                                                      "    checkpoint: ckpt/a\n    archs: [sm90, sm100]\n"))
    p = _planner(fleet)
    states = p.states()
    assert [(s.engine.id, s.state) for s in states] == [("a/sm90/tp1-pp1", FRESH), ("a/sm100/tp1-pp1", BLOCKED),
                                                        ("b/sm90/tp1-pp1", FRESH)]

    def no_read(*_a: object) -> None:
        raise AssertionError("a manifest was read")

    monkeypatch.setattr(sched, "read_manifest", no_read)
    got = sched.engine_estimate(p, states[1].engine)
    assert (got.seconds, got.basis, got.builds) == (240.0, "its model", 1)  # 120 s on 2 GPUs, 1 worker here


def test_building_an_engine_this_host_cannot_build_leaves_nothing(fleet: Path):
    """A build task for an engine of another host (here: sm90 on a host with no GPU), with no store to restore it
    from, reports it blocked without taking its lock: nothing is written for it, not even the lock file's dir
    (which would cost later no-ops a stat per engine there; a dodo.py hands doit such tasks on every run)."""
    from buildlib.host.gpu import Host
    from buildlib.host.isa import host_isa
    from buildlib.run import build as steps

    with open(fleet / "models.yaml", "a") as f:
        f.write("  - name: c\n    checkpoint: ckpt/a\n")
    p = Planner(load_spec(fleet / "models.yaml"), host=Host((), host_isa()))
    c = p.engines()[-1]
    got = steps.build(p, c)
    assert (got.state, got.why, got.how) == (BLOCKED, "needs an sm90 host", "blocked")
    assert not (fleet / "engines" / "c").exists()
