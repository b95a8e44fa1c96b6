"""A YAML document as plain values plus the line of every node, so errors name file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError, Where

try:  # libyaml is ~5x faster on large fleets; fall back to the pure-Python loader.
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader


class YamlDoc:
    """A YAML document as plain values plus the line of every node, keyed by field path."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines: dict[tuple, int] = {}
        try:
            node = yaml.compose(text, Loader=_Loader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark else None
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise SpecError(f"not valid YAML: {problem}", Where(path, line)) from None
        self.value = self._plain(node, ()) if node is not None else {}

    def _plain(self, node: yaml.Node, at: tuple) -> Any:
        self.lines[at] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for k, v in node.value:
                key = self._scalar(k)
                if not isinstance(key, str):
                    raise self.error(at, f"keys must be strings, got {key!r}", line=k.start_mark.line + 1)
                if key in out:
                    raise self.error(at + (key,), "duplicate key", line=k.start_mark.line + 1)
                out[key] = self._plain(v, at + (key,))
                self.lines[at + (key,)] = k.start_mark.line + 1  # point at the key, not its value
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._plain(v, at + (i,)) for i, v in enumerate(node.value)]
        return self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise SpecError("expected a plain value here", Where(self.path, node.start_mark.line + 1))
        return _SAFE.construct_object(node, deep=True)

    def line(self, at: tuple) -> int | None:
        while at and at not in self.lines:
            at = at[:-1]
        return self.lines.get(at)

    def error(self, at: tuple, message: str, line: int | None = None) -> SpecError:
        return SpecError(message, Where(self.path, line or self.line(at)), field_name(at) or None)


_SAFE = yaml.constructor.SafeConstructor()  # resolves scalars: ints, floats, bools, nulls, strings


def field_name(at: tuple) -> str:
    out = ""
    for part in at:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out
