"""Read and validate a playbook, reporting every problem with its file and line number.

Validation happens on the YAML node tree (which remembers line numbers) against the key
definitions in `schema.py`, before any remote work: an unknown key (with a "did you mean"), a
wrong type or a missing required key ends `migrate apply` with exit code 2.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from migrate.agent.imageref import image_ref_problem
from migrate.cluster.state import check_name as check_cluster_name
from migrate.errors import UsageError
from migrate.jobs.limits import MAX_JOBS, sweep_size
from migrate.jobs.spec import PLACEHOLDER, grid
from migrate.playbook.schema import PLAYBOOK_KEYS, Key
from migrate.remote.hosts import HostSpec
from migrate.yaml_depth import check_nesting

_constructor = yaml.constructor.SafeConstructor()


class PlaybookError(UsageError):
    """The playbook file is invalid; the message lists each problem as `file:line: text`."""


@dataclass
class ImageEntry:
    name: str
    build: str | None = None
    dockerfile: str = "Dockerfile"
    build_args: dict[str, str] = field(default_factory=dict)
    pull: bool = False  # `pull: REF`: the host pulls `name` from its registry (image/hostpull.py)


@dataclass
class DataEntry:
    src: str
    dest: str
    exclude: list[str] = field(default_factory=list)
    into: bool = False
    delete: bool = False
    sudo: bool = False


@dataclass
class EnvEntry:
    name: str
    source: str  # resolved against the playbook's directory
    python: str = "python3"


@dataclass
class Playbook:
    """A validated playbook: plain values, relative paths already resolved against its directory."""

    path: Path
    name: str
    hosts: list[str]
    setup: dict[str, Any] | None
    images: list[ImageEntry]
    data: list[DataEntry]
    run: dict[str, Any] | None
    local_paths: list[tuple[str, str, int]] = field(default_factory=list)  # (key, resolved path, line)
    cluster: str | None = None   # run the jobs on these hosts as one Ray cluster (migrate/cluster)
    envs: list[EnvEntry] = field(default_factory=list)  # push-env, between images and data

    def missing_local_paths(self, stages: list[str] | None = None) -> list[str]:
        """`file:line: key: PATH not found` for every local path a stage needs that is missing."""
        out = []
        for key, resolved, line in self.local_paths:
            stage = key.split(".")[0].split("[")[0]  # data[0].src -> data
            if stages and stage not in stages:
                continue
            if not Path(resolved).exists():
                out.append(f"{self.path}:{line}: {key}: {resolved} not found")
        return out

    def stages(self) -> list[str]:
        """The stages this playbook has, in the order apply runs them."""
        out = []
        if self.setup is not None:
            out.append("setup")
        if self.images:
            out.append("images")
        if self.envs:
            out.append("envs")
        if self.data:
            out.append("data")
        if self.run is not None:
            out.append("run")
        return out


class _Validator:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.errors: list[str] = []

    def err(self, node: yaml.Node | None, text: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.errors.append(f"{self.filename}:{line}: {text}")

    def scalar(self, node: yaml.Node, key: Key, where: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.err(node, f"'{where}' must be a {key.type_name()}, got a {_node_kind(node)}")
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
            if value < 0:
                self.err(node, f"'{where}' must not be negative, got {value}")
                return None
            return value
        if key.kind == "bool":
            if not isinstance(value, bool):
                self.err(node, f"'{where}' must be true or false, got {node.value!r}")
                return None
            return value
        raise AssertionError(key.kind)

    def str_list(self, node: yaml.Node, key: Key, where: str) -> list[str]:
        if isinstance(node, yaml.ScalarNode) and node.value and node.tag.endswith(":str"):
            return [node.value]  # a single string is a list of one
        if not isinstance(node, yaml.SequenceNode):
            self.err(node, f"'{where}' must be a list of strings, got a {_node_kind(node)}")
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
            self.err(node, f"'{where}' must be a mapping of names to values, got a {_node_kind(node)}")
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
            self.err(node, f"'{where}' must map parameter names to lists of values, got a {_node_kind(node)}")
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

    def mapping(self, node: yaml.Node, keys: tuple[Key, ...], where: str) -> dict[str, Any]:
        if not isinstance(node, yaml.MappingNode):
            self.err(node, f"'{where or 'the playbook'}' must be a mapping, got a {_node_kind(node)}")
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
        for key in keys:
            if key.name not in out:
                if key.required:
                    self.err(node, f"missing required key '{where + '.' if where else ''}{key.name}'")
                out[key.name] = _copy(key.default)
            elif out[key.name] is None and key.default is not None:
                out[key.name] = _copy(key.default)
        return out

    def value(self, node: yaml.Node, key: Key, where: str) -> Any:
        if key.kind in ("str", "int", "bool"):
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
                self.err(node, f"'{where}' must be a {key.type_name()}, got a {_node_kind(node)}")
                return []
            items = []
            for i, item in enumerate(node.value):
                if key.kind == "image_list" and isinstance(item, yaml.ScalarNode):
                    items.append({"name": item.value, "build": None, "dockerfile": "Dockerfile", "build_args": {}})
                else:
                    items.append(self.mapping(item, key.children, f"{where}[{i}]"))
            return items
        raise AssertionError(key.kind)


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


def _node_kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "mapping"
    if isinstance(node, yaml.SequenceNode):
        return "list"
    if node.tag.endswith(":null"):
        return "empty value"
    return f"{node.tag.rsplit(':', 1)[-1]} {node.value!r}"


def parse_playbook(text: str, path: Path) -> Playbook:
    """Validate playbook text; raise PlaybookError listing every problem with its line number."""
    filename = str(path)
    check_nesting(text, filename, PlaybookError)
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"{mark.line + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise PlaybookError(f"{filename}:{line}: not valid YAML: {problem}") from exc
    if root is None:
        raise PlaybookError(f"{filename}: the playbook is empty", hint="start from `migrate init`")
    v = _Validator(filename)
    data = v.mapping(root, PLAYBOOK_KEYS, "")
    if not v.errors:
        if not data["hosts"]:
            v.err(root, "'hosts' must name at least one host")
        hosts_node = _child(root, "hosts")
        host_nodes = hosts_node.value if isinstance(hosts_node, yaml.SequenceNode) else [hosts_node]
        for host, node in zip(data["hosts"], host_nodes):
            try:
                HostSpec.parse(host)
            except UsageError as exc:  # e.g. a host starting with '-': never handed to ssh
                v.err(node, f"hosts: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
        if data.get("cluster"):
            try:
                check_cluster_name(data["cluster"])
            except UsageError as exc:
                v.err(_child(root, "cluster") or root, f"cluster: {exc.message} ({exc.hint})")
            if (data.get("run") or {}).get("compose"):
                v.err(root, "run.compose is not supported with 'cluster' yet")
        for i, img in enumerate(data["images"]):
            if bool(img.get("name")) == bool(img.get("pull")):
                v.err(root, f"images[{i}] needs exactly one of 'name' (push a local image) and 'pull' "
                            "(the host pulls a registry image)")
            elif img.get("pull") and img.get("build"):
                v.err(root, f"images[{i}]: a 'pull' image comes from its registry; it cannot have 'build'")
            elif img.get("pull") and (problem := image_ref_problem(img["pull"])):
                v.err(root, f"images[{i}].pull: {problem}")
        run = data.get("run")
        run_present = any(k.value == "run" for k, _ in root.value)
        if run_present and run is not None and bool(run.get("command")) == bool(run.get("compose")):
            v.err(root, "run needs exactly one of 'run.command' and 'run.compose'")
        if run is not None and run.get("compose") and (run.get("sweep") or run.get("image")):
            v.err(root, "run.compose runs the compose file's services: no run.sweep or run.image with it")
        if run is not None and run.get("command"):
            used = set(PLACEHOLDER.findall(run["command"]))
            declared = set(run.get("sweep") or {})
            for missing in sorted(used - declared):
                v.err(root, f"run.command uses {{{missing}}} but run.sweep has no '{missing}'")
            for unused in sorted(declared - used):
                v.err(root, f"run.sweep.{unused} is never used in run.command (add {{{unused}}})")
            size = sweep_size(run.get("sweep"))  # counted from the grid, never expanded here
            if size > MAX_JOBS:
                v.err(_child(_child(root, "run"), "sweep") or root,
                      f"run.sweep is {size} jobs; the limit is {MAX_JOBS} (make the sweep smaller)")
    if v.errors:
        raise PlaybookError("; ".join(v.errors) if len(v.errors) < 2 else
                            f"{len(v.errors)} problems: " + "; ".join(v.errors),
                            hint="see docs/playbook.md for every key")
    base = path.parent
    setup_node_present = any(k.value == "setup" for k, _ in root.value)
    run_present = any(k.value == "run" for k, _ in root.value)
    if setup_node_present and data["setup"].get("offline") and not Path(data["setup"]["offline"]).is_absolute():
        data["setup"]["offline"] = str(base / data["setup"]["offline"])
    if run_present and data["run"].get("compose"):
        data["run"]["compose"] = str(base / data["run"]["compose"])
    local_paths = []
    for where, node in _local_path_nodes(root):
        value = str(node.value)
        resolved = value if Path(value).is_absolute() else str((base / value).resolve())
        local_paths.append((where, resolved, node.start_mark.line + 1))
    return Playbook(
        local_paths=local_paths,
        path=path,
        name=data["name"] or path.stem,
        hosts=data["hosts"],
        setup=data["setup"] if setup_node_present else None,
        images=[ImageEntry(name=i.get("name") or i["pull"], build=str(base / i["build"]) if i.get("build") else None,
                           dockerfile=i.get("dockerfile") or "Dockerfile", build_args=i.get("build_args") or {},
                           pull=bool(i.get("pull"))) for i in data["images"]],
        data=[DataEntry(src=str((base / d["src"]).resolve()) if not Path(d["src"]).is_absolute() else d["src"],
                        dest=d["dest"], exclude=d["exclude"], into=d["into"], delete=d["delete"],
                        sudo=d["sudo"])
              for d in data["data"]],
        run=data["run"] if run_present else None,
        cluster=data.get("cluster") or None,
        envs=[EnvEntry(name=e["name"], source=str((base / e["source"]).resolve()), python=e["python"])
              for e in data.get("envs") or []],
    )


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((v for k, v in node.value if k.value == key), None)


def _local_path_nodes(root: yaml.Node) -> list[tuple[str, yaml.Node]]:
    """The scalar nodes that name local paths (data src, image build dirs, compose file, offline dir)."""
    found = []
    for i, entry in enumerate(getattr(_child(root, "data"), "value", None) or []):
        node = _child(entry, "src")
        if isinstance(node, yaml.ScalarNode):
            found.append((f"data[{i}].src", node))
    for i, entry in enumerate(getattr(_child(root, "envs"), "value", None) or []):
        node = _child(entry, "source")
        if isinstance(node, yaml.ScalarNode):
            found.append((f"envs[{i}].source", node))
    for i, entry in enumerate(getattr(_child(root, "images"), "value", None) or []):
        node = _child(entry, "build")
        if isinstance(node, yaml.ScalarNode) and node.value:
            found.append((f"images[{i}].build", node))
    for section, key in (("run", "compose"), ("setup", "offline")):
        node = _child(_child(root, section), key)
        if isinstance(node, yaml.ScalarNode) and node.value:
            found.append((f"{section}.{key}", node))
    return found


def load_playbook(path: str | Path) -> Playbook:
    """Read and validate a playbook file."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError as exc:
        raise PlaybookError(f"playbook {p} not found", hint="create one with `migrate init`") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise PlaybookError(f"cannot read playbook {p}: {exc}") from exc
    return parse_playbook(text, p)


def expand_sweep(command: str, sweep: dict[str, list[str]]) -> list[tuple[dict[str, str], str]]:
    """Grid expansion of `run.sweep` (the one expander, `migrate.jobs.spec.grid`): one (parameters,
    command) per combination, in a stable order; more than MAX_JOBS is refused before building any."""
    return list(grid(command, sweep, "run.sweep"))
