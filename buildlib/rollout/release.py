"""`doit release CHANNEL`: record in the store which engines a channel serves, per model; and roll a channel back.

An engine is released when the store holds it for its current inputs (its wanted key is in the store, as this
run's trust policy reads it: under a policy, only a trusted signer's entry counts) and, where its model asks for
validation, something vouches that it passed: this host's validation of that key, or a trusted signer's validation
record from the store. Anything else is named with why and left out; `--check` makes that an error, and nothing is
recorded. A release equal to the one in force (same engines, same keys) records nothing. With engine globs
(`doit release prod 'llama/sm90/*'`), the engines they do not select keep what the release in force serves for them:
a staggered rollout releases each arch when its runners are done.

The record (buildlib.store.channel) carries, per engine, what a node needs to choose without a checkout: arch, the
exact GPU name where the model asks for one, tp/pp and GPU count, key, size, who signed the entry, and where it was
validated.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import UserError
from ..core.manifest import validation_record
from ..core.perf import regression_reason
from ..plan.planner import Planner
from ..plan.state import FRESH, EngineState
from ..report.listing import select
from ..run.produce import CI_VARS
from ..store.channel import Release, check_name, current, in_force, new_id, record
from ..store.guarded import GuardedStore

Records = list[tuple[dict[str, Any], str]]  # GuardedStore.validations: (record, signer name)


@dataclass
class Outcome:
    recorded: list[tuple[Release, str]] = field(default_factory=list)  # (release, its URL)
    unchanged: list[Release] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (engine id, why)
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (engine id, model): served before, not now


def writable_store(planner: Planner) -> GuardedStore:
    store = planner.store
    if store is None:
        raise UserError("doit release records in the store: set `store:` in models.yaml or BUILDLIB_STORE")
    if not store.writable:
        raise UserError(f"store {store.url} is read-only for this run (store: push: false, or BUILDLIB_STORE_PUSH=0); "
                        "release from a job that may write to it")
    return store


def _by(store: GuardedStore) -> dict[str, Any]:
    by: dict[str, Any] = {"host": os.uname().nodename, "signer": store.signer.identity if store.signer else None}
    ci = {k: os.environ[k] for k in CI_VARS if os.environ.get(k)}
    return {**by, "ci": ci} if ci else by


def _validated(planner: Planner, s: EngineState, records: Records) -> list[dict[str, Any]]:
    """Where the engine's key passed validation: trusted records from the store, and this host's own."""
    out = [{"gpu": r.get("gpu"), "driver": r.get("driver"), "by": who, "at": str(r.get("at", ""))}
           for r, who in records if r.get("ok") is True]
    if s.state == FRESH and s.validated:
        rec = validation_record(s.engine.path(planner.spec.project), str(s.key)) or {}
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.stat(s.engine.path(planner.spec.project)).st_mtime))
        out.append({"gpu": rec.get("gpu") or s.engine.arch, "driver": rec.get("driver"),
                    "by": f"{os.uname().nodename} (this host's validation.json)", "at": at})
    return out


def _why_not(s: EngineState, store: GuardedStore) -> str:
    policy = " signed by a key of the trust policy" if store.verifiers else ""
    if s.state == FRESH:
        return f"fresh here, but the store has no entry of its key{policy}: push it (a `doit` run with a writable " \
               "store pushes what it builds)"
    why = "; ".join(s.reasons) or s.state
    return f"{s.state} ({why}), and the store has no entry of its current key{policy}: build it, then release"


def _entry(planner: Planner, store: GuardedStore, s: EngineState, validated: list[dict[str, Any]]) -> dict[str, Any]:
    e = s.engine
    signer = next((v.name if v is not None else None for v, scope in store.record_sources() if scope.has(str(s.key))),
                  None)
    return {"engine": e.id, "arch": e.arch, "gpu_name": e.model.gpu_name, "tp": e.tp, "pp": e.pp,
            "gpus": e.world_size, "backend": e.model.backend, "key": s.key, "size": store.entry_size(str(s.key)),
            "signer": signer, "validated": validated}


def _regressed(planner: Planner, s: EngineState, records: Records) -> str | None:
    """Why the perf gate caught this engine slower than the one it replaced (this host's validation, or a trusted
    signer's record), or None."""
    if s.engine.model.perf_gate is None:
        return None
    recs = [r for r, _ in records]
    if s.state == FRESH:
        recs.append(validation_record(s.engine.path(planner.spec.project), str(s.key)) or {})
    verdict = next((r["perf_gate"] for r in recs if isinstance(r.get("perf_gate"), dict)
                    and r["perf_gate"].get("regressed")), None)
    return regression_reason(verdict) if verdict else None


def release(planner: Planner, channel: str, globs: Sequence[str] = (), check: bool = False,
            unvalidated: bool = False, regressed: bool = False) -> Outcome:
    """Record for each model the engines `channel` now serves (see the module); the outcome says what was left out."""
    check_name("channel", channel)
    store = writable_store(planner)
    states = planner.plan(with_store=True)
    if globs:
        states = select(states, globs)
    ask = [s for s in states if s.store is None and s.key]  # the plan asks the store only for unbuilt engines
    with ThreadPoolExecutor(8) as pool:
        for s, hit in zip(ask, pool.map(lambda s: store.has(str(s.key)), ask), strict=True):
            s.store = hit
    out = Outcome()
    wanted: dict[str, list[dict[str, Any]]] = {}
    for s in states:
        if not s.store:
            out.left_out.append((s.engine.id, _why_not(s, store)))
            continue
        records = store.validations(str(s.key))  # trusted signed records: listed and checked once per engine
        validated = _validated(planner, s, records)
        if s.engine.model.validate and not validated and not unvalidated:
            out.left_out.append((s.engine.id, "in the store, but nothing vouches that it passed validation (no "
                                 "validation of its key here" + ("" if store.verifiers else ", and no trust policy to "
                                 "believe a signed record by") + "): validate it, or release with --unvalidated"))
            continue
        slower = _regressed(planner, s, records)
        if slower and not regressed:
            out.left_out.append((s.engine.id, f"regressed: {slower}; release with --regressed to ship it anyway"))
            continue
        wanted.setdefault(s.engine.model.name, []).append(_entry(planner, store, s, validated))
    if check and out.left_out:
        return out
    for model, engines in wanted.items():
        before = current(store, channel, model)
        if globs and before is not None:  # a partial release: what the globs do not select keeps serving
            picked = {e["engine"] for e in engines}
            engines = [*engines, *(e for e in before.engines if e["engine"] not in picked
                                   and not any(fnmatch.fnmatch(e["engine"], g) for g in globs))]
        if before is not None and sorted((e["engine"], e["key"]) for e in before.engines) == \
                sorted((e["engine"], e["key"]) for e in engines):
            out.unchanged.append(before)
            continue
        rel = Release(channel, model, new_id(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), _by(store),
                      before.id if before is not None else None, tuple(engines))
        out.recorded.append((rel, record(store, rel)))
        now = {e["engine"] for e in engines}
        out.dropped += [(e["engine"], model) for e in (before.engines if before else ()) if e["engine"] not in now]
    return out


def rollback(planner: Planner, channel: str, model: str) -> tuple[Release, Release, str]:
    """Restore the release before the one in force, as a new record; (the undone release, the new one, its URL)."""
    check_name("channel", channel)
    store = writable_store(planner)
    now, prev = in_force(store, channel, model, with_previous=True)
    if now is None:
        raise UserError(f"channel {channel} serves no {model}: nothing to roll back")
    if prev is None:
        raise UserError(f"channel {channel} has no release of {model} before {now.id}: nothing to roll back to")
    gone = [e["engine"] for e in prev.engines if not store.has(e["key"])]
    if gone:
        raise UserError(f"cannot roll {channel} back to {prev.id}: the store no longer has {', '.join(gone)} "
                        "(collected?); release current engines instead")
    rel = Release(channel, model, new_id(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), _by(store),
                  prev.previous, prev.engines, rollback_of=now.id)
    return now, rel, record(store, rel)
