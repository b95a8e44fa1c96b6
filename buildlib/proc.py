"""Running a toolchain subprocess with its whole output kept in a log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .errors import BuildFailed

TAIL_LINES = 20


def tail(log: Path, n: int = TAIL_LINES) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def run_logged(argv: Sequence[str], log: Path, what: str, env: Mapping[str, str] | None = None,
               cwd: Path | None = None, echo: bool = False) -> None:
    """Run argv with stdout+stderr appended to log (streamed line by line to our stdout too when
    echo is set). On failure raise BuildFailed with the log's tail and its path."""
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as f:
        f.write(f"$ {' '.join(argv)}\n".encode())
        f.flush()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            if echo:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
        rc = proc.wait()
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
