"""Confinement: the dirs buildlib writes into (engines_dir, work_dir, a directory store) are its own.

A dir is claimed only when it is new, empty, or already marked as buildlib's (a `.enginebuild` file that
claim() writes), or, for trees made before the marker existed, holds nothing but what buildlib makes
there. `/`, system dirs and what lies inside them, the home dir, the project root itself, a file, or a
dir full of other things are refused before anything is written, so a typo in models.yaml can never
point a build, or `doit gc --remove`, at a user's files. Another filesystem or an NFS mount is fine.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..core.layout import WORK_NAMES

MARKER = ".enginebuild"
# System trees (and everything under them) that no build output belongs in.
SYSTEM_DIRS = tuple(Path(p) for p in ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32",
                                      "/proc", "/run", "/sbin", "/snap", "/sys", "/usr", "/var"))
ALLOWED_UNDER_SYSTEM = (Path("/var/tmp"), Path("/dev/shm"))  # scratch space for users
_KEY = re.compile(r"^[0-9a-f]{32}$")


def _is_ours_legacy(kind: str, d: Path) -> bool:
    """A tree buildlib made before the marker existed: only its own names at the top (bounded: one listing)."""
    names = [e.name for e in os.scandir(d) if e.name != MARKER]
    if kind == "work_dir":
        return all(n in WORK_NAMES or n.startswith((".spec-cache", ".checkpoints", ".generated")) for n in names)
    if kind == "store":
        return all(_KEY.match(n) or n in (".incoming", ".trash", ".signers", ".structure") for n in names)
    # engines_dir: <model>/<arch>/<parallel> with a manifest in each engine dir it holds
    for model in (e for e in os.scandir(d) if not e.name.startswith(".")):
        if not model.is_dir(follow_symlinks=False):
            return False
        for arch in os.scandir(model.path):
            if arch.name.startswith("."):
                continue
            if not arch.is_dir(follow_symlinks=False):
                return False
            for eng in os.scandir(arch.path):
                if not eng.name.startswith(".") and not os.path.isfile(os.path.join(eng.path, "manifest.json")):
                    return False
    return True


def refusal(d: Path, kind: str, project_root: Path | None) -> str | None:
    """Why buildlib may not use `d` as its `kind` dir (engines_dir, work_dir, store), or None. Writes nothing.
    The reason reads after the path: f"{d} {reason}"."""
    real = Path(os.path.realpath(d))
    root = Path(os.path.realpath(project_root)) if project_root is not None else None
    if real == Path("/"):
        return "is the filesystem root"
    if any(real == s or s in real.parents for s in SYSTEM_DIRS) and \
            not any(real == a or a in real.parents for a in ALLOWED_UNDER_SYSTEM):
        shown = f" ({real})" if real != Path(os.path.abspath(d)) else ""
        return f"is a system directory{shown}; point it at a dir of the project's own"
    if real == Path(os.path.expanduser("~")).resolve():
        return "is the home directory"
    if root is not None and (real == root or real in root.parents):
        return "is the project root (where models.yaml is) or above it"
    if not os.path.lexists(d):
        return None
    if not d.is_dir():
        return "exists and is not a directory"
    if (d / MARKER).is_file() or not any(os.scandir(d)):
        return None
    try:
        if _is_ours_legacy(kind, d):
            return None
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    return (f"holds files that are not enginebuild's (no {MARKER} marker): use a new or empty dir, or "
            f"`touch {d / MARKER}` if this dir is buildlib's")


def claim(d: Path) -> None:
    """Create d if needed and mark it as buildlib's (call only after refusal() said it may be used)."""
    d.mkdir(parents=True, exist_ok=True)
    marker = d / MARKER
    if not marker.exists():
        tmp = d / f".{MARKER}.{os.getpid()}.tmp"
        try:
            tmp.write_text("This directory is written by enginebuild (buildlib); `doit gc` removes only what it "
                           "wrote.\n")
            os.replace(tmp, marker)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
