"""models.yaml -> doit task dicts: checkpoint, convert, build, validate, triton, and group tasks.

Everything here is picklable (module-level functions, small callable objects), so the tasks
run under `doit -n N -P process` with any start method.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..backends.registry import recipe
from ..core.engine import Engine
from ..core.layout import checkpoint_dir
from ..core.model import GPU_ARCH_RE, GeneratedCheckpoint
from ..fleet import ray_exec
from ..plan.estimate import engine_expected_seconds, order_longest_first
from ..plan.planner import Planner
from ..plan.state import BLOCKED, FRESH, MISSING, STALE
from ..run import triton
from .actions import build_action, convert_action, generate_action, triton_action, validate_action
from .uptodate import CheckpointReady, ConvertedFresh, EngineFresh, EngineValidated, TritonFresh


def _serves(planner: Planner) -> bool:
    """`triton:` tasks exist: triton_templates is set and some model is built with TensorRT-LLM."""
    return planner.spec.project.triton_templates is not None and any(m.backend == "trtllm"
                                                                       for m in planner.spec.models)


def _on_cpu(engine: Engine) -> bool:
    """A CPU engine (`cpu` or a named ISA such as x86_64-avx2): one of the `cpu` group."""
    return not GPU_ARCH_RE.fullmatch(engine.arch)


def group_names(planner: Planner) -> list[str]:
    """The group tasks task_dicts yields, in order: `engines`, `convert` (when a backend converts), `build`,
    `validate`, each model, `cpu` (the CPU engines, whatever this host's ISA is named), each arch.
    Every one exists even if empty: `doit sm90` works when every sm90 engine is left out."""
    models = planner.spec.models
    converts = any(recipe(m.backend).has_convert for m in models)
    serves = _serves(planner)
    archs = dict.fromkeys(e.arch for e in planner.engines())
    cpu = any(not GPU_ARCH_RE.fullmatch(a) for a in archs)
    return list(dict.fromkeys(["engines", *(["convert"] if converts else []), "build", "validate",
                               *(["triton"] if serves else []),
                               *(m.name for m in models), *(["cpu"] if cpu else []), *archs]))


@dataclass
class LeftOut:
    """The engines task_dicts gave no tasks, for the reporter's end-of-run lines."""

    done: list[Engine] = field(default_factory=list)  # fresh, and validated where validated
    blocked: dict[str, list[Engine]] = field(default_factory=dict)  # reason -> engines this host cannot build
    wanted: frozenset[str] = frozenset({"engines"})  # the groups the run asked for: only they are made when empty


def task_dicts(planner: Planner, left_out: LeftOut | None = None) -> Iterator[dict[str, Any]]:
    """Every task for every engine of the spec, plus groups: one per model, one per arch,
    `convert`/`build`/`validate`, and `engines` for all (the default).

    With `left_out`, engines that doit has nothing to do for get no tasks at all and are recorded
    there instead: engines with nothing left to do (fresh, and validated where validated), and
    engines this host cannot build when no store is configured to restore them from; a
    conversion no engine needs is left out too. A no-op run over a fleet then costs doit nothing
    per engine, where a task that is merely up to date still costs doit a Task object, a dispatch
    and a report line (that is what made a 1,000-engine no-op slower than plain doit with md5
    file_deps).

    The plan is decided up front, as ninja does: one pass computes every engine's state, and a
    task already known to be up to date gets a literal `True` (doit then skips it without calling
    anything, or inspecting a signature). Only tasks that may run get a callable, evaluated when
    doit reaches them (after their dependencies ran), which re-decides from the files.

    Groups list their tasks longest expected build first: doit dispatches ready tasks in that
    order, and the GPU slot allocator hands freed GPUs to the longest waiting build, so the
    makespan stays near max(total GPU-seconds / GPUs, longest build).
    """
    project = planner.spec.project
    states = list(zip(planner.engines(), planner.states(), strict=True))  # pairs: an Engine hashes its whole model
    # Engines this host cannot build are left out only when nothing could make them: no store to restore
    # them from, no Ray cluster to build them on.
    no_store = left_out is not None and planner.store is None and ray_exec.address() is None
    expected: dict[str, float] = {}
    groups: dict[str, list[str]] = {g: [] for g in group_names(planner)}
    generate: set[str] = set()  # models whose checkpoint has a generate task
    serves = _serves(planner)
    for model in planner.spec.models:
        if not isinstance(model.checkpoint, GeneratedCheckpoint):
            continue
        ready = checkpoint_dir(planner.spec, model).is_dir()
        if not (ready and left_out is not None):
            generate.add(model.name)
            yield {"basename": f"checkpoint:{model.name}",
                   "doc": f"generate the {model.checkpoint.generator} checkpoint",
                   "actions": [(generate_action, [project, model])],
                   "uptodate": [CheckpointReady(checkpoint_dir(planner.spec, model))]}
    # A conversion is needed only while some engine built from it must be (re)built here.
    convert_needed = {e.convert_id for e, st in states if st.state in (STALE, MISSING)}
    for engine, st in states:
        model = engine.model
        if left_out is not None and not serves:  # checked first: a no-op over 10,000 engines is this
            if st.state == FRESH and (st.validated or not model.validate):
                left_out.done.append(engine)  # nothing to do
                continue
            if st.state == BLOCKED and no_store:
                left_out.blocked.setdefault(st.reasons[0], []).append(engine)
                continue
        deps = [f"checkpoint:{model.name}"] if model.name in generate else []
        needed = engine.convert_id in convert_needed
        if recipe(model.backend).has_convert and (needed or left_out is None):
            cname = f"convert:{engine.convert_id}"
            if cname not in groups["convert"]:
                groups["convert"].append(cname)
                yield {"basename": cname, "doc": "Hugging Face -> TensorRT-LLM checkpoint (shared by every arch)",
                       "actions": [(convert_action, [project, engine])], "task_dep": list(deps),
                       "uptodate": [ConvertedFresh(project, engine) if needed else True]}
            deps.append(cname)
        fresh = st.state == FRESH
        done = fresh and (not model.validate or st.validated)
        serve = serves and model.backend == "trtllm" and not (left_out is not None and st.state == BLOCKED and no_store)
        if serve and not (done and left_out is not None and triton.fresh(planner, engine)):
            tname = f"triton:{engine.id}"
            groups["triton"].append(tname)
            groups["engines"].append(tname)
            yield {"basename": tname, "doc": f"the Triton model repository of {engine.id}",
                   "task_dep": [] if done and left_out is not None else
                   [f"validate:{engine.id}" if model.validate else f"build:{engine.id}"],
                   "actions": [(triton_action, [project, engine])], "uptodate": [TritonFresh(project, engine)]}
        if left_out is not None and done:
            left_out.done.append(engine)
            continue
        if left_out is not None and st.state == BLOCKED and no_store:
            left_out.blocked.setdefault(st.reasons[0], []).append(engine)
            continue
        bname, vname = f"build:{engine.id}", f"validate:{engine.id}"
        secs = 0.0 if fresh else engine_expected_seconds(planner, engine)
        expected[bname] = expected[vname] = secs
        yield {"basename": bname, "doc": f"build the {model.backend} engine {engine.id}", "task_dep": deps,
               "actions": [(build_action, [project, engine, secs])], "meta": {"expected": secs},
               "uptodate": [True if fresh else EngineFresh(project, engine)]}
        final = bname
        if model.validate:
            yield {"basename": vname, "doc": f"load the engine {engine.id} and run it", "task_dep": [bname],
                   "actions": [(validate_action, [project, engine, secs])],
                   "uptodate": [True if done else EngineValidated(project, engine)]}
            groups["validate"].append(vname)
            final = vname
        groups["build"].append(bname)
        groups[model.name].append(final)
        groups[engine.arch].append(final)
        if _on_cpu(engine):
            groups["cpu"].append(final)
        groups["engines"].append(final)
    for name, deps in groups.items():
        if left_out is not None and not deps and name not in left_out.wanted:
            continue  # an empty group no one asked for (a no-op over 1,000 models would hand doit 1,000)
        deps = order_longest_first(deps, key=lambda t: expected.get(t, 0.0))
        yield {"basename": name, "doc": f"group: {name}", "actions": None, "task_dep": deps}
