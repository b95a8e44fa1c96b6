"""Garbage: engine dirs, checkpoints and store entries that no models.yaml entry references, listed or removed
(`doit gc` is a thin command over collect() and remove())."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..backends.registry import recipe
from ..core.errors import BackendUnavailable, UserError
from ..core.layout import CHECKPOINTS, GENERATED, generated_dir
from ..core.manifest import read_manifest
from ..core.model import GPU_ARCH_RE, GeneratedCheckpoint
from ..host.publish import aside_path, lock_path, locked, tree_size
from ..plan.planner import Planner
from ..store.channel import served
from ..store.guarded import GuardedStore

# Hidden files a build leaves beside its output dir X: .X.lock, .X.failed.log, .X.tmp-<id>, .X.old-<id>.
_BESIDE = re.compile(r"^\.(?P<name>.+?)(?:\.lock|\.failed\.log|\.tmp-[0-9a-f]+|\.old-[0-9a-f]+)$")


@dataclass
class Garbage:
    """One unreferenced thing: an engine dir, converted or generated checkpoint (with the files a
    build left beside it), or a store entry."""

    kind: str  # engine | checkpoint | generated | store
    where: str  # a path, or the store URL/key
    why: str
    size: int | None
    path: Path | None = None  # the local dir (may be gone, with only leftovers beside it)
    beside: list[Path] = field(default_factory=list)
    key: str | None = None  # for store entries
    scope: str = ""  # for store entries: the signer whose namespace holds it ("" the top level)
    keep_path: bool = False  # path is not buildlib's: only the leftovers beside it are removed


def _grouped(parent: Path) -> Iterator[tuple[str, Path, list[Path]]]:
    """(name, parent/name, hidden leftovers of name) for every output dir or leftover group in parent."""
    if not parent.is_dir():
        return
    groups: dict[str, list[Path]] = {}
    for p in sorted(parent.iterdir()):
        if p.name.startswith("."):
            m = _BESIDE.match(p.name)
            if m:
                groups.setdefault(m.group("name"), []).append(p)
        elif p.is_dir():
            groups.setdefault(p.name, [])
    for name, beside in groups.items():
        yield name, parent / name, beside


def _ours(path: Path) -> bool:
    """Whether a dir found where buildlib puts its outputs is one it wrote (it holds buildlib's manifest).
    A dir without one, or anything else found there, is never removed: only the leftovers of buildlib's own
    naming beside it (`.X.tmp-<id>`, `.X.old-<id>`, `.X.failed.log`, `.X.lock`) are."""
    return path.is_dir() and not path.is_symlink() and read_manifest(path) is not None


def _item(kind: str, path: Path, beside: list[Path], why: str, root: Path, keep_path: bool = False) -> Garbage:
    size = (0 if keep_path else tree_size(path)) + sum(tree_size(p) for p in beside if not p.name.endswith(".lock"))
    try:
        where = str(path.relative_to(root))
    except ValueError:
        where = str(path)
    return Garbage(kind, where, why, size, path, beside, keep_path=keep_path)


def engine_garbage(planner: Planner) -> list[Garbage]:
    """Engine dirs `<engines_dir>/<model>/<arch>/<parallel>` that no current engine is (and what failed
    builds left beside such dirs). A model with `archs: [cpu]` keeps every non-GPU arch dir: `cpu` is
    each host's own ISA, and another host sharing engines/ may have built for its own."""
    project = planner.spec.project
    current = {e.id for e in planner.engines()}
    cpu_parallel = {m.name: {f"tp{tp}-pp{pp}" for tp, pp in m.parallel}
                    for m in planner.spec.models if "cpu" in m.archs}
    models = {m.name for m in planner.spec.models}
    out = []
    root = project.engines_dir
    if not root.is_dir():
        return out
    for mdir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for adir in sorted(p for p in mdir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for name, path, beside in _grouped(adir):
                eid = f"{mdir.name}/{adir.name}/{name}"
                if eid in current:
                    continue
                if name in cpu_parallel.get(mdir.name, ()) and not GPU_ARCH_RE.fullmatch(adir.name):
                    continue
                if mdir.name not in models:
                    why = f"model {mdir.name} is not in {project.models_path.name}"
                elif not any(e.startswith(f"{mdir.name}/{adir.name}/") for e in current):
                    why = f"{mdir.name} is not built for {adir.name}"
                else:
                    why = f"{mdir.name} has no {name} config for {adir.name}"
                if _ours(path) or not os.path.lexists(path):
                    out.append(_item("engine", path, beside, why, project.root))
                elif beside:  # a dir that is not buildlib's: only the leftovers beside it go
                    g = _item("engine", path, beside, f"leftovers beside a dir that is not enginebuild's ({why})",
                              project.root, keep_path=True)
                    out.append(g)
    return out


def checkpoint_garbage(planner: Planner) -> list[Garbage]:
    """Converted checkpoints `<work_dir>/checkpoints/<key>` that no current engine converts to, and
    generated checkpoints `<work_dir>/generated/<name>` no current model uses.

    Conservative where a key cannot be computed here (toolchain missing, checkpoint not generated):
    a converted checkpoint whose manifest names such an engine's conversion is kept."""
    project, spec = planner.spec.project, planner.spec
    wanted: set[str] = set()
    unknown: set[str] = set()  # convert ids whose key cannot be computed here
    for e in planner.engines():
        if not recipe(e.model.backend).has_convert:
            continue
        try:
            d = planner.keys.converted_dir(e)
        except BackendUnavailable:
            d = None
        if d is None:
            unknown.add(e.convert_id)
        else:
            wanted.add(d.name)
    out = []
    for name, path, beside in _grouped(project.work_dir / CHECKPOINTS):
        if name in wanted:
            continue
        m = read_manifest(path)
        if m is not None and m.name in unknown:
            continue
        if m is None and os.path.lexists(path):
            continue  # not a converted checkpoint of buildlib's: never removed
        why = f"was {m.name}; no current engine converts to it" if m else "no current engine converts to it"
        out.append(_item("checkpoint", path, beside, why, project.root))
    gen = {generated_dir(spec, m.checkpoint).name for m in spec.models if isinstance(m.checkpoint, GeneratedCheckpoint)}
    for name, path, beside in _grouped(project.work_dir / GENERATED):
        if name not in gen:
            out.append(_item("generated", path, beside, "no current model uses this generated checkpoint",
                             project.root))
    return out


def store_garbage(planner: Planner, store: GuardedStore) -> list[Garbage]:
    """Store entries whose key is no current engine's key and that no release channel serves (nor would restore on
    a rollback), in every namespace (the top level and each signer's).
    Refused (UserError) while some engine's key cannot be computed here: its entry would look unreferenced and be
    deleted for every other user."""
    current: set[str] = set()
    unknown = []
    for e in planner.engines():
        s = planner.state(e)
        if s.key is None:
            unknown.append(f"{e.id} ({'; '.join(s.reasons)})")
        else:
            current.add(s.key)
    if unknown:
        raise UserError(f"cannot compute the keys of {len(unknown)} engine(s) here, e.g. {unknown[0]}; run "
                        "`doit gc --store` where every backend's toolchain is installed and generated checkpoints "
                        "exist (`doit checkpoint`), or leave --store out to collect local files only")
    current |= set(served(store, with_previous=True))  # what a channel serves, or a rollback would restore
    out = []
    for ident, scope in store.scopes():
        stale = [k for k in scope.keys() if k not in current]  # noqa: SIM118 - a Store is no dict
        with ThreadPoolExecutor(8) as pool:
            sizes = list(pool.map(scope.entry_size, stale))
        out += [Garbage("store", f"{scope.url}/{k}", "no current engine has this key", size, key=k, scope=ident)
                for k, size in zip(stale, sizes, strict=True)]
    return out


def _discard(path: Path) -> None:
    """Make path vanish at once (rename beside it), then delete it."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        trash = aside_path(path)
        os.rename(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove(g: Garbage, store: GuardedStore | None, stop: Path) -> None:
    """Delete one item: a local dir under its build lock (so no running build is cut), then the
    lock file itself and the parents it leaves empty (up to `stop`); a store entry via Store.remove."""
    if g.kind == "store":
        assert store is not None and g.key is not None
        (store.scope(g.scope) if g.scope else store.inner).remove(g.key)
        return
    assert g.path is not None
    with locked(g.path):
        if not g.keep_path:
            _discard(g.path)
        for p in g.beside:
            if not p.name.endswith(".lock"):
                _discard(p)
    lock_path(g.path).unlink(missing_ok=True)
    parent = g.path.parent
    while parent != stop and stop in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent


def human(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def collect(planner: Planner, store: GuardedStore | None = None) -> list[Garbage]:
    """Everything unreferenced: engine dirs, converted and generated checkpoints, and with `store` its entries."""
    items = engine_garbage(planner) + checkpoint_garbage(planner)
    return items + store_garbage(planner, store) if store is not None else items


def stop_at(planner: Planner, g: Garbage) -> Path:
    """How far up remove() may delete the parents an item leaves empty: the engines dir, or the item's own dir."""
    project = planner.spec.project
    return project.engines_dir if g.kind == "engine" else (g.path.parent if g.path else project.root)
