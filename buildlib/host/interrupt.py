"""Signals end a run cleanly: Ctrl-C (SIGINT) and SIGTERM unwind it, and it ends in one line.

Python's default SIGTERM kills the process on the spot: no `finally` runs, so a builder keeps running
(in its own process group) and temp dirs stay behind; its default SIGINT ends doit in a traceback.
install() makes both raise Interrupted in whatever the main thread is doing, so every `finally` runs
(the builder's process group is stopped and waited for by buildlib.proc, temp dirs are removed, locks
released, doit saves what finished), then the process ends with `interrupted` and exit status
128 + signal (130, 143). A full disk ends the same way with `no space left on device: <path>`, exit 1.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from types import FrameType, TracebackType

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; a KeyboardInterrupt, so code that lets Ctrl-C through lets this through."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def no_space(e: BaseException) -> str | None:
    """`no space left on device: <path>` for a full disk (or quota), else None."""
    if isinstance(e, OSError) and e.errno in NO_SPACE:
        return f"no space left on device: {e.filename or 'while writing'}"
    return None


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _hook(kind: type[BaseException], e: BaseException, tb: TracebackType | None) -> None:
    if isinstance(e, KeyboardInterrupt) or no_space(e):
        code = 128 + getattr(e, "signum", signal.SIGINT) if isinstance(e, KeyboardInterrupt) else 1
        import multiprocessing

        for child in multiprocessing.active_children():  # doit -P process workers: each stops its own builder
            child.join(timeout=60)
        print("interrupted" if code != 1 else f"error: {no_space(e)}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # every finally has run; exit without a traceback
    sys.__excepthook__(kind, e, tb)


def install() -> None:
    """In the doit process, before any task runs (doit -P process workers inherit the handlers)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise)
    sys.excepthook = _hook
