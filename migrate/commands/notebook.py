"""`migrate notebook HOST [--env NAME | --image IMAGE]`: JupyterLab as a job, forwarded here (issue 22)."""

from __future__ import annotations

import sys
from typing import Any, Callable

import click

from migrate.agent.fields import JOB_FIELDS
from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.completion import complete_host
from migrate.errors import UsageError
from migrate.jobs import notebook as nb
from migrate.jobs.client import check_job_refs
from migrate.jobs.options import job_field_option
from migrate.jobs.spec import DispatcherOptions, check_specs
from migrate.jobs.submit import build_specs, parse_pool, split_env
from migrate.jobs.target import job_target
from migrate.jobs.tunnel import parse_forward
from migrate.remote.hosts import ConnectOptions
from migrate.units import parse_duration

NOT_HERE = ("notify", "sync_back", "ports")  # job fields of `run` a notebook does not take


def notebook_field_options(func: Callable) -> Callable:
    """`run`'s job field options (--env, --image, --gpus-per-job, ...) but those a notebook has no use for."""
    for f in reversed(JOB_FIELDS):
        if f.flag and f.name not in NOT_HERE:
            func = job_field_option(f)(func)
    return func


@click.command("notebook", context_settings=CONTEXT_SETTINGS)
@click.argument("host", shell_complete=complete_host)
@connection_options
@notebook_field_options  # --env NAME, --image, --gpus-per-job, --min-free-mem, --cwd, ...: as for `migrate run`
@click.option("--attach", metavar="JOB", help="Reconnect to a notebook job started before (its id or name).")
@click.option("--local-port", metavar="PORT", help="Local port to forward (default: a free one).")
@click.option("--bind", default="127.0.0.1", show_default=True, help="Local address to listen on.")
@click.option("--timeout", default="5m", show_default=True, metavar="DURATION",
              help="How long to wait for Jupyter to listen (a queued job keeps its place after that).")
@click.option("--open", "open_browser", is_flag=True, help="Open the URL in a browser here.")
@click.option("-n", "--dry-run", is_flag=True, help="Show the job and the forward; connect to nothing.")
@click.option("--json", "as_json", is_flag=True,
              help="Print {host, job, url, local_port, remote_port} as one line once it answers.")
def command(host: str, conn: ConnectOptions, attach: str | None, local_port: str | None, bind: str,
            timeout: str, open_browser: bool, dry_run: bool, as_json: bool, **fields: Any) -> None:
    """Start JupyterLab on HOST as a job, forward its port here, print its URL.

    \b
    Examples:
      migrate push-env gpu1 --name nb requirements.txt  # with jupyterlab
      migrate notebook gpu1 --env nb --open
      migrate notebook gpu1 --image mylab/torch:2.3 --gpus-per-job 1
      migrate notebook gpu1 --attach 12     # reconnect after Ctrl-C
      migrate cancel gpu1 12                # end the notebook

    The job waits for free GPUs like any job (--gpus-per-job 0: none). Jupyter listens on the
    host's 127.0.0.1 only, at a free port; its URL and token are read from the job's log and the
    port is forwarded over SSH with the host's settings. Ctrl-C stops the forward, not Jupyter.
    """
    job_target(host, conn).require_one_host("a notebook runs on one host")
    local = parse_forward(local_port).local if local_port else None
    limit = parse_duration(timeout, what="--timeout")
    if attach is not None:
        check_job_refs([attach])
        spec = None
    else:
        spec = notebook_job(fields)
    options = DispatcherOptions(allow_shared=bool(fields.get("allow_shared")),
                                gpu_pool=parse_pool(fields.get("gpu_pool")))
    if dry_run:
        if spec is None:
            raise UsageError("--dry-run shows a new notebook job", hint="leave out --attach")
        nb.show_dry_run(host, spec, options, local=local, bind=bind, as_json=as_json)
        return
    sys.exit(nb.run_notebook(host, conn, spec, options, attach=attach, local=local, bind=bind, timeout=limit,
                             open_browser=open_browser, as_json=as_json))


def notebook_job(f: dict[str, Any]) -> Any:
    """The JobSpec the options describe (its command is set by migrate.jobs.notebook)."""
    variables, env_name = split_env(f.get("env_items") or ())
    python_env = f.get("python_env") or env_name
    if env_name and f.get("python_env") and env_name != f.get("python_env"):
        raise UsageError(f"--env {env_name} and --python-env {f['python_env']} name two environments")
    [spec] = build_specs(("jupyter",), jobs_file=None, sweeps=(), name=f.get("name"), cwd=f.get("cwd"),
                         env=variables, gpus=f["gpus"], min_free_mem=f.get("min_free_mem"),
                         allow_shared=bool(f.get("allow_shared")), gpu_pool=parse_pool(f.get("gpu_pool")),
                         priority=f["priority"], retries=f["retries"], image=f.get("image"),
                         mounts=tuple(f.get("mounts") or ()), shm_size=f.get("shm_size"), ports=(),
                         key=f.get("key"), experiments=None, python_env=python_env)
    check_specs([spec])
    return spec
