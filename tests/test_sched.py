"""GPU slots: disjoint, cross-process, no deadlock, busy GPUs, priority, and longest-first estimates."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from buildlib.core.engine import Engine
from buildlib.core.hashing import TreeDigest
from buildlib.core.manifest import Manifest, write_manifest
from buildlib.core.model import ModelSpec, Project
from buildlib.host.gpu import Gpu, Host
from buildlib.host.slots import ALLOW_BUSY_ENV, Backoff, GpusUnavailable, GpuTimeout, eligible_gpus, gpu_slots
from buildlib.plan.estimate import build_record, engine_expected_seconds, expected_seconds, order_longest_first

CTX = mp.get_context("fork")  # explicit: the test helpers below are module-level anyway
JOIN = 30  # seconds; a safety limit on joins, never used for ordering
NEVER = Backoff(first=3600, cap=3600)  # only a doorbell can wake a waiter that uses this


def gpus(n: int, used: int = 0) -> list[Gpu]:
    return [Gpu(i, "NVIDIA H100 80GB HBM3", "sm90", 81559, used) for i in range(n)]


def _worker(gs: list[Gpu], want: int, lock_dir: Path, rounds: int, barrier: Any, q: Any) -> None:
    barrier.wait()
    for _ in range(rounds):
        waited = []
        with gpu_slots(gs, want, lock_dir, on_wait=waited.append) as got:
            start = time.monotonic()
            time.sleep(0.003)  # the "build"; only makes overlap likely if exclusion were broken
            end = time.monotonic()
        q.put((os.getpid(), want, [g.index for g in got], start, end, bool(waited)))


def _hold(gs: list[Gpu], want: int, lock_dir: Path, held: Any, release: Any) -> None:
    with gpu_slots(gs, want, lock_dir):
        held.set()
        release.wait(JOIN)


def _acquire(gs: list[Gpu], want: int, lock_dir: Path, priority: float, waiting: Any, q: Any) -> None:
    with gpu_slots(gs, want, lock_dir, priority=priority, poll=NEVER, on_wait=lambda _: waiting.set()) as got:
        start = time.monotonic()
        end = time.monotonic()  # still holding: recorded before the release
    q.put((priority, [g.index for g in got], start, end))


def test_disjoint_allocation_under_concurrency(tmp_path: Path) -> None:
    gs, wants, rounds = gpus(4), [1, 2, 3, 1, 2, 4], 6
    barrier, q = CTX.Barrier(len(wants)), CTX.Queue()
    procs = [CTX.Process(target=_worker, args=(gs, w, tmp_path, rounds, barrier, q)) for w in wants]
    for p in procs:
        p.start()
    recs = [q.get(timeout=JOIN) for _ in range(len(wants) * rounds)]
    for p in procs:
        p.join(JOIN)
        assert p.exitcode == 0
    for _, want, got, _, _, _ in recs:
        assert len(got) == min(want, 4) and len(set(got)) == len(got)
    for g in range(4):
        spans = sorted((s, e) for _, _, got, s, e, _ in recs if g in got)
        for (_, e1), (s2, _) in itertools.pairwise(spans):
            assert e1 <= s2, f"GPU {g} held by two tasks at once"
    assert any(r[5] for r in recs), "no acquirer ever had to wait: the test did not exercise contention"
    assert not list((tmp_path / "waiters").iterdir())


def test_second_process_cannot_take_a_held_gpu_until_release(tmp_path: Path) -> None:
    gs = gpus(1)
    held, release, waiting, q = CTX.Event(), CTX.Event(), CTX.Event(), CTX.Queue()
    holder = CTX.Process(target=_hold, args=(gs, 1, tmp_path, held, release))
    holder.start()
    assert held.wait(JOIN)
    with pytest.raises(GpuTimeout), gpu_slots(gs, 1, tmp_path, timeout=0):
        pass
    waiter = CTX.Process(target=_acquire, args=(gs, 1, tmp_path, 0.0, waiting, q))
    waiter.start()
    assert waiting.wait(JOIN)  # blocked on the held GPU, polling only once an hour
    release.set()
    holder.join(JOIN)
    _, got, _, _ = q.get(timeout=JOIN)  # woken by the holder's doorbell, not by a poll
    assert got == [0]
    waiter.join(JOIN)
    assert waiter.exitcode == 0


def test_killed_holder_and_killed_waiter_leave_nothing_reserved(tmp_path: Path) -> None:
    gs = gpus(1)
    held, release, waiting, q = CTX.Event(), CTX.Event(), CTX.Event(), CTX.Queue()
    holder = CTX.Process(target=_hold, args=(gs, 1, tmp_path, held, release))
    holder.start()
    assert held.wait(JOIN)
    waiter = CTX.Process(target=_acquire, args=(gs, 1, tmp_path, 1e9, waiting, q))  # top priority
    waiter.start()
    assert waiting.wait(JOIN)
    for p in (holder, waiter):
        os.kill(p.pid, signal.SIGKILL)
        p.join(JOIN)
    # The OS dropped the holder's lock; the dead top-priority waiter is not deferred to.
    with gpu_slots(gs, 1, tmp_path, timeout=0) as got:
        assert [g.index for g in got] == [0]
    assert not list((tmp_path / "waiters").iterdir())


def test_more_gpus_wanted_than_exist_runs_with_what_exists(tmp_path: Path) -> None:
    with gpu_slots(gpus(2), 8, tmp_path, timeout=0) as got:
        assert [g.index for g in got] == [0, 1]
    with gpu_slots(gpus(2), 0, tmp_path, timeout=0) as got:
        assert got == ()
    with pytest.raises(GpusUnavailable, match="no GPU"), gpu_slots([], 1, tmp_path):
        pass


def test_busy_gpu_excluded_unless_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_BUSY_ENV, raising=False)
    gs = [Gpu(0, "H100", "sm90", 81559, 30000), Gpu(1, "H100", "sm90", 81559, 300)]
    with gpu_slots(gs, 2, tmp_path, timeout=0) as got:
        assert [g.index for g in got] == [1]
    with gpu_slots(gs, 2, tmp_path, timeout=0, allow_busy=True) as got:
        assert [g.index for g in got] == [0, 1]
    with gpu_slots(gs, 2, tmp_path, timeout=0, busy_mib=50000) as got:
        assert [g.index for g in got] == [0, 1]
    with pytest.raises(GpusUnavailable, match=rf"GPU 0 .*30000 MiB.*{ALLOW_BUSY_ENV}=1"), \
            gpu_slots(gs[:1], 1, tmp_path, timeout=0):
        pass
    monkeypatch.setenv(ALLOW_BUSY_ENV, "1")
    with gpu_slots(gs[:1], 1, tmp_path, timeout=0) as got:
        assert [g.index for g in got] == [0]


def test_busy_gpu_held_by_another_buildlib_process_stays_eligible(tmp_path: Path) -> None:
    busy = [Gpu(0, "H100", "sm90", 81559, 30000)]
    held, release = CTX.Event(), CTX.Event()
    # The holder is a buildlib build on that GPU: its memory in use is then "ours".
    holder = CTX.Process(target=_hold, args=(gpus(1), 1, tmp_path, held, release))
    holder.start()
    assert held.wait(JOIN)
    assert eligible_gpus(busy, tmp_path) == tuple(busy)  # waited for, not excluded for the whole run
    release.set()
    holder.join(JOIN)
    with pytest.raises(GpusUnavailable):
        eligible_gpus(busy, tmp_path)  # free and still busy: a foreign process


def test_freed_gpus_go_to_the_longest_waiter_that_fits(tmp_path: Path) -> None:
    gs = gpus(2)
    q, w_long, w_short = CTX.Queue(), CTX.Event(), CTX.Event()
    with gpu_slots(gs, 2, tmp_path):
        short = CTX.Process(target=_acquire, args=(gs, 1, tmp_path, 1.0, w_short, q))
        long = CTX.Process(target=_acquire, args=(gs, 2, tmp_path, 10.0, w_long, q))
        short.start()
        assert w_short.wait(JOIN)
        long.start()
        assert w_long.wait(JOIN)
    recs = {prio: (got, s, e) for prio, got, s, e in (q.get(timeout=JOIN), q.get(timeout=JOIN))}
    for p in (short, long):
        p.join(JOIN)
    assert recs[10.0][0] == [0, 1]
    assert recs[10.0][2] <= recs[1.0][1], "the short job, though it came first, went before the long one"


def _engine_dir(root: Path, arch: str, par: str, seconds: float | None, ngpus: int = 1) -> Path:
    d = root / "engines" / "m" / arch / par
    d.mkdir(parents=True)
    if seconds is not None:
        write_manifest(d, Manifest("k", {}, built={"seconds": seconds, "gpus": ["H100"] * ngpus}))
    return d


def test_expected_seconds_sources_and_longest_first(tmp_path: Path) -> None:
    own = _engine_dir(tmp_path, "sm90", "tp1-pp1", 300.0)
    sibling_based = _engine_dir(tmp_path, "sm90", "tp4-pp1", None)
    _engine_dir(tmp_path, "sm80", "tp2-pp1", 200.0, ngpus=2)
    assert expected_seconds(own) == 300.0
    # siblings: median of 300×1 and 200×2 GPU-seconds, spread over 4 workers
    assert expected_seconds(sibling_based, workers=4) == pytest.approx((300 + 400) / 2 / 4)
    fresh = tmp_path / "engines" / "other" / "sm90" / "tp1-pp1"
    assert expected_seconds(fresh, 2, 10 * 2**30, bytes_per_second=2**30, startup_seconds=5) == 10.0
    items = [("a", 1.0), ("b", 5.0), ("c", 1.0), ("d", 9.0)]
    assert [n for n, _ in order_longest_first(items, key=lambda x: x[1])] == ["d", "b", "a", "c"]


def test_engine_expected_seconds_uses_checkpoint_size_and_host_gpus(tmp_path: Path) -> None:
    model = ModelSpec("m", tmp_path / "hf", "trtllm", "float16", None, ("sm90",), ((8, 1),), (), None, None,
                      False, None)
    project = Project(tmp_path / "models.yaml", tmp_path / "engines", tmp_path / ".buildlib")
    ckpt = TreeDigest("d", {"model.safetensors": (40 * 2**30, "x")})
    planner = SimpleNamespace(spec=SimpleNamespace(project=project), checkpoint=lambda m: ckpt,
                              host=Host(gpus=tuple(gpus(4)), cpu_isa="x86_64-avx2"), build_records={},
                              build_record=build_record, known_records={})
    # tp8 wants 8 workers; the host has 4 sm90 GPUs, so 4 workers share the 40 GiB.
    got = engine_expected_seconds(planner, Engine(model, "sm90", 8, 1))  # type: ignore[arg-type]
    assert got == pytest.approx(expected_seconds(tmp_path / "none", 4, 40 * 2**30))


def test_a_models_build_records_are_read_once_per_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """#15: `doit plan` over 5,000 unbuilt engines read each model's manifests once per engine (7 s)."""
    from buildlib.plan import estimate as sched

    _engine_dir(tmp_path, "sm90", "tp1-pp1", 300.0)
    model = ModelSpec("m", tmp_path / "hf", "trtllm", "float16", None, ("sm100",), ((1, 1), (2, 1), (4, 1)), (),
                      None, None, False, None)
    project = Project(tmp_path / "models.yaml", tmp_path / "engines", tmp_path / ".buildlib")
    planner = SimpleNamespace(spec=SimpleNamespace(project=project), checkpoint=lambda m: None,
                              host=Host(gpus=(), cpu_isa="x86_64-avx2"), build_records={},
                              build_record=sched.build_record, known_records={})
    calls = []
    real = sched.model_records
    monkeypatch.setattr(sched, "model_records", lambda d, *more: calls.append(d) or real(d, *more))
    got = [engine_expected_seconds(planner, Engine(model, "sm100", tp, 1)) for tp in (1, 2, 4)]  # type: ignore[arg-type]
    assert got == [300.0, 300.0, 300.0] and calls == [tmp_path / "engines" / "m"]  # its model's sm90 build


def test_ring_survives_a_waiter_that_left_between_open_and_write(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import buildlib.host.slots as sched

    (tmp_path / "waiters").mkdir()
    os.mkfifo(tmp_path / "waiters" / "w_1.0e+00_1_1_0_1_x")

    def gone(path: Path) -> int:
        r, w = os.pipe()
        os.close(r)  # the waiter closed its doorbell: a write now fails with EPIPE
        return w

    monkeypatch.setattr(sched, "_open_doorbell", gone)
    sched._ring(tmp_path)  # a release must never fail because a waiter just left
