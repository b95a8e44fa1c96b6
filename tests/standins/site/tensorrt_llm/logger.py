"""Stand-in for tensorrt_llm/logger.py: `[time] [TRT-LLM] [I] msg` lines on stdout, severity_map for --log_level."""

from __future__ import annotations

import sys
import threading
import time

# Keys are what trtllm-build offers as --log_level choices (order as in the real severity_map).
severity_map: dict[str, int] = {
    "internal_error": 0, "error": 1, "warning": 2, "info": 3, "verbose": 4, "debug": 5, "trace": 6,
}
_LETTER = {0: "F", 1: "E", 2: "W", 3: "I", 4: "V", 5: "D", 6: "T"}
_LOCK = threading.Lock()  # ranks build on threads here: keep their lines whole


class Logger:
    def __init__(self) -> None:
        self.level = severity_map["warning"]

    def set_level(self, level: str) -> None:
        self.level = severity_map[level]

    def _log(self, sev: int, msg: str, source: str = "TRT-LLM") -> None:
        if sev <= self.level:
            stamp = time.strftime("%m/%d/%Y-%H:%M:%S")
            with _LOCK:
                sys.stdout.write(f"[{stamp}] [{source}] [{_LETTER[sev]}] {msg}\n")
                sys.stdout.flush()

    def error(self, msg: str) -> None:
        self._log(1, msg)

    def warning(self, msg: str) -> None:
        self._log(2, msg)

    def info(self, msg: str) -> None:
        self._log(3, msg)

    def verbose(self, msg: str) -> None:
        self._log(4, msg)

    def debug(self, msg: str) -> None:
        self._log(5, msg)

    def trt(self, sev: str, msg: str) -> None:
        """A line as TensorRT's own logger prints it (`[TRT] [I] ...`)."""
        self._log(severity_map[sev], msg, source="TRT")


logger = Logger()
