"""Click options shared by the dispatcher verbs."""

from __future__ import annotations

from typing import Any, Callable

import click

from migrate.agent.fields import JOB_FIELDS, JobField
from migrate.jobs.client import check_backend


def gpu_backend_option(default_help: str):
    """`--gpu-backend nvml|fake:PATH` (also $MIGRATE_GPU_BACKEND); the value is validated."""
    return click.option(
        "--gpu-backend", envvar="MIGRATE_GPU_BACKEND",
        callback=lambda ctx, param, value: check_backend(value),
        help=f"nvml, or fake:PATH: a FAKE test double for unit tests reading a JSON file on the host (the "
             f"sandbox's mock GPUs need no flag); default: {default_help}.")


def backend_args(spec: str | None) -> list[str]:
    """Agent arguments for a chosen backend (none: the host keeps what it uses)."""
    return ["--backend", spec] if spec else []


# What `migrate run` says about a job field where the table's doc line (written for files) is not enough.
_RUN_HELP = {
    "name": "Job name (sweeps add [k=v,...]; default job-<id>).",
    "cwd": "Working directory on the host (default ~); in a container: -w.",
    "env": "Environment variable KEY=VALUE (repeatable); a plain NAME runs the job in that push-env "
           "environment.",
    "python_env": "Run in ~/.migrate/envs/NAME, pushed with `migrate push-env` (same as --env NAME).",
    "gpus": "GPUs each job needs; 0 = CPU-only job.",
    "min_free_mem_mib": "Free GPU memory a GPU needs, e.g. 20g (default: any).",
    "allow_shared": "Admit onto GPUs other people use when --min-free-mem fits (default: only idle GPUs).",
    "gpu_pool": "Only these GPUs: indices or UUIDs, comma-separated.",
    "priority": "Higher starts first.",
    "retries": "Requeue a job that exits non-zero up to N times.",
    "image": "Run in this Docker image (container mode) instead of a host process; checked against Docker's "
             "reference grammar [registry[:port]/]path[:tag][@digest].",
    "mounts": "Bind mount (container mode).",
    "shm_size": "Container shared memory, e.g. 16g (default: --ipc=host).",
    "ports": "Publish a container port.",
    "sync_back": "Pull HOST_PATH into LOCAL_DIR when the jobs end (and every --every while they run) "
                 "whenever `migrate wait` runs.",
    "notify": "Post a short message here when the job ends (a sweep: when its last job ends), from the host: "
              "[FORMAT+]URL, e.g. https://ntfy.sh/TOPIC, slack+https://hooks.slack.com/... (docs/run.md).",
}
_RUN_METAVAR = {"notify": "URL", "sync_back": "HOST_PATH:LOCAL_DIR", "env": "KEY=VALUE|NAME", "python_env": "NAME",
                "min_free_mem_mib": "SIZE", "gpu_pool": "LIST", "mounts": "SRC:DST[:ro]",
                "ports": "[HOSTPORT:]PORT"}
_RUN_DEST = {"env": "env_items", "min_free_mem_mib": "min_free_mem"}  # the command's parameter names
_SHORT = {"env": "-e"}


def job_field_option(f: JobField) -> Callable[[Callable], Callable]:
    """The `migrate run` option of one job field, built from its row in the table (kind, range, default)."""
    decls = [_SHORT[f.name]] if f.name in _SHORT else []
    decls += [f.flag or "", _RUN_DEST.get(f.name, f.name)]
    kwargs: dict[str, Any] = {"help": _RUN_HELP.get(f.name, f.doc)}
    if f.name in _RUN_METAVAR:
        kwargs["metavar"] = _RUN_METAVAR[f.name]
    if f.kind == "bool":
        kwargs["is_flag"] = True
    elif f.kind == "int":
        kwargs.update(type=click.IntRange(f.lo, f.hi), default=f.default, show_default=True)
    elif f.kind in ("str_list", "str_map") and f.name != "gpu_pool":  # --gpu-pool takes one comma list
        kwargs["multiple"] = True
    return click.option(*decls, **kwargs)


def job_field_options(func: Callable) -> Callable:
    """Every job field that has a `run` flag, as click options, in the table's order."""
    for f in reversed(JOB_FIELDS):
        if f.flag:
            func = job_field_option(f)(func)
    return func


NOTIFY_FORMATS = ("ntfy", "slack", "feishu", "dingtalk")

notify_format_option = click.option(
    "--notify-format", type=click.Choice(NOTIFY_FORMATS), default=None,
    help="How --notify posts: ntfy (plain text body, Title header), slack ({\"text\": ...}), feishu, dingtalk; "
         "default: from a FORMAT+ prefix or the URL's host, else ntfy.")


def notify_target(url: str | None, fmt: str | None) -> str | None:
    """--notify URL with --notify-format as the one `[FORMAT+]URL` the agent stores; checked here first."""
    from migrate.agent.notify import check_target
    from migrate.errors import UsageError

    if url is None:
        if fmt:
            raise UsageError("--notify-format goes with --notify URL")
        return None
    target = f"{fmt}+{url}" if fmt else url
    problem = check_target(target)
    if problem:
        raise UsageError(f"--notify: {problem}", hint="e.g. --notify https://ntfy.sh/TOPIC, or slack+https://...")
    return target
