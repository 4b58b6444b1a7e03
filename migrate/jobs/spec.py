"""Job specs as data: what `migrate run`, `--jobs jobs.yaml`, `--sweep` and playbooks submit.

Everything here is pure: parsing sizes and sweeps, expanding a grid, reading a jobs file. The
result is a list of `JobSpec`, sent to the agent as JSON (`JobSpec.payload()`).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from migrate.agent.fields import JOB_FIELDS, YAML_ALIASES, JobField
from migrate.agent.imageref import EXAMPLE as IMAGE_EXAMPLE
from migrate.agent.imageref import FORM as IMAGE_FORM
from migrate.agent.imageref import check_image_ref
from migrate.agent.validate import PYTHON_ENV_NAME, SpecError, validate_spec
from migrate.errors import UsageError
from migrate.jobs import sif
from migrate.jobs.limits import check_job_count, sweep_size
from migrate.units import MIB, parse_size
from migrate.yamlfile import Key, Validator, child, compose, key_node

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


def spec_problem(job: JobSpec, n: int = 0) -> SpecError | None:
    """What the one job validator (`migrate.agent.validate`, driven by the job field table) refuses in a
    job made on this machine, or None. What only the host knows (a process job's cwd, a mount's source)
    is checked there."""
    values = {f.name: getattr(job, f.name) for f in JOB_FIELDS}
    if sif.is_sif(job.image):  # a process job running apptainer (migrate/jobs/sif.py), not Docker's
        if job.ports or job.shm_size:
            return SpecError("--publish and --shm-size are for Docker images; a SIF job shares the host's "
                             "network and /dev/shm", "drop them for a .sif image",
                             field="ports" if job.ports else "shm_size")
        values.update(image=None, mounts=[], cwd=None)
    try:
        validate_spec(values, n, on_host=False)
    except SpecError as exc:
        return exc
    return None


def check_specs(jobs: list[JobSpec]) -> None:
    """The one job validator on every job this machine makes, before it goes to a host or a cluster:
    `run`, jobs.yaml, playbooks, the Python API (UsageError: "job 2: ...")."""
    for n, job in enumerate(jobs):
        problem = spec_problem(job, n)
        if problem:
            raise UsageError(problem.message, hint=problem.hint or None)


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
            job_name = f"{prefix}[{_params_text(params)}]" if params else prefix
            if exp is not None and base.name:
                job_name = f"{base.name}-{exp}" + (f"[{_params_text(params)}]" if params else "")
            key = base.key
            if key and (params or exp is not None):
                key = f"{key}:{exp or ''}:{_params_text(params)}"
            env = dict(base.env)
            if exp is not None:
                env["MIGRATE_EXPERIMENT"] = exp
            jobs.append(JobSpec(**{**{f.name: getattr(base, f.name) for f in fields(base)},
                                   "command": filled, "name": job_name, "key": key, "env": env,
                                   "mounts": list(base.mounts), "ports": list(base.ports)}))
    return jobs


# -- jobs.yaml ----------------------------------------------------------------------------------
YAML_FIELDS = {f.yaml: f for f in JOB_FIELDS if f.yaml}  # jobs.yaml key -> its field
# jobs.yaml's keys for the one YAML validator (migrate.yamlfile): each job field in jobs.yaml's spelling
# (the playbook's accepted too), and `sweep`
JOB_KEYS = (*(Key(k, f.kind, f.doc, aliases=tuple(a for a, y in YAML_ALIASES.items() if y == k), lo=f.lo, hi=f.hi)
              for k, f in YAML_FIELDS.items()),
            Key("sweep", "sweep", "Grid of parameters: one job per combination."))
JOB_FILE_KEYS = {k.name: k for k in JOB_KEYS}
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


def load_jobs_file(path: str | Path) -> list[JobSpec]:
    """Read a jobs file (YAML): a list of jobs, or {defaults: {...}, jobs: [...]}; sweeps expanded. Read and
    checked by the one line-aware YAML validator (migrate.yamlfile), then by the one job validator."""
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read jobs file {p}: {getattr(exc, 'strerror', None) or exc}") from exc
    root = compose(text, str(p))
    v = Validator(str(p))

    def err(node: Any, message: str, hint: str | None = None) -> UsageError:
        return UsageError(f"{p}{':' + str(node.start_mark.line + 1) if node is not None else ''}: {message}",
                          hint=hint)

    defaults: dict[str, Any] = {}
    items = root
    if isinstance(root, yaml.MappingNode):
        for knode, _ in root.value:
            if knode.value not in ("defaults", "jobs"):
                raise err(knode, f"unknown top-level key {knode.value!r}",
                          hint="a jobs file has `jobs:` (a list) and optional `defaults:`")
        node = child(root, "defaults")
        if node is not None and not node.tag.endswith(":null"):
            defaults = v.mapping(node, JOB_KEYS, "defaults", fill=False)
        items = child(root, "jobs")
    if not isinstance(items, yaml.SequenceNode) or not items.value:
        raise err(items if items is not None else root, "expected a non-empty list of jobs",
                  hint="see docs/run.md for the jobs file format")
    jobs = []
    for i, node in enumerate(items.value):
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":str"):
            jobs.append((node, {"command": node.value}))
        elif isinstance(node, yaml.MappingNode):
            jobs.append((node, v.mapping(node, JOB_KEYS, "", fill=False)))
        else:
            v.err(node, f"job {i + 1} must be a mapping or a command string")
    if v.errors:
        raise UsageError("; ".join(v.errors) if len(v.errors) < 2 else f"{len(v.errors)} problems: "
                         + "; ".join(v.errors), hint="see docs/run.md for the keys")
    specs: list[JobSpec] = []
    for i, (node, item) in enumerate(jobs):
        merged = {**defaults, **item}
        if "env" in defaults and "env" in item:
            merged["env"] = {**defaults["env"], **item["env"]}
        if not str(merged.get("command") or "").strip():
            raise err(node, "a job needs a command")
        sweep = merged.pop("sweep", None) or {}
        try:
            base = JobSpec(**{f.name: _yaml_value(f, merged) for f in YAML_FIELDS.values()})
            problem = spec_problem(base, i)
            if problem:
                raise err(_field_node(node, problem.field), problem.detail, problem.hint or None)
            check_job_count(len(specs) + sweep_size(sweep), "the file so far")
            specs.extend(expand(base, sweep))
        except UsageError as exc:
            if exc.message.startswith(f"{p}:"):
                raise
            raise err(node, exc.message, exc.hint) from exc
    return specs


def _field_node(job: yaml.Node, field: str) -> yaml.Node:
    """Where a field of a job stands in the file: its key's line when the job gives it, else the job's."""
    f = next((f for f in JOB_FIELDS if f.name == field), None)
    names = [f.yaml, *(a for a, y in YAML_ALIASES.items() if y == f.yaml)] if f and f.yaml else []
    return next((k for n in names if (k := key_node(job, n)) is not None), job)


def _yaml_value(f: JobField, job: dict[str, Any]) -> Any:
    """The JobSpec value of field `f` from a checked jobs.yaml job (its default when absent)."""
    assert f.yaml is not None  # only YAML_FIELDS come here: the fields that have a jobs.yaml key
    value = job.get(f.yaml)
    if f.kind == "size":
        return parse_size_mib(value, f.yaml or f.name)
    if f.kind == "str_list":
        return [str(x) for x in value or []] or JOB_DEFAULTS.get(f.name, [])  # gpu_pool: None when empty
    if f.kind == "str_map":
        return {str(k): str(v) for k, v in (value or {}).items()}
    return job.get(f.yaml, JOB_DEFAULTS.get(f.name))  # command has no default: checked present
