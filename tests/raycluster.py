"""A local Ray cluster for tests and benchmarks: nodes on loopback started with the node command, each with
its own environment (stand-in GPUs), and stopped by their own process ids (never a broad `ray stop`)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

TAG = "ENGINEBUILD_TEST_CLUSTER"


def start_node(env: dict[str, str], tag: str, *args: str) -> None:
    """`python -m buildlib.fleet.ray_node ... --node-ip-address 127.0.0.1` with the cluster's tag in its environment
    (2 logical CPUs unless args give --num-cpus: Ray gives each task one CPU by default)."""
    r = subprocess.run([sys.executable, "-m", "buildlib.fleet.ray_node", "--num-cpus", "2",
                        *args,  # args may say otherwise
                        "--node-ip-address", "127.0.0.1", "--disable-usage-stats"], capture_output=True, text=True,
                       timeout=300,
                       env={**env, TAG: tag, "RAY_USAGE_STATS_ENABLED": "0"})
    if r.returncode != 0:
        raise RuntimeError(f"ray node did not start: {r.stdout}{r.stderr}")


def _ppid(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _zombie(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True  # gone


def own_processes(tag: str) -> set[int]:
    """The cluster's processes: those whose environment carries its tag (raylet, GCS, workers), and all their
    descendants (agents that rename themselves overwrite their environment, but stay their raylet's children)."""
    needle = f"{TAG}={tag}".encode()
    pids = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid() and not _zombie(p)]
    found: set[int] = set()
    for p in pids:
        try:
            if needle in Path(f"/proc/{p}/environ").read_bytes().split(b"\0"):
                found.add(int(p))
        except OSError:
            continue
    parents = {int(p): _ppid(p) for p in pids}
    grew = True
    while grew:
        kids = {p for p, pp in parents.items() if pp in found and p not in found}
        found |= kids
        grew = bool(kids)
    return found


def stop(tag: str) -> None:
    """Stop the cluster's processes all at once, as a machine that is gone: SIGSTOP every one (until no new one
    appears), so none sees another die and reacts (a worker whose builder was killed first would report a
    failed build, not a lost node), then SIGKILL them and wait (pidfd, bounded) until each has exited."""
    frozen: set[int] = set()
    while new := own_processes(tag) - frozen:
        for pid in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        frozen |= new
    fds = []
    for pid in frozen:
        with contextlib.suppress(ProcessLookupError):
            fds.append(os.pidfd_open(pid))
            os.kill(pid, signal.SIGKILL)
    for fd in fds:
        select.select([fd], [], [], 30)
        os.close(fd)
