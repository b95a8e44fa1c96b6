"""The package's shape, measured from its code: buildlib's import graph (every import, at module level, inside a
function or under TYPE_CHECKING) has no circle, and no module imports from a package above its own in

    cli -> fleet | rollout -> report | run -> plan | spec -> store | backends -> host -> core

(packages of one rank import neither each other). core imports neither doit nor a backend, nothing below cli
imports doit, __init__.py files are empty, and no module is over 450 lines.

`python tests/test_layers.py` prints the figures: modules and lines per package, import edges, circles, and
every import that runs the wrong way.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "buildlib"
RANK = {"core": 0, "host": 1, "store": 2, "backends": 2, "plan": 3, "spec": 3, "run": 4, "report": 4, "fleet": 5,
        "rollout": 5, "cli": 6}
MAX_LINES = 450


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under root (packages by their __init__)."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = (root.name, *p.relative_to(root).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(buildlib modules, other top-level packages) that a module imports anywhere in its code."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    ours: set[str] = set()
    others: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            for alias in node.names:
                full = f"{mod}.{alias.name}"
                if full in known:
                    ours.add(full)
                elif mod in known:
                    ours.add(mod)
                elif not mod.startswith("buildlib"):
                    others.add(mod.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                (ours if alias.name in known else others).add(alias.name if alias.name in known
                                                               else alias.name.split(".")[0])
    ours.discard(name)
    return ours, others


def graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    known = modules(root)
    ours, others = {}, {}
    for name, path in known.items():
        ours[name], others[name] = imports(name, path, known)
    return ours, others


def package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANK) else None


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def wrong_way(edges: dict[str, set[str]]) -> list[str]:
    """Every import from a package to one of a higher rank, or to another package of the same rank."""
    bad = []
    for src, dsts in sorted(edges.items()):
        a = package(src)
        for dst in sorted(dsts):
            b = package(dst)
            if a is None or b is None or a == b:
                continue
            if RANK[b] >= RANK[a]:
                bad.append(f"{src} -> {dst} ({a} may not import {b})")
    return bad


def test_no_circle() -> None:
    ours, _ = graph()
    assert circles(ours) == []


def test_imports_run_only_downward() -> None:
    ours, _ = graph()
    assert wrong_way(ours) == []


def test_every_module_lives_in_a_package_of_its_concern() -> None:
    loose = [m for m in modules() if m != "buildlib" and package(m) is None]
    assert loose == [], "a module outside the packages of RANK"


def test_doit_only_in_cli_and_core_imports_no_backend() -> None:
    ours, others = graph()
    assert sorted(m for m, o in others.items() if "doit" in o and package(m) != "cli") == []
    assert sorted(m for m in ours if package(m) == "core" and any(package(d) == "backends" for d in ours[m])) == []


def test_init_files_are_empty_and_modules_small() -> None:
    for name, path in modules().items():
        text = path.read_text()
        if path.name == "__init__.py" and name != "buildlib":
            assert text.strip() == "", f"{path} is not empty"
        assert len(text.splitlines()) <= MAX_LINES, f"{path} has {len(text.splitlines())} lines"


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    """A circle and an upward import planted in a copy of the layout are both found."""
    pkg = tmp_path / "buildlib"
    for sub in ("core", "plan"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "core" / "a.py").write_text("from . import b\n")
    (pkg / "core" / "b.py").write_text("def f():\n    from .a import x\n    from ..plan import p\n")
    (pkg / "plan" / "p.py").write_text("x = 1\n")
    ours, _ = graph(pkg)
    assert circles(ours) == [["buildlib.core.a", "buildlib.core.b"]]
    assert wrong_way(ours) == ["buildlib.core.b -> buildlib.plan.p (core may not import plan)"]


def main() -> None:
    ours, _ = graph()
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, path in modules().items():
        p = package(name) or "(top)"
        per[p][0] += 1
        per[p][1] += len(path.read_text().splitlines())
    for p, (n, lines) in sorted(per.items(), key=lambda kv: RANK.get(kv[0], -1)):
        print(f"{p:<9} {n:>3} modules {lines:>6} lines")
    print(f"{sum(n for n, _ in per.values())} modules, {sum(lines for _, lines in per.values())} lines, "
          f"{sum(len(v) for v in ours.values())} import edges")
    found, bad = circles(ours), wrong_way(ours)
    print(f"{len(found)} circles" + "".join(f"\n  {' <-> '.join(c)}" for c in found))
    print(f"{len(bad)} imports the wrong way" + "".join(f"\n  {b}" for b in bad))


if __name__ == "__main__":
    main()
