"""buildlib.fanout: a read-only check split over forked processes gives what one process gives, and a child that
fails costs only speed (its items come back None)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from buildlib import fanout
from buildlib.plan import BLOCKED, FRESH
from tests.test_stamps import _planner, fleet  # noqa: F401 - fleet is a fixture


@pytest.fixture
def forks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three processes whatever the item count or core count (the split is what is tested, not the policy)."""
    monkeypatch.setattr(fanout, "processes", lambda n: min(3, n))


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
        m.setattr(fanout, "processes", lambda n: 1)
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
