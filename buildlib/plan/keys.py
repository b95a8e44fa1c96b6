"""Engine keys: the digests of the inputs, every field that shapes an engine, and their xxh3-128.

One Keys per planner and process. It memoizes one digest per checkpoint and input dir (through the stat cache,
buildlib.core.statcache), one toolchain probe per backend, one resolved build per distinct option set, and per
model the canonical JSON of everything its engines share (a KeyTemplate), so N engines cost N small encodings and
hashes, not N checkpoint digests: a no-op over 10,000 engines computes 10,000 keys in a fraction of a second.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .. import RECIPE_VERSION
from ..backends.recipe import Recipe, model_architecture
from ..backends.registry import recipe
from ..core.engine import Engine
from ..core.errors import BackendUnavailable, SpecError, Where
from ..core.hashing import TreeDigest, held_tree, tree_digest, tree_digests
from ..core.key import KeyTemplate, canonical_json, key_of
from ..core.layout import checkpoint_dir, converted_dir
from ..core.model import ModelSpec, Spec
from ..core.statcache import StatCache
from ..core.structure import CheckpointStructure, checkpoint_structure, structure_key

Shared = tuple[dict[str, Any], KeyTemplate]  # a model's shared fields, and their canonical JSON as a template


def convert_fields(engine: Engine) -> dict[str, Any]:
    """Conversion options that go into the key (dtype, quantization, tp, pp, model class): every backend's."""
    m = engine.model
    return {"dtype": m.dtype, "quantization": m.quant, "tp": engine.tp, "pp": engine.pp, "model_class": m.model_class}


def own_fields(engine: Engine) -> tuple[dict[str, Any], dict[str, Any]]:
    """The engine's own fields, beside its model's shared ones: convert (tp, pp...) and target (arch)."""
    return convert_fields(engine), {"arch": engine.arch, "gpu": engine.model.gpu_name}


class Keys:
    """Digests, fields and keys of a spec's engines, memoized (see the module's docstring)."""

    def __init__(self, spec: Spec, cache: StatCache):
        self.spec = spec
        self.cache = cache
        self._digests: dict[Path, TreeDigest] = {}  # checkpoints' and input dirs'
        # Tree stamps loaded for a fan-out to check (held_trees), and the dirs whose digests it left unknown here
        # (the stamp held in a child, or not at all): the first tree() of one digests them all.
        self._tree_stamps: dict[str, tuple[str, str, tuple[str, ...], str]] = {}
        self._unverified: set[Path] = set()
        self._toolchains: dict[str, dict[str, str | None] | BackendUnavailable] = {}
        self._model_dirs: dict[int, list[Path]] = {}  # tree_dirs
        self._shared: dict[int, Shared] = {}
        self._builds: dict[tuple[Any, ...], tuple[dict[str, Any], str]] = {}  # _model_build
        self._reads_architecture: set[tuple[str, Any]] = set()  # builds whose fields depend on the architecture
        self._structures: dict[Path, CheckpointStructure] = {}

    # -- digests --------------------------------------------------------------------------------
    def checkpoint(self, model: ModelSpec) -> TreeDigest | None:
        """The checkpoint's Merkle digest, or None while a generated checkpoint does not exist yet."""
        return self.tree(checkpoint_dir(self.spec, model))

    def tree(self, d: Path) -> TreeDigest | None:
        """tree_digest of a checkpoint or input dir (None if it is not a dir), memoized. The first one left
        unverified by a fan-out digests all of those at once: every file of them in one stat-cache batch."""
        if d not in self._digests and d in self._unverified:
            dirs, self._unverified = self._unverified - self._digests.keys(), set()
            self._digests.update(tree_digests([u for u in dirs if u.is_dir()], self.cache))
        if d not in self._digests:
            if not d.is_dir():
                return None
            self._digests[d] = tree_digest(d, self.cache)
        return self._digests[d]

    def tree_dirs(self, model: ModelSpec) -> list[Path]:
        """The dirs whose digests go into the model's key: its checkpoint and input dirs (LoRA adapters...).
        Memoized by the model object's id (the spec holds the models)."""
        got = self._model_dirs.get(id(model))
        if got is None:
            inputs = recipe(model.backend).input_dirs(model, self.spec.project.root)
            got = self._model_dirs[id(model)] = [checkpoint_dir(self.spec, model), *inputs.values()]
        return got

    @contextmanager
    def held_trees(self, models: Iterable[ModelSpec]) -> Iterator[None]:
        """While the block runs, known_template() proves the models' digests from their tree stamps (one query
        here, loaded before a fan-out forks), so each forked process checks the checkpoints of its own models and
        never opens sqlite; dirs left unproven here are digested, all at once, on first use afterwards."""
        dirs = {d for m in models for d in self.tree_dirs(m)} - self._digests.keys()
        self._tree_stamps = self.cache.tree_stamps([os.fspath(d) for d in dirs])
        try:
            yield
        finally:
            self._tree_stamps = {}
            self._unverified |= dirs - self._digests.keys()

    def _trees_known(self, model: ModelSpec) -> bool:
        """Whether every digest the model's key needs is known in this process without the stat cache: memoized,
        or kept by a tree stamp held_trees loaded whose stats still hold."""
        for d in self.tree_dirs(model):
            if d not in self._digests:
                held = held_tree(os.fspath(d), self._tree_stamps.get(os.fspath(d)))
                if held is None:
                    return False
                self._digests[d] = held
        return True

    def forget_checkpoint(self, model: ModelSpec) -> None:
        self._digests.pop(checkpoint_dir(self.spec, model), None)
        self._structures.pop(checkpoint_dir(self.spec, model), None)
        self._shared.clear()  # models sharing this checkpoint dir hold its digest too

    def structure(self, model: ModelSpec) -> CheckpointStructure | None:
        """The checkpoint's structure (buildlib.core.structure): read for a build or a stale engine, never on a
        no-op."""
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

    def toolchain(self, backend: Recipe) -> dict[str, str | None]:
        if backend.name not in self._toolchains:
            try:
                self._toolchains[backend.name] = backend.toolchain()
            except BackendUnavailable as e:
                self._toolchains[backend.name] = e
        got = self._toolchains[backend.name]
        if isinstance(got, BackendUnavailable):
            raise got
        return got

    # -- fields and keys --------------------------------------------------------------------------
    def engine_fields(self, engine: Engine) -> dict[str, Any] | None:
        """Every field that shapes the engine (None while a generated checkpoint does not exist yet)."""
        got = self.keyed_fields(engine)
        return got[0] if got is not None else None

    def engine_key(self, engine: Engine) -> str | None:
        """The engine's key (None while a generated checkpoint does not exist yet): see keyed_fields."""
        shared = self.template(engine.model)
        return shared[1].key(*own_fields(engine)) if shared is not None else None

    def keyed_fields(self, engine: Engine) -> tuple[dict[str, Any], str] | None:
        """The engine's fields and key. What every engine of a model shares (checkpoint, build options,
        toolchain...) and its canonical JSON are made once per model (template), so a key costs the JSON of the
        engine's own two fields and one hash."""
        shared = self.template(engine.model)
        if shared is None:
            return None
        base, template = shared
        convert, target = own_fields(engine)
        return {**base, "convert": convert, "target": target}, template.key(convert, target)

    def known_template(self, model: ModelSpec) -> Shared | None:
        """template(model) where it can be had without the stat cache (see held_trees), else None; reads only,
        so a forked process of a fan-out may call it. An error is left for the caller's long path to report."""
        got = self._shared.get(id(model))
        if got is not None or not self._trees_known(model):
            return got
        try:
            return self.template(model)
        except (BackendUnavailable, SpecError):
            return None

    def template(self, model: ModelSpec) -> Shared | None:
        """The fields every engine of the model has alike, and their canonical JSON. Memoized by the model
        object's id (a ModelSpec hashes all its fields on every dict lookup); the spec holds the models."""
        got = self._shared.get(id(model))
        if got is not None:
            return got
        backend = recipe(model.backend)
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
        got = self._shared[id(model)] = fields, KeyTemplate(fields, ("convert", "target"), {"build": build_json})
        return got

    def convert_key_fields(self, engine: Engine) -> dict[str, Any] | None:
        """The fields that name the engine's converted checkpoint (shared by every arch)."""
        backend = recipe(engine.model.backend)
        ckpt = self.checkpoint(engine.model)
        if ckpt is None:
            return None
        return {"backend": backend.name, "checkpoint": ckpt.digest, "convert": convert_fields(engine),
                "toolchain": self.toolchain(backend), "recipe": RECIPE_VERSION}

    def converted_dir(self, engine: Engine) -> Path | None:
        fields = self.convert_key_fields(engine)
        return converted_dir(self.spec.project, key_of(fields)) if fields else None

    def model_error(self, model: ModelSpec, e: SpecError) -> SpecError:
        """A check that needs the checkpoint (or other inputs), made at plan time: still file:line:field."""
        return SpecError(e.message, Where(self.spec.project.models_path, model.line),
                         f"models[{model.name}].{e.field}" if e.field else f"models[{model.name}]")

    def _model_build(self, backend: Recipe, model: ModelSpec) -> tuple[dict[str, Any], str]:
        """The backend's build fields for the model, and their canonical JSON; the checkpoint's architecture is
        read only where the backend asks for it (never for the default option set, so a no-op reads no
        config.json). Memoized on what they are made from (Recipe.build_fields: the options, and the architecture
        where it is read): a fleet's models mostly share a build, and its JSON was a third of a model's template."""
        read: list[str | None] = []

        def architecture() -> str | None:
            if not read:
                read.append(model_architecture(model, checkpoint_dir(self.spec, model)))
            return read[0]

        memo: tuple[Any, ...] | None = (backend.name, model.build)
        try:
            if memo in self._reads_architecture:
                memo = (*memo, architecture())  # type: ignore[misc]
            got = self._builds.get(memo)  # type: ignore[arg-type]
        except TypeError:  # an option whose value is a list or a dict: not memoized
            got = memo = None
        if got is None:
            try:
                build = backend.build_fields(model, architecture)
            except SpecError as e:
                raise self.model_error(model, e) from None
            got = build, canonical_json(build)
            if memo is not None:
                if read and len(memo) == 2:
                    self._reads_architecture.add(memo)  # type: ignore[arg-type]
                    memo = (*memo, read[0])
                self._builds[memo] = got
        return got

    def _inputs(self, backend: Recipe, model: ModelSpec) -> dict[str, str]:
        """Digests of the directories besides the checkpoint that shape the engine (e.g. LoRA adapters)."""
        got: dict[str, str] = {}
        for name, d in backend.input_dirs(model, self.spec.project.root).items():
            if not d.is_dir():
                raise self.model_error(model, SpecError(f"{d} is not a directory", field=name))
            tree = self.tree(d)
            assert tree is not None  # a dir, checked just above
            got[name] = tree.digest
        return got

    def prepare(self, models: Iterable[ModelSpec]) -> None:
        """Probe each backend's toolchain once, before a fan-out forks (aoti's asks the compiler)."""
        for name in {m.backend for m in models}:
            with suppress(BackendUnavailable):  # a state reports it
                self.toolchain(recipe(name))
