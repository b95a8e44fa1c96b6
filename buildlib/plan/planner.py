"""The plan: for each engine, whether it is fresh, stale, missing or blocked, and why. The decision only: the
keys and input digests are buildlib.plan.keys', the store is opened by buildlib.store.open."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..backends.registry import recipe, runner
from ..core.engine import Engine
from ..core.errors import BackendUnavailable
from ..core.fanout import fan_out
from ..core.gcpause import gc_paused
from ..core.hashing import TreeDigest
from ..core.key import diff_fields
from ..core.layout import statcache_path
from ..core.manifest import (
    MANIFEST,
    VALIDATION,
    Manifest,
    check_outputs,
    read_manifest,
    record_from_text,
    record_of,
    record_text,
    validation_record,
    validation_vouches,
)
from ..core.model import GPU_ARCH_RE, ModelSpec, Spec
from ..core.perf import regression_reason
from ..core.statcache import Stamp, StatCache, settled, signature, stats_hold, stats_of
from ..core.structure import recorded_key, structure_key, structure_reasons
from ..host.confine import claim
from ..host.gpu import GpuProbe, Host, detect_host, host_probe
from ..host.isa import host_isa
from ..store.guarded import GuardedStore
from ..store.open import project_store
from .estimate import build_record
from .keys import Keys, own_fields
from .state import BLOCKED, FRESH, MISSING, REGRESSED, STALE, UNVALIDATED, EngineState

PROBE_ENGINES = 3000  # engines whose stamp checks take about as long as the GPU probe's ~20-50 ms on 2 cores


def checkpoint_reasons(old: dict[str, list], new: dict[str, tuple[int, str]]) -> list[str]:
    """`checkpoint model-00002-of-00004.safetensors changed`, `... added`, `... removed`."""
    reasons = []
    for rel in sorted(old.keys() | new.keys()):
        if rel not in new:
            reasons.append(f"checkpoint {rel} removed")
        elif rel not in old:
            reasons.append(f"checkpoint {rel} added")
        elif list(old[rel]) != list(new[rel]):
            reasons.append(f"checkpoint {rel} changed")
    return reasons


class Planner:
    """Decides each engine's state from its dir, its key (self.keys) and its stamp. One per models.yaml and
    process: engine stamps are loaded once, a fresh engine proven by its stamp costs a key and ~7 stats."""

    def __init__(self, spec: Spec, host: Host | None = None):
        self.spec = spec
        self._host = host
        self._probe: GpuProbe | None = None  # started by expect_host
        self._expected = False  # expect_host() looked at every engine
        claim(spec.project.work_dir)  # checked when models.yaml was read (buildlib.host.confine)
        self.cache = StatCache(statcache_path(spec.project.work_dir))
        self.keys = Keys(spec, self.cache)
        self._store: GuardedStore | bool | None = False  # False: not opened yet
        self._stamps: dict[str, Stamp] | None = None
        self._engines: list[Engine] | None = None
        self._new_stamps: dict[str, Stamp] = {}
        self._parents: dict[str, bool] = {}  # engine dirs' parents: whether each is a dir (_has_manifest)
        self._unbuilt_why: dict[tuple[int, str], tuple[str | None, list[str]]] = {}  # _unbuilt, per model and arch
        self._known: dict[str, str] = {}  # known_records, less the passes below
        self._told_passes: list[tuple[list[Engine], list[Any]]] = []  # states() passes' engines and what was told
        self.build_records: dict[Path, dict[Path, tuple[float, int]]] = {}  # estimate.model_records, per model dir

    @property
    def host(self) -> Host:
        """This host's GPUs and CPU ISA, probed (nvidia-smi) on first use: a no-op run over GPU archs
        whose engines are all fresh never needs it."""
        if self._host is None:
            self._host = detect_host()
        return self._host

    def expect_host(self, engines: list[Engine] | None = None) -> None:
        """Start the host's GPU probe now if some engine (default: all) will surely ask for `host`: one with
        no stamp and no manifest, whose missing-or-blocked is decided by the host's GPUs. nvidia-smi then runs
        while the rest of the run is set up and the stamps are checked. A stat per unstamped engine, up to
        the first such."""
        if self._host is not None or self._probe is not None or (engines is None and self._expected):
            return
        self._expected = engines is None
        stamps, root = self.stamps, self.spec.project
        if any(base not in stamps and not self._has_manifest(base)
               for base in (e.path(root) for e in (self.engines() if engines is None else engines))):
            self._probe = host_probe()

    @property
    def cpu_isa(self) -> str:
        """This host's CPU ISA tier (names `cpu` engines), read from the CPU flags: no GPU probe."""
        return self._host.cpu_isa if self._host is not None else host_isa()

    @property
    def store(self) -> GuardedStore | None:
        """The shared engine store as this run uses it (buildlib.store.open.project_store), opened on first use."""
        if self._store is False:
            self._store = project_store(self.spec.project)
        return self._store  # type: ignore[return-value]

    # -- inputs -------------------------------------------------------------------------------
    def engines(self) -> list[Engine]:
        """Every engine of the spec, in spec order (computed once)."""
        if self._engines is None:
            self._engines = []
            for m in self.spec.models:
                backend = recipe(m.backend)
                archs = dict.fromkeys(a if GPU_ARCH_RE.fullmatch(a) else backend.target(a, self.cpu_isa)
                                      for a in m.archs)
                self._engines.extend(Engine(m, a, tp, pp) for a in archs for tp, pp in m.parallel)
        return list(self._engines)

    def checkpoint(self, model: ModelSpec) -> TreeDigest | None:
        """The checkpoint's Merkle digest (Keys.checkpoint)."""
        return self.keys.checkpoint(model)

    def keyed_fields(self, engine: Engine) -> tuple[dict[str, Any], str] | None:
        """The engine's fields and key (Keys.keyed_fields)."""
        return self.keys.keyed_fields(engine)

    def state(self, engine: Engine) -> EngineState:
        """fresh: the engine dir's manifest has the computed key and intact outputs.
        missing/stale: not built, or built from other inputs (reasons per field).
        blocked: would need building, but this host cannot (wrong arch, no toolchain)."""
        backend = runner(engine.model.backend)
        try:
            keyed = self.keys.keyed_fields(engine)
        except BackendUnavailable as e:
            return EngineState(engine, BLOCKED, [e.message], blocked=e.message)
        if keyed is None:
            blocked = backend.blocked(engine, self.host)
            reasons = [blocked] if blocked else []
            return EngineState(engine, BLOCKED if blocked else MISSING,
                               [*reasons, "checkpoint not generated yet"], blocked=blocked)
        fields, key = keyed
        base = engine.path(self.spec.project)
        stamp = self._stamp_holding(base, key)
        if stamp is not None:
            return EngineState(engine, FRESH, [], key, fields, validated=stamp.validated)
        edir = Path(base)
        m = read_manifest(edir)
        if m is None:
            return self._unbuilt(engine, key, fields=fields)
        reasons, refit_of = self.reasons(m, key, fields, engine)
        if not reasons:
            names = (VALIDATION, *m.outputs)
            stats = [m.stat, *stats_of(base, names)]  # taken before the contents are checked
            reasons = check_outputs(edir, m, self.cache)
            if not reasons:
                validated = validation_vouches(edir, key)
                now = time.time_ns()
                if all(settled(st, now) for st in stats):
                    self._new_stamps[base] = Stamp(key, validated, "\n".join((MANIFEST, *names)), signature(stats),
                                                   record_text(record_of(m)))
                return EngineState(engine, FRESH, [], key, fields, validated=validated)
        blocked = backend.blocked(engine, self.host)
        if blocked:
            return EngineState(engine, BLOCKED, [blocked, *reasons], key, fields, blocked, refit_of=refit_of)
        return EngineState(engine, STALE, reasons, key, fields, refit_of=refit_of)

    def _unbuilt(self, engine: Engine, key: str | None, fields: dict[str, Any] | None = None) -> EngineState:
        """The state of an engine whose dir has no manifest: missing, or blocked where this host cannot build it.
        Without `fields`, they (and the key, if None) are made when first asked for (EngineState.lazy)."""
        memo = self._unbuilt_why.get((id(engine.model), engine.arch))
        if memo is None:  # Runner.blocked: the same for every tp/pp of a model's arch
            blocked = runner(engine.model.backend).blocked(engine, self.host)
            why = f"target {engine.arch} not built yet"
            memo = self._unbuilt_why[id(engine.model), engine.arch] = (blocked, [blocked, why] if blocked else [why])
        blocked, reasons = memo[0], list(memo[1])
        state = BLOCKED if blocked else MISSING
        if fields is None:
            return EngineState.lazy(engine, state, reasons, key, self.keys, blocked=blocked)
        return EngineState(engine, state, reasons, key, fields, blocked)

    def _stamp_holding(self, base: str, key: str) -> Stamp | None:
        """The engine dir's stamp if it proves the engine fresh: it is for this key and the dir's files still
        have the stats they had when it was proven."""
        stamp = self.stamps.get(base)
        if stamp is not None and stamp.key == key and stats_hold(base, stamp.names.split("\n"), stamp.sig):
            return stamp
        return None

    def _told(self, engine: Engine) -> list[Any] | None:
        """What the engine's stamp or a missing manifest tells without reading any file: [FRESH, key, validated]
        if its stamp proves it fresh, [MISSING] if its dir has no manifest (never built here, or removed; its key
        is made only if asked for: a no-op leaves such an engine out, or says it is not for this host), else None
        (state() then tells why). Reads only: states() runs it in forked processes (buildlib.fanout)."""
        shared = self.keys.known_template(engine.model)
        if shared is None:
            return None  # state() digests it (never here: this may be a forked process), or reports why not
        base = engine.path(self.spec.project)
        stamp = self.stamps.get(base)
        if stamp is None:
            return None if self._has_manifest(base) else [MISSING]
        key = shared[1].key(*own_fields(engine))
        if stamp.key == key and stats_hold(base, stamp.names.split("\n"), stamp.sig):
            return [FRESH, key, stamp.validated]
        return None

    def _has_manifest(self, base: str) -> bool:
        """Whether the engine dir `base` has a manifest: one stat, or none where its parent (the model's arch dir)
        is known absent: the engines of an arch never built here share one stat."""
        parent = base.rpartition("/")[0]
        there = self._parents.get(parent)
        if there is None:
            there = self._parents[parent] = os.path.isdir(parent)
        return there and os.path.exists(f"{base}/{MANIFEST}")

    @property
    def stamps(self) -> dict[str, Stamp]:
        """Engine stamps from the stat cache, loaded in one query on first use."""
        if self._stamps is None:
            self._stamps = self.cache.stamps()
        return self._stamps

    def states(self, engines: list[Engine] | None = None) -> list[EngineState]:
        """state() of each engine (default: all), then the stamps of engines newly proven fresh are
        saved in one transaction, so the next run re-proves them with stats alone. The stamp checks (a key
        and ~7 stats per engine, all a no-op does) are fanned out over the CPU cores (buildlib.fanout)."""
        with gc_paused():
            self._parents = {}  # what a dir held when this pass began: builds since may have made it
            self.expect_host(engines)  # loads the stamps, before fan_out forks, so every process has them
            return self._states(self.engines() if engines is None else engines)

    def _states(self, engines: list[Engine]) -> list[EngineState]:
        models = {id(e.model): e.model for e in engines}.values()  # by id: a ModelSpec hashes every field it has
        self.keys.prepare(models)  # before fan_out forks, so every process has the toolchains
        # A running probe takes a core for its last few tens of ms: one process fewer where the check is about as
        # short (on 2 cores, a 1,000-engine no-op took 0.158 s, not 0.173), not where it is longer (10,000 engines
        # half blocked: 0.19 s in one process, 0.10 s in two beside the probe). This process's chunk is a little
        # larger: a forked child checks more slowly (its first write to each page of the shared heap, refcounts
        # included, copies it), and this one makes the EngineStates once every chunk is told (making them
        # meanwhile was slower).
        busy = int(self._probe is not None and self._probe.running and len(engines) < PROBE_ENGINES)
        with self.keys.held_trees(models):  # the checkpoints' tree stamps, checked by the fan-out
            tolds = fan_out(engines, self._told, local_share=1.2, busy=busy)
        out = []
        for e, told in zip(engines, tolds, strict=True):
            if told is None:
                out.append(self.state(e))
            elif told[0] == FRESH:
                out.append(EngineState.lazy(e, FRESH, [], told[1], self.keys, validated=told[2]))
            else:
                out.append(self._unbuilt(e, None))
        self._told_passes.append((engines, tolds))
        if self._new_stamps:
            self.cache.store_stamps(self._new_stamps)
            self.stamps.update(self._new_stamps)
            self.known_records.update((d, st.built) for d, st in self._new_stamps.items())
            self._new_stamps = {}
        return out

    @property
    def known_records(self) -> dict[str, str]:
        """Build records (record_text) states() learned without reading a manifest: engine dir -> the record
        its stamp keeps (the stamp held, or was made), or "" (no manifest: never built). Made from the passes' told
        results when first asked for (a plan's estimates), not on a no-op."""
        root = self.spec.project
        for engines, tolds in self._told_passes:
            for e, told in zip(engines, tolds, strict=True):
                if told is not None:
                    base = e.path(root)
                    self._known[base] = self.stamps[base].built if told[0] == FRESH else ""
        self._told_passes.clear()
        return self._known

    def build_record(self, engine_dir: Path) -> tuple[float, int] | None:
        """build_record of an engine dir, from what states() learned where it can (known_records: its stamp
        held, so the manifest is the one the record was taken from; or it has no manifest), else from its
        manifest: a plan's estimates for 5,000 unbuilt engines read none of the 5,000 fresh ones beside them."""
        known = self.known_records.get(str(engine_dir))
        return record_from_text(known) if known is not None else build_record(engine_dir)

    def reasons(self, m: Manifest, key: str, fields: dict[str, Any], engine: Engine) -> tuple[list[str], str | None]:
        """Why the engine built as `m` is not the one wanted (per field), and, when only its weights changed
        and it was built refittable, the key to refit it from (`weights only: refit`)."""
        if m.key == key:
            return [], None
        others = diff_fields(m.fields, fields, skip=("checkpoint",))
        ckpt = self.keys.checkpoint(engine.model)
        if ckpt is None or m.fields.get("checkpoint") == ckpt.digest:
            return others or ["key changed"], None
        files = checkpoint_reasons(m.checkpoint_files, ckpt.files) or ["checkpoint changed"]
        if others:
            return files + others, None
        old = recorded_key(m.fields, m.structure) if m.structure else None
        if old is None:  # built before structures were recorded: cannot tell weights from structure
            return files, None
        new = self.keys.structure(engine.model)
        assert new is not None
        if old != structure_key(fields, new.digest):
            return structure_reasons(m.structure, new), None
        if engine.model.refit:
            return ["weights only: refit"], m.key
        return [f"{r} (weights only)" for r in files], None

    def plan(self, with_store: bool = True) -> list[EngineState]:
        """Every engine's state; with_store also asks the store, for each engine that is not
        fresh, whether it has the key (many small requests, so they run on a thread pool)."""
        states = self.states()
        store = self.store if with_store else None
        if store is not None:
            ask = [s for s in states if s.key and s.state != FRESH]
            from concurrent.futures import ThreadPoolExecutor  # ~5 ms to import (logging): not on a no-op

            with ThreadPoolExecutor(16) as pool:
                for s, hit in zip(ask, pool.map(lambda s: store.has(s.key), ask), strict=True):
                    s.store = hit
                refit = [s for s in ask if not s.store and s.refit_of is None and s.engine.model.refit and s.fields]
                for model in {s.engine.model for s in refit}:
                    self.keys.structure(model)  # read here, once per checkpoint; the pool only asks the store
                for s, found in zip(refit, pool.map(self.store_refit_source, refit), strict=True):
                    s.refit_store = found
        return states

    def validated_elsewhere(self, s: EngineState) -> dict[str, Any] | None:
        """The newest passing validation record of the engine's key that a trusted signer published to the store
        (buildlib.store.guarded), as {gpu, signer, at, driver, host}; None without a trust policy or a record."""
        store = self.store
        if store is None or not store.verifiers or not s.key:
            return None
        passed = [(r, who) for r, who in store.validations(s.key) if r.get("ok") is True]
        if not passed:
            return None
        record, signer = max(passed, key=lambda rw: str(rw[0].get("at", "")))
        return {"gpu": record.get("gpu"), "signer": signer, "at": str(record.get("at", "")),
                "driver": record.get("driver"), "host": record.get("host")}

    def store_refit_source(self, s: EngineState) -> str | None:
        """The key of an engine in the store with this one's structure (so it can be refitted from there)."""
        store = self.store
        skey = self.keys.structure_key(s.engine, s.fields) if s.fields and store is not None else None
        if skey is None or store is None:
            return None
        found = store.by_structure(skey)
        return found if found != s.key else None


def measured(planner: Planner, s: EngineState) -> EngineState:
    """A validated engine with the speed its validation measured (`perf`), shown `regressed` when the model's
    perf_gate caught it slower than the engine it replaced."""
    rec = validation_record(s.engine.path(planner.spec.project), s.key or "") or {}
    perf = rec.get("perf") if isinstance(rec.get("perf"), dict) else None
    verdict = rec.get("perf_gate")
    if isinstance(verdict, dict) and verdict.get("regressed") and s.engine.model.perf_gate is not None:
        return EngineState(s.engine, REGRESSED, [regression_reason(verdict)], s.key, s.fields, None, s.store,
                           True, perf=perf)
    if perf is not None:
        s.perf = perf
    return s


def shown(planner: Planner, states: list[EngineState]) -> list[EngineState]:
    """The states as `doit plan` shows them: a fresh engine whose model requires validation and which
    validation does not vouch for is `unvalidated`, with why (the recorded failure and its log, or that
    it never ran), or `blocked` where this host cannot run it; a validated one carries its measured speed
    and is `regressed` when the perf gate caught it. The build logic keeps seeing `fresh`: such an engine
    needs validating (or a look at its speed), not rebuilding."""
    out = []
    for s in states:
        if s.state == FRESH and s.validated:
            out.append(measured(planner, s))
            continue
        if s.state != FRESH or not s.engine.model.validate:
            out.append(s)
            continue
        e = s.engine
        rec = validation_record(e.path(planner.spec.project), s.key or "")
        why = f"validation failed: {rec.get('error')}" if rec else "not validated yet"
        blocked = runner(e.model.backend).blocked(e, planner.host, "validate")
        seen = planner.validated_elsewhere(s) if blocked else None
        if seen is not None:  # this host cannot run it, a trusted signer's record says where it was validated
            out.append(EngineState(e, FRESH, [f"validated on {seen['gpu']} by {seen['signer']}, {seen['at'][:10]}"],
                                   s.key, s.fields, None, s.store, attested=seen))
        elif blocked:
            out.append(EngineState(e, BLOCKED, [blocked, why], s.key, s.fields, blocked, s.store))
        else:
            out.append(EngineState(e, UNVALIDATED, [why], s.key, s.fields, None, s.store))
    return out
