"""The step a remote worker runs (a Ray task on a GPU node, or `python -m buildlib.fleet.remote REQUEST.json`).

Exactly what a local run does, through the same core (spec, key, plan, steps; no doit): the worker
reads the same models.yaml (a shared filesystem or the same checkout), computes the engine's key
itself and refuses to work if it differs from the key the driver planned (another checkout, another
toolchain, another checkpoint), then builds or validates the engine into the engines dir it sees,
restoring from and pushing to the shared store as a local build does. It returns what happened as JSON.

Request: {"models": "<models.yaml: absolute, or relative to the task's working_dir>",
          "engine": "<model>/<arch>/tp<N>-pp<M>", "step": "build" | "validate",
          "key": "<the driver's key>"}
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..core.errors import BuildFailed, UserError
from ..core.manifest import validation_record
from ..host.gpu import Host, detect_gpus
from ..host.isa import host_isa
from ..plan.planner import Planner
from ..plan.state import FRESH
from ..run import build, validate
from ..spec.load import load_spec


class KeyMismatch(UserError):
    """The worker computes another key than the driver: it builds nothing."""


def run_step(req: dict[str, Any]) -> dict[str, Any]:
    t0 = time.monotonic()
    # The GPUs this task was given, probed now: a long-lived worker process (Ray reuses them) gets other
    # GPUs (CUDA_VISIBLE_DEVICES) for each task, so the host is never taken from a cache.
    host = Host(gpus=detect_gpus(), cpu_isa=host_isa())
    planner = Planner(load_spec(Path(req["models"]).absolute()), host=host)  # relative: to the task's working_dir
    engines = {e.id: e for e in planner.engines()}
    engine = engines.get(req["engine"])
    if engine is None:
        raise UserError(f"{req['models']} has no engine {req['engine']} on this worker")
    st = planner.state(engine)
    if st.key != req["key"]:
        raise KeyMismatch(f"{engine.id}: this worker computes key {st.key}, the driver planned {req['key']} "
                          f"({'; '.join(st.reasons) or 'same inputs, other toolchain or checkout?'}); not building")
    out: dict[str, Any] = {"engine": engine.id, "step": req["step"], "key": st.key, "host": socket.gethostname(),
                           "pid": os.getpid()}
    if req["step"] == "build":
        done = build.build(planner, engine)
        out.update(state=done.state, why=done.why, how=done.how)
    elif req["step"] == "validate":
        if st.state != FRESH:  # this node does not share the driver's engines dir: take the build from the store
            build.build(planner, engine)
        try:
            result = validate.validate(planner, engine)
        except BuildFailed as e:  # the failure's record goes back too: the driver shows the engine unvalidated
            out.update(ok=False, error=str(e), validation=validation_record(engine.dir(planner.spec.project), st.key))
            return out
        out.update(state="blocked" if result is None else "fresh", validation=result)
    else:
        raise UserError(f"unknown step {req['step']!r}: build or validate")
    out["seconds"] = round(time.monotonic() - t0, 3)
    return out


def main() -> None:
    req = json.loads(Path(sys.argv[1]).read_text())
    try:
        result = {"ok": True, **run_step(req)}
    except (UserError, BuildFailed) as e:
        result = {"ok": False, "engine": req.get("engine"), "error": str(e)}
    print(json.dumps(result))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
