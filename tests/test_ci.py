"""CI mode through the real doit CLI with stand-ins: sharding, --targets, Markdown, JUnit, gc."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from buildlib.report.ci import assign_shards
from tests.conftest import LOADER_PYPROJECT, built_engines, copy_built, doit, plan, write_hf_checkpoint

MODELS = ["m0", "m1", "m2", "m3", "m4", "crashy"]
HEAD = """\
defaults:
  backend: trtllm
  dtype: float16
  archs: [sm90]
  parallel: [{tp: 1, pp: 1}, {tp: 2, pp: 1}]
  build: {max_batch_size: 8, max_input_len: 1024, max_seq_len: 2048, gemm_plugin: auto}
models:
"""
BLOCKED = {"m0/sm80/tp1-pp1", "m0/sm80/tp2-pp1"}


def models_yaml(names: list[str], crashy_batch: int = 8) -> str:
    out = HEAD
    for n in names:
        out += f"  - name: {n}\n    checkpoint: ckpt/{n}\n"
        if n == "m0":
            out += "    archs: [sm80, sm90]\n"
        if n == "crashy":
            out += f"    build: {{max_batch_size: {crashy_batch}}}\n"
    return out


def _write_fleet(root: Path) -> None:
    root.mkdir()
    for i, n in enumerate(MODELS):
        d = write_hf_checkpoint(root / "ckpt" / n, shards=1 + i % 3, seed=i)
        (d / "tokenizer.model").write_bytes(bytes([i]) * ((2, 3, 5, 7, 11, 13)[i] * 3 << 20))
    (root / "models.yaml").write_text(models_yaml(MODELS))
    (root / "pyproject.toml").write_text(LOADER_PYPROJECT)


@pytest.fixture
def fleet(tmp_path: Path, standins) -> tuple[Path, dict[str, str]]:
    """14 engines: 6 models × tp1/tp2 on sm90 (checkpoints of different sizes: different expected
    costs) plus m0 on sm80, which this 2×H100 host cannot build."""
    _write_fleet(tmp_path / "repo")
    return tmp_path / "repo", standins()


@pytest.fixture(scope="module")
def _fleet_built(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The fleet, built once for this module by `doit -n 4 -P process`."""
    from tests.conftest import H100
    from tests.standins import standin_env

    base = tmp_path_factory.mktemp("ci-built")
    _write_fleet(base / "repo")
    env = {**standin_env(base / "standins", gpus=[H100, H100]), "STANDIN_TRTLLM_LOG": str(base / "trtllm-build.log")}
    _ok(doit(base / "repo", "-n", "4", "-P", "process", env=env))
    return base / "repo", env


@pytest.fixture
def built_fleet(tmp_path: Path, _fleet_built) -> tuple[Path, dict[str, str]]:
    """Each test's own copy of the built fleet and of its build log."""
    return copy_built(*_fleet_built, tmp_path)


def _ok(r) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _shard(root: Path, env: dict[str, str], spec: str) -> list[dict]:
    return json.loads(_ok(doit(root, "plan", "--json", "--shard", spec, env=env)))


def test_every_buildable_engine_lands_in_exactly_one_shard(fleet):
    root, env = fleet
    states = plan(root, env)
    work = {e for e, s in states.items() if s["state"] in ("stale", "missing")}
    assert len(work) == 12 and {e for e, s in states.items() if s["state"] == "blocked"} == BLOCKED
    cost = {e: states[e]["expected_seconds"] for e in work}
    assert len(set(cost.values())) >= 10  # the costs really differ
    assert all(states[e]["gpus"] == (2 if e.endswith("tp2-pp1") else 1) for e in work)
    for n in range(1, 5):
        shards = [[row["engine"] for row in _shard(root, env, f"{i}/{n}")] for i in range(1, n + 1)]
        flat = [e for s in shards for e in s]
        assert sorted(flat) == sorted(work), f"n={n}: {shards}"  # each exactly once, blocked/fresh in none
        loads = [sum(cost[e] for e in s) for s in shards]
        assert max(loads) <= min(loads) + max(cost.values()) + 0.01, (n, loads)  # JSON rounds to ms
        assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1 + 12 // n  # no empty-vs-full
    # Globs filter before sharding: one arch's matrix row shards only that arch.
    assert {row["engine"].split("/")[1] for row in _shard(root, env, "1/2")} == {"sm90"}


def test_sharding_is_order_independent_and_balanced():
    rng = random.Random(7)
    states = [SimpleNamespace(state=rng.choice(["missing", "stale", "fresh", "blocked"]),
                              engine=SimpleNamespace(id=f"e{i:02d}")) for i in range(40)]
    cost = {s.engine.id: rng.choice([5.0, 60.0, 600.0, 3600.0]) * rng.random() for s in states}
    work = {s.engine.id for s in states if s.state in ("missing", "stale")}
    for n in range(1, 6):
        got = assign_shards(states, n, lambda s: cost[s.engine.id])  # type: ignore[arg-type]
        shuffled = states[:]
        rng.shuffle(shuffled)
        again = assign_shards(shuffled, n, lambda s: cost[s.engine.id])  # type: ignore[arg-type]
        ids = [[s.engine.id for s in sh] for sh in got]
        assert ids == [[s.engine.id for s in sh] for sh in again]
        assert sorted(e for sh in ids for e in sh) == sorted(work)
        loads = [sum(cost[e] for e in sh) for sh in ids]
        assert max(loads) <= min(loads) + max(cost[e] for e in work)


def test_targets_build_exactly_that_shard(fleet):
    root, env = fleet
    targets = _ok(doit(root, "plan", "--shard", "2/3", "--targets", env=env)).split()
    engines = {row["engine"] for row in _shard(root, env, "2/3")}
    assert targets and sorted(targets) == sorted(f"validate:{e}" for e in engines)
    _ok(doit(root, *targets, env=env))
    assert sorted(built_engines(env)) == sorted(engines)
    after = plan(root, env)
    assert {e for e, s in after.items() if s["state"] == "fresh"} == engines


def test_markdown_summary(fleet, tmp_path: Path):
    root, env = fleet
    md = tmp_path / "summary.md"
    _ok(doit(root, "plan", "--markdown", str(md), env=env))
    text = md.read_text()
    assert "| Engine | State | Store | Reasons |" in text
    assert "**14 engines**: 2 blocked, 12 missing" in text
    assert "| `m0/sm80/tp1-pp1` | blocked | – | needs an sm80 host; target sm80 not built yet |" in text
    assert text.count("\n| `") == 14


def test_junit_and_markdown_report_with_a_failed_build(built_fleet, tmp_path: Path):
    root, env = built_fleet
    (root / "models.yaml").write_text(models_yaml(MODELS, crashy_batch=16))  # crashy's 2 engines go stale
    crash = {**env, "STANDIN_TRTLLM_CRASH_AFTER_RANK": "1"}  # kills tp2 builds after rank 1; tp1 ones pass
    r = doit(root, "--continue", env=crash)
    assert r.returncode != 0
    junit, md = tmp_path / "junit.xml", tmp_path / "report.md"
    r = doit(root, "report", "--junit", str(junit), "--markdown", str(md), "--check", env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAILED build:crashy/sm90/tp2-pp1" in r.stdout
    suites = ET.parse(junit).getroot()
    assert suites.tag == "testsuites"
    assert (suites.get("tests"), suites.get("failures"), suites.get("skipped")) == ("28", "1", "5")
    build, validate = suites.findall("testsuite")
    assert (build.get("name"), build.get("tests"), build.get("failures"), build.get("skipped")) == \
        ("build", "14", "1", "2")
    assert (validate.get("tests"), validate.get("failures"), validate.get("skipped")) == ("14", "0", "3")
    cases = {c.get("name"): c for c in suites.iter("testcase")}
    failure = cases["build:crashy/sm90/tp2-pp1"].find("failure")
    assert failure is not None and ".tp2-pp1.failed.log" in failure.get("message", "")
    assert cases["validate:crashy/sm90/tp2-pp1"].find("skipped") is not None
    assert cases["build:m0/sm80/tp1-pp1"].find("skipped").get("message") == "needs an sm80 host"
    assert cases["build:crashy/sm90/tp1-pp1"].find("failure") is None
    assert float(cases["build:m1/sm90/tp2-pp1"].get("time")) > 0
    text = md.read_text()
    assert "| Engine | State | Store | Build | Validate | Reasons |" in text
    assert "- **build**: 1 failed, 11 passed, 2 skipped" in text
    assert text.index("crashy/sm90/tp2-pp1") < text.index("m1/sm90/tp1-pp1")  # failures first


def test_gc_lists_then_removes_unreferenced_engines_and_checkpoints(built_fleet):
    root, env = built_fleet
    converted = {p.name for p in (root / ".buildlib/checkpoints").iterdir() if not p.name.startswith(".")}
    assert len(converted) == 12
    (root / "models.yaml").write_text(models_yaml([n for n in MODELS if n != "m4"]))
    out = _ok(doit(root, "gc", env=env))
    assert "would remove engine" in out and "engines/m4/sm90/tp1-pp1" in out and "engines/m4/sm90/tp2-pp1" in out
    assert "(model m4 is not in models.yaml)" in out
    assert out.count("would remove checkpoint") == 2 and "was m4/tp2-pp1" in out
    assert "engines/m3" not in out
    assert (root / "engines/m4/sm90/tp1-pp1/manifest.json").is_file()  # a dry run deletes nothing
    out = _ok(doit(root, "gc", "--remove", env=env))
    assert out.count("removed ") == 4 and "stat cache: " in out
    assert not (root / "engines/m4").exists()
    left = {p.name for p in (root / ".buildlib/checkpoints").iterdir() if not p.name.startswith(".")}
    assert len(left) == 10 and left < converted
    states = plan(root, env)
    assert {e for e, s in states.items() if s["state"] == "fresh"} == \
        {f"{m}/sm90/tp{t}-pp1" for m in MODELS if m != "m4" for t in (1, 2)}
    _ok(doit(root, "plan", "--check", env=env))
    assert "nothing to collect" in _ok(doit(root, "gc", env=env))
    assert built_engines(env).count("m0/sm90/tp1-pp1") == 1  # nothing rebuilt


def test_gc_store_removes_only_unreferenced_keys(fleet, tmp_path: Path):
    root, env = fleet
    store = tmp_path / "store"
    store.mkdir()
    env = {**env, "BUILDLIB_STORE": str(store)}
    _ok(doit(root, "-n", "4", "-P", "process", env=env))
    assert len([p for p in store.iterdir() if not p.name.startswith(".")]) == 12
    (root / "models.yaml").write_text(models_yaml([n for n in MODELS if n != "m4"]))
    out = _ok(doit(root, "gc", env=env))
    assert "would remove store" not in out  # the shared store is collected only when named
    out = _ok(doit(root, "gc", "--store", str(store), env=env))
    assert out.count("would remove store") == 2
    _ok(doit(root, "gc", "--remove", "--store", str(store), env=env))
    keys = {s["key"] for s in plan(root, env).values() if s["state"] == "fresh"}
    assert {p.name for p in store.iterdir() if not p.name.startswith(".")} == keys and len(keys) == 10


@pytest.mark.parametrize("spec", ["5/4", "0/3", "2", "a/b"])
def test_bad_shard_is_one_line_and_exit_2(fleet, spec: str):
    root, env = fleet
    r = doit(root, "plan", "--shard", spec, env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --shard") and "e.g. --shard" in lines[0]
