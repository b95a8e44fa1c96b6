"""The base of buildlib's doit commands (plan, status, report, gc, verify): what every one of them does alike.

- `doit plan --help` (or `-h`) prints the command's help and exits 0, as `doit help plan` does; doit itself
  only knows `doit help <command>` and answers `--help` with an option dump and exit 3.
- Output into a closed pipe (`doit plan | head -1`) ends the command quietly: the rest of stdout goes to
  /dev/null (so the interpreter's final flush cannot raise either) and the exit status is 1, what Python's
  documentation recommends for EPIPE, instead of a BrokenPipeError traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from doit.cmd_base import DoitCmdBase

from ..core.errors import EXIT_USAGE, UserError

T = TypeVar("T")


def exit_on_user_error(fn: Callable[[], T]) -> T:
    """Run fn; a UserError becomes one line on stderr and exit status 2 (no traceback)."""
    try:
        return fn()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


class EngineCommand(DoitCmdBase):
    def parse_execute(self, in_args: list[str]) -> Any:
        if "--help" in in_args or "-h" in in_args:
            print(self.help())
            return 0
        try:
            result = super().parse_execute(in_args)
            sys.stdout.flush()
            self.outstream.flush()
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1
        return result


opt_gpus = {"name": "gpus", "long": "gpus", "type": int, "default": 0,
            "help": "forecast the wall time on this many GPUs per arch [default: this host's GPUs of each arch]"}


def gpus_option(gpus: int) -> int | None:
    if gpus < 0:
        raise UserError(f"--gpus {gpus}: give a number of GPUs (>= 1), or leave it out for this host's")
    return gpus or None


def write_text(path: str, text: str, append: bool = False) -> None:
    """Write a report file; a path that cannot be written is the user's to fix (exit 2)."""
    try:
        with open(Path(path), "a" if append else "w") as f:
            f.write(text)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}; check the directory exists and is writable") from None


def markdown_is_summary(path: str) -> bool:
    """GitHub's job summary file collects every step's output: append to it rather than replace."""
    return bool(os.environ.get("GITHUB_STEP_SUMMARY")) and Path(path) == Path(os.environ["GITHUB_STEP_SUMMARY"])
