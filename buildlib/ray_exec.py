"""The Ray executor: each build/validate action doit decides to run becomes a Ray task on a node of its arch.

Switched on by `BUILDLIB_RAY=<address>` (or `auto`, Ray's own discovery) in the driver's environment;
off, nothing changes. doit stays the driver: the graph, the plan and the up-to-date checks are local;
a Ray task runs exactly the step a local run would (buildlib.remote.run_step, no doit on the workers),
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

import json
import os
import threading
from collections import Counter
from typing import Any

from .engine import Engine
from .errors import BuildFailed, UserError
from .ray_node import arch_resource, gpu_name_resource

ENV = "BUILDLIB_RAY"
ENV_RUNTIME = "BUILDLIB_RAY_RUNTIME_ENV"
MAX_RETRIES = 3


def address() -> str | None:
    """The Ray cluster to run on, or None (local execution)."""
    return os.environ.get(ENV) or None


def _step(req: dict[str, Any]) -> dict[str, Any]:
    """The Ray task body (importable by reference on the workers)."""
    from .remote import run_step

    try:
        return {"ok": True, **run_step(req)}
    except (UserError, BuildFailed) as e:
        return {"ok": False, "error": str(e)}


class RayExecutor:
    """One per driver process: connects on first use, submits steps, keeps per-arch counts."""

    _instance: RayExecutor | None = None
    _lock = threading.Lock()

    def __init__(self, addr: str):
        import ray

        runtime = json.loads(os.environ[ENV_RUNTIME]) if os.environ.get(ENV_RUNTIME) else None
        ray.init(address=addr, namespace="enginebuild", log_to_driver=False, runtime_env=runtime,
                 ignore_reinit_error=True, logging_level="ERROR")
        self.ray = ray
        self.remote = ray.remote(_step)
        self.counts: dict[str, Counter[str]] = {}

    @classmethod
    def get(cls, addr: str) -> RayExecutor:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls(addr)
            return cls._instance

    def _count(self, arch: str, moved: str, to: str) -> None:
        with self._lock:
            c = self.counts.setdefault(arch, Counter())
            if moved:
                c[moved] -= 1
            c[to] += 1
            print("ray: " + "; ".join(f"{a}: " + ", ".join(f"{n} {k}" for k, n in sorted(cs.items()) if n)
                                      for a, cs in sorted(self.counts.items())), flush=True)

    def resources(self, engine: Engine, gpus: int) -> dict[str, float]:
        res = {arch_resource(engine.arch): float(gpus)}
        if engine.model.gpu_name:
            res[gpu_name_resource(engine.model.gpu_name)] = float(gpus)
        return res

    def _most_per_node(self, resource: str) -> float:
        return max((n["Resources"].get(resource, 0.0) for n in self.ray.nodes() if n.get("Alive")), default=0.0)

    def run(self, models: str, engine: Engine, step: str, key: str, gpus: int,
            at_least: int | None = None) -> dict[str, Any]:
        """Run one step on the cluster; returns the worker's result, raises BuildFailed when it failed.

        A step needs all `gpus` on one node, or (a build: `at_least`=1) fewer where no node has that many:
        one GPU builds every rank, as locally. Validation needs one GPU per rank, never fewer."""
        per_node = self._most_per_node(arch_resource(engine.arch))
        if at_least is not None and at_least <= per_node < gpus:
            gpus = int(per_node)
        res = self.resources(engine, gpus)
        missing = [k for k, v in res.items() if self._most_per_node(k) < v]
        if missing:
            self._count(engine.arch, "", "blocked")
            return {"ok": True, "state": "blocked",
                    "why": f"no node of the Ray cluster has {', '.join(f'{res[k]:g} {k}' for k in missing)}"}
        self._count(engine.arch, "", "waiting")
        ref = self.remote.options(num_gpus=gpus, resources=res, max_retries=MAX_RETRIES,
                                  retry_exceptions=False, name=f"{step}:{engine.id}").remote(
            {"models": models, "engine": engine.id, "step": step, "key": key})
        self._count(engine.arch, "waiting", "running")
        try:
            out = self.ray.get(ref)
        except KeyboardInterrupt:
            self.ray.cancel(ref, force=True)
            raise
        except self.ray.exceptions.RayError as e:
            self._count(engine.arch, "running", "failed")
            raise BuildFailed(f"{step}:{engine.id} failed on the Ray cluster after {MAX_RETRIES} retries: "
                              f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
        self._count(engine.arch, "running", "failed" if not out.get("ok") else
                    "done" if out.get("state") == "fresh" else "blocked")
        if not out.get("ok"):
            raise BuildFailed(out.get("error", f"{step}:{engine.id} failed on the Ray cluster"))
        return out
