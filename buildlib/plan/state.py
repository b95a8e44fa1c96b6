"""An engine's state as the plan decides it: fresh, stale, missing, blocked or (as shown) unvalidated, with why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..backends.registry import runner
from ..core.engine import Engine
from ..core.states import BLOCKED, FRESH, MISSING, REGRESSED, STALE, UNVALIDATED

if TYPE_CHECKING:
    from .keys import Keys

__all__ = ["BLOCKED", "FRESH", "MISSING", "REGRESSED", "STALE", "UNVALIDATED", "EngineState", "state_json"]


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
    lazy_of: Keys | None = field(default=None, repr=False, compare=False)  # makes the unset fields, key
    attested: dict[str, Any] | None = None  # a trusted signer's record that it was validated elsewhere (shown)
    perf: dict[str, Any] | None = None  # the speed its validation measured (buildlib.core.perf; shown)

    @classmethod
    def lazy(cls, engine: Engine, state: str, reasons: list[str], key: str | None, keys: Keys,
             blocked: str | None = None, validated: bool = False) -> EngineState:
        """A state told by a stamp or a missing manifest (Planner.states), whose `fields` (and `key`, if None
        here) `keys` makes on first use: a no-op never asks for them; 10,000 field dicts were a tenth of a
        no-op over 10,000 engines, and the keys of 5,000 unbuilt engines a twentieth. (Made with positional
        arguments: half the cost of keywords.)"""
        s = cls(engine, state, reasons, key, None, blocked, None, validated, None, None, keys)
        del s.fields  # unset: the first read goes to __getattr__
        if key is None:
            del s.key
        return s

    def __getattr__(self, name: str) -> Any:
        """Called only for an unset slot: the `fields` or `key` of a lazy state, made now."""
        keys = object.__getattribute__(self, "lazy_of")
        if keys is None or name not in ("fields", "key"):
            raise AttributeError(name)
        got = keys.engine_fields(self.engine) if name == "fields" else keys.engine_key(self.engine)
        setattr(self, name, got)
        return got


def state_json(s: EngineState) -> dict[str, Any]:
    """One engine of `doit plan --json`."""
    return {"engine": s.engine.id, "model": s.engine.model.name, "arch": s.engine.arch,
            "tp": s.engine.tp, "pp": s.engine.pp, "backend": s.engine.model.backend,
            "gpus": runner(s.engine.model.backend).gpus(s.engine, "build"),
            "state": s.state, "reasons": s.reasons, "key": s.key, "store": s.store,
            "refit_of": s.refit_of or s.refit_store, "validated_elsewhere": s.attested, "perf": s.perf}
