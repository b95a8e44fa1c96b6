"""CI helpers (no doit): shard the buildable work by expected cost, collect results, Markdown and JUnit."""

from __future__ import annotations

import heapq
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends.registry import runner
from ..core.errors import BackendUnavailable, UserError
from ..core.manifest import MANIFEST, VALIDATION, read_manifest
from ..core.perf import device_name, regression_reason
from ..host.publish import failed_log
from ..plan.planner import Planner
from ..plan.state import BLOCKED, FRESH, MISSING, STALE, UNVALIDATED, EngineState

VALIDATE_LOG = "validate.log"
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
LOG_TAIL_LINES = 60
LOG_TAIL_CHARS = 8000


# -- sharding -----------------------------------------------------------------------------------
def is_work(s: EngineState) -> bool:
    """Work for this host: stale or missing engines, and unvalidated ones (their validate task). Fresh ones
    need nothing; blocked ones are some other host's work. A store hit is work too: its build task
    restores (and validates) it, and ignoring the store keeps the split identical on runners that plan
    before and after a push."""
    return s.state in (STALE, MISSING, UNVALIDATED)


def parse_shard(text: str) -> tuple[int, int]:
    """`i/n` (1-based) -> (i, n); a UserError that shows the expected form otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise UserError(f"--shard {text!r}: expected i/n, e.g. --shard 2/4 (the 2nd of 4 shards)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 1 <= i <= n:
        raise UserError(f"--shard {text}: i must be between 1 and n (n >= 1), e.g. --shard 1/{max(n, 1)}")
    return i, n


def assign_shards(states: Iterable[EngineState], n: int,
                  cost: Callable[[EngineState], float]) -> list[list[EngineState]]:
    """Split the buildable work into n shards, balanced by expected cost.

    LPT greedy: engines sorted by (-cost, engine id), each to the shard with the least cost so far
    (ties: the lowest shard number). Deterministic for a given set of engines and costs, whatever
    their input order, and every engine lands in exactly one shard; the most loaded shard exceeds the
    least loaded by at most one engine's cost.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    work = sorted(((cost(s), s) for s in states if is_work(s)), key=lambda cs: (-cs[0], cs[1].engine.id))
    shards: list[list[EngineState]] = [[] for _ in range(n)]
    heap = [(0.0, k) for k in range(n)]
    for c, s in work:
        load, k = heapq.heappop(heap)
        shards[k].append(s)
        heapq.heappush(heap, (load + max(c, 0.0), k))
    return shards


def shard(states: Iterable[EngineState], i: int, n: int, cost: Callable[[EngineState], float]) -> list[EngineState]:
    """The engines of shard i of n (1-based), longest expected first."""
    if not 1 <= i <= n:
        raise UserError(f"shard {i}/{n}: i must be between 1 and n, e.g. 1/{n}")
    return assign_shards(states, n, cost)[i - 1]


def task_name(s: EngineState) -> str:
    """The doit task that leaves the engine done: validate:<engine> (it depends on the build) or build:<engine>."""
    return f"{'validate' if s.engine.model.validate else 'build'}:{s.engine.id}"


# -- results of a run ---------------------------------------------------------------------------
@dataclass
class Result:
    """One build or validate outcome, read back from the files a run leaves."""

    task: str  # "build" | "validate"
    engine: str
    outcome: str  # passed | failed | skipped
    seconds: float = 0.0
    message: str = ""
    detail: str = ""  # the failed log's tail
    properties: dict[str, str] = field(default_factory=dict)  # JUnit <properties>: the measured speed

    @property
    def name(self) -> str:
        return f"{self.task}:{self.engine}"


def log_tail(path: Path, lines: int = LOG_TAIL_LINES, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        data = path.read_bytes()[-chars * 4:].decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])[-chars:]


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _seconds(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and v >= 0 else 0.0


def _build_result(planner: Planner, s: EngineState) -> Result:
    eid = s.engine.id
    edir = s.engine.dir(planner.spec.project)
    m = read_manifest(edir)
    if s.key is not None and (s.state == FRESH or (m is not None and m.key == s.key)):
        return Result("build", eid, PASSED, _seconds((m.built if m else {}).get("seconds")))
    if s.store:
        return Result("build", eid, PASSED, message="in the store (built elsewhere)")
    log = failed_log(edir)
    if log.is_file():
        return Result("build", eid, FAILED, message=f"build failed; log: {log}", detail=log_tail(log))
    conv = _converted_failed_log(planner, s)
    if conv is not None:
        return Result("build", eid, FAILED, message=f"convert failed; log: {conv}", detail=log_tail(conv))
    if s.state == BLOCKED:
        return Result("build", eid, SKIPPED, message=s.reasons[0] if s.reasons else "blocked on this host")
    return Result("build", eid, FAILED, message=f"not built ({'; '.join(s.reasons) or s.state}); see the doit output")


def _converted_failed_log(planner: Planner, s: EngineState) -> Path | None:
    try:
        d = planner.keys.converted_dir(s.engine)
    except BackendUnavailable:
        return None
    if d is None or (d / MANIFEST).is_file():
        return None
    log = failed_log(d)
    return log if log.is_file() else None


def _validate_result(planner: Planner, s: EngineState, build: Result) -> Result:
    eid = s.engine.id
    edir = s.engine.dir(planner.spec.project)
    v = _json(edir / VALIDATION)
    if v is not None and s.key is not None and v.get("key") == s.key and v.get("ok") is True:
        props = perf_properties(v.get("perf"), v.get("perf_gate"))
        verdict = v.get("perf_gate")
        if isinstance(verdict, dict) and verdict.get("regressed") and s.engine.model.perf_gate is not None:
            return Result("validate", eid, FAILED, _seconds(v.get("seconds")),
                          f"regressed: {regression_reason(verdict)}", properties=props)
        return Result("validate", eid, PASSED, _seconds(v.get("seconds")), properties=props)
    if build.outcome != PASSED:
        return Result("validate", eid, SKIPPED, message=f"build {build.outcome}")
    log = edir / VALIDATE_LOG
    if log.is_file():  # a publish replaces the whole dir, so this log is of the current engine
        return Result("validate", eid, FAILED, message=f"validation failed; log: {log}", detail=log_tail(log))
    # this host cannot run it (wrong arch, no toolchain); a fresh engine's state does not say so
    blocked = s.blocked or runner(s.engine.model.backend).blocked(s.engine, planner.host)
    if blocked or s.state == BLOCKED:
        return Result("validate", eid, SKIPPED, message=blocked or (s.reasons[0] if s.reasons else "blocked"))
    return Result("validate", eid, FAILED, message="not validated; see the doit output")


def perf_properties(perf: Any, verdict: Any) -> dict[str, str]:
    """The speed a validation measured (buildlib.core.perf), flattened for JUnit properties."""
    out: dict[str, str] = {}
    if isinstance(perf, dict):
        out["device"] = str(device_name(perf) or "")
        for shape in ("prefill", "decode"):
            rec = perf.get(shape) or {}
            eng = rec.get("engine") or {}
            for k in ("tokens_per_s", "median_s", "p10_s", "p90_s"):
                if k in eng:
                    out[f"{shape}.{k}"] = f"{eng[k]:.6g}"
            if "speedup" in rec:
                out[f"{shape}.speedup_over_eager"] = f"{rec['speedup']:.4g}"
    if isinstance(verdict, dict):
        out.update({"perf_gate.ratio": f"{verdict.get('ratio', 0):.4g}", "perf_gate.regressed":
                    str(bool(verdict.get("regressed"))).lower()})
    return out


def collect_results(planner: Planner, states: Sequence[EngineState]) -> list[Result]:
    """Build and validate results of the engines in `states`, read from what the run left on disk.

    Per engine: build passed when its dir's manifest has the current key (its `built.seconds` is the
    time) or the store has the key; failed when `.<parallel>.failed.log` lies beside the engine dir
    (or the converted checkpoint's failed log does), with the log's tail; skipped when this host cannot
    build it (blocked); otherwise failed as "not built". Validate passed when validation.json vouches
    for the current key; skipped when the build did not pass or the host cannot run it; failed when
    validate.log is there without a passing validation.json, or nothing is there at all.

    States should come from Planner.plan() after the run (with the store, for engines built elsewhere).
    A CI report job that gathered manifest.json, validation.json and the logs from its build jobs (no
    engine files needed) gets the same answers.
    """
    out: list[Result] = []
    for s in sorted(states, key=lambda s: s.engine.id):
        b = _build_result(planner, s)
        out.append(b)
        if s.engine.model.validate:
            out.append(_validate_result(planner, s, b))
    return out


def speed_table(states: Sequence[EngineState]) -> list[str]:
    """The measured speed of every engine that has one (Markdown): tokens/s at the prefill shape with its p10-p90
    spread, decode tokens/s, the speed-up over eager, the device."""
    rows = [s for s in states if s.perf]
    if not rows:
        return []
    out = ["", "### Speed (measured at validation)", "",
           "| Engine | Device | Prefill tokens/s (p10-p90) | Decode tokens/s | x eager | State |",
           "|---|---|---|---|---|---|"]
    for s in sorted(rows, key=lambda s: s.engine.id):
        p = s.perf or {}
        pre, dec = (p.get("prefill") or {}), (p.get("decode") or {})
        e, d = pre.get("engine") or {}, dec.get("engine") or {}
        n = e.get("tokens_per_s", 0) * e.get("median_s", 0)  # tokens per call
        spread = f" ({n / e['p90_s']:,.0f}-{n / e['p10_s']:,.0f})" if n and e.get("p10_s") and e.get("p90_s") else ""
        up = f"{pre['speedup']:.2f}" if "speedup" in pre else "–"
        out.append(f"| `{s.engine.id}` | {_cell(str(device_name(p) or '?'))} | {e.get('tokens_per_s', 0):,.0f}{spread} "
                   f"| {d.get('tokens_per_s', 0):,.0f} | {up} | {s.state} |")
    return out


# -- reports ------------------------------------------------------------------------------------
_XML_BAD = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _xml_text(text: str) -> str:
    """Text XML 1.0 can carry: ANSI colour codes and other control characters removed."""
    return _XML_BAD.sub("", _ANSI.sub("", text))


def junit_xml(results: Sequence[Result], name: str = "enginebuild") -> str:
    """JUnit XML: <testsuites> with one <testsuite> per task kind (build, validate); a testcase per
    result named `build:<engine>`; failures carry the log tail, skips the reason."""
    import xml.etree.ElementTree as ET  # only when a JUnit report is written (~5 ms to import)

    root = ET.Element("testsuites", name=name)
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total_time = 0.0
    for task in ("build", "validate"):
        rs = [r for r in results if r.task == task]
        if not rs:
            continue
        t = sum(r.seconds for r in rs)
        counts = {"tests": len(rs), "failures": sum(r.outcome == FAILED for r in rs), "errors": 0,
                  "skipped": sum(r.outcome == SKIPPED for r in rs)}
        suite = ET.SubElement(root, "testsuite", name=task, time=f"{t:.3f}",
                              **{k: str(v) for k, v in counts.items()})
        for r in rs:
            case = ET.SubElement(suite, "testcase", name=r.name, classname=f"{name}.{task}", time=f"{r.seconds:.3f}")
            if r.properties:
                props = ET.SubElement(case, "properties")
                for k, v in r.properties.items():
                    ET.SubElement(props, "property", name=k, value=_xml_text(v))
            if r.outcome == FAILED:
                el = ET.SubElement(case, "failure", message=_xml_text(r.message), type=f"{task}-failed")
                el.text = _xml_text(r.detail) or None
            elif r.outcome == SKIPPED:
                ET.SubElement(case, "skipped", message=_xml_text(r.message))
            elif r.message:
                ET.SubElement(case, "system-out").text = _xml_text(r.message)
        for k, v in counts.items():
            totals[k] += v
        total_time += t
    root.set("time", f"{total_time:.3f}")
    for k, v in totals.items():
        root.set(k, str(v))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


MAX_FRESH_ROWS = 200
_ICON = {PASSED: "✅", FAILED: "❌", SKIPPED: "⏭️"}


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("`", "'")


def _reasons(s: EngineState, limit: int = 3) -> str:
    shown = "; ".join(s.reasons[:limit])
    more = len(s.reasons) - limit
    return _cell(shown + (f"; (+{more} more)" if more > 0 else ""))


def _counts(items: Iterable[str]) -> str:
    got: dict[str, int] = {}
    for x in items:
        got[x] = got.get(x, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(got.items()))


def markdown_summary(states: Sequence[EngineState], results: Sequence[Result] | None = None,
                     title: str = "Engines") -> str:
    """A GitHub-flavoured Markdown summary (for $GITHUB_STEP_SUMMARY): counts per state (and per
    result), then a table engine | state | store | [build | validate |] reasons. Engines that need
    attention come first; on a big fleet, fresh engines are counted rather than listed."""
    by_result: dict[str, dict[str, Result]] = {}
    for r in results or ():
        by_result.setdefault(r.engine, {})[r.task] = r
    lines = [f"## {title}", "", f"**{len(states)} engines**: {_counts(s.state for s in states) or 'none'}"]
    if results is not None:
        for task in ("build", "validate"):
            rs = [r.outcome for r in results if r.task == task]
            if rs:
                lines.append(f"- **{task}**: {_counts(rs)}")
    lines.append("")

    def failed(s: EngineState) -> bool:
        return any(r.outcome == FAILED for r in by_result.get(s.engine.id, {}).values())

    rows = sorted(states, key=lambda s: (not failed(s), s.state == FRESH, s.engine.id))
    hidden = 0
    if len(rows) > MAX_FRESH_ROWS:
        keep = [s for s in rows if failed(s) or s.state != FRESH]
        hidden = len(rows) - len(keep)
        rows = keep
    head = ["Engine", "State", "Store"] + (["Build", "Validate"] if results is not None else []) + ["Reasons"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in rows:
        store = {True: "hit", False: "miss", None: "–"}[s.store]
        cells = [f"`{s.engine.id}`", s.state, store]
        if results is not None:
            for task in ("build", "validate"):
                r = by_result.get(s.engine.id, {}).get(task)
                cells.append("" if r is None else f"{_ICON[r.outcome]} {r.outcome}"
                             + (f" {r.seconds:.1f}s" if r.outcome == PASSED and r.seconds else ""))
        cells.append(_reasons(s))
        lines.append("| " + " | ".join(cells) + " |")
    if hidden:
        lines += ["", f"{hidden} fresh engines not listed."]
    lines += speed_table(states)
    fails = [r for r in results or () if r.outcome == FAILED]
    for r in fails[:20]:
        lines += ["", f"<details><summary>❌ {r.name}: {_cell(r.message)}</summary>", "",
                  "```", _ANSI.sub("", r.detail).replace("```", "'''") or "(no log)", "```", "", "</details>"]
    return "\n".join(lines) + "\n"
