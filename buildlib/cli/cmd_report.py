"""`doit report`: build/validate results of the last runs as JUnit XML and a Markdown summary, for CI."""

from __future__ import annotations

import fnmatch

from ..core.errors import UserError
from ..plan.planner import measured
from ..plan.state import FRESH
from ..report.ci import FAILED, collect_results, junit_xml, markdown_summary
from .command import EngineCommand, exit_on_user_error, markdown_is_summary, write_text
from .session import loaded_planner

opt_junit = {"name": "junit", "long": "junit", "type": str, "default": "",
             "help": "write a JUnit XML report here (testcases build:<engine> and validate:<engine>)"}
opt_markdown = {"name": "markdown", "long": "markdown", "type": str, "default": "",
                "help": "write a Markdown summary here (appended when it is $GITHUB_STEP_SUMMARY)"}
opt_check = {"name": "check", "long": "check", "type": bool, "default": False,
             "help": "exit 1 when a build or validation failed"}


class ReportCmd(EngineCommand):
    """Reads what the runs left on disk (and the store); builds nothing."""

    name = "report"
    needs_tasks = False  # reads the plan, not doit tasks: the loader skips building them
    doc_purpose = "report build/validate results (JUnit XML, Markdown) from the engine dirs"
    doc_usage = "[--junit FILE] [--markdown FILE] [--check] [ENGINE-GLOB ...]"
    doc_description = (
        "Run after `doit --continue ...`. Per engine, from its dir and the store:\n"
        "  build    passed: manifest.json has the current key (or the store has it)\n"
        "           failed: .<tpN-ppM>.failed.log beside the engine dir (its tail is in the report)\n"
        "           skipped: this host cannot build it (e.g. needs an sm80 host)\n"
        "  validate passed: validation.json vouches for the current key; failed: validate.log without it\n"
        "A CI report job can gather manifest.json, validation.json and the logs from its build jobs\n"
        "(no engine files needed) and report on all of them at once.")
    cmd_options = (opt_junit, opt_markdown, opt_check)

    def _execute(self, junit: str, markdown: str, check: bool, pos_args: list[str] | None = None) -> int:
        return exit_on_user_error(lambda: self._run(junit, markdown, check, pos_args or []))

    def _run(self, junit: str, markdown: str, check: bool, globs: list[str]) -> int:
        planner = loaded_planner()
        states = planner.plan()
        if globs:
            states = [s for s in states if any(fnmatch.fnmatch(s.engine.id, g) for g in globs)]
            if not states:
                raise UserError(f"no engine matches {' '.join(globs)}; see `doit plan` for the engine names")
        results = collect_results(planner, states)
        states = [measured(planner, s) if s.state == FRESH and s.validated else s for s in states]  # speed, gate
        if junit:
            write_text(junit, junit_xml(results))
        if markdown:
            write_text(markdown, markdown_summary(states, results, title="Engine build results"),
                       append=markdown_is_summary(markdown))
        for task in ("build", "validate"):
            rs = [r for r in results if r.task == task]
            if rs:
                counts = {o: sum(r.outcome == o for r in rs) for o in ("passed", "failed", "skipped")}
                self.outstream.write(f"{task}: " + ", ".join(f"{n} {o}" for o, n in counts.items()) + "\n")
        for r in results:
            if r.outcome == FAILED:
                self.outstream.write(f"FAILED {r.name}: {r.message}\n")
        return 1 if check and any(r.outcome == FAILED for r in results) else 0
