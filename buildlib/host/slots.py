"""GPU slots on one host: disjoint, OS-locked GPU sets for concurrent builds, handed to the longest waiting first."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import math
import os
import select
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from .gpu import Gpu

LOCK_DIR_ENV = "BUILDLIB_GPU_LOCK_DIR"
ALLOW_BUSY_ENV = "BUILDLIB_ALLOW_BUSY_GPUS"
ALLOC_LOCK = "alloc.lock"
WAITERS = "waiters"


class GpusUnavailable(UserError):
    """No GPU can be handed out: none of the arch, or every one is busy with another process."""


class GpuTimeout(TimeoutError):
    """gpu_slots(timeout=...) ran out before the wanted GPUs were free."""


@dataclass(frozen=True)
class Backoff:
    """The safety-net poll of a waiting acquirer: first, first*factor, ... capped at cap seconds.

    Waiters are normally woken at once by a release (the doorbell, see gpu_slots); this poll only
    catches releases nobody announced (a holder killed by SIGKILL: the OS dropped its locks but it
    never rang), so it can start slow and stay cheap.
    """

    first: float = 0.05
    factor: float = 2.0
    cap: float = 1.0


DEFAULT_POLL = Backoff()


def default_lock_dir() -> Path:
    """$BUILDLIB_GPU_LOCK_DIR, else /tmp/buildlib-gpu-locks-<uid>. It must be host-local (GPU indices
    are per host) and shared by every doit invocation on the host that should exclude the others."""
    env = os.environ.get(LOCK_DIR_ENV)
    return Path(env) if env else Path("/tmp") / f"buildlib-gpu-locks-{os.getuid()}"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _gpu_lock(lock_dir: Path, index: int) -> Path:
    return lock_dir / f"gpu{index}.lock"


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on path, or None if another open file holds it.
    Python fds are not inherited by exec'd children, so a build subprocess never keeps a GPU lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int) -> None:
    # LOCK_UN releases even if a fork()ed child still shares the open file description.
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextmanager
def _alloc_lock(lock_dir: Path) -> Iterator[None]:
    """The host-wide allocation lock: every decision of who gets which GPUs is made under it, so the
    probe-then-take of several GPU locks is atomic. It is held for microseconds (no I/O but flock)."""
    fd = os.open(lock_dir / ALLOC_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        _unlock(fd)


@dataclass(frozen=True)
class _Waiter:
    """A registered waiter, as encoded in its doorbell FIFO's name (readable by every process)."""

    priority: float
    since_ns: int
    want: int
    eligible: tuple[int, ...]
    name: str = ""

    def order(self) -> tuple[float, int, str]:
        return (-self.priority, self.since_ns, self.name)

    def encode(self) -> str:
        return (f"w_{self.priority:.6e}_{self.since_ns}_{self.want}_{'.'.join(map(str, self.eligible))}"
                f"_{os.getpid()}_{os.urandom(4).hex()}")

    @classmethod
    def decode(cls, name: str) -> _Waiter | None:
        try:
            _, prio, since, want, elig, _pid, _rand = name.split("_")
            return cls(float(prio), int(since), int(want), tuple(int(i) for i in elig.split(".") if i), name)
        except ValueError:
            return None


def _open_doorbell(path: Path) -> int | None:
    """A write end on a waiter's FIFO, or None if nobody reads it any more (its owner died: the FIFO is
    removed) or it is gone."""
    try:
        return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ENXIO:
            with contextlib.suppress(OSError):
                path.unlink()
        return None


def _live_waiters(lock_dir: Path, skip: str = "") -> list[_Waiter]:
    out = []
    for entry in os.scandir(lock_dir / WAITERS):
        if not entry.name.startswith("w_") or entry.name == skip:
            continue
        w = _Waiter.decode(entry.name)
        fd = _open_doorbell(Path(entry.path))
        if fd is None:
            continue
        os.close(fd)
        if w is not None:
            out.append(w)
    return out


def _ring(lock_dir: Path, skip: str = "") -> None:
    """Wake every registered waiter: one byte into each doorbell FIFO. Never raises: a full pipe is
    already rung, and a waiter that closed its doorbell meanwhile (EPIPE) no longer waits."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(lock_dir / WAITERS):
            if entry.name.startswith("w_") and entry.name != skip:
                fd = _open_doorbell(Path(entry.path))
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.write(fd, b"!")
                    os.close(fd)


def _register(lock_dir: Path, me: _Waiter) -> tuple[_Waiter, int]:
    """Create this waiter's doorbell: a FIFO opened read-write (so it never reports EOF), published
    under its final name by rename only once it is open, so a visible FIFO without a reader always
    means a dead waiter."""
    me = dataclasses.replace(me, name=me.encode())
    tmp = lock_dir / WAITERS / f".tmp-{me.name}"
    os.mkfifo(tmp, 0o666)
    fd = os.open(tmp, os.O_RDWR | os.O_NONBLOCK)
    os.rename(tmp, lock_dir / WAITERS / me.name)
    return me, fd


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def _attempt(lock_dir: Path, me: _Waiter) -> tuple[dict[int, int] | None, bool]:
    """One allocation round under the allocation lock: probe every GPU any live waiter may use, then
    hand the free ones out greedily in priority order (longest expected first, then first come), each
    waiter taking its whole set or nothing. Returns ({GPU index: locked fd} of mine, or None; whether
    free GPUs remain that another waiter might take).

    Optimization: a lower-priority waiter backfills GPUs that no higher-priority waiter can use right
    now (a tp1 build runs on 2 free GPUs while a tp4 waits for 4), so GPUs never sit idle while a
    fitting build waits; but it never takes GPUs a higher-priority waiter fits into, so a long tp4 is
    not starved by a stream of short tp1 builds once its GPUs come free.
    """
    with _alloc_lock(lock_dir):
        queue = sorted([*_live_waiters(lock_dir, skip=me.name), me], key=_Waiter.order)
        universe = sorted({i for w in queue for i in w.eligible})
        probe: dict[int, int] = {}
        for i in universe:
            fd = _try_lock(_gpu_lock(lock_dir, i))
            if fd is not None:
                probe[i] = fd
        free = set(probe)
        mine: list[int] | None = None
        for w in queue:
            avail = [i for i in w.eligible if i in free]
            if len(avail) >= w.want:
                take = avail[: w.want]
                free.difference_update(take)
                if w is me:
                    mine = take
                    break
        keep = set(mine or ())
        for i, fd in probe.items():
            if i not in keep:
                _unlock(fd)
        spare = len(probe) > len(keep) and len(queue) > 1
        return ({i: probe[i] for i in mine} if mine is not None else None), spare


def eligible_gpus(gpus: Sequence[Gpu], lock_dir: Path, *, allow_busy: bool = False,
                  busy_mib: int = 1024) -> tuple[Gpu, ...]:
    """The GPUs that may be handed out: those not busy with a foreign process.

    A GPU is busy when its memory in use (at detection) exceeds busy_mib and no buildlib process
    holds its lock. The lock check matters: memory in use on a locked GPU is one of our own builds
    (another doit invocation on this host), which will release it, so it stays eligible and is
    waited for instead of being excluded for the whole run.
    """
    if allow_busy or _truthy(os.environ.get(ALLOW_BUSY_ENV)):
        return tuple(gpus)
    lock_dir.mkdir(parents=True, exist_ok=True)
    keep, busy = [], []
    for g in gpus:
        if g.memory_used_mib <= busy_mib:
            keep.append(g)
            continue
        fd = _try_lock(_gpu_lock(lock_dir, g.index))
        if fd is None:
            keep.append(g)  # held by a buildlib process: its memory is ours
        else:
            _unlock(fd)
            busy.append(g)
    if gpus and not keep:
        names = ", ".join(f"GPU {g.index} ({g.name}, {g.memory_used_mib} MiB in use)" for g in busy)
        raise GpusUnavailable(f"every eligible GPU is busy with another process: {names} (more than {busy_mib} MiB "
                              f"in use); free them, or set {ALLOW_BUSY_ENV}=1 to build on them anyway")
    return tuple(keep)


@contextmanager
def gpu_slots(gpus: Sequence[Gpu], want: int, lock_dir: Path | None = None, *, allow_busy: bool = False,
              busy_mib: int = 1024, poll: Backoff = DEFAULT_POLL, priority: float = 0.0,
              timeout: float | None = None,
              on_wait: Callable[[str], None] | None = None) -> Iterator[tuple[Gpu, ...]]:
    """Hold a disjoint set of min(want, eligible) GPUs from `gpus` for the duration of the block.

    - gpus: this host's GPUs of the needed arch (physical nvidia-smi indices); want <= 0 yields ()
      at once. want is capped at the eligible count, so a tp8 engine on a 4-GPU host builds with 4
      workers instead of waiting forever.
    - Exclusion: one lock file per GPU (`<lock_dir>/gpu<index>.lock`, fcntl.flock) held while the
      block runs; lock_dir is shared by every doit invocation on the host, and the OS drops the
      locks if the process dies, so a crashed build never leaves a GPU reserved.
    - Atomic: all wanted GPUs are taken in one round under a host-wide allocation lock, or none
      (partial holds are released in the same round). No hold-and-wait, hence no deadlock between
      a tp4 and a tp2 build each holding half of what the other needs.
    - Waiting without spinning: a waiter registers a doorbell FIFO in `<lock_dir>/waiters/`; every
      release (and every grant that leaves GPUs free) writes a byte into each doorbell, so waiters
      wake within microseconds of a release instead of after a poll interval (which would leave
      GPUs idle and stretch the makespan). select() on the doorbell also times out after a bounded
      exponential backoff (`poll`) to catch releases by killed holders, which ring no bell.
    - priority: the expected seconds of this build; when GPUs come free they go to the
      highest-priority waiters that fit (see _attempt), i.e. longest-first packing among the
      builds that doit has already started.
    - Busy GPUs are excluded unless allow_busy or BUILDLIB_ALLOW_BUSY_GPUS=1 (see eligible_gpus).
    - timeout: None waits forever; 0 tries once; GpuTimeout when it runs out.
    - on_wait(message) is called once if the caller has to wait (to print it, or in tests).
    The yielded GPUs are for the caller's child processes (CUDA_VISIBLE_DEVICES); this process's
    environment is left alone, because a doit worker runs many tasks in turn.
    """
    if want <= 0:
        yield ()
        return
    lock_dir = lock_dir if lock_dir is not None else default_lock_dir()
    (lock_dir / WAITERS).mkdir(parents=True, exist_ok=True)
    if not gpus:
        raise GpusUnavailable("no GPU of the needed arch on this host")
    eligible = sorted(eligible_gpus(gpus, lock_dir, allow_busy=allow_busy, busy_mib=busy_mib), key=lambda g: g.index)
    by_index = {g.index: g for g in eligible}
    # Rounded as other processes will read it from the doorbell's name, so every process orders alike.
    priority = float(f"{priority:.6e}") if math.isfinite(priority) else 0.0
    me = _Waiter(priority, time.monotonic_ns(), min(want, len(eligible)), tuple(by_index))
    deadline = None if timeout is None else time.monotonic() + timeout
    held, spare = _attempt(lock_dir, me)
    if held is None:
        held, spare = _wait(lock_dir, me, poll, deadline, on_wait)
    try:
        if spare:
            _ring(lock_dir)  # a waiter that deferred to us may fit in what we left free
        yield tuple(by_index[i] for i in held)
    finally:
        for fd in held.values():
            _unlock(fd)
        _ring(lock_dir)


def _wait(lock_dir: Path, me: _Waiter, poll: Backoff, deadline: float | None,
          on_wait: Callable[[str], None] | None) -> tuple[dict[int, int], bool]:
    """Register a doorbell, then retry after every ring (or backoff timeout) until granted."""
    if deadline is not None and time.monotonic() >= deadline:
        raise GpuTimeout(f"{me.want} of GPU {_indices(me.eligible)} not free")
    me, bell = _register(lock_dir, me)
    granted = False
    try:
        if on_wait is not None:  # called once queued: from here on, grants respect this waiter's priority
            on_wait(f"waiting for {me.want} of GPU {_indices(me.eligible)}")
        delay = poll.first
        while True:
            # Registered before this attempt, so a release after it rings us: no lost wake-up.
            held, spare = _attempt(lock_dir, me)
            if held is not None:
                granted = True
                return held, spare
            wait = delay
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    raise GpuTimeout(f"{me.want} of GPU {_indices(me.eligible)} not free")
                wait = min(wait, delay)
            ready, _, _ = select.select([bell], [], [], wait)
            if ready:
                _drain(bell)
                delay = poll.first
            else:
                delay = min(delay * poll.factor, poll.cap)
    finally:
        with contextlib.suppress(OSError):
            (lock_dir / WAITERS / me.name).unlink()
        os.close(bell)
        if not granted:
            _ring(lock_dir)  # waiters that deferred to us must re-decide


def _indices(idx: Iterable[int]) -> str:
    return ",".join(map(str, idx))


def describe(gpus: Sequence[Gpu]) -> str:
    """`GPU 0,1 (sm90)` for a log line saying which GPUs a task got."""
    archs = ",".join(sorted({g.arch for g in gpus}))
    return f"GPU {_indices(g.index for g in gpus)} ({archs})" if gpus else "no GPU"
