"""What a run shows while it runs (issue #13 item 1): plain lines with phases and heartbeats off a terminal, a live
view on one, and the tally at the end. The stand-in builder holds after rank 0 until the test closes its gate, so
each check happens while the build is really running (no sleeps)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

from tests.conftest import LOADER_PYPROJECT, write_hf_checkpoint

MODELS = ("defaults: {backend: trtllm, build: {max_batch_size: 8}}\n"
          "models:\n  - {name: llama, checkpoint: ckpt, archs: [sm90]}\n")


def _project(tmp_path: Path, standins) -> tuple[Path, dict[str, str], Path]:
    root = tmp_path / "repo"
    write_hf_checkpoint(root / "ckpt", shards=1, seed=7)
    (root / "models.yaml").write_text(MODELS)
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    return root, {**standins(), "STANDIN_TRTLLM_GATE": str(gate)}, gate


def _read_until(fd: int, needle: bytes, limit: float = 120.0) -> bytes:
    """Read fd until needle shows up (select with a bound: a missing line fails the test, never hangs it)."""
    got = b""
    while needle not in got:
        ready, _, _ = select.select([fd], [], [], limit)
        assert ready, f"{needle!r} never came; got:\n{got.decode(errors='replace')}"
        chunk = os.read(fd, 65536)
        assert chunk, f"output ended before {needle!r}:\n{got.decode(errors='replace')}"
        got += chunk
    return got


def test_off_a_terminal_plain_lines_say_each_phase_and_a_heartbeat_while_a_build_runs(tmp_path, standins):
    root, env, gate = _project(tmp_path, standins)
    env = {**env, "BUILDLIB_HEARTBEAT_SECONDS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "doit"], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    with open(gate, "w"):  # opens once the builder waits on it: the build is running
        got = _read_until(fd, b"still running: build:llama/sm90/tp1-pp1, build for ")
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == 0, (got + rest).decode()
    out = (got + rest).decode()
    # polled each second: a step that lasts is seen, with the GPU it holds
    assert re.search(r"^build:llama/sm90/tp1-pp1: build \(after \d+s, GPU \d\)$", out, re.M), out
    assert "steps done, 1 running" in out and "\x1b[" not in out  # no escape codes in a log
    assert out.splitlines()[-1] == "1 built, 1 validated", out


def test_on_a_terminal_a_live_view_shows_the_running_task(tmp_path, standins):
    root, env, gate = _project(tmp_path, standins)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "doit"], cwd=root, env={**env, "COLUMNS": "160"},
                            stdout=slave, stderr=slave)
    os.close(slave)
    try:
        with open(gate, "w"):
            screen = _read_until(master, b"build:llama/sm90/tp1-pp1")
            screen += _read_until(master, b"ETA")
        assert proc.wait(timeout=120) == 0
    finally:
        rest = b""
        while select.select([master], [], [], 0)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal's other end is closed
                break
            if not chunk:
                break
            rest += chunk
        os.close(master)
    text = screen.decode(errors="replace")
    assert "phase" in text and "elapsed" in text and "GPUs" in text and "steps done" in text, text
    assert "1 built, 1 validated" in (screen + rest).decode(errors="replace")


def test_a_progress_line_is_one_write_so_parallel_workers_never_run_two_lines_together(monkeypatch):
    """doit -P process gives every worker the same stdout: a line written as text, then newline, ran into the next
    worker's line (seen on a 4-GPU fleet: `...on GPU 0 (sm90)building m00...`). One write per line, newline in it."""
    from buildlib.run.produce import say

    writes: list[str] = []

    class Recorder:
        def write(self, s: str) -> int:
            writes.append(s)
            return len(s)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stdout", Recorder())
    say("building m00/sm90/tp1-pp1 on GPU 0 (sm90)")
    say("built m00/sm90/tp1-pp1 in 0.3s")
    assert writes == ["building m00/sm90/tp1-pp1 on GPU 0 (sm90)\n", "built m00/sm90/tp1-pp1 in 0.3s\n"]
