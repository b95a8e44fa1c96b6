"""What every step that writes shares: a temp dir beside the destination, the manifest written last, an atomic
publish, and the failed build's log kept beside it; the GPUs a step runs on; the checkpoint checked first."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from ..core.checkpoint import check_checkpoint
from ..core.engine import Engine
from ..core.errors import BuildFailed
from ..core.hashing import hash_file
from ..core.layout import checkpoint_dir
from ..core.manifest import Manifest, read_manifest, record_outputs, validation_record, write_manifest
from ..core.model import GeneratedCheckpoint, ModelSpec
from ..core.structure import structure_record
from ..host.gpu import Gpu
from ..host.publish import clean_leftovers, failed_log, locked, publish, temp_dir_for
from ..host.slots import gpu_slots
from ..plan.planner import Planner
from ..plan.state import EngineState

# The CI run a build comes from, where the environment names one (GitHub Actions, GitLab CI, Buildkite).
CI_VARS = ("GITHUB_REPOSITORY", "GITHUB_RUN_ID", "GITHUB_SHA", "GITHUB_WORKFLOW", "GITHUB_REF", "CI_PROJECT_PATH",
           "CI_PIPELINE_ID", "CI_COMMIT_SHA", "BUILDKITE_BUILD_URL")


def replaced_perf(dest: Path) -> dict[str, Any] | None:
    """{key, perf} of the validated engine still in `dest` (what a rebuild replaces), or its own record of what it
    replaced when it carries one and was never measured (a restore validated nowhere yet): the gate compares a
    rebuild with the last speed measured under this name."""
    m = read_manifest(dest)
    if m is None:
        return None
    rec = validation_record(dest, m.key)
    if rec is not None and isinstance(rec.get("perf"), dict):
        return {"key": m.key, "perf": rec["perf"]}
    carried = m.built.get("replaces")
    return carried if isinstance(carried, dict) else None


def say(msg: str) -> None:
    """One line in one write: under `doit -P process` every task's worker writes to the same stdout, and print()
    writes the text and its newline apart, so two workers' lines ran together (`...in 0.3sbuilding ...`)."""
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def waiting(what: str) -> Callable[[], None]:
    return lambda: say(f"{what}: waiting for another run that holds its lock")


def generate_checkpoint(planner: Planner, model: ModelSpec) -> None:
    """Write a generated checkpoint (e.g. the embedded tiny Llama) if it does not exist yet."""
    ckpt = model.checkpoint
    assert isinstance(ckpt, GeneratedCheckpoint)
    dest = checkpoint_dir(planner.spec, model)
    with locked(dest, waiting(f"checkpoint:{model.name}")):
        if dest.is_dir():
            return
        from ..core.tinyllama import write_checkpoint

        write_checkpoint(dest, **ckpt.kwargs)
        say(f"generated {ckpt.generator} checkpoint for {model.name} in {dest}")
    planner.keys.forget_checkpoint(model)


def produce(dest: Path, what: str, make: Any, finish: Any) -> None:
    """Run make(tmp) in a temp dir beside dest, then finish(tmp) (writes the manifest, last), then
    publish. On failure the temp dir goes away and its log is kept beside dest."""
    clean_leftovers(dest)
    tmp = temp_dir_for(dest)
    try:
        make(tmp)
        finish(tmp)
        publish(tmp, dest)
    except BaseException as e:
        log, kept = tmp / "build.log", failed_log(dest)
        try:
            if log.exists():
                shutil.copyfile(log, kept)
        except OSError:  # a full disk fails the copy too: no half log, and the temp dir goes all the same
            kept.unlink(missing_ok=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, BuildFailed) and kept.exists():
            raise e.log_moved(kept) from None  # name the log that exists afterwards
        raise
    failed_log(dest).unlink(missing_ok=True)


def check_inputs(planner: Planner, model: ModelSpec) -> None:
    """The checkpoint is readable and trusted (buildlib.checkpoint) before any worker is started on it."""
    ckpt = planner.keys.checkpoint(model)
    if ckpt is not None:
        check_checkpoint(checkpoint_dir(planner.spec, model), list(ckpt.files), model.trust_remote_code)


def slots(planner: Planner, engine: Engine, want: int, gpus: Sequence[Gpu] | None, priority: float,
           what: str) -> AbstractContextManager[tuple[Gpu, ...]]:
    """The GPUs a step runs on: the ones given, or a disjoint set held for the step (buildlib.host.slots)."""
    if gpus is not None:
        return nullcontext(tuple(gpus))
    return gpu_slots(planner.host.gpus_of(engine.arch, engine.model.gpu_name), want, priority=priority,
                     on_wait=lambda msg: say(f"{what}: {msg}"))


def finish_engine(planner: Planner, engine: Engine, st: EngineState, tmp: Path, built: dict[str, Any]) -> None:
    """The manifest of a built or refitted engine, written last: key, fields, every output's digest, the
    checkpoint files, the structure (buildlib.structure) and how it was made; build.log's digest with it."""
    assert st.key and st.fields
    ckpt, structure = planner.keys.checkpoint(engine.model), planner.keys.structure(engine.model)
    assert ckpt is not None and structure is not None
    log = tmp / "build.log"
    if log.is_file():  # so a store entry's log can be verified like its outputs
        built["log"] = [log.stat().st_size, hash_file(log)]
    ci = {k: os.environ[k] for k in CI_VARS if os.environ.get(k)}
    if ci:  # who built it: signed with the manifest, where the store signs (buildlib.store.signing)
        built["ci"] = ci
    replaced = replaced_perf(engine.dir(planner.spec.project))
    if replaced is not None:  # the speed of the engine this one replaces, for the gate (buildlib.core.perf)
        built["replaces"] = replaced
    write_manifest(tmp, Manifest(st.key, st.fields, record_outputs(tmp, planner.cache),
                                 {r: list(v) for r, v in ckpt.files.items()}, engine.id, built,
                                 structure_record(st.fields, structure)))
