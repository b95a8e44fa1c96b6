"""What each running step is doing now, for the live view (buildlib.reporter): one small JSON file per running
task under `<work_dir>/progress/`, written atomically by the step, read by the reporter.

Files, not callbacks, because doit runs actions in threads or in other processes (-P process), and a worker's
phases happen in its own subprocess: a step starts its record (task, GPUs, expected seconds from earlier builds),
each phase updates it (`convert`, `build`, `validate`; the aoti worker's `load`, `export`, `compile`, `save` come
as `[phase] <name>` lines in its output, read by proc.run_logged as it streams them), and the step removes it
when done. A record whose process is gone (a crash, SIGKILL) is ignored and removed by the next reader.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.layout import progress_dir

PHASE_LINE = re.compile(rb"^\[phase\] ([a-z][a-z_-]{0,31})\s*$")  # a worker's own phase, as it prints it
_current = threading.local()  # the record of the step this thread runs (doit -P thread: one per task)


@dataclass
class Running:
    task: str
    phase: str
    started: float  # wall clock (time.time): comparable across processes
    phase_started: float
    gpus: list[int]
    expected: float  # seconds, from earlier builds (0: unknown)
    pid: int


def _path(work_dir: Path, task: str) -> Path:
    return progress_dir(work_dir) / (re.sub(r"[^A-Za-z0-9._-]", "_", task) + ".json")


def _write(work_dir: Path, r: Running) -> None:
    d = progress_dir(work_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{os.getpid()}-{threading.get_ident()}.tmp"
    tmp.write_text(json.dumps(asdict(r)))
    os.replace(tmp, _path(work_dir, r.task))


@contextlib.contextmanager
def step(work_dir: Path, task: str, phase: str, gpus: Sequence[int] = (), expected: float = 0.0) -> Iterator[None]:
    """The record of one running step, for as long as the block runs (nested: the inner step's phase wins)."""
    now = time.time()
    r = Running(task, phase, now, now, list(gpus), float(expected), os.getpid())
    outer = getattr(_current, "record", None)
    _current.record = (work_dir, r)
    try:
        with contextlib.suppress(OSError):  # a progress record is a nicety: never fail a build over it
            _write(work_dir, r)
        yield
    finally:
        _current.record = outer
        with contextlib.suppress(OSError):
            _path(work_dir, task).unlink(missing_ok=True)


def phase(name: str) -> None:
    """The running step (this thread's) entered a phase."""
    cur = getattr(_current, "record", None)
    if cur is None:
        return
    work_dir, r = cur
    r.phase, r.phase_started = name, time.time()
    with contextlib.suppress(OSError):
        _write(work_dir, r)


def phase_from_line(line: bytes) -> None:
    """A worker's output line: `[phase] compile` moves the running step to that phase."""
    m = PHASE_LINE.match(line)
    if m:
        phase(m.group(1).decode())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(work_dir: Path) -> list[Running]:
    """Every step running now, oldest first; records of dead processes are removed."""
    out = []
    d = progress_dir(work_dir)
    for p in sorted(d.glob("*.json")) if d.is_dir() else ():
        try:
            r = Running(**json.loads(p.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # being replaced, or not ours
        if _alive(r.pid):
            out.append(r)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
    return sorted(out, key=lambda r: r.started)
