"""buildlib.fanout: a read-only check split over forked processes gives what one process gives, and a child that
fails costs only speed (its items come back None)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from buildlib.core import fanout
from buildlib.plan.state import BLOCKED, FRESH
from tests.test_stamps import _planner, fleet  # noqa: F401 - fleet is a fixture


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three processes whatever the item count or core count (the split is what is tested, not the policy)."""
    monkeypatch.setattr(fanout, "processes", lambda n, busy=0: min(3, n))


def test_results_in_order_and_checked_in_children(forks: None):
    parent = os.getpid()
    got = fanout.fan_out(list(range(10)), lambda x: [x * x, os.getpid()])
    assert [v for v, _ in got] == [x * x for x in range(10)]
    pids = [p for _, p in got]
    assert pids[:3] == [parent] * 3  # the first chunk here (10 items: 3, 4, 3)
    assert parent not in pids[3:] and len(set(pids[3:])) == 2  # the others in two children
    shares = fanout.fan_out(list(range(10)), lambda x: os.getpid(), local_share=0.5)
    assert shares[:2] == [parent] * 2 and parent not in shares[2:]  # half a child's share here: 2, 4, 4


def test_a_failing_child_gives_none_for_its_items_only(forks: None):
    def check(x: int) -> int:
        if x == 5:
            raise RuntimeError("boom")
        return x

    assert fanout.fan_out(list(range(10)), check) == [0, 1, 2, None, None, None, None, 7, 8, 9]  # chunks of 3, 4, 3


def test_a_child_killed_gives_none(forks: None):
    def check(x: int) -> int:
        if x == 9 and os.getpid() != parent:
            os.kill(os.getpid(), 9)
        return x

    parent = os.getpid()
    assert fanout.fan_out(list(range(10)), check) == [0, 1, 2, 3, 4, 5, 6, None, None, None]


def test_no_fork_while_another_thread_runs():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert fanout.processes(10**6) == 1
    finally:
        stop.set()
        t.join()
    assert fanout.processes(10) == 1  # too few items to be worth a fork


def test_planner_states_fanned_out_match_one_process(fleet: Path, forks: None):  # noqa: F811
    serial = _planner(fleet)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(fanout, "processes", lambda n, busy=0: 1)
        one = [(s.engine.id, s.state, s.key, s.validated, s.fields) for s in serial.states()]
    fanned = [(s.engine.id, s.state, s.key, s.validated, s.fields) for s in _planner(fleet).states()]
    assert fanned == one and {s for _, s, *_ in one} == {FRESH}
    # a change is noticed through the fanned-out stamp check as well
    p = _planner(fleet)
    victim = p.engines()[-1]
    (victim.dir(p.spec.project) / "model.pt2").write_bytes(b"other bytes")
    first, second = _planner(fleet).states()
    assert first.state == FRESH and second.state == BLOCKED  # stale, on a host without an sm90 GPU
    assert any("model.pt2" in r for r in second.reasons), second.reasons


def test_an_error_here_stops_the_children(forks: None):
    """The first chunk fails (as on Ctrl-C) while both children are mid-check: they are killed and reaped."""
    r, w = os.pipe()
    parent = os.getpid()

    def check(x: int) -> int:
        if os.getpid() == parent:
            got = b""
            while got.count(b"\n") < 2:  # both children are checking
                got += os.read(r, 64)
            pids.extend(int(x) for x in got.split())
            raise KeyboardInterrupt
        os.write(w, f"{os.getpid()}\n".encode())
        os.kill(os.getpid(), signal.SIGSTOP)  # stopped mid-check: only a kill ends it
        return x

    pids: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        fanout.fan_out(list(range(10)), check)
    assert len(set(pids)) == 2
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already killed and reaped by fan_out


def test_cores_busy_with_our_other_work_get_no_process(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(4)))
    assert fanout.processes(10**6) == 4
    assert fanout.processes(10**6, busy=1) == 3  # the GPU probe runs meanwhile
    assert fanout.processes(10**6, busy=4) == 1


def _add_unbuilt(root: Path) -> None:
    """A model `c` (model a's checkpoint) in models.yaml: an engine never built, so no stamp and no manifest."""
    with open(root / "models.yaml", "a") as f:
        f.write("  - name: c\n    checkpoint: ckpt/a\n")


def test_unbuilt_engines_told_in_children_are_what_state_says(fleet: Path, forks: None):  # noqa: F811
    """An engine with no stamp and no manifest is told missing (blocked: no sm90 GPU here) from one stat in a
    forked check; its state, reasons, key and (lazily made) fields are what the full state() gives."""
    _add_unbuilt(fleet)
    fanned = _planner(fleet).states()
    full = _planner(fleet)
    serial = [full.state(e) for e in full.engines()]
    assert [(s.engine.id, s.state, s.reasons, s.key, s.blocked, s.fields) for s in fanned] == \
        [(s.engine.id, s.state, s.reasons, s.key, s.blocked, s.fields) for s in serial]
    assert [s.state for s in fanned] == [FRESH, FRESH, BLOCKED]
    assert fanned[2].reasons == ["needs an sm90 host", "target sm90 not built yet"]


def test_gpu_probe_starts_early_only_when_an_engine_is_unbuilt(fleet: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    """The probe (nvidia-smi) is started before the stamp checks when some engine has neither stamp nor
    manifest, so it runs meanwhile; a fleet of fresh engines never starts it; a planner starts it once."""
    from buildlib.host.gpu import GpuProbe
    from buildlib.plan import planner as plan_mod

    started: list[int] = []

    def probe() -> GpuProbe:
        started.append(1)
        return GpuProbe()

    monkeypatch.setattr(plan_mod, "host_probe", probe)
    p = _planner(fleet)
    p.expect_host()
    assert [s.state for s in p.states()] == [FRESH, FRESH] and started == []
    _add_unbuilt(fleet)
    p = _planner(fleet)
    p.expect_host()  # as the doit loader does, before doit sets up
    assert [s.state for s in p.states()] == [FRESH, FRESH, BLOCKED] and started == [1]


def test_an_engine_built_between_two_passes_is_seen(fleet: Path, forks: None):  # noqa: F811
    """A pass that found an engine's arch dir absent (so none of its engines had a manifest: one stat for all)
    does not carry that over: once the engine is built there, the same planner's next pass sees it fresh."""
    import shutil

    _add_unbuilt(fleet)
    p = _planner(fleet)
    assert [s.state for s in p.states()] == [FRESH, FRESH, BLOCKED]
    a, _, c = p.engines()
    assert not c.dir(p.spec.project).parent.exists()
    # model c is model a's checkpoint with a's options: a's engine is c's (the key has no model name)
    shutil.copytree(a.dir(p.spec.project), c.dir(p.spec.project))
    again = p.states()
    assert [s.state for s in again] == [FRESH, FRESH, FRESH] and again[2].key == again[0].key


def test_a_checkpoint_changed_is_seen_by_the_children_and_digested_here(fleet: Path, forks: None):  # noqa: F811
    """Checkpoints' tree stamps are checked in the fan-out by whichever process checks their engines: a shard
    rewritten in place (same size) fails its stamp there, so the engine is told by the full state() here, which
    digests the checkpoint anew (stale, blocked on this host without an sm90 GPU, and why); the digest of a
    checkpoint whose stamp held only in a child is made here on first use, as it is."""
    p = _planner(fleet)
    a, b = p.engines()
    shard = next((fleet / "ckpt" / "b").glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    states = p.states()
    assert [s.state for s in states] == [FRESH, BLOCKED]
    assert f"checkpoint {shard.name} changed" in states[1].reasons, states[1].reasons
    assert p.checkpoint(a.model) == _planner(fleet).checkpoint(a.model)
    assert p.checkpoint(b.model) == _planner(fleet).checkpoint(b.model) != None  # noqa: E711
