"""doit's console reporter: what is running while it runs, and at the end the engines not built here (with the
reason) and one tally line.

While steps run (buildlib.host.progress records them): on a terminal, a live view (rich) of each running task with its
phase, elapsed time, GPUs and ETA from earlier builds of that engine, and overall done/total with the time left;
off a terminal (a CI log), plain lines: each phase change, and a heartbeat line per step every
$BUILDLIB_HEARTBEAT_SECONDS (60) while it runs. $BUILDLIB_PROGRESS=plain|live|off picks one.

doit imports every installed REPORTER plugin on every run (even a plain dodo.py's), so this module
imports only buildlib.core.states at import time: a plain doit run in the same environment does not pay for buildlib.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doit.exceptions import BaseFail
from doit.reporter import ConsoleReporter
from doit.task import Task

from ..core.states import BLOCKED

if TYPE_CHECKING:
    from ..host.progress import Running
    from .tasks import LeftOut

# The tally's words, in its order: `3 built, 2 refitted, 1 restored, 2 validated, 1 failed, 500 up to date, ...`
TALLY = ("built", "refitted", "restored", "validated", "failed", "up to date", "not for this host")
STEPS = ("checkpoint:", "convert:", "build:", "validate:", "triton:")


class EngineReporter(ConsoleReporter):
    """doit's console output; at the end, per reason the engines not built here, then the tally line."""

    desc = "console output, ending with the engines not built here and a tally of what the run did"
    left_out: LeftOut | None = None  # engines the loader gave no tasks (set by the loader before a run)
    work_dir: Path | None = None  # where running steps record their progress (set by the loader)

    def __init__(self, outstream: Any, options: dict[str, Any]):
        super().__init__(outstream, options)
        self.blocked: dict[str, list[str]] = {}  # why -> engines whose build task could not build them here
        self.tally: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.finished = 0
        self.expected: dict[str, float] = {}  # step task -> expected seconds, until it finishes
        self.monitor: Monitor | None = None

    def write(self, text: str) -> None:
        with self.lock:
            super().write(text)

    def initialize(self, tasks: dict[str, Task], selected_tasks: list[str]) -> None:
        super().initialize(tasks, selected_tasks)
        steps = [t for t in tasks.values() if t.name.startswith(STEPS) and not _known_fresh(t)]
        self.expected = {t.name: float((t.meta or {}).get("expected", 0.0)) for t in steps}
        mode = os.environ.get("BUILDLIB_PROGRESS") or ("live" if _isatty(self.outstream) else "plain")
        if self.work_dir is not None and self.expected and mode in ("live", "plain"):
            self.monitor = Monitor(self, self.work_dir, live=mode == "live")
            self.monitor.start()

    def _finished(self, task: Task) -> None:
        if task.name in self.expected:
            with self.lock:
                self.expected.pop(task.name)
                self.finished += 1

    def add_success(self, task: Task) -> None:
        self._finished(task)
        how = task.values.get("how")
        if task.name.startswith("build:"):
            if task.values.get("state") == BLOCKED:
                why = task.values.get("why") or "see `doit plan` for why"
                self.blocked.setdefault(why, []).append(task.name.removeprefix("build:"))
            elif how in ("built", "refitted", "restored", "up to date"):
                self.tally[how] += 1
        elif task.name.startswith("validate:") and task.values.get("state") not in (None, BLOCKED):
            self.tally["validated"] += 1
        super().add_success(task)

    def skip_uptodate(self, task: Task) -> None:
        self._finished(task)
        if task.name.startswith("build:"):
            self.tally["up to date"] += 1
        super().skip_uptodate(task)

    def add_failure(self, task: Task, fail: BaseFail) -> None:
        self._finished(task)
        if task.name.startswith(STEPS):
            self.tally["failed"] += 1
        super().add_failure(task, fail)

    def complete_run(self) -> None:
        """Per reason `N engines not built here, <reason>: a, b, c and 7 more`, then the tally line
        (`nothing to do: ...` when the run did nothing but find engines up to date or not for this host)."""
        if self.monitor is not None:
            self.monitor.finish()
        left = self.left_out
        named: dict[str, list[str]] = {}  # reason -> the first engines not built for it, by id
        count: Counter[str] = Counter()
        for why, left_engines in (left.blocked.items() if left else ()):
            named[why] = [e.id for e in left_engines[:3]]  # 5,000 blocked engines: three ids made, not 5,000
            count[why] = len(left_engines)
        for why, ids in self.blocked.items():
            named.setdefault(why, []).extend(ids)
            count[why] += len(ids)
        for reason, ids in named.items():
            n = count[reason]
            some = ", ".join(ids[:3]) + (f" and {n - 3} more" if n > 3 else "")
            self.write(f"{engines(n)} not built here, {reason}: {some}\n")
        tally = Counter(self.tally)
        tally["up to date"] += len(left.done) if left else 0
        tally["not for this host"] += count.total()
        words = ", ".join(f"{tally[k]} {k}" for k in TALLY if tally[k])
        idle = not any(tally[k] for k in TALLY if k not in ("up to date", "not for this host"))
        self.write(("nothing to do: " + (words or "no engines") if idle else words) + "\n")
        super().complete_run()


def engines(n: int) -> str:
    return f"{n} engine" + ("" if n == 1 else "s")


def _known_fresh(task: Task) -> bool:
    """The plan already knows it is up to date (a literal True): doit skips it at once, nothing to watch."""
    return bool(task.uptodate) and all(u[0] is True for u in task.uptodate)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def clock(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Monitor(threading.Thread):
    """Polls buildlib.host.progress once a second while the run lasts; a live view or plain lines."""

    def __init__(self, reporter: EngineReporter, work_dir: Path, live: bool):
        super().__init__(name="buildlib-progress", daemon=True)
        self.reporter, self.work_dir, self.live = reporter, work_dir, live
        self.heartbeat = float(os.environ.get("BUILDLIB_HEARTBEAT_SECONDS") or 60)
        self.done = threading.Event()
        self.seen: dict[str, tuple[str, float]] = {}  # task -> (phase, when its last line was printed)
        self.view: Any = None

    def finish(self) -> None:
        self.done.set()
        self.join(timeout=5)

    def run(self) -> None:
        from ..host.progress import running

        if self.live:
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.reporter.outstream)
            with Live(self.table([]), console=console, refresh_per_second=2, transient=True,
                      redirect_stdout=True, redirect_stderr=True) as self.view:
                while not self.done.wait(0.5):
                    self.view.update(self.table(running(self.work_dir)))
            return
        while not self.done.wait(1.0):
            self.lines(running(self.work_dir))

    def eta(self, r: Running, now: float) -> str:
        if r.expected <= 0:
            return "no earlier build"
        left = r.expected - (now - r.started)
        return f"~{clock(left)} left" if left > 0 else f"over its ~{clock(r.expected)}"

    def overall(self, now: float, runs: list[Running]) -> str:
        rep = self.reporter
        left = sum(rep.expected.values()) - sum(min(now - r.started, r.expected) for r in runs)
        return (f"{rep.finished}/{rep.finished + len(rep.expected)} steps done, {len(runs)} running"
                + (f", about {clock(left / max(1, len(runs)))} left" if left > 0 else ""))

    def table(self, runs: list[Running]) -> Any:
        from rich.table import Table

        now = time.time()
        t = Table(title=self.overall(now, runs), title_justify="left", expand=False)
        for col in ("task", "phase", "elapsed", "GPUs", "ETA"):
            t.add_column(col)
        for r in runs:
            t.add_row(r.task, r.phase, clock(now - r.started), ",".join(map(str, r.gpus)) or "-", self.eta(r, now))
        return t

    def lines(self, runs: list[Running]) -> None:
        """Plain lines: a step's phase when it changes; every heartbeat seconds, that it is still running."""
        now = time.time()
        for r in runs:
            phase, last = self.seen.get(r.task, ("", 0.0))
            gpus = f", GPU {','.join(map(str, r.gpus))}" if r.gpus else ""
            if phase != r.phase:
                self.reporter.write(f"{r.task}: {r.phase} (after {clock(now - r.started)}{gpus})\n")
                self.seen[r.task] = (r.phase, now)
            elif now - last >= self.heartbeat:
                self.reporter.write(f"still running: {r.task}, {r.phase} for {clock(now - r.phase_started)}, "
                                    f"{clock(now - r.started)} in all, {self.eta(r, now)}{gpus}; "
                                    f"{self.overall(now, runs)}\n")
                self.seen[r.task] = (r.phase, now)
        for task in set(self.seen) - {r.task for r in runs}:
            del self.seen[task]
