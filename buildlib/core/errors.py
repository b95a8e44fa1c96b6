"""User-facing errors: one clear message naming file, line and field; exit status 2."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXIT_USAGE = 2


@dataclass
class Where:
    """A position in a user's file, for messages like `models.yaml:12: models[0].build.tp: ...`."""

    file: Path | str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else str(self.file)


class UserError(Exception):
    """Bad input or environment the user can fix; printed as one line, never as a traceback."""

    def __init__(self, message: str, where: Where | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.field = field

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        field = f"{self.field}: " if self.field else ""
        return one_line(f"{prefix}{field}{self.message}")


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7f)} | {0x0a: "\\n", 0x0d: "\\r", 0x09: "\\t"}


def one_line(text: str) -> str:
    """The message with control characters escaped: user values (a name, a path) echoed in an error can never
    break it over several lines or drive the terminal."""
    return text.translate(_CONTROL)


class SpecError(UserError):
    """models.yaml is invalid."""


class BackendUnavailable(UserError):
    """The toolchain a backend needs is missing or unsupported on this host."""


class BuildFailed(Exception):
    """A build step failed; the message says which and where its log is (`log`, when there is one)."""

    def __init__(self, message: str, log: Path | None = None):
        super().__init__(message)
        self.log = log

    def log_moved(self, to: Path) -> BuildFailed:
        """The same failure, naming the log where it was kept (a temp dir's log is copied out, then removed)."""
        if self.log is None:
            return self
        return BuildFailed(str(self).replace(str(self.log), str(to)), to)
