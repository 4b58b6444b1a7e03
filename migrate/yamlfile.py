"""The one line-aware YAML loader for what users write: playbooks, jobs.yaml and compose files.

`compose` reads text into PyYAML's node tree (which remembers line numbers) after the nesting limit
(PyYAML composes recursively: a file nested a few hundred levels deep ended in a RecursionError; its
event parser is a loop, so the depth is measured from the events first), with a syntax error as
`FILE:LINE: not valid YAML: ...`. `Validator` checks a node tree against `Key`s (the playbook schema,
the job fields of jobs.yaml) and reports every problem with its line.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from migrate.errors import UsageError

MAX_DEPTH = 100  # real files nest under 10 levels; PyYAML's recursion gives out in the hundreds
_constructor = yaml.constructor.SafeConstructor()


def nesting_problem(text: str) -> tuple[int, str] | None:
    """(line, problem) where `text` first nests deeper than MAX_DEPTH, else None (pure; YAML errors are
    left to the real parse, which says where)."""
    depth = 0
    try:
        for event in yaml.parse(text):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    return event.start_mark.line + 1, f"nested more than {MAX_DEPTH} levels deep"
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError:
        return None
    return None


def check_nesting(text: str, filename: str, error: type[UsageError] = UsageError) -> None:
    """Raise `error` (`FILE:LINE: nested more than ...`) for YAML too deep to read safely."""
    found = nesting_problem(text)
    if found:
        raise error(f"{filename}:{found[0]}: {found[1]}", hint="check the brackets and the indentation there")


def compose(text: str, filename: str, error: type[UsageError] = UsageError) -> yaml.Node | None:
    """The node tree of `text` (None for an empty file); `error` for a file too deep or not YAML."""
    check_nesting(text, filename, error)
    try:
        return yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}" if mark else filename
        raise error(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from exc


def construct(node: yaml.Node | None) -> Any:
    """Plain Python values of a node tree (what yaml.safe_load would give)."""
    return None if node is None else _constructor.construct_document(node)


def child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    """The value node of `key` in a mapping node, or None."""
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((v for k, v in node.value if k.value == key), None)


def key_node(node: yaml.Node | None, key: str) -> yaml.Node | None:
    """The key node of `key` in a mapping node (its line is the key's), or None."""
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((k for k, _ in node.value if k.value == key), None)


@dataclass(frozen=True)
class Key:
    """One key of a file format: name, kind, whether required, default and a one-line doc.

    Kinds: str, int, bool, size, str_list, str_map, sweep, object, object_list, image_list."""

    name: str
    kind: str
    doc: str
    required: bool = False
    default: Any = None
    children: tuple[Key, ...] = field(default_factory=tuple)
    example: str = ""
    aliases: tuple[str, ...] = ()  # other accepted spellings (jobs.yaml's, for job fields)
    lo: int | None = None  # int keys: the range accepted (default: not negative)
    hi: int | None = None

    def type_name(self) -> str:
        return {
            "str": "string", "int": "integer", "bool": "true/false", "size": "size (MiB, or e.g. `20g`)",
            "str_list": "list of strings", "str_map": "map of string to string",
            "sweep": "map of name to list of values", "object": "mapping", "object_list": "list of mappings",
            "image_list": "list of image names or mappings",
        }[self.kind]


class Validator:
    """Checks a YAML node tree against `Key`s, collecting every problem as `FILE:LINE: text`; each method
    returns the plain value (strings as written: `1e-3` stays "1e-3")."""


    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.errors: list[str] = []

    def err(self, node: yaml.Node | None, text: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.errors.append(f"{self.filename}:{line}: {text}")

    def scalar(self, node: yaml.Node, key: Key, where: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.err(node, f"'{where}' must be a {key.type_name()}, got a {node_kind(node)}")
            return None
        value = _constructor.construct_object(node)
        if key.kind == "str":
            if value is None:
                return None
            if isinstance(value, (dict, list)):
                self.err(node, f"'{where}' must be a string")
                return None
            return node.value if not isinstance(value, str) else value
        if key.kind == "int":
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int):
                self.err(node, f"'{where}' must be an integer, got {node.value!r}")
                return None
            lo, hi = (key.lo, key.hi) if key.lo is not None else (0, None)
            if value < lo or (hi is not None and value > hi):
                self.err(node, f"'{where}' must be an integer from {lo} to {hi}, got {value}" if hi is not None
                         else f"'{where}' must not be negative, got {value}")
                return None
            return value
        if key.kind == "bool":
            if not isinstance(value, bool):
                self.err(node, f"'{where}' must be true or false, got {node.value!r}")
                return None
            return value
        if key.kind == "size":  # MiB, or a size such as `20g` (read with migrate.units later)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                self.err(node, f"'{where}' must be a size (an integer in MiB or e.g. 20g), got {node.value!r}")
                return None
            return value
        raise AssertionError(key.kind)

    def str_list(self, node: yaml.Node, key: Key, where: str) -> list[str]:
        if isinstance(node, yaml.ScalarNode) and node.value and node.tag.endswith(":str"):
            return [node.value]  # a single string is a list of one
        if not isinstance(node, yaml.SequenceNode):
            self.err(node, f"'{where}' must be a list of strings, got a {node_kind(node)}")
            return []
        out = []
        for item in node.value:
            if not isinstance(item, yaml.ScalarNode) or item.tag.endswith(":null"):
                self.err(item, f"items of '{where}' must be strings")
                continue
            out.append(item.value)
        return out

    def str_map(self, node: yaml.Node, key: Key, where: str) -> dict[str, str]:
        if not isinstance(node, yaml.MappingNode):
            self.err(node, f"'{where}' must be a mapping of names to values, got a {node_kind(node)}")
            return {}
        out = {}
        for k, v in node.value:
            if not isinstance(v, yaml.ScalarNode):
                self.err(v, f"'{where}.{k.value}' must be a single value")
                continue
            out[str(k.value)] = v.value
        return out

    def sweep(self, node: yaml.Node, key: Key, where: str) -> dict[str, list[str]]:
        if not isinstance(node, yaml.MappingNode):
            self.err(node, f"'{where}' must map parameter names to lists of values, got a {node_kind(node)}")
            return {}
        out: dict[str, list[str]] = {}
        for k, v in node.value:
            name = str(k.value)
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                self.err(k, f"sweep parameter {name!r} must be a plain name (letters, digits, _)")
                continue
            if isinstance(v, yaml.ScalarNode):
                out[name] = [v.value]
            elif isinstance(v, yaml.SequenceNode) and all(isinstance(i, yaml.ScalarNode) for i in v.value):
                if not v.value:
                    self.err(v, f"sweep parameter '{name}' has no values")
                out[name] = [i.value for i in v.value]  # literal text: 1e-3 stays "1e-3"
            else:
                self.err(v, f"sweep parameter '{name}' must be a list of values")
        return out

    def mapping(self, node: yaml.Node, keys: tuple[Key, ...], where: str, *, fill: bool = True) -> dict[str, Any]:
        """The keys given (checked); with `fill`, every other key at its default too."""
        if not isinstance(node, yaml.MappingNode):
            self.err(node, f"'{where or 'the playbook'}' must be a mapping, got a {node_kind(node)}")
            return {}
        by_name = {k.name: k for k in keys}
        by_name.update({alias: k for k in keys for alias in k.aliases})
        out: dict[str, Any] = {}
        seen: dict[str, str] = {}  # key -> the spelling used (its full name)
        for knode, vnode in node.value:
            name = str(knode.value)
            full = f"{where}.{name}" if where else name
            key = by_name.get(name)
            if key is not None and key.name in seen:
                first = seen[key.name]
                self.err(knode, f"duplicate key '{full}'" if first == full else
                         f"'{full}' and '{first}' are the same field: give one")
                continue
            if key is not None:
                seen[key.name] = full
            if key is None:
                close = difflib.get_close_matches(name, list(by_name), n=1)
                known = ", ".join(k.name for k in keys)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {known})"
                self.err(knode, f"unknown key '{full}'{hint}")
                continue
            out[key.name] = self.value(vnode, key, full)
        for key in keys if fill else ():
            if key.name not in out:
                if key.required:
                    self.err(node, f"missing required key '{where + '.' if where else ''}{key.name}'")
                out[key.name] = copy_default(key.default)
            elif out[key.name] is None and key.default is not None:
                out[key.name] = copy_default(key.default)
        return out

    def value(self, node: yaml.Node, key: Key, where: str) -> Any:
        if key.kind in ("str", "int", "bool", "size"):
            return self.scalar(node, key, where)
        if key.kind == "str_list":
            return self.str_list(node, key, where)
        if key.kind == "str_map":
            return self.str_map(node, key, where)
        if key.kind == "sweep":
            return self.sweep(node, key, where)
        if key.kind == "object":
            if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
                return self.mapping(yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark),
                                    key.children, where)
            return self.mapping(node, key.children, where)
        if key.kind in ("object_list", "image_list"):
            if not isinstance(node, yaml.SequenceNode):
                self.err(node, f"'{where}' must be a {key.type_name()}, got a {node_kind(node)}")
                return []
            items = []
            for i, item in enumerate(node.value):
                if key.kind == "image_list" and isinstance(item, yaml.ScalarNode):
                    items.append({"name": item.value, "build": None, "dockerfile": "Dockerfile", "build_args": {}})
                else:
                    items.append(self.mapping(item, key.children, f"{where}[{i}]"))
            return items
        raise AssertionError(key.kind)


def copy_default(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


def node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    if node.tag.endswith(":null"):
        return "empty value"
    return f"{node.tag.rsplit(':', 1)[-1]} {node.value!r}"
