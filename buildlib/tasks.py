"""models.yaml -> doit task dicts: checkpoint, convert, build, validate, and group tasks.

Everything here is picklable (module-level functions, small callable objects), so the tasks
run under `doit -n N -P process` with any start method.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doit.exceptions import TaskFailed

from . import ray_exec, steps, triton
from .backends import get_backend
from .engine import Engine
from .errors import BackendUnavailable, BuildFailed, UserError
from .interrupt import no_space
from .plan import BLOCKED, FRESH, MISSING, STALE, Planner, checkpoint_dir, shown
from .sched import engine_expected_seconds, order_longest_first
from .spec import GPU_ARCH_RE, GeneratedCheckpoint, ModelSpec, Project, Spec, load_spec

_PLANNERS: dict[Path, Planner] = {}


def planner_for(models_path: Path | str) -> Planner:
    """One Planner per models.yaml per process: the spec is parsed and checkpoints hashed once."""
    path = Path(models_path).absolute()
    if path not in _PLANNERS:
        _PLANNERS[path] = Planner(load_spec(path))
    return _PLANNERS[path]


def loaded_planner() -> Planner:
    """The planner the doit loader created in this process (for commands such as `doit plan`)."""
    if len(_PLANNERS) != 1:
        raise RuntimeError(f"expected one loaded models.yaml, found {len(_PLANNERS)}")
    return next(iter(_PLANNERS.values()))


def _planner(project: Project, model: ModelSpec) -> Planner:
    """The process's planner for this project (a doit worker builds its own from what it was sent)."""
    p = _PLANNERS.get(project.models_path)
    if p is None:
        p = _PLANNERS[project.models_path] = Planner(Spec(project, (model,)))
    return p


class EngineFresh:
    """doit `uptodate` for a build: fresh iff the engine dir's manifest has the computed key and its
    outputs are intact. doit's own database plays no part, so a fresh clone or a restored engines/
    dir is judged correctly."""

    def __init__(self, project: Project, engine: Engine):
        self.project, self.engine = project, engine

    def __call__(self) -> bool:
        return _planner(self.project, self.engine.model).state(self.engine).state == FRESH

    def __repr__(self) -> str:
        """What `doit info` shows for this check: the engine's state now, and why (as `doit plan` says)."""
        st = _planner(self.project, self.engine.model).state(self.engine)
        return f"engine {self.engine.id}: {st.state}" + (f" ({'; '.join(st.reasons)})" if st.reasons else "")


class EngineValidated(EngineFresh):
    """doit `uptodate` for a validate task: validation.json vouches for the current key. Evaluated
    after the build task (task_dep), whose own check already verified the outputs."""

    def __call__(self) -> bool:
        return steps.validated(_planner(self.project, self.engine.model), self.engine)

    def __repr__(self) -> str:
        planner = _planner(self.project, self.engine.model)
        if steps.validated(planner, self.engine):
            return f"validation of {self.engine.id}: vouches for its manifest"
        st = shown(planner, [planner.state(self.engine)])[0]
        return f"validation of {self.engine.id}: {st.state} ({'; '.join(st.reasons) or 'not validated yet'})"


class ConvertedFresh(EngineFresh):
    """doit `uptodate` for a convert task: the content-addressed converted checkpoint exists."""

    def __call__(self) -> bool:
        planner = _planner(self.project, self.engine.model)
        try:
            d = planner.converted_dir(self.engine)
        except BackendUnavailable:
            return True  # nothing can be converted here; each build task reports why
        return d is not None and (d / "manifest.json").is_file()

    def __repr__(self) -> str:
        return f"converted checkpoint for {self.engine.convert_id}: " + ("present" if self() else "not converted yet")


class TritonFresh(EngineFresh):
    """doit `uptodate` for a triton task: the repository was filled from this engine, templates and values."""

    def __call__(self) -> bool:
        return triton.fresh(_planner(self.project, self.engine.model), self.engine)

    def __repr__(self) -> str:
        return f"triton repository of {self.engine.id}: " + ("filled from this engine" if self() else "to be written")


class CheckpointReady:
    """doit `uptodate` for a generated checkpoint: its dir exists (it is written atomically)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self) -> bool:
        return self.path.is_dir()

    def __repr__(self) -> str:
        return f"generated checkpoint {self.path}: " + ("present" if self() else "not generated yet")


def _failed_is_task_failure(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A BuildFailed (or a full disk) becomes doit's TaskFailed: its message (naming the log), exit status 1,
    no traceback."""
    @functools.wraps(fn)
    def action(*args: Any) -> Any:
        try:
            return fn(*args)
        except (BuildFailed, UserError) as e:
            return TaskFailed(str(e))
        except OSError as e:
            full = no_space(e)
            if full is None:
                raise
            return TaskFailed(full)
    return action


@_failed_is_task_failure
def generate_action(project: Project, model: ModelSpec) -> None:
    steps.generate_checkpoint(_planner(project, model), model)


@_failed_is_task_failure
def convert_action(project: Project, engine: Engine) -> None:
    steps.convert(_planner(project, engine.model), engine)


def _on_ray(project: Project, engine: Engine, step: str) -> dict[str, Any] | None:
    """With BUILDLIB_RAY set, run the step on the cluster first (buildlib.ray_exec); None when off or not needed.
    The local step that follows then finds the engine fresh (shared engines dir) or restores it (store)."""
    addr = ray_exec.address()
    if addr is None:
        return None
    planner = _planner(project, engine.model)
    st = planner.state(engine)
    backend = get_backend(engine.model.backend)
    if step == "build" and (st.state == FRESH or not st.key):
        return None
    if step == "validate" and (st.state != FRESH or steps.validated(planner, engine)):
        return None
    gpus = backend.gpus_needed(engine) if step == "build" else backend.validate_gpus(engine)
    assert st.key is not None
    out = ray_exec.RayExecutor.get(addr).run(str(project.models_path), engine, step, st.key, gpus,
                                             at_least=min(gpus, 1) if step == "build" else None)
    if out.get("validation"):  # kept here too, where the engines dir is not the workers'
        steps.record_validation(planner, engine, out["validation"])
    if not out["ok"]:
        raise BuildFailed(out.get("error") or f"{step}:{engine.id} failed on the Ray cluster")
    return out


@_failed_is_task_failure
def build_action(project: Project, engine: Engine, expected: float) -> dict[str, Any]:
    remote = _on_ray(project, engine, "build")
    if remote is not None and remote["state"] == BLOCKED:
        steps.say(f"{engine.id}: {remote['why']}; not built")
        return {"state": BLOCKED, "why": remote["why"], "how": "blocked"}
    done = steps.build(_planner(project, engine.model), engine, priority=expected)
    # after a Ray build the engine is here already (shared dir) or restored from the store: the worker built it
    return {"state": done.state, "why": done.why, "how": remote["how"] if remote is not None else done.how}


@_failed_is_task_failure
def triton_action(project: Project, engine: Engine) -> dict[str, Any]:
    planner = _planner(project, engine.model)
    st = planner.state(engine)
    if st.state == BLOCKED:
        steps.say(f"{engine.id}: {st.reasons[0]}; no Triton repository here")
        return {"state": BLOCKED, "why": st.reasons[0]}
    steps.say(f"triton repository for {engine.id} -> {triton.make_repository(planner, engine)}")
    return {"state": FRESH}


@_failed_is_task_failure
def validate_action(project: Project, engine: Engine, expected: float) -> dict[str, Any]:
    remote = _on_ray(project, engine, "validate")
    if remote is not None:
        if remote["state"] == BLOCKED:
            steps.say(f"{engine.id}: {remote.get('why') or 'the worker cannot run it'}; not validated")
        return {"state": remote["state"]}  # the reporter's tally counts a fresh one as validated
    result = steps.validate(_planner(project, engine.model), engine, priority=expected)
    return {"state": BLOCKED if result is None else FRESH}


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
    converts = any(get_backend(m.backend).has_convert for m in models)
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
        if get_backend(model.backend).has_convert and (needed or left_out is None):
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
