"""The one validator of a job spec, driven by the job field table (fields.py).

Called by the agent's `submit` (on the host, `on_host=True`: a process job's cwd and a mount's source
must exist there) and, through `migrate.jobs.spec.check_specs`, by everything on this machine that
makes jobs: `migrate run` (hosts and clusters), jobs.yaml, playbooks and the Python API
(`on_host=False`: what only the host can know is left to the host). Each field's type (its `kind`)
and integer range come from the table; the checks below add what a field's `check` column says.
Stdlib only (it ships in the agent's zipapp).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, cast

from .fields import JOB_FIELDS, SPEC_KEYS, JobField

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
PYTHON_ENV_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # ~/.migrate/envs/NAME (push-env)
SHM_SIZE = r"^[0-9]+[bkmgBKMG]?$"
PORT_MAPPING = r"^(?:[0-9.]+:)?(?:[0-9]+:)?[0-9]+(?:/(?:tcp|udp))?$"
KIND_TYPES = {"str": (str,), "int": (int,), "size": (int,), "bool": (bool,), "str_list": (list,),
              "str_map": (dict,)}
KIND_WORDS = {"str": "a string", "int": "an integer", "size": "an integer", "bool": "true or false",
              "str_list": "a list", "str_map": "a mapping"}


class SpecError(Exception):
    """A job spec is refused: `message` ("job 2: bad shm size ..."), `detail` (the same without the job),
    the `field` it is about ("" for the spec as a whole) and a hint."""

    def __init__(self, detail: str, hint: str = "", *, field: str = "", where: str = "") -> None:
        self.detail = detail
        self.message = f"{where}: {detail}" if where else detail
        super().__init__(self.message)
        self.hint = hint
        self.field = field


def validate_spec(spec: Any, n: int, *, on_host: bool = True) -> dict:
    """Check and normalise one job spec (the agent's JSON); raise SpecError saying what is wrong."""
    where = f"job {n + 1}"
    if not isinstance(spec, dict):
        raise SpecError("expected an object", where=where)
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise SpecError("unknown field(s) " + ", ".join(sorted(unknown)), where=where)
    name = spec.get("name")
    if isinstance(name, str) and "\n" not in name and len(name) <= 200:
        where = f"job {name!r}"
    out: dict = {}
    for f in JOB_FIELDS:
        check = CHECKS.get(f.name)
        value = spec.get(f.name)
        try:
            _check_kind(f, value)
            out[f.name] = check(value, spec, on_host) if check else value
        except SpecError as exc:
            raise SpecError(exc.detail, exc.hint, field=f.name, where=where) from None
    for f in JOB_FIELDS:  # the fields a job never stores
        if f.name in ("python_env", "sync_back"):
            out.pop(f.name)
    return out


def _check_kind(f: JobField, value: Any) -> None:
    """The field's type and, for integers, its range (from the table)."""
    if value is None:
        return
    types = KIND_TYPES[f.kind]
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        if f.lo is not None:
            raise SpecError(f"{f.name} must be an integer from {f.lo} to {f.hi}, not {value!r}")
        raise SpecError(f"{f.name} must be {KIND_WORDS[f.kind]}, not {type(value).__name__}")
    lo, hi = f.lo, f.hi
    if lo is not None and hi is not None and not lo <= cast(int, value) <= hi:   # an int by now
        raise SpecError(f"{f.name} must be an integer from {lo} to {hi}, not {value!r}")


def _integer(f: JobField) -> Callable[..., Any]:
    return lambda value, spec, on_host: f.default if value is None else value


def _command(value: Any, spec: dict, on_host: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SpecError("empty command", "give the command after --")
    return value


def _name(value: Any, spec: dict, on_host: bool) -> Any:
    if value is not None and ("\n" in value or len(value) > 200):
        raise SpecError(f"bad name {value!r}")
    return value


def _allow_shared(value: Any, spec: dict, on_host: bool) -> bool:
    if value and spec.get("min_free_mem_mib") is None:
        raise SpecError("--allow-shared needs --min-free-mem",
                        "say how much free GPU memory the job needs on a GPU others are using")
    return bool(value)


def _image(value: Any, spec: dict, on_host: bool) -> Any:
    if value is not None:
        from .imageref import EXAMPLE, FORM, check_image_ref

        problem = check_image_ref(value)
        if problem:
            raise SpecError(f"{problem}", f"an image is {FORM}, {EXAMPLE}")
    return value or None


def _env(value: Any, spec: dict, on_host: bool) -> dict:
    from .launch import RESERVED_ENV

    for k, v in (value or {}).items():
        if not isinstance(k, str) or not re.match(ENV_NAME, k):
            raise SpecError(f"invalid environment variable name {k!r}")
        if k in RESERVED_ENV:
            raise SpecError(f"{k} is set by the dispatcher",
                            "choose GPUs with --gpus-per-job and --gpu-pool instead")
        if not isinstance(v, str):
            raise SpecError(f"value of {k} must be a string")
        if spec.get("image") and "\n" in v:
            raise SpecError(f"{k} contains a newline (not possible for container jobs)")
    return dict(value or {})


def _cwd(value: Any, spec: dict, on_host: bool) -> Any:
    image = spec.get("image")
    if value is not None and not value.strip():
        raise SpecError(f"bad working directory {value!r}")
    if value and image and not value.startswith("/"):
        raise SpecError(f"the working directory in a container must be absolute, not {value!r}")
    if value and not image and on_host:
        path = os.path.expanduser(value)
        if not os.path.isdir(path):
            raise SpecError(f"working directory {value} does not exist on this host",
                            "create it first (push-data), or pass an existing --cwd")
        return os.path.abspath(path)
    return value


def _mounts(value: Any, spec: dict, on_host: bool) -> list:
    if value and not spec.get("image"):
        raise SpecError("mounts need a container image (--image)")
    out = []
    for m in value or []:
        if not isinstance(m, str) or ":" not in m:
            raise SpecError(f"bad mount {m!r}", "use HOST_PATH:CONTAINER_PATH[:ro]")
        src, _, rest = m.partition(":")
        if not on_host:  # `~/...` is the node's home: expanded there
            if not (src.startswith("/") or src.startswith("~/")):
                raise SpecError(f"mount source {src!r} must be an absolute path (or ~/...)",
                                "use HOST_PATH:CONTAINER_PATH[:ro]")
            out.append(m)
            continue
        src = os.path.expanduser(src)
        if not src.startswith("/"):
            raise SpecError(f"mount source {src!r} must be an absolute path")
        if not os.path.exists(src):
            raise SpecError(f"mount source {src} does not exist on this host",
                            "Docker would create it as an empty root-owned directory")
        out.append(src + ":" + rest)
    return out


def _shm_size(value: Any, spec: dict, on_host: bool) -> Any:
    if value is not None and not re.match(SHM_SIZE, value):
        raise SpecError(f"bad shm size {value!r}", "e.g. 16g")
    if value is not None and not spec.get("image"):
        raise SpecError("--shm-size needs a container image (--image)")
    return value


def _ports(value: Any, spec: dict, on_host: bool) -> list:
    for p in value or []:
        if not isinstance(p, str) or not re.match(PORT_MAPPING, p):
            raise SpecError(f"bad port mapping {p!r}", "e.g. 6006 or 16006:6006")
    if value and not spec.get("image"):
        raise SpecError("port mappings need a container image (--image)")
    return list(value or [])


def _gpu_pool(value: Any, spec: dict, on_host: bool) -> Any:
    if value is not None and not all(isinstance(x, str) and x for x in value):
        raise SpecError("gpu_pool must be a list of GPU indices or UUIDs")
    return value or None


def _key(value: Any, spec: dict, on_host: bool) -> Any:
    if value is not None and (not value or len(value) > 1000):
        raise SpecError(f"bad key {value!r}")
    return value


def _notify(value: Any, spec: dict, on_host: bool) -> Any:
    if value is not None:
        from .notify import check_target

        problem = check_target(value)
        if problem:
            raise SpecError(f"{problem}", "e.g. --notify https://ntfy.sh/TOPIC or slack+https://...")
    return value


def _sync_back(value: Any, spec: dict, on_host: bool) -> Any:
    """Pulled by the client (`migrate wait`); only the form is checked."""
    if value is not None and ":" not in value:
        raise SpecError(f"bad sync_back {value!r}", "HOST_PATH:LOCAL_DIR")
    return value


def _python_env(value: Any, spec: dict, on_host: bool) -> Any:
    """A push-env name; the client sends it to the host as $MIGRATE_ENV (jobs/spec.py)."""
    if value is not None:
        if not re.match(PYTHON_ENV_NAME, value):
            raise SpecError(f"bad environment name {value!r}",
                            "the NAME given to `migrate push-env --name NAME`")
        if spec.get("image"):
            raise SpecError("a pushed Python environment is for process jobs, not --image jobs",
                            "install the packages in the image instead")
    return value


CHECKS: dict[str, Callable[..., Any]] = {
    "command": _command, "name": _name, "image": _image, "cwd": _cwd, "mounts": _mounts, "shm_size": _shm_size,
    "ports": _ports, "env": _env, "python_env": _python_env, "allow_shared": _allow_shared,
    "gpu_pool": _gpu_pool, "key": _key, "notify": _notify, "sync_back": _sync_back,
    **{f.name: _integer(f) for f in JOB_FIELDS if f.lo is not None},
}
