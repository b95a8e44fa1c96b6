"""The steps behind the tasks: generate, convert, build, validate. No doit here: doit actions,
Ray workers and tests call these same functions."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, NamedTuple

from . import progress
from .backends import get_backend
from .backends.base import Job
from .checkpoint import check_checkpoint
from .confine import claim
from .engine import Engine
from .errors import BuildFailed
from .gpu import Gpu
from .hashing import hash_file
from .key import canonical_json, key_of
from .manifest import (
    VALIDATION,
    Manifest,
    build_of,
    check_outputs,
    read_manifest,
    record_outputs,
    validation_record,
    validation_vouches,
    write_json_durably,
    write_manifest,
)
from .plan import BLOCKED, FRESH, EngineState, Planner, checkpoint_dir
from .publish import clean_leftovers, failed_log, locked, publish, temp_dir_for
from .sched import describe, gpu_slots
from .spec import GeneratedCheckpoint, ModelSpec
from .store import Store, StoreCorrupt, StoreError
from .structure import recorded_key, structure_record


def say(msg: str) -> None:
    print(msg, flush=True)


def _waiting(what: str) -> Callable[[], None]:
    return lambda: say(f"{what}: waiting for another run that holds its lock")


def generate_checkpoint(planner: Planner, model: ModelSpec) -> None:
    """Write a generated checkpoint (e.g. the embedded tiny Llama) if it does not exist yet."""
    ckpt = model.checkpoint
    assert isinstance(ckpt, GeneratedCheckpoint)
    dest = checkpoint_dir(planner.spec, model)
    with locked(dest, _waiting(f"checkpoint:{model.name}")):
        if dest.is_dir():
            return
        from .tinyllama import write_checkpoint

        write_checkpoint(dest, **ckpt.kwargs)
        say(f"generated {ckpt.generator} checkpoint for {model.name} in {dest}")
    planner.forget_checkpoint(model)


def _produce(dest: Path, what: str, make: Any, finish: Any) -> None:
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
        if log.exists():
            shutil.copyfile(log, kept)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, BuildFailed) and kept.exists():
            raise e.log_moved(kept) from None  # name the log that exists afterwards
        raise
    failed_log(dest).unlink(missing_ok=True)


def check_inputs(planner: Planner, model: ModelSpec) -> None:
    """The checkpoint is readable and trusted (buildlib.checkpoint) before any worker is started on it."""
    ckpt = planner.checkpoint(model)
    if ckpt is not None:
        check_checkpoint(checkpoint_dir(planner.spec, model), list(ckpt.files), model.trust_remote_code)


def convert(planner: Planner, engine: Engine) -> None:
    """HF checkpoint -> the backend's intermediate checkpoint, content-addressed by convert key."""
    backend = get_backend(engine.model.backend)
    fields = planner.convert_fields(engine)
    if fields is None:
        raise BuildFailed(f"convert:{engine.convert_id}: checkpoint not generated yet")
    key = key_of(fields)
    dest = planner.spec.project.work_dir / "checkpoints" / key
    with locked(dest, _waiting(f"convert:{engine.convert_id}")):
        m = read_manifest(dest)
        if m is not None and m.key == key:
            return
        ckpt = planner.checkpoint(engine.model)
        assert ckpt is not None
        check_inputs(planner, engine.model)

        want = backend.convert_gpus(engine)
        if want and not planner.host.gpus:
            raise BuildFailed(f"convert:{engine.convert_id} calibrates quantization on a GPU; this host has none")

        def make(tmp: Path) -> None:
            with gpu_slots(planner.host.gpus, want) as gpus, \
                    progress.step(planner.spec.project.work_dir, f"convert:{engine.convert_id}", "convert",
                                  [g.index for g in gpus]):
                backend.convert(Job(engine, checkpoint_dir(planner.spec, engine.model), None, tmp, gpus,
                                    tmp / "build.log", planner.spec.project.work_dir, planner.spec.project.root))

        def finish(tmp: Path) -> None:
            write_manifest(tmp, Manifest(key, fields, record_outputs(tmp, planner.cache),
                                         {r: list(v) for r, v in ckpt.files.items()}, engine.convert_id))

        t0 = time.monotonic()
        _produce(dest, f"convert:{engine.convert_id}", make, finish)
        say(f"converted {engine.convert_id} in {time.monotonic() - t0:.1f}s")


def _slots(planner: Planner, engine: Engine, want: int, gpus: Sequence[Gpu] | None, priority: float,
           what: str) -> AbstractContextManager[tuple[Gpu, ...]]:
    """The GPUs a step runs on: the ones given, or a disjoint set held for the step (buildlib.sched)."""
    if gpus is not None:
        return nullcontext(tuple(gpus))
    return gpu_slots(planner.host.gpus_of(engine.arch, engine.model.gpu_name), want, priority=priority,
                     on_wait=lambda msg: say(f"{what}: {msg}"))


class Outcome(NamedTuple):
    """What build() did: the engine's final state (fresh/blocked), why it is blocked, and how it got there
    (`up to date`, `restored`, `built`, `blocked`): the run's tally line counts these."""

    state: str
    why: str | None
    how: str


def _blocked(engine: Engine, why: str) -> Outcome:
    say(f"{engine.id}: {why}; not built here")
    return Outcome(BLOCKED, why, "blocked")


def build(planner: Planner, engine: Engine, gpus: Sequence[Gpu] | None = None,
          priority: float = 0.0) -> Outcome:
    """Build one engine unless it is fresh; returns what it did (Outcome).

    Under the per-engine lock the state is decided again, so a concurrent run that just built
    this engine makes this call a no-op instead of a second build. With a store configured, an
    engine whose key is there is restored (verified) instead of built, even on a host that could
    not build it; a built engine is pushed. One this host cannot build, with no store to restore it from,
    is decided without the lock (fresh or blocked): nothing is written for it, not even its lock file's dir.
    """
    backend = get_backend(engine.model.backend)
    dest = engine.dir(planner.spec.project)
    claim(planner.spec.project.engines_dir)  # checked when models.yaml was read (buildlib.confine)
    store = planner.store
    if store is None and backend.blocked_reason(engine, planner.host):
        # Fresh or blocked, nothing is written here: no lock, so no dir is made for an engine of another host.
        st = planner.state(engine)
        return Outcome(FRESH, None, "up to date") if st.state == FRESH else _blocked(engine, st.reasons[0])
    with locked(dest, _waiting(f"build:{engine.id}")):
        st = planner.state(engine)
        if st.state == FRESH:
            return Outcome(FRESH, None, "up to date")
        if store is not None and st.key:
            with progress.step(planner.spec.project.work_dir, f"build:{engine.id}", "restore"):
                restored = _restore(planner, store, st.key, st.fields or {}, dest)
            if restored:
                say(f"restored {engine.id} from {store.url}")
                return Outcome(FRESH, None, "restored")
        if st.state == BLOCKED:
            return _blocked(engine, st.reasons[0])
        assert st.key and st.fields
        ckpt = planner.checkpoint(engine.model)
        assert ckpt is not None
        converted = planner.converted_dir(engine) if backend.has_convert else None
        if converted is not None and read_manifest(converted) is None:
            convert(planner, engine)
        elif converted is None:
            check_inputs(planner, engine.model)  # the backend reads the checkpoint itself
        if engine.model.refit and st.refit_of is None and store is not None:
            st.refit_store = planner.store_refit_source(st)
        if (st.refit_of or st.refit_store) and _refit(planner, engine, st, converted, gpus, priority):
            return Outcome(FRESH, None, "refitted")
        with _slots(planner, engine, backend.gpus_needed(engine), gpus, priority, f"build:{engine.id}") as held, \
                progress.step(planner.spec.project.work_dir, f"build:{engine.id}", "build", [g.index for g in held],
                              priority):
            say(f"building {engine.id} ({'; '.join(st.reasons)})" + (f" on {describe(held)}" if held else ""))
            t0 = time.monotonic()

            def make(tmp: Path) -> None:
                backend.build(Job(engine, checkpoint_dir(planner.spec, engine.model), converted, tmp,
                                  held, tmp / "build.log", planner.spec.project.work_dir,
                                  planner.spec.project.root))
                missing = backend.check_complete(engine, tmp)
                if missing:
                    raise BuildFailed(f"build:{engine.id} produced an incomplete engine: missing {', '.join(missing)}")

            def finish(tmp: Path) -> None:
                _finish_engine(planner, engine, st, tmp, {
                    "seconds": round(time.monotonic() - t0, 3), "gpus": [g.name for g in held],
                    "gpu_indices": [g.index for g in held]})

            _produce(dest, f"build:{engine.id}", make, finish)
        say(f"built {engine.id} in {time.monotonic() - t0:.1f}s -> {dest}")
        if store is not None:
            _push(store, st.key, dest, engine, planner.structure_key(engine, st.fields))
        return Outcome(FRESH, None, "built")


def _finish_engine(planner: Planner, engine: Engine, st: EngineState, tmp: Path, built: dict[str, Any]) -> None:
    """The manifest of a built or refitted engine, written last: key, fields, every output's digest, the
    checkpoint files, the structure (buildlib.structure) and how it was made; build.log's digest with it."""
    assert st.key and st.fields
    ckpt, structure = planner.checkpoint(engine.model), planner.structure(engine.model)
    assert ckpt is not None and structure is not None
    log = tmp / "build.log"
    if log.is_file():  # so a store entry's log can be verified like its outputs
        built["log"] = [log.stat().st_size, hash_file(log)]
    write_manifest(tmp, Manifest(st.key, st.fields, record_outputs(tmp, planner.cache),
                                 {r: list(v) for r, v in ckpt.files.items()}, engine.id, built,
                                 structure_record(st.fields, structure)))


def _refit(planner: Planner, engine: Engine, st: EngineState, converted: Path | None, gpus: Sequence[Gpu] | None,
           priority: float) -> bool:
    """Produce the engine by refitting a refittable engine of the same structure (the one here, else the
    store's) with the new weights: same temp dir, manifest and atomic publish as a build, and the manifest
    says `refit of <old key>`. False, having said why, when the refit cannot be done: then it is built."""
    backend = get_backend(engine.model.backend)
    project = planner.spec.project
    dest = engine.dir(project)
    source_key = st.refit_of or st.refit_store
    assert source_key is not None
    where = "the engine here" if st.refit_of else planner.store.url if planner.store else "the store"
    with _slots(planner, engine, backend.refit_gpus(engine), gpus, priority, f"build:{engine.id}") as held, \
            progress.step(project.work_dir, f"build:{engine.id}", "refit", [g.index for g in held], priority):
        say(f"refitting {engine.id} (weights only) from {where}, key {source_key}"
            + (f" on {describe(held)}" if held else ""))
        t0 = time.monotonic()
        last_build: dict[str, Any] = {}  # the source's build record, kept so forecasts see build times, not refits

        def make(tmp: Path) -> None:
            job = Job(engine, checkpoint_dir(planner.spec, engine.model), converted, tmp, held, tmp / "build.log",
                      project.work_dir, project.root)
            if st.refit_of:
                last_build.update(build_of(_check_source(planner, dest, source_key)))
                backend.refit(job, dest)
            else:
                src = temp_dir_for(dest)  # made after _produce cleaned leftovers; a killed run's copy is cleaned next
                try:
                    last_build.update(build_of(_pull_source(planner, engine, st, source_key, src)))
                    backend.refit(job, src)
                finally:
                    shutil.rmtree(src, ignore_errors=True)
            missing = backend.check_complete(engine, tmp)
            if missing:
                raise BuildFailed(f"refit:{engine.id} produced an incomplete engine: missing {', '.join(missing)}")

        def finish(tmp: Path) -> None:
            _finish_engine(planner, engine, st, tmp, {
                "how": "refit", "refit_of": source_key, "seconds": round(time.monotonic() - t0, 3),
                "gpus": [g.name for g in held], "gpu_indices": [g.index for g in held], "build": last_build})

        try:
            _produce(dest, f"refit:{engine.id}", make, finish)
        except (BuildFailed, StoreError, StoreCorrupt) as e:
            say(f"refit of {engine.id} failed ({str(e).splitlines()[0]}); building it instead")
            return False
    say(f"refitted {engine.id} in {time.monotonic() - t0:.1f}s (refit of {source_key}) -> {dest}")
    if planner.store is not None:
        _push(planner.store, st.key, dest, engine, planner.structure_key(engine, st.fields))
    return True


def _check_source(planner: Planner, dest: Path, key: str) -> Manifest:
    """The engine here is the one the plan named, with every output intact (a damaged one is not refitted)."""
    m = read_manifest(dest)
    if m is None or m.key != key:
        raise BuildFailed(f"the engine in {dest} changed since it was planned (its key is no longer {key})")
    damaged = check_outputs(dest, m, planner.cache)
    if damaged:
        raise BuildFailed(f"the engine in {dest} is damaged ({'; '.join(damaged)})")
    return m


def _pull_source(planner: Planner, engine: Engine, st: EngineState, key: str, into: Path) -> Manifest:
    """Pull the store's same-structure engine (every file verified) and check that its recorded structure is
    this engine's."""
    store = planner.store
    assert store is not None and st.fields is not None
    m = store.pull(key, into)
    if recorded_key(m.fields, m.structure) != planner.structure_key(engine, st.fields):
        raise StoreCorrupt(f"{store.url}/{key}: its structure is not that of {engine.id}")
    return m


def _restore(planner: Planner, store: Store, key: str, fields: dict[str, Any], dest: Path) -> bool:
    """Pull key from the store into a temp dir beside dest, verifying every file, then publish.
    A corrupt entry is reported and removed from the store (so the rebuild can replace it)."""
    try:
        if not store.has(key):
            return False
        clean_leftovers(dest)
        tmp = temp_dir_for(dest)
        try:
            m = store.pull(key, tmp)
            if canonical_json(m.fields) != canonical_json(fields):
                raise StoreCorrupt(f"{store.url}/{key}: its manifest describes another engine than {dest}")
            publish(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except StoreCorrupt as e:
        say(f"store entry {key} is corrupt ({e}); removing it and building instead")
        store.remove(key)
        return False
    except (KeyError, StoreError) as e:
        say(f"store {store.url} unusable for {key} ({e}); building instead")
        return False
    # The digests were verified while writing: remember them, so the next check is stats only.
    planner.cache.store_many([(dest / r, os.stat(dest / r), d) for r, (_, d) in m.outputs.items()])
    return True


def _push(store: Store, key: str, dest: Path, engine: Engine, structure: str | None) -> None:
    """Push the engine; note its structure key, so hosts whose checkpoint differs in weights only can refit it."""
    try:
        pushed = store.push(key, dest)
        if structure is not None and engine.model.refit:
            store.note_structure(structure, key)
    except StoreError as e:
        say(f"could not push {engine.id} to {store.url}: {e}")
        return
    say(f"pushed {engine.id} to {store.url}" if pushed else f"{engine.id} was already in {store.url}")


def validated(planner: Planner, engine: Engine) -> bool:
    """True when validation.json vouches for the engine's current manifest key."""
    dest = engine.dir(planner.spec.project)
    m = read_manifest(dest)
    return m is not None and validation_vouches(dest, m.key)


def validate(planner: Planner, engine: Engine, gpus: Sequence[Gpu] | None = None,
             priority: float = 0.0) -> dict[str, Any] | None:
    """Load the engine and run it; record the result (keyed by the manifest key) beside it."""
    backend = get_backend(engine.model.backend)
    dest = engine.dir(planner.spec.project)
    st = planner.state(engine)
    if st.state != FRESH:
        if st.state == BLOCKED:
            say(f"{engine.id}: {st.reasons[0]}; not validated here")
            return None
        raise BuildFailed(f"validate:{engine.id}: engine is {st.state} ({'; '.join(st.reasons)})")
    blocked = backend.validate_blocked_reason(engine, planner.host)
    if blocked:  # e.g. restored from the store on a host without that GPU arch, or too few GPUs for its ranks
        say(f"{engine.id}: {blocked}; not validated here")
        return None
    log = dest / "validate.log"
    log.unlink(missing_ok=True)
    t0 = time.monotonic()
    try:
        with _slots(planner, engine, backend.validate_gpus(engine), gpus, priority, f"validate:{engine.id}") as held, \
                progress.step(planner.spec.project.work_dir, f"validate:{engine.id}", "validate",
                              [g.index for g in held]):
            result = backend.validate(Job(engine, checkpoint_dir(planner.spec, engine.model), None, dest,
                                          held, log, planner.spec.project.work_dir, planner.spec.project.root))
    except BuildFailed as e:  # recorded, so `doit plan` shows the engine as unvalidated and why
        write_json_durably(dest / VALIDATION, {"key": st.key, "ok": False, "error": str(e).splitlines()[0],
                                               "log": str(log), "seconds": round(time.monotonic() - t0, 3)})
        raise
    result = {"key": st.key, "ok": True, "seconds": round(time.monotonic() - t0, 3), **result}
    write_json_durably(dest / VALIDATION, result)
    say(f"validated {engine.id}: {_summary(result)}")
    return result


def record_validation(planner: Planner, engine: Engine, record: dict[str, Any]) -> bool:
    """Keep beside the engine a validation another host ran (a Ray worker), when it vouches for (or against)
    the very manifest here; a record for another key is not this engine's and is dropped. True if written."""
    dest = engine.dir(planner.spec.project)
    m = read_manifest(dest)
    if m is None or record.get("key") != m.key or validation_record(dest, m.key) == record:
        return False
    write_json_durably(dest / VALIDATION, record)  # atomic, as validate() writes it
    return True


def _summary(result: dict[str, Any]) -> str:
    keys = ("max_rel_err", "max_abs_err", "tokens", "detail")
    return ", ".join(f"{k}={result[k]}" for k in keys if k in result) or "ok"
