"""`doit plan`: each engine's state (fresh/stale/missing/blocked) and the per-field reasons."""

from __future__ import annotations

from ..core.errors import UserError
from ..plan.state import BLOCKED, FRESH
from ..report.ci import is_work, markdown_summary, parse_shard, task_name
from ..report.forecast import lines as forecast_lines
from ..report.listing import json_text, planned, render, summary
from .command import EngineCommand, exit_on_user_error, gpus_option, markdown_is_summary, opt_gpus, write_text
from .session import loaded_planner

opt_json = {"name": "as_json", "long": "json", "type": bool, "default": False,
            "help": "print a JSON list of {engine, state, reasons, key, store, gpus, expected_seconds, ...}"}
opt_check = {"name": "check", "long": "check", "type": bool, "default": False,
             "help": "exit 1 when an engine this host can build is not fresh"}
opt_shard = {"name": "shard", "long": "shard", "type": str, "default": "",
             "help": "i/n: only the i-th of n shards of the buildable (stale/missing) engines, split evenly by "
                     "expected build time; the same on every host with the same checkout"}
opt_markdown = {"name": "markdown", "long": "markdown", "type": str, "default": "",
                "help": "also write a Markdown summary to this file (e.g. $GITHUB_STEP_SUMMARY)"}
opt_targets = {"name": "targets", "long": "targets", "type": bool, "default": False,
               "help": "print only the doit tasks that finish the selected buildable engines, one per line "
                       "(validate:<engine>, or build:<engine> without validation): doit $(doit plan --targets)"}



class PlanCmd(EngineCommand):
    """Decided up front, like ninja's plan: nothing is built, nothing is written (but --markdown's file)."""

    name = "plan"
    needs_tasks = False  # reads the plan, not doit tasks: the loader skips building them
    doc_purpose = "show which engines are fresh, stale, missing or blocked, and why"
    doc_usage = "[--json] [--check] [--shard i/n] [--targets] [--markdown FILE] [ENGINE-GLOB ...]"
    doc_description = ("States come from each engine dir's manifest.json, never from .doit.db:\n"
                       "  fresh    built from exactly these inputs, outputs intact\n"
                       "  stale    built from other inputs (reasons per field)\n"
                       "  missing  not built yet\n"
                       "  blocked  needs building, but this host cannot (e.g. needs an sm80 host)\n"
                       "  unvalidated  built, but its validation failed or has not run (the failure and its log)\n"
                       "CI: `doit $(doit plan --shard 2/4 --targets '*/sm90/*')` builds the 2nd of 4 shards\n"
                       "of the sm90 engines that are stale or missing; every such engine is in exactly one shard.")
    cmd_options = (opt_json, opt_check, opt_shard, opt_targets, opt_markdown, opt_gpus)

    def _execute(self, as_json: bool, check: bool, shard: str, targets: bool, markdown: str, gpus: int,
                 pos_args: list[str] | None = None) -> int:
        return exit_on_user_error(lambda: self._run(as_json, check, shard, targets, markdown, gpus, pos_args or []))

    def _run(self, as_json: bool, check: bool, shard_spec: str, targets: bool, markdown: str, gpus: int,
             globs: list[str]) -> int:
        which = parse_shard(shard_spec) if shard_spec else None
        if as_json and targets:
            raise UserError("--json and --targets are exclusive: --targets prints task names, --json the plan")
        planner = loaded_planner()
        states = planned(planner, globs, which, with_store=not targets)  # task names need no store round trips
        if markdown:
            title = f"Engines, shard {which[0]}/{which[1]}" if which else "Engines"
            write_text(markdown, markdown_summary(states, title=title), append=markdown_is_summary(markdown))
        if targets:
            for s in states:
                if is_work(s):
                    self.outstream.write(task_name(s) + "\n")
        elif as_json:
            self.outstream.write(json_text(planner, states))
        else:
            for s in states:
                self.outstream.write(render(s) + "\n")
            if planner.store is not None and not planner.store.verifiers:
                self.outstream.write(f"store    entries of {planner.store.url} are not authenticated (no trust "
                                     "policy): anyone who can write to it decides what is restored; see `store: trust` "
                                     "in the README\n")
            for line in forecast_lines(planner, states, gpus_option(gpus)):
                self.outstream.write(line + "\n")
            self.outstream.write(summary(states) + "\n")
        if check and any(s.state not in (FRESH, BLOCKED) for s in states):
            return 1
        return 0
