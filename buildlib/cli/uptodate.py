"""doit `uptodate` checks: each decides from the files (manifests, validation records, stamps), never from doit's
database, so a fresh clone or an engines/ dir restored from a cache is judged correctly. Picklable, for
`doit -n N -P process`; their repr is what `doit info` shows."""

from __future__ import annotations

from pathlib import Path

from ..core.engine import Engine
from ..core.errors import BackendUnavailable
from ..core.manifest import MANIFEST
from ..core.model import Project
from ..plan.planner import shown
from ..plan.state import FRESH
from ..run import triton
from ..run.validate import validated
from .session import planner_of


class EngineFresh:
    """doit `uptodate` for a build: fresh iff the engine dir's manifest has the computed key and its
    outputs are intact. doit's own database plays no part, so a fresh clone or a restored engines/
    dir is judged correctly."""

    def __init__(self, project: Project, engine: Engine):
        self.project, self.engine = project, engine

    def __call__(self) -> bool:
        return planner_of(self.project, self.engine.model).state(self.engine).state == FRESH

    def __repr__(self) -> str:
        """What `doit info` shows for this check: the engine's state now, and why (as `doit plan` says)."""
        st = planner_of(self.project, self.engine.model).state(self.engine)
        return f"engine {self.engine.id}: {st.state}" + (f" ({'; '.join(st.reasons)})" if st.reasons else "")


class EngineValidated(EngineFresh):
    """doit `uptodate` for a validate task: validation.json vouches for the current key. Evaluated
    after the build task (task_dep), whose own check already verified the outputs."""

    def __call__(self) -> bool:
        return validated(planner_of(self.project, self.engine.model), self.engine)

    def __repr__(self) -> str:
        planner = planner_of(self.project, self.engine.model)
        if validated(planner, self.engine):
            return f"validation of {self.engine.id}: vouches for its manifest"
        st = shown(planner, [planner.state(self.engine)])[0]
        return f"validation of {self.engine.id}: {st.state} ({'; '.join(st.reasons) or 'not validated yet'})"


class ConvertedFresh(EngineFresh):
    """doit `uptodate` for a convert task: the content-addressed converted checkpoint exists."""

    def __call__(self) -> bool:
        planner = planner_of(self.project, self.engine.model)
        try:
            d = planner.keys.converted_dir(self.engine)
        except BackendUnavailable:
            return True  # nothing can be converted here; each build task reports why
        return d is not None and (d / MANIFEST).is_file()

    def __repr__(self) -> str:
        return f"converted checkpoint for {self.engine.convert_id}: " + ("present" if self() else "not converted yet")


class TritonFresh(EngineFresh):
    """doit `uptodate` for a triton task: the repository was filled from this engine, templates and values."""

    def __call__(self) -> bool:
        return triton.fresh(planner_of(self.project, self.engine.model), self.engine)

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
