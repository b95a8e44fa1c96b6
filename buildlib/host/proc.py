"""Running a toolchain subprocess with its whole output kept in a log file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..core.errors import BuildFailed
from . import progress

TAIL_LINES = 20


def tail(log: Path, n: int = TAIL_LINES) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the explicit stop_group() still applies
        pass


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the child's process group, wait up to `grace` seconds, then SIGKILL it; reap the child."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; make sure nothing of its group is left
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        break


def run_logged(argv: Sequence[str], log: Path, what: str, env: Mapping[str, str] | None = None,
               cwd: Path | None = None, echo: bool = False) -> None:
    """Run argv with stdout+stderr appended to log (streamed line by line to our stdout too when
    echo is set). On failure raise BuildFailed with the log's tail and its path."""
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(argv)}\n".encode())
        f.flush()
        # Its own process group, so the whole tree (mpirun and its ranks, trtllm-build's workers) can be
        # stopped together; and it dies with us even if we are SIGKILLed (PR_SET_PDEATHSIG).
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                                start_new_session=True, preexec_fn=_die_with_parent)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                f.write(line)
                progress.phase_from_line(line)
                if echo:
                    sys.stdout.buffer.write(line)
                    sys.stdout.flush()
            rc = proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM (buildlib.interrupt), a full disk: stop the whole group first
            stop_group(proc)
            raise
    if rc != 0:
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
        raise BuildFailed(f"{what} failed ({how}); full log: {log}\n{tail(log)}", log)


def run_worker(module: str, request: dict, log: Path, what: str, env: Mapping[str, str] | None = None,
               cwd: Path | None = None, prefix: Sequence[str] = ()) -> dict:
    """Run `[prefix] python -m module request.json` (a worker that imports the heavy toolchain, so this
    process never does) and return the JSON it writes to request['result']."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="buildlib-") as d:
        req, res = Path(d, "request.json"), Path(d, "result.json")
        req.write_text(json.dumps({**request, "result": str(res)}))
        run_logged([*prefix, sys.executable, "-m", module, str(req)], log, what, env=env, cwd=cwd)
        try:
            return json.loads(res.read_text())
        except (OSError, ValueError):
            raise BuildFailed(f"{what}: worker wrote no result; full log: {log}\n{tail(log)}", log) from None
