"""Job specs as data: what `migrate run`, `--jobs jobs.yaml`, `--sweep` and playbooks submit.

Everything here is pure: parsing sizes and sweeps, expanding a grid, reading a jobs file. The
result is a list of `JobSpec`, sent to the agent as JSON (`JobSpec.payload()`).
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from migrate.agent.fields import JOB_FIELDS, YAML_ALIASES, JobField
from migrate.agent.imageref import EXAMPLE as IMAGE_EXAMPLE
from migrate.agent.imageref import FORM as IMAGE_FORM
from migrate.agent.imageref import check_image_ref
from migrate.agent.validate import PYTHON_ENV_NAME, SpecError, validate_spec
from migrate.errors import UsageError
from migrate.jobs import sif
from migrate.jobs.limits import check_job_count, sweep_size
from migrate.units import MIB, parse_size
from migrate.yaml_depth import check_nesting

PYTHON_ENV_VAR = "MIGRATE_ENV"  # launch.ENV_VAR: the agent package cannot be imported piecemeal here
ENV_NAME = re.compile(PYTHON_ENV_NAME)  # a push-env name (`run --env NAME`)
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class JobSpec:
    """One job to queue on a host's dispatcher (the API `migrate apply` uses)."""

    command: str
    name: str | None = None
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    gpus: int = 1
    min_free_mem_mib: int | None = None
    priority: int = 0
    retries: int = 0
    image: str | None = None
    mounts: list[str] = field(default_factory=list)
    shm_size: str | None = None
    ports: list[str] = field(default_factory=list)
    key: str | None = None  # idempotency key: submitting an existing key returns that job ("existing")
    allow_shared: bool | None = None  # None: take DispatcherOptions.allow_shared
    gpu_pool: list[str] | None = None  # None: take DispatcherOptions.gpu_pool
    notify: str | None = None  # [FORMAT+]URL the host posts to when the job (or its sweep) ends; a secret
    sync_back: str | None = None  # HOST_PATH:LOCAL_DIR that `migrate wait` pulls (never sent to the host)
    python_env: str | None = None  # ~/.migrate/envs/NAME (push-env); travels to the agent as $MIGRATE_ENV

    def payload(self, options: DispatcherOptions | None = None) -> dict[str, Any]:
        """The JSON object the agent's `submit` expects."""
        options = options or DispatcherOptions()
        allow_shared = options.allow_shared if self.allow_shared is None else self.allow_shared
        pool = options.gpu_pool if self.gpu_pool is None else self.gpu_pool
        out: dict[str, Any] = {"command": self.command, "gpus": self.gpus, "priority": self.priority,
                               "retries": self.retries, "env": dict(self.env), "allow_shared": bool(allow_shared)}
        for key in ("name", "cwd", "min_free_mem_mib", "image", "shm_size", "key", "notify"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.mounts:
            out["mounts"] = list(self.mounts)
        if self.ports:
            out["ports"] = list(self.ports)
        if pool:
            out["gpu_pool"] = list(pool)
        if self.python_env:  # the agent activates it at launch (agent/launch.py); stored with the job's env
            out["env"][PYTHON_ENV_VAR] = self.python_env
        if sif.is_sif(self.image):  # a process job running `apptainer exec` (migrate/jobs/sif.py)
            out["command"] = sif.command(str(self.image), self.command, mounts=list(self.mounts), cwd=self.cwd)
            for key in ("image", "mounts", "cwd"):
                out.pop(key, None)
        return out


JOB_DEFAULTS = {f.name: f.default for f in fields(JobSpec) if f.default is not MISSING}


@dataclass
class SubmittedJob:
    """What the dispatcher answered for one submitted job."""

    id: int
    key: str | None
    name: str
    status: str  # "queued" | "existing"


@dataclass
class DispatcherOptions:
    """Settings for a submission that are not per job."""

    gpu_backend: str | None = None  # "nvml" or "fake:PATH" (test double); None: what the host uses now
    gpu_pool: list[str] | None = None  # default pool for jobs that set none
    allow_shared: bool = False  # default for jobs that do not say
    enable_linger: bool = False  # sudo loginctl enable-linger USER, so the dispatcher survives logout
    cpu_slots: int | None = None  # how many CPU-only jobs may run at once (host setting)
    mode: str = "auto"  # how the dispatcher starts: auto | systemd | setsid


def check_image(ref: str) -> str:
    """A Docker image reference, checked against Docker's grammar before anything is queued (a `.sif`
    path is an apptainer image: migrate/jobs/sif.py)."""
    if sif.is_sif(ref):
        return ref
    problem = check_image_ref(ref)
    if problem:
        raise UsageError(problem, hint=f"an image is {IMAGE_FORM}, {IMAGE_EXAMPLE}")
    return ref


def check_specs(jobs: list[JobSpec], first: int = 0) -> None:
    """The one job validator (`migrate.agent.validate`, driven by the job field table) on every job this
    machine makes, before it goes to a host or a cluster: `run`, jobs.yaml, playbooks, the Python API.
    What only the host knows (a process job's cwd, a mount's source) is checked there. `first`: the
    number of the first job, for the messages ("job 3: ...")."""
    for n, job in enumerate(jobs, first):
        values = {f.name: getattr(job, f.name) for f in JOB_FIELDS}
        if sif.is_sif(job.image):  # a process job running apptainer (migrate/jobs/sif.py), not Docker's
            if job.ports or job.shm_size:
                raise UsageError("--publish and --shm-size are for Docker images; a SIF job shares the host's "
                                 "network and /dev/shm", hint="drop them for a .sif image")
            values.update(image=None, mounts=[], cwd=None)
        try:
            validate_spec(values, n, on_host=False)
        except SpecError as exc:
            raise UsageError(exc.message, hint=exc.hint or None) from None


def parse_size_mib(text: str | int | None, what: str = "--min-free-mem") -> int | None:
    """'16g', '16GiB', '500M', '2048' (MiB) -> MiB (the grammar of `migrate.units`, plain numbers in MiB)."""
    if text is None:
        return None
    return parse_size(text, what=what, plain=MIB) // MIB


def parse_sweeps(items: tuple[str, ...] | list[str]) -> dict[str, list[str]]:
    """`lr=1e-3,1e-4` (repeatable) -> {'lr': ['1e-3', '1e-4']}."""
    sweep: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise UsageError(f"bad --sweep {item!r}", hint="use --sweep NAME=v1,v2 (NAME: letters, digits, _)")
        if name in sweep:
            raise UsageError(f"--sweep {name} given twice", hint="list all its values in one --sweep")
        vals = [v.strip() for v in values.split(",")]
        if not vals or any(v == "" for v in vals):
            raise UsageError(f"--sweep {name} has an empty value", hint="use --sweep NAME=v1,v2")
        sweep[name] = vals
    return sweep


def fill_placeholders(command: str, params: dict[str, str]) -> str:
    """Replace `{name}` by params[name]; unknown placeholders (and shell braces) stay as they are."""
    return PLACEHOLDER.sub(lambda m: str(params.get(m.group(1), m.group(0))), command)


def _params_text(params: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


def grid(command: str, sweep: dict[str, list[str]] | None, what: str = "that", *,
         fixed: dict[str, str] | None = None) -> Iterator[tuple[dict[str, str], str]]:
    """The one sweep expander (`run --sweep`, jobs.yaml, playbooks): (parameters, command with each
    `{name}` filled, `fixed` values too) per combination, in a stable order. The grid is counted
    first and refused above MAX_JOBS before any of it is built."""
    sweep = sweep or {}
    check_job_count(sweep_size(sweep), what)
    names = list(sweep)
    for combo in itertools.product(*(sweep[n] for n in names)):
        params = dict(zip(names, combo))
        yield params, fill_placeholders(command, {**params, **(fixed or {})})


def expand(base: JobSpec, sweep: dict[str, list[str]] | None = None, *,
           experiments: list[str] | None = None) -> list[JobSpec]:
    """The grid: one job per sweep combination (and per experiment), placeholders filled.

    `{name}` is replaced by the sweep value; `{experiment}` by the experiment name (also given to the
    job as $MIGRATE_EXPERIMENT). Job names are
    `<name>[lr=1e-3,seed=0]` (name: --name, else the experiment, else 'job'). A key, when given,
    gets the same suffix so each job of the grid stays unique.
    """
    sweep = sweep or {}
    for name in sweep:
        if "{" + name + "}" not in base.command:
            raise UsageError(f"--sweep {name}: the command does not use {{{name}}}",
                             hint=f"put {{{name}}} where the value goes, e.g. --{name} {{{name}}}")
    exps: list[str | None] = list(experiments) if experiments else [None]
    check_job_count(sweep_size(sweep, len(exps)))  # counted from the grid: nothing built yet
    jobs = []
    for exp in exps:
        for params, filled in grid(base.command, sweep, fixed=None if exp is None else {"experiment": exp}):
            prefix = base.name or exp or ("job" if params else None)
            name = f"{prefix}[{_params_text(params)}]" if params else prefix
            if exp is not None and base.name:
                name = f"{base.name}-{exp}" + (f"[{_params_text(params)}]" if params else "")
            key = base.key
            if key and (params or exp is not None):
                key = f"{key}:{exp or ''}:{_params_text(params)}"
            env = dict(base.env)
            if exp is not None:
                env["MIGRATE_EXPERIMENT"] = exp
            jobs.append(JobSpec(**{**{f.name: getattr(base, f.name) for f in fields(base)},
                                   "command": filled, "name": name, "key": key, "env": env,
                                   "mounts": list(base.mounts), "ports": list(base.ports)}))
    return jobs


# -- jobs.yaml ----------------------------------------------------------------------------------
YAML_TYPES: dict[str, Any] = {"str": str, "int": int, "bool": bool, "size": (int, str), "str_list": list,
                              "str_map": dict}
YAML_FIELDS = {f.yaml: f for f in JOB_FIELDS if f.yaml}  # jobs.yaml key -> its field
JOB_FILE_KEYS = {**{k: YAML_TYPES[f.kind] for k, f in YAML_FIELDS.items()}, "sweep": dict}
FIELD_TYPES = {"str": "string", "int": "integer", "bool": "true/false", "size": "size (`20g`; playbooks: MiB)",
               "str_list": "list of strings", "str_map": "map of string to string"}
FIELDS_BEGIN = ("<!-- job fields: generated from migrate/agent/fields.py by job_fields_markdown();"
                " a test keeps it in sync -->")
FIELDS_END = "<!-- end of job fields -->"


def job_fields_markdown() -> str:
    """The table of job fields in docs/run.md (between FIELDS_BEGIN and FIELDS_END)."""
    lines = [FIELDS_BEGIN, "",
             "| field | type | `run` flag | jobs.yaml | playbook `run:` | the agent checks | meaning |",
             "|---|---|---|---|---|---|---|"]
    for f in JOB_FIELDS:
        cells = [f"`{f.name}`", FIELD_TYPES[f.kind], f"`{f.flag}`" if f.flag else "`-- CMD`",
                 f"`{f.yaml}`" if f.yaml else "", f"`{f.playbook}`" if f.playbook else "", f.check_text(), f.doc]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join([*lines, "", FIELDS_END])


TYPE_NAMES = {str: "a string", int: "an integer", dict: "a mapping", list: "a list", bool: "true/false"}


def _line_index(text: str) -> dict[tuple, int]:
    """(path...) -> 1-based line of that key or item, for error messages."""
    import yaml

    lines: dict[tuple, int] = {}

    def walk(node: Any, path: tuple) -> None:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, i))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def load_jobs_file(path: str | Path) -> list[JobSpec]:
    """Read a jobs file (YAML): a list of jobs, or {defaults: {...}, jobs: [...]}; sweeps expanded."""
    import yaml

    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read jobs file {p}: {getattr(exc, 'strerror', None) or exc}") from exc
    check_nesting(text, str(p))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise UsageError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    lines = _line_index(text)

    def err(path: tuple, message: str, hint: str | None = None) -> UsageError:
        line = lines.get(path)
        return UsageError(f"{p}{':' + str(line) if line else ''}: {message}", hint=hint)

    defaults: dict[str, Any] = {}
    base_path: tuple = ()
    if isinstance(data, dict):
        unknown = set(data) - {"defaults", "jobs"}
        if unknown:
            raise err((sorted(unknown)[0],), f"unknown top-level key {sorted(unknown)[0]!r}",
                      hint="a jobs file has `jobs:` (a list) and optional `defaults:`")
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise err(("defaults",), "defaults must be a mapping")
        defaults = _canonical_spellings(defaults, ("defaults",), err)
        _check_fields(defaults, ("defaults",), err, need_command=False)
        data = data.get("jobs")
        base_path = ("jobs",)
    if not isinstance(data, list) or not data:
        raise err(base_path, "expected a non-empty list of jobs", hint="see docs/run.md for the jobs file format")
    specs: list[JobSpec] = []
    for i, item in enumerate(data):
        path = (*base_path, i)
        if isinstance(item, str):
            item = {"command": item}
        if not isinstance(item, dict):
            raise err(path, f"job {i + 1} must be a mapping or a command string")
        item = _canonical_spellings(item, path, err)
        merged = {**defaults, **item}
        if "env" in defaults and "env" in item:
            merged["env"] = {**defaults["env"], **item["env"]}
        _check_fields(merged, path, err, need_command=True)
        sweep = {str(k): [str(v) for v in (vals if isinstance(vals, list) else [vals])]
                 for k, vals in (merged.pop("sweep", None) or {}).items()}
        try:
            base = JobSpec(**{f.name: _yaml_value(f, merged) for f in YAML_FIELDS.values()})
            check_specs([base], i)
            check_job_count(len(specs) + sweep_size(sweep), "the file so far")
            specs.extend(expand(base, sweep))
        except UsageError as exc:
            raise err(path, exc.message, exc.hint) from exc
    return specs


def _canonical_spellings(job: dict, path: tuple, err: Any) -> dict:
    """The job with a playbook spelling (`workdir`, `gpus_per_job`) renamed to jobs.yaml's; both is an error."""
    out = dict(job)
    for other, key in YAML_ALIASES.items():
        if other in out:
            if key in out:
                raise err((*path, other), f"give {key!r} or {other!r}, not both", hint="they are the same field")
            out[key] = out.pop(other)
    return out


def _yaml_value(f: JobField, job: dict[str, Any]) -> Any:
    """The JobSpec value of field `f` from a checked jobs.yaml job (its default when absent)."""
    value = job.get(f.yaml)
    if f.kind == "size":
        return parse_size_mib(value, f.yaml or f.name)
    if f.kind == "str_list":
        return [str(x) for x in value or []] or JOB_DEFAULTS.get(f.name, [])  # gpu_pool: None when empty
    if f.kind == "str_map":
        return {str(k): str(v) for k, v in (value or {}).items()}
    return job.get(f.yaml, JOB_DEFAULTS.get(f.name))  # command has no default: checked present


def _check_fields(job: dict, path: tuple, err: Any, *, need_command: bool) -> None:
    for key, value in job.items():
        if key not in JOB_FILE_KEYS:
            close = difflib.get_close_matches(str(key), JOB_FILE_KEYS, n=1)
            raise err((*path, str(key)), f"unknown key {key!r}",
                      hint=f"did you mean {close[0]!r}?" if close else "see docs/run.md for the keys")
        if key == "image" and isinstance(value, str):
            problem = check_image_ref(value)
            if problem:
                raise err((*path, "image"), problem, hint=f"an image is {IMAGE_FORM}, {IMAGE_EXAMPLE}")
        want = JOB_FILE_KEYS[key]
        types = want if isinstance(want, tuple) else (want,)
        if value is None:
            continue
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join(TYPE_NAMES[t] for t in types)
            raise err((*path, str(key)), f"{key} must be {names}, not {type(value).__name__}")
    if need_command and not str(job.get("command") or "").strip():
        raise err(path, "a job needs a command")
