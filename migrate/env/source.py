"""What a push-env SOURCE is, read here before anything is resolved (pure, except reading files)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from migrate.errors import UsageError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KINDS = ("requirements", "pyproject", "uv.lock", "venv", "conda", "environment.yml")


@dataclass(frozen=True)
class Source:
    """One environment to push: its kind, the file or directory, and what it asks of Python."""

    kind: str                 # one of KINDS
    path: Path                # the file (requirements.txt, pyproject.toml) or the environment's directory
    requires_python: str = ""  # a PEP 440 specifier ("" = any)

    def describe(self) -> str:
        return f"{self.kind} {self.path}"


def check_name(name: str) -> str:
    if not NAME.match(name) or name in (".", ".."):
        raise UsageError(f"bad environment name {name!r}",
                         hint="letters, digits, '.', '_' and '-', at most 64 characters, e.g. --name torch")
    return name


def default_name(src: Source) -> str:
    """The directory the source lives in (a venv named .venv takes its project's name)."""
    base = src.path if src.kind in ("venv", "conda") else src.path.parent
    base = base.resolve()
    if base.name in (".venv", "venv", "env") and base.parent.name:
        base = base.parent
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", base.name).lstrip(".-_") or "env"
    return name[:64]


def read_source(text: str) -> Source:
    """A SOURCE argument: a requirements file, a pyproject.toml (or its directory), an environment.yml."""
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "pyproject.toml").is_file():
            path = path / "pyproject.toml"
        elif (path / "conda-meta").is_dir():
            return Source("conda", path)
        elif (path / "pyvenv.cfg").is_file():
            return Source("venv", path)
        else:
            raise UsageError(f"{text} has no pyproject.toml", hint="give a requirements.txt or a pyproject.toml")
    if not path.is_file():
        raise UsageError(f"{text} does not exist", hint="SOURCE is a requirements.txt, a pyproject.toml, "
                                                        "or --from-current for the active environment")
    if path.name == "pyproject.toml":
        req = requires_python(path.read_text())
        kind = "uv.lock" if (path.parent / "uv.lock").is_file() else "pyproject"
        return Source(kind, path, req)
    if path.suffix in (".yml", ".yaml"):
        return Source("environment.yml", path)
    return Source("requirements", path)


def current_source(environ: dict[str, str] | None = None) -> Source:
    """--from-current: the venv ($VIRTUAL_ENV) or conda env ($CONDA_PREFIX) active in this shell."""
    env = os.environ if environ is None else environ
    if env.get("VIRTUAL_ENV"):
        path = Path(env["VIRTUAL_ENV"])
        if not (path / "pyvenv.cfg").is_file():
            raise UsageError(f"$VIRTUAL_ENV ({path}) is not a venv (no pyvenv.cfg)")
        return Source("venv", path)
    if env.get("CONDA_PREFIX"):
        return Source("conda", Path(env["CONDA_PREFIX"]))
    raise UsageError("no environment is active here ($VIRTUAL_ENV and $CONDA_PREFIX are unset)",
                     hint="activate it first (source .venv/bin/activate), or give a requirements.txt")


def requires_python(pyproject_text: str) -> str:
    """`[project] requires-python` of a pyproject.toml (a line match: tomllib is python >= 3.11 only)."""
    m = re.search(r"""^\s*requires-python\s*=\s*["']([^"']*)["']""", pyproject_text, re.M)
    return m.group(1).strip() if m else ""


# -- requires-python, without a dependency: the operators PEP 440 specifiers use in practice --------
def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def python_fits(version: str, spec: str) -> bool:
    """Does python `version` ("3.11") satisfy a requires-python specifier (">=3.10,<3.13")?"""
    have = _version(version)
    for clause in (c.strip() for c in spec.split(",") if c.strip()):
        m = re.match(r"^(~=|==|!=|>=|<=|>|<)\s*([0-9][0-9.*]*)$", clause)
        if not m:
            continue  # an unusual clause: uv's resolution decides
        op, raw = m.groups()
        want = _version(raw)
        n = len(want)
        cut = have[:n] + (0,) * max(0, n - len(have))
        ok = {">=": have >= want, ">": cut > want, "<": cut < want, "<=": cut <= want,
              "==": cut == want if "*" not in raw else have[:n] == want,
              "!=": cut != want if "*" not in raw else have[:n] != want,
              "~=": have >= want and have[:n - 1] == want[:n - 1]}[op]
        if not ok:
            return False
    return True
