"""`doit status`: the fleet as a model × arch × parallel matrix of states, with the forecast; `--html FILE` writes
it as one self-contained HTML report (buildlib.report.status_html)."""

from __future__ import annotations

from ..report.forecast import lines as forecast_lines
from ..report.listing import planned, summary
from ..report.status import matrix, text, trade_off
from ..report.status_html import render
from .command import EngineCommand, exit_on_user_error, gpus_option, opt_gpus, write_text
from .session import loaded_planner

opt_html = {"name": "html", "long": "html", "type": str, "default": "",
            "help": "also write the matrix, per-engine details, build times and forecast as one HTML file"}


class StatusCmd(EngineCommand):
    """Reads the plan (and the store, for `restorable`); builds nothing, writes nothing but --html's file."""

    name = "status"
    needs_tasks = False
    doc_purpose = "show every engine's state as a model x arch x parallel matrix, with a forecast of pending work"
    doc_usage = "[--html FILE] [--gpus N] [ENGINE-GLOB ...]"
    doc_description = ("Cells: fresh, stale (its main reason), missing, blocked (why), unvalidated, restorable (the\n"
                       "store has its key: `doit` restores it instead of building). The forecast: GPU-hours per arch\n"
                       "and wall time on this host's GPUs (or --gpus N), estimated from recorded builds.")
    cmd_options = (opt_html, opt_gpus)

    def _execute(self, html: str, gpus: int, pos_args: list[str] | None = None) -> int:
        return exit_on_user_error(lambda: self._run(html, gpus, pos_args or []))

    def _run(self, html: str, gpus: int, globs: list[str]) -> int:
        planner = loaded_planner()
        states = planned(planner, globs)
        m = matrix(planner, states)
        forecast = forecast_lines(planner, states, gpus_option(gpus))
        for line in [*text(m), *trade_off(m), *forecast, summary(states)]:
            self.outstream.write(line + "\n")
        if html:
            write_text(html, render(m, forecast, title=f"Engines of {planner.spec.project.models_path.name}"))
        return 0
