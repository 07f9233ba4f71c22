"""Strict, bounded YAML reading for scenario files: safe loading, duplicate keys rejected, and the
limits of :mod:`harness.model.bounds` checked before any work that grows with the input.

PyYAML keeps the last of two equal keys without a word; in a scenario that silently drops a
setting, so a duplicate is reported like any other problem, with its line and column.

Reading goes in three steps, each bounded by the one before: the file (a regular file, opened
without blocking, at most 1 MiB read), the event stream (an iterative parse that counts nesting
depth and the values and text that aliases expand to, and stops at the first limit passed), and
only then composing and constructing the document, whose recursion the depth limit keeps short.
libyaml's parser is used where PyYAML has it (about 30x faster on large input).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.model import bounds
from harness.model.errors import Described, Problem, show_value

# libyaml where available; the pure-Python classes behave the same, only slower.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class YamlProblem:
    problem: Problem


class _StrictLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    pass


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<: *defaults" may be overridden by explicit keys
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"unhashable key {show_value(key)}", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {show_value(key)}", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> Any:
    """The parsed document, or a :class:`YamlProblem` saying what is wrong and where."""
    text = _read_text(path)
    if isinstance(text, Problem):
        return YamlProblem(text)
    try:
        problem = _check_events(text)
        if problem is not None:
            return YamlProblem(problem)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        return YamlProblem(_yaml_problem(exc, text))
    except (ValueError, OverflowError) as exc:  # e.g. an integer of 5,000 digits, a 13th month
        return YamlProblem(
            Problem("", Described("a value"), "values YAML can construct", str(exc)[:200])
        )


def _read_text(path: Path) -> str | Problem:
    """The file's text, or why it cannot be a scenario. Opened non-blocking, so a FIFO given as
    the path is refused at once instead of waiting for a writer."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return Problem("", str(path), "an existing, readable UTF-8 YAML file", exc.strerror or "")
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return Problem("(file)", Described(_kind(info.st_mode)), "a regular file")
        if info.st_size > bounds.MAX_FILE_BYTES:
            return bounds.too_big_file(info.st_size)
        data = _read_at_most(fd, bounds.MAX_FILE_BYTES + 1)  # it may have grown since fstat
    except OSError as exc:
        return Problem("", str(path), "a readable UTF-8 YAML file", exc.strerror or str(exc))
    finally:
        os.close(fd)
    if len(data) > bounds.MAX_FILE_BYTES:
        return bounds.too_big_file(len(data))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Problem("(file)", Described(f"byte {exc.start}"), "UTF-8 text", exc.reason)


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


@dataclass
class _Open:
    """A mapping or list being parsed: the values and text it holds so far, aliases expanded."""

    anchor: str | None
    nodes: int = 1
    chars: int = 0


def _check_events(text: str) -> Problem | None:
    """Walk the event stream (no recursion, no document built) and report the first limit passed:
    nesting depth, or values and text once every alias is expanded; also an alias that refers
    to a node that contains it, which would make the document contain itself."""
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (values, characters) it stands for
    stack: list[_Open] = [_Open(None, nodes=0)]  # the stream, then one entry per open node
    for event in yaml.parse(text, Loader=_BaseLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) > bounds.MAX_DEPTH:
                return bounds.too_deep(_where(event))
            stack.append(_Open(event.anchor))
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            done = stack.pop()
            nodes, chars, anchor = done.nodes, done.chars, done.anchor
        elif isinstance(event, yaml.ScalarEvent):
            nodes, chars, anchor = 1, len(event.value), event.anchor
        elif isinstance(event, yaml.AliasEvent):
            if any(o.anchor == event.anchor for o in stack):
                return bounds.recursive(_where(event))
            # an unknown alias is the composer's to report, with its own message
            nodes, chars = sizes.get(event.anchor, (1, 0))
            anchor = None
        else:
            continue
        if anchor is not None:
            sizes[anchor] = (nodes, chars)
        top = stack[-1]
        top.nodes += nodes
        top.chars += chars
        if top.nodes > bounds.MAX_NODES:
            return bounds.too_many_nodes(_where(event))
        if top.chars > bounds.MAX_TEXT_CHARS:
            return bounds.too_much_text(_where(event))
    return None


def _where(event: Any) -> str:
    mark = event.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _yaml_problem(exc: yaml.YAMLError, text: str) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    reason = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return Problem("", "(unparsable)", "valid YAML", reason)
    lines = text.splitlines()
    line = lines[mark.line].strip() if mark.line < len(lines) else ""
    return Problem(f"line {mark.line + 1}, column {mark.column + 1}", line, "valid YAML", reason)
