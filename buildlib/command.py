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
from typing import Any

from doit.cmd_base import DoitCmdBase


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
