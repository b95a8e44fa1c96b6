"""The plan: for each engine, its key and whether it is fresh, stale, missing or blocked, and why."""

from __future__ import annotations

import os
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import RECIPE_VERSION
from .backends import get_backend
from .backends.base import Backend, model_architecture
from .confine import claim
from .engine import Engine
from .errors import BackendUnavailable, SpecError, Where
from .fanout import fan_out
from .gcpause import gc_paused
from .gpu import GpuProbe, Host, detect_host, host_probe
from .hashing import TreeDigest, held_tree, tree_digest, tree_digests
from .isa import host_isa
from .key import KeyTemplate, canonical_json, diff_fields, key_of
from .manifest import (
    MANIFEST,
    VALIDATION,
    Manifest,
    check_outputs,
    read_manifest,
    validation_record,
    validation_vouches,
)
from .sched import build_record, record_from_text, record_of, record_text
from .spec import GPU_ARCH_RE, GeneratedCheckpoint, ModelSpec, Spec
from .statcache import Stamp, StatCache, settled, signature, stats_hold, stats_of
from .states import BLOCKED, FRESH, MISSING, STALE, UNVALIDATED
from .store import Store, configured_store
from .structure import CheckpointStructure, checkpoint_structure, recorded_key, structure_key, structure_reasons

PROBE_ENGINES = 3000  # engines whose stamp checks take about as long as the GPU probe's ~20-50 ms on 2 cores


@dataclass(slots=True)  # 10,000 are made on a no-op over 10,000 engines
class EngineState:
    engine: Engine
    state: str
    reasons: list[str] = field(default_factory=list)
    key: str | None = None
    fields: dict[str, Any] | None = None
    blocked: str | None = None  # why this host cannot build it, even if it is stale
    store: bool | None = None  # whether the shared store has this key (None: no store configured)
    validated: bool = False  # fresh, and validation.json vouches for this key
    refit_of: str | None = None  # stale in its weights only: the key of the refittable engine here to refit
    refit_store: str | None = None  # no refit source here: the key of a same-structure engine in the store
    lazy_of: Planner | None = field(default=None, repr=False, compare=False)  # makes the unset fields, key

    @classmethod
    def lazy(cls, engine: Engine, state: str, reasons: list[str], key: str | None, planner: Planner,
             blocked: str | None = None, validated: bool = False) -> EngineState:
        """A state told by a stamp or a missing manifest (Planner.states), whose `fields` (and `key`, if None
        here) the planner makes on first use: a no-op never asks for them; 10,000 field dicts were a tenth of a
        no-op over 10,000 engines, and the keys of 5,000 unbuilt engines a twentieth. (Made with positional
        arguments: half the cost of keywords.)"""
        s = cls(engine, state, reasons, key, None, blocked, None, validated, None, None, planner)
        del s.fields  # unset: the first read goes to __getattr__
        if key is None:
            del s.key
        return s

    def __getattr__(self, name: str) -> Any:
        """Called only for an unset slot: the `fields` or `key` of a lazy state, made now."""
        planner = object.__getattribute__(self, "lazy_of")
        if planner is None or name not in ("fields", "key"):
            raise AttributeError(name)
        got = planner.engine_fields(self.engine) if name == "fields" else planner.engine_key(self.engine)
        setattr(self, name, got)
        return got


def generated_dir(spec: Spec, ckpt: GeneratedCheckpoint) -> Path:
    from .tinyllama import GENERATOR_VERSION

    tag = key_of({"generator": ckpt.generator, "version": GENERATOR_VERSION, "params": ckpt.kwargs})[:16]
    return spec.project.work_dir / "generated" / f"{ckpt.generator}-{tag}"


def checkpoint_dir(spec: Spec, model: ModelSpec) -> Path:
    c = model.checkpoint
    return generated_dir(spec, c) if isinstance(c, GeneratedCheckpoint) else c


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
    """Computes keys and states. Memoizes per process: one checkpoint digest per model and one
    toolchain probe per backend, so N engines cost N manifest reads plus stats, not N hashes."""

    def __init__(self, spec: Spec, host: Host | None = None):
        self.spec = spec
        self._host = host
        self._probe: GpuProbe | None = None  # started by expect_host
        self._expected = False  # expect_host() looked at every engine
        claim(spec.project.work_dir)  # checked when models.yaml was read (buildlib.confine)
        self.cache = StatCache(spec.project.work_dir / "statcache.sqlite")
        self._digests: dict[Path, TreeDigest] = {}  # checkpoints' and input dirs'
        # Tree stamps states() loaded for the fan-out to check (_trees_known), and the dirs whose digests it left
        # unknown here (the stamp held in a child, or not at all): the first _tree() of one digests them all.
        self._tree_stamps: dict[str, tuple[str, str, tuple[str, ...], str]] = {}
        self._unverified: set[Path] = set()
        self._toolchains: dict[str, dict[str, str | None] | BackendUnavailable] = {}
        self._store: Store | bool | None = False  # False: not opened yet
        self._stamps: dict[str, Stamp] | None = None
        self._engines: list[Engine] | None = None
        self._new_stamps: dict[str, Stamp] = {}
        self._parents: dict[str, bool] = {}  # engine dirs' parents: whether each is a dir (_has_manifest)
        self._model_dirs: dict[int, list[Path]] = {}  # _tree_dirs
        self._unbuilt_why: dict[tuple[int, str], tuple[str | None, list[str]]] = {}  # _unbuilt, per model and arch
        self._known: dict[str, str] = {}  # known_records, less the passes below
        self._told_passes: list[tuple[list[Engine], list[Any]]] = []  # states() passes' engines and what was told
        self._shared_fields: dict[int, tuple[dict[str, Any], KeyTemplate]] = {}
        self._builds: dict[tuple[str, tuple[tuple[str, Any], ...], str | None], tuple[dict[str, Any], str]] = {}
        self._structures: dict[Path, CheckpointStructure] = {}
        self.build_records: dict[Path, dict[Path, tuple[float, int]]] = {}  # sched.model_records, per model dir

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
    def store(self) -> Store | None:
        """The shared engine store (models.yaml `store:` or BUILDLIB_STORE), opened on first use."""
        if self._store is False:
            url = self.spec.project.store
            if url is not None and "://" not in url and not Path(url).is_absolute():
                url = str(self.spec.project.root / url)  # relative to models.yaml, like checkpoints
            self._store = configured_store(url, self.spec.project.work_dir)
        return self._store  # type: ignore[return-value]

    # -- inputs -------------------------------------------------------------------------------
    def engines(self) -> list[Engine]:
        """Every engine of the spec, in spec order (computed once)."""
        if self._engines is None:
            self._engines = []
            for m in self.spec.models:
                backend = get_backend(m.backend)
                archs = dict.fromkeys(a if GPU_ARCH_RE.fullmatch(a) else backend.expand_arch(a, self.cpu_isa)
                                      for a in m.archs)
                self._engines.extend(Engine(m, a, tp, pp) for a in archs for tp, pp in m.parallel)
        return list(self._engines)

    def checkpoint(self, model: ModelSpec) -> TreeDigest | None:
        """The checkpoint's Merkle digest, or None while a generated checkpoint does not exist yet."""
        return self._tree(checkpoint_dir(self.spec, model))

    def _tree(self, d: Path) -> TreeDigest | None:
        """tree_digest of a checkpoint or input dir (None if it is not a dir), memoized. The first one left
        unverified by states() digests all of those at once: every file of them in one stat-cache batch."""
        if d not in self._digests and d in self._unverified:
            dirs, self._unverified = self._unverified - self._digests.keys(), set()
            self._digests.update(tree_digests([u for u in dirs if u.is_dir()], self.cache))
        if d not in self._digests:
            if not d.is_dir():
                return None
            self._digests[d] = tree_digest(d, self.cache)
        return self._digests[d]

    def _tree_dirs(self, model: ModelSpec) -> list[Path]:
        """The dirs whose digests go into the model's key: its checkpoint and input dirs (LoRA adapters...).
        Memoized by the model object's id (the spec holds the models), as states() and _trees_known ask."""
        got = self._model_dirs.get(id(model))
        if got is None:
            inputs = get_backend(model.backend).input_dirs(model, self.spec.project.root)
            got = self._model_dirs[id(model)] = [checkpoint_dir(self.spec, model), *inputs.values()]
        return got

    def _trees_known(self, model: ModelSpec) -> bool:
        """Whether every digest _shared needs for the model is known in this process without the stat cache:
        memoized, or kept by a tree stamp states() loaded whose stats still hold. So a forked process of the
        fan-out checks the checkpoints of its own models, and never opens sqlite: one pass over the fleet's
        files, in parallel, and no separate one for the checkpoints."""
        for d in self._tree_dirs(model):
            if d not in self._digests:
                held = held_tree(os.fspath(d), self._tree_stamps.get(os.fspath(d)))
                if held is None:
                    return False
                self._digests[d] = held
        return True

    def forget_checkpoint(self, model: ModelSpec) -> None:
        self._digests.pop(checkpoint_dir(self.spec, model), None)
        self._structures.pop(checkpoint_dir(self.spec, model), None)
        self._shared_fields.clear()  # models sharing this checkpoint dir hold its digest too

    def structure(self, model: ModelSpec) -> CheckpointStructure | None:
        """The checkpoint's structure (buildlib.structure): read for a build or a stale engine, never on a no-op."""
        ckpt = self.checkpoint(model)
        if ckpt is None:
            return None
        d = checkpoint_dir(self.spec, model)
        if d not in self._structures:
            self._structures[d] = checkpoint_structure(d, ckpt.files)
        return self._structures[d]

    def structure_key(self, engine: Engine, fields: dict[str, Any]) -> str | None:
        ckpt = self.structure(engine.model)
        return structure_key(fields, ckpt.digest) if ckpt is not None else None

    def toolchain(self, backend: Backend) -> dict[str, str | None]:
        if backend.name not in self._toolchains:
            try:
                self._toolchains[backend.name] = backend.toolchain()
            except BackendUnavailable as e:
                self._toolchains[backend.name] = e
        got = self._toolchains[backend.name]
        if isinstance(got, BackendUnavailable):
            raise got
        return got

    # -- keys ---------------------------------------------------------------------------------
    def engine_fields(self, engine: Engine) -> dict[str, Any] | None:
        """Every field that shapes the engine (None while a generated checkpoint does not exist yet)."""
        shared = self._shared(engine.model)
        if shared is None:
            return None
        convert, target = self._own(engine)
        return {**shared[0], "convert": convert, "target": target}

    def engine_key(self, engine: Engine) -> str | None:
        """The engine's key (None while a generated checkpoint does not exist yet): see keyed_fields."""
        shared = self._shared(engine.model)
        return shared[1].key(*self._own(engine)) if shared is not None else None

    def keyed_fields(self, engine: Engine) -> tuple[dict[str, Any], str] | None:
        """The engine's fields and key. What every engine of a model shares (checkpoint, build options,
        toolchain...) and its canonical JSON are made once per model (_shared, a KeyTemplate), so a key costs
        the JSON of the engine's own two fields and one hash: a no-op over 10,000 engines computes 10,000."""
        shared = self._shared(engine.model)
        if shared is None:
            return None
        base, template = shared
        convert, target = self._own(engine)
        return {**base, "convert": convert, "target": target}, template.key(convert, target)

    @staticmethod
    def _own(engine: Engine) -> tuple[dict[str, Any], dict[str, Any]]:
        """The engine's own fields, beside its model's shared ones: convert (tp, pp...) and target (arch)."""
        return (get_backend(engine.model.backend).convert_fields(engine),
                {"arch": engine.arch, "gpu": engine.model.gpu_name})

    def _shared(self, model: ModelSpec) -> tuple[dict[str, Any], KeyTemplate] | None:
        """The fields every engine of the model has alike, and the canonical JSON of each. Memoized by the
        model object's id (a ModelSpec hashes all its fields on every dict lookup); the spec holds the models."""
        got = self._shared_fields.get(id(model))
        if got is not None:
            return got
        backend = get_backend(model.backend)
        ckpt = self.checkpoint(model)
        if ckpt is None:
            return None
        build, build_json = self._model_build(backend, model)
        fields: dict[str, Any] = {"backend": backend.name, "checkpoint": ckpt.digest,
                                  "toolchain": self.toolchain(backend), "recipe": RECIPE_VERSION, "build": build}
        if model.refit:  # built refittable (absent otherwise, so keys without refit stay as they were)
            fields["refit"] = True
        inputs = self._inputs(backend, model)
        if inputs:
            fields["inputs"] = inputs
        got = self._shared_fields[id(model)] = fields, KeyTemplate(fields, ("convert", "target"), {"build": build_json})
        return got

    def convert_fields(self, engine: Engine) -> dict[str, Any] | None:
        backend = get_backend(engine.model.backend)
        ckpt = self.checkpoint(engine.model)
        if ckpt is None:
            return None
        return {"backend": backend.name, "checkpoint": ckpt.digest, "convert": backend.convert_fields(engine),
                "toolchain": self.toolchain(backend), "recipe": RECIPE_VERSION}

    def _model_error(self, model: ModelSpec, e: SpecError) -> SpecError:
        """A check that needs the checkpoint (or other inputs), made at plan time: still file:line:field."""
        return SpecError(e.message, Where(self.spec.project.models_path, model.line),
                         f"models[{model.name}].{e.field}" if e.field else f"models[{model.name}]")

    def _model_build(self, backend: Backend, model: ModelSpec) -> tuple[dict[str, Any], str]:
        """The backend's build options for the model, and their canonical JSON; the checkpoint's architecture is
        read only where the options depend on it (never for the default option set, so a no-op reads no
        config.json). Memoized on what they are made from (Backend.model_build: the options and the
        architecture): a fleet's models mostly share a build, and its JSON was a third of a model's key template."""
        arch = model_architecture(model, checkpoint_dir(self.spec, model)) if backend.needs_architecture(model) \
            else None
        memo: tuple[str, tuple[tuple[str, Any], ...], str | None] | None = (backend.name, model.build, arch)
        try:
            got = self._builds.get(memo)  # type: ignore[arg-type]
        except TypeError:  # an option whose value is a list or a dict: not memoized
            got = memo = None
        if got is None:
            try:
                build = backend.model_build(model, arch)
            except SpecError as e:
                raise self._model_error(model, e) from None
            got = build, canonical_json(build)
            if memo is not None:
                self._builds[memo] = got
        return got

    def _inputs(self, backend: Backend, model: ModelSpec) -> dict[str, str]:
        """Digests of the directories besides the checkpoint that shape the engine (e.g. LoRA adapters)."""
        got: dict[str, str] = {}
        for name, d in backend.input_dirs(model, self.spec.project.root).items():
            if not d.is_dir():
                raise self._model_error(model, SpecError(f"{d} is not a directory", field=name))
            tree = self._tree(d)
            assert tree is not None  # a dir, checked just above
            got[name] = tree.digest
        return got

    def converted_dir(self, engine: Engine) -> Path | None:
        fields = self.convert_fields(engine)
        return self.spec.project.work_dir / "checkpoints" / key_of(fields) if fields else None

    # -- states -------------------------------------------------------------------------------
    def state(self, engine: Engine) -> EngineState:
        """fresh: the engine dir's manifest has the computed key and intact outputs.
        missing/stale: not built, or built from other inputs (reasons per field).
        blocked: would need building, but this host cannot (wrong arch, no toolchain)."""
        backend = get_backend(engine.model.backend)
        try:
            keyed = self.keyed_fields(engine)
        except BackendUnavailable as e:
            return EngineState(engine, BLOCKED, [e.message], blocked=e.message)
        if keyed is None:
            blocked = backend.blocked_reason(engine, self.host)
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
        blocked = backend.blocked_reason(engine, self.host)
        if blocked:
            return EngineState(engine, BLOCKED, [blocked, *reasons], key, fields, blocked, refit_of=refit_of)
        return EngineState(engine, STALE, reasons, key, fields, refit_of=refit_of)

    def _unbuilt(self, engine: Engine, key: str | None, fields: dict[str, Any] | None = None) -> EngineState:
        """The state of an engine whose dir has no manifest: missing, or blocked where this host cannot build it.
        Without `fields`, they (and the key, if None) are made when first asked for (EngineState.lazy)."""
        memo = self._unbuilt_why.get((id(engine.model), engine.arch))
        if memo is None:  # Backend.blocked_reason: the same for every tp/pp of a model's arch
            blocked = get_backend(engine.model.backend).blocked_reason(engine, self.host)
            why = f"target {engine.arch} not built yet"
            memo = self._unbuilt_why[id(engine.model), engine.arch] = (blocked, [blocked, why] if blocked else [why])
        blocked, reasons = memo[0], list(memo[1])
        state = BLOCKED if blocked else MISSING
        if fields is None:
            return EngineState.lazy(engine, state, reasons, key, self, blocked=blocked)
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
        model = engine.model
        shared = self._shared_fields.get(id(model))
        if shared is None:
            if not self._trees_known(model):
                return None  # state() digests it (never here: this may be a forked process)
            try:
                shared = self._shared(model)
            except (BackendUnavailable, SpecError):
                return None  # state() reports it
            if shared is None:
                return None
        base = engine.path(self.spec.project)
        stamp = self.stamps.get(base)
        if stamp is None:
            return None if self._has_manifest(base) else [MISSING]
        key = shared[1].key(*self._own(engine))
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
        dirs = {d for m in models for d in self._tree_dirs(m)} - self._digests.keys()
        self._tree_stamps = self.cache.tree_stamps([os.fspath(d) for d in dirs])  # checked by the fan-out
        for backend in {m.backend for m in models}:  # likewise the toolchains (aoti's asks the compiler)
            with suppress(BackendUnavailable):  # state() reports it
                self.toolchain(get_backend(backend))
        # A running probe takes a core for its last few tens of ms: one process fewer where the check is about as
        # short (on 2 cores, a 1,000-engine no-op took 0.158 s, not 0.173), not where it is longer (10,000 engines
        # half blocked: 0.19 s in one process, 0.10 s in two beside the probe). This process's chunk is a little
        # larger: a forked child checks more slowly (its first write to each page of the shared heap, refcounts
        # included, copies it), and this one makes the EngineStates once every chunk is told (making them
        # meanwhile was slower).
        busy = int(self._probe is not None and self._probe.running and len(engines) < PROBE_ENGINES)
        tolds = fan_out(engines, self._told, local_share=1.2, busy=busy)
        self._tree_stamps = {}
        self._unverified |= dirs - self._digests.keys()
        out = []
        for e, told in zip(engines, tolds, strict=True):
            if told is None:
                out.append(self.state(e))
            elif told[0] == FRESH:
                out.append(EngineState.lazy(e, FRESH, [], told[1], self, validated=told[2]))
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
        """Build records (sched.record_text) states() learned without reading a manifest: engine dir -> the record
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
        """sched.build_record of an engine dir, from what states() learned where it can (known_records: its stamp
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
        ckpt = self.checkpoint(engine.model)
        if ckpt is None or m.fields.get("checkpoint") == ckpt.digest:
            return others or ["key changed"], None
        files = checkpoint_reasons(m.checkpoint_files, ckpt.files) or ["checkpoint changed"]
        if others:
            return files + others, None
        old = recorded_key(m.fields, m.structure) if m.structure else None
        if old is None:  # built before structures were recorded: cannot tell weights from structure
            return files, None
        new = self.structure(engine.model)
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
                    self.structure(model)  # read here, once per checkpoint; the pool only asks the store
                for s, found in zip(refit, pool.map(self.store_refit_source, refit), strict=True):
                    s.refit_store = found
        return states

    def store_refit_source(self, s: EngineState) -> str | None:
        """The key of an engine in the store with this one's structure (so it can be refitted from there)."""
        store = self.store
        skey = self.structure_key(s.engine, s.fields) if s.fields and store is not None else None
        if skey is None or store is None:
            return None
        found = store.by_structure(skey)
        return found if found != s.key else None


def shown(planner: Planner, states: list[EngineState]) -> list[EngineState]:
    """The states as `doit plan` shows them: a fresh engine whose model requires validation and which
    validation does not vouch for is `unvalidated`, with why (the recorded failure and its log, or that
    it never ran), or `blocked` where this host cannot run it. The build logic keeps seeing `fresh`:
    such an engine needs validating, not rebuilding."""
    out = []
    for s in states:
        if s.state != FRESH or s.validated or not s.engine.model.validate:
            out.append(s)
            continue
        e = s.engine
        rec = validation_record(e.path(planner.spec.project), s.key or "")
        why = f"validation failed: {rec.get('error')}" if rec else "not validated yet"
        blocked = get_backend(e.model.backend).validate_blocked_reason(e, planner.host)
        if blocked:
            out.append(EngineState(e, BLOCKED, [blocked, why], s.key, s.fields, blocked, s.store))
        else:
            out.append(EngineState(e, UNVALIDATED, [why], s.key, s.fields, None, s.store))
    return out


def state_json(s: EngineState) -> dict[str, Any]:
    return {"engine": s.engine.id, "model": s.engine.model.name, "arch": s.engine.arch,
            "tp": s.engine.tp, "pp": s.engine.pp, "backend": s.engine.model.backend,
            "gpus": get_backend(s.engine.model.backend).gpus_needed(s.engine),
            "state": s.state, "reasons": s.reasons, "key": s.key, "store": s.store,
            "refit_of": s.refit_of or s.refit_store}

