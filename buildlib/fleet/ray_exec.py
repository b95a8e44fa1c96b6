"""The Ray executor: each build/validate action doit decides to run becomes a Ray task on a node of its arch.

Switched on by `BUILDLIB_RAY=<address>` (or `auto`, Ray's own discovery) in the driver's environment;
off, nothing changes. doit stays the driver: the graph, the plan and the up-to-date checks are local;
a Ray task runs exactly the step a local run would (buildlib.fleet.remote.run_step, no doit on the workers),
asking for `num_gpus` and the arch resource the node command advertises (`{"sm_90": n}`, plus the exact
GPU name where the model asks for one), so it can only land on a node of that arch. The worker refuses
a key other than the driver's; it builds into its own temp dir and publishes to the engines dir it
sees (a shared filesystem) and to the store, so afterwards the driver restores from the store what it
cannot see (steps.build after the remote step: fresh, or restored, never rebuilt on a driver without
GPUs). Workers get buildlib from their image (`pip install enginebuild` there) or from Ray's
runtime_env (`BUILDLIB_RAY_RUNTIME_ENV='{"py_modules": ["/path/to/buildlib"]}'`).

Failures: a node that dies mid-build is retried elsewhere by Ray itself (max_retries, system failures
only); a build that fails is reported with its log's tail and path and not retried (retry_exceptions is
off). Ctrl-C on the driver cancels the Ray tasks in flight (force). An arch no node of the cluster has
is reported as blocked, not left pending.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.engine import Engine
from ..core.errors import BuildFailed, UserError
from .ray_node import arch_resource, gpu_name_resource

ENV = "BUILDLIB_RAY"
ENV_RUNTIME = "BUILDLIB_RAY_RUNTIME_ENV"
MAX_RETRIES = 3


def address() -> str | None:
    """The Ray cluster to run on, or None (local execution)."""
    return os.environ.get(ENV) or None


def runtime_env() -> dict[str, Any] | None:
    """The runtime_env the driver gives its Ray job ($BUILDLIB_RAY_RUNTIME_ENV, JSON), or None."""
    raw = os.environ.get(ENV_RUNTIME)
    if not raw:
        return None
    try:
        env = json.loads(raw)
    except ValueError as e:
        raise UserError(f"{ENV_RUNTIME} is not JSON ({e}): e.g. '{{\"working_dir\": \".\"}}'") from None
    if not isinstance(env, dict):
        raise UserError(f"{ENV_RUNTIME} must be a JSON object (a Ray runtime_env), e.g. '{{\"working_dir\": \".\"}}'")
    return env


def _step(req: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The Ray task body (importable by reference on the workers): a generator whose first item says the task
    started on a node (the driver's waiting -> running), the second what the step did."""
    yield {"started": socket.gethostname()}
    from .remote import run_step

    try:
        yield {"ok": True, **run_step(req)}
    except (UserError, BuildFailed) as e:  # the log path is on that node: say which
        yield {"ok": False, "error": f"on Ray node {socket.gethostname()}: {e}"}


class RayExecutor:
    """One per driver process: connects on first use, submits steps, keeps per-arch counts."""

    _instance: RayExecutor | None = None
    _lock = threading.Lock()

    def __init__(self, addr: str):
        import ray

        runtime = runtime_env()
        wd = (runtime or {}).get("working_dir")
        self.working_dir = Path(wd) if isinstance(wd, str) and Path(wd).is_dir() else None  # not a remote URI
        ray.init(address=addr, namespace="enginebuild", log_to_driver=False, runtime_env=runtime,
                 ignore_reinit_error=True, logging_level="ERROR")
        self.ray = ray
        self.remote = ray.remote(_step)
        self.engines: dict[str, tuple[str, str]] = {}  # engine id -> (arch, state of its latest step)
        atexit.register(self._final)

    def models_for_workers(self, models: str) -> str:
        """models.yaml as the workers find it: relative to the runtime_env working_dir the driver ships (the
        task runs in Ray's copy of it: its own engines dir, so the store is how engines come back), else as is
        (a shared filesystem, or the same checkout path on every node)."""
        if self.working_dir is None:
            return models
        try:
            return str(Path(models).resolve().relative_to(self.working_dir.resolve()))
        except ValueError:
            raise UserError(f"{models} is outside the runtime_env working_dir {self.working_dir} "
                            f"({ENV_RUNTIME}): the workers could not read it") from None

    @classmethod
    def get(cls, addr: str) -> RayExecutor:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls(addr)
            return cls._instance

    def _count(self, engine: Engine, to: str) -> None:
        with self._lock:
            self.engines[engine.id] = (engine.arch, to)
            print(f"ray: {self.tally()}", flush=True)

    def tally(self) -> str:
        """Per arch, engines waiting / running / done / failed / blocked: `sm90: 2 done, 1 running; ...`
        (an engine is done when its latest step is; validation after its build makes it wait and run again)."""
        per_arch: dict[str, Counter[str]] = {}
        for arch, state in self.engines.values():
            per_arch.setdefault(arch, Counter())[state] += 1
        return "; ".join(f"{a}: " + ", ".join(f"{n} {k}" for k, n in sorted(cs.items()))
                         for a, cs in sorted(per_arch.items()))

    def _final(self) -> None:
        if self.engines:
            print(f"ray: at the end: {self.tally()}", flush=True)

    def resources(self, engine: Engine, gpus: int) -> dict[str, float]:
        res = {arch_resource(engine.arch): float(gpus)}
        if engine.model.gpu_name:
            res[gpu_name_resource(engine.model.gpu_name)] = float(gpus)
        return res

    def _most_per_node(self, resource: str) -> float:
        return max((n["Resources"].get(resource, 0.0) for n in self.ray.nodes() if n.get("Alive")), default=0.0)

    def run(self, models: str, engine: Engine, step: str, key: str, gpus: int,
            at_least: int | None = None) -> dict[str, Any]:
        """Run one step on the cluster; returns the worker's result (`ok` false: the step failed there, with
        its `error`), raises BuildFailed when the cluster could not run it.

        A step needs all `gpus` on one node, or (a build: `at_least`=1) fewer where no node has that many:
        one GPU builds every rank, as locally. Validation needs one GPU per rank, never fewer."""
        per_node = self._most_per_node(arch_resource(engine.arch))
        if at_least is not None and at_least <= per_node < gpus:
            gpus = int(per_node)
        res = self.resources(engine, gpus)
        missing = [k for k, v in res.items() if self._most_per_node(k) < v]
        if missing:
            self._count(engine, "blocked")
            return {"ok": True, "state": "blocked",
                    "why": f"no node of the Ray cluster has {', '.join(f'{res[k]:g} {k}' for k in missing)}"}
        req = {"models": self.models_for_workers(models), "engine": engine.id, "step": step, "key": key}
        self._count(engine, "waiting")
        gen = self.remote.options(num_gpus=gpus, resources=res, max_retries=MAX_RETRIES,
                                  retry_exceptions=False, name=f"{step}:{engine.id}").remote(req)
        try:
            self.ray.get(next(gen))  # started on a node (a retry replays it; the generator skips what it gave)
            self._count(engine, "running")
            out = self.ray.get(next(gen))
        except KeyboardInterrupt:
            self.ray.cancel(gen, force=True)
            raise
        except self.ray.exceptions.RayError as e:
            self._count(engine, "failed")
            raise BuildFailed(f"{step}:{engine.id} failed on the Ray cluster after {MAX_RETRIES} retries: "
                              f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
        self._count(engine, "failed" if not out.get("ok") else
                    "done" if out.get("state") == "fresh" else "blocked")
        return out
