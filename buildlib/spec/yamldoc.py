"""A YAML document as plain values plus the line of every node, so errors name file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..core.errors import SpecError, Where

try:  # libyaml is ~5x faster on large fleets; fall back to the pure-Python loader.
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader


# Bounds that keep hostile YAML from hanging or exhausting the planner; a real models.yaml is far below them.
MAX_ALIASED = 100_000  # values reached again through aliases (an "alias bomb" expands exponentially)
MAX_DEPTH = 64  # nesting of mappings/lists (models.yaml needs about 6)
MAX_INT = 2**63 - 1
_MERGE = "tag:yaml.org,2002:merge"


class YamlDoc:
    """A YAML document as plain values plus the line of every node, keyed by field path.

    Only plain YAML is accepted: mappings with string keys, lists, and scalars (strings, numbers,
    booleans, null). Anchors and aliases are expanded (within MAX_ALIASED); a recursive alias, a merge
    key (`<<`), a tag that builds an object, nesting past MAX_DEPTH or an integer past 64 bits are each
    one error naming the line."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines: dict[tuple, int] = {}
        self._seen: set[int] = set()
        self._aliased = 0
        try:
            node = yaml.compose(text, Loader=_Loader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = mark.line + 1 if mark else None
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            opened = getattr(e, "context_mark", None)  # where the unclosed brace/bracket/quote began
            if opened is not None and mark is not None and opened.line != mark.line:
                problem += f" ({(getattr(e, 'context', None) or 'the construct').removeprefix('while ')} " \
                           f"that began on line {opened.line + 1}, column {opened.column + 1})"
            raise SpecError(f"not valid YAML: {problem}", Where(path, line)) from None
        except RecursionError:
            raise SpecError("not valid YAML: nested too deeply", Where(path)) from None
        self.value = self._plain(node, (), ()) if node is not None else {}

    def _plain(self, node: yaml.Node, at: tuple, parents: tuple[int, ...]) -> Any:
        line = node.start_mark.line + 1
        self.lines.setdefault(at, line)
        if id(node) in self._seen:
            self._aliased += 1
            if self._aliased > MAX_ALIASED:
                raise SpecError(f"aliases expand to more than {MAX_ALIASED:,} values (an alias bomb?); "
                                "write the file without nested aliases", Where(self.path, line))
        self._seen.add(id(node))
        if id(node) in parents:
            raise SpecError("an alias refers to a value that contains it (a recursive alias)", Where(self.path, line))
        if len(parents) >= MAX_DEPTH:
            raise SpecError(f"nested deeper than {MAX_DEPTH} levels", Where(self.path, line))
        inner = (*parents, id(node))
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for k, v in node.value:
                if k.tag == _MERGE:
                    raise self.error(at, "merge keys (`<<`) are not supported: write the keys out, or put shared "
                                     "values under `defaults:`", line=k.start_mark.line + 1)
                key = self._scalar(k)
                if not isinstance(key, str):
                    raise self.error(at, f"keys must be strings, got {key!r}", line=k.start_mark.line + 1)
                if key in out:
                    raise self.error(at + (key,), "duplicate key", line=k.start_mark.line + 1)
                self.lines[at + (key,)] = k.start_mark.line + 1  # point at the key, not its value
                out[key] = self._plain(v, at + (key,), inner)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._plain(v, at + (i,), inner) for i, v in enumerate(node.value)]
        return self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.ScalarNode):
            raise SpecError("expected a plain value here", Where(self.path, line))
        try:
            value = _SAFE.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise SpecError(f"unsupported YAML tag {node.tag!r}: only plain strings, numbers, booleans and null",
                            Where(self.path, line)) from None
        except ValueError as e:  # e.g. an integer literal of thousands of digits
            raise SpecError(f"value out of range: {str(e).split(';')[0]}", Where(self.path, line)) from None
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise SpecError(f"integer out of range (more than 64 bits): {str(value)[:20]}...", Where(self.path, line))
        if not isinstance(value, str | int | float | bool | type(None)):
            raise SpecError(f"unsupported value of type {type(value).__name__} (tag {node.tag}): only plain "
                            "strings, numbers, booleans and null", Where(self.path, line))
        return value

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
