"""`migrate shell HOST [JOB]` and `migrate exec HOST JOB -- CMD`: a terminal on the host or inside a job,
and one command inside a job (docs/shell.md)."""

from __future__ import annotations

import sys

import click

from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.cluster import state as cluster_state
from migrate.completion import complete_job, complete_target
from migrate.env.source import check_name
from migrate.errors import UsageError
from migrate.jobs.client import check_job_refs
from migrate.jobs.shell import SessionRequest
from migrate.jobs.target import job_target
from migrate.remote.hosts import ConnectOptions

RANK_HELP = "On a cluster, the rank of a --nodes job to enter (default 0)."
ENV_HELP = ("Give no JOB: the shell or CMD runs on HOST with ~/.migrate/envs/NAME (push-env) "
            "activated (PATH, VIRTUAL_ENV or CONDA_PREFIX).")


def env_request(host: str, job: str | None, words: tuple[str, ...], python_env: str, tty: bool,
                conn: ConnectOptions, rank: int | None) -> SessionRequest:
    """`--env NAME`: a session on the host itself; what click read as JOB is CMD's first word."""
    check_name(python_env)
    if cluster_state.exists(host) or rank is not None:
        raise UsageError("--env opens a session on one host, not in a cluster job",
                         hint=f"migrate {'shell' if tty else 'exec'} HOST --env {python_env}, HOST one of the "
                              "cluster's hosts")
    return SessionRequest(host=host, words=((job,) if job else ()) + words, tty=tty, conn=conn,
                          python_env=python_env)


def _finish(request: SessionRequest, dry_run: bool, rank: int | None = None) -> None:
    check_job_refs([request.job])
    sys.exit(job_target(request.host, request.conn).enter(request, rank=rank, dry_run=dry_run))


@click.command("shell", context_settings=CONTEXT_SETTINGS)
@click.argument("host", shell_complete=complete_target)
@click.argument("job", required=False, shell_complete=complete_job)
@click.argument("words", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD...]")
@connection_options
@click.option("--rank", type=click.IntRange(0), default=None, metavar="K", help=RANK_HELP)
@click.option("--env", "python_env", metavar="NAME", help=ENV_HELP)
@click.option("-n", "--dry-run", is_flag=True, help="Print the ssh command instead of running it (connects to nothing; "
                                              "on a cluster it asks the head where the job runs).")
def command(host: str, job: str | None, words: tuple[str, ...], conn: ConnectOptions, rank: int | None,
            python_env: str | None, dry_run: bool) -> None:
    """An interactive shell on HOST, or inside JOB (its id, name or key) on HOST.

    HOST may be a cluster name (`migrate cluster up`): the shell opens inside JOB on the node where it
    runs (rank 0 of a --nodes job, or --rank K).

    \b
    Examples:
      migrate shell gpu1              # a login shell on gpu1
      migrate shell gpu1 7            # inside job 7: its container, or its
                                      # directory and environment
      migrate shell gpu1 7 -- nvtop   # one program inside job 7, with a tty
      migrate shell gpu1 --env nb     # a shell on gpu1 in the env pushed
                                      # with `migrate push-env --name nb`

    Container job: `docker exec -it` into its container (bash if the image has it, else sh), through
    the Docker access your account has (direct, docker group, sudo). Process job: a login shell in
    the job's working directory with the job's environment (CUDA_VISIBLE_DEVICES with its GPUs,
    its -e variables, MIGRATE_JOB_ID...). The terminal follows your window size; the shell's exit
    code is migrate's. Needs a terminal: for scripts use `migrate exec`. A queued or finished job
    is an error (see `migrate logs`). Same SSH settings and host-key checks as every verb.
    """
    if python_env is not None:
        _finish(env_request(host, job, words, python_env, True, conn, rank), dry_run)
        return
    if words and job is None:
        raise UsageError("CMD needs a JOB", hint="migrate shell HOST JOB -- CMD, or `ssh HOST CMD` on the host")
    _finish(SessionRequest(host=host, job=job, words=words, tty=True, conn=conn), dry_run, rank)


@click.command("exec", context_settings=CONTEXT_SETTINGS)
@click.argument("host", shell_complete=complete_target)
@click.argument("job", shell_complete=complete_job)
@click.argument("words", nargs=-1, type=click.UNPROCESSED, metavar="-- CMD...")
@connection_options
@click.option("--rank", type=click.IntRange(0), default=None, metavar="K", help=RANK_HELP)
@click.option("--env", "python_env", metavar="NAME", help=ENV_HELP)
@click.option("-n", "--dry-run", is_flag=True, help="Print the ssh command instead of running it (connects to nothing; "
                                              "on a cluster it asks the head where the job runs).")
def exec_command(host: str, job: str, words: tuple[str, ...], conn: ConnectOptions, rank: int | None,
                 python_env: str | None, dry_run: bool) -> None:
    """Run CMD inside JOB (its id, name or key) on HOST, without a terminal; exit with CMD's exit code.

    HOST may be a cluster name: CMD runs on the node where JOB runs (rank 0 of a --nodes job, or
    --rank K), in the job's directory with its environment.

    \b
    Examples:
      migrate exec gpu1 7 -- nvidia-smi
      migrate exec gpu1 7 -- 'ls -l checkpoints | tail -3'
      migrate exec gpu1 train-a -- python -c 'import torch; print(torch.__file__)'
      tar -c cfg | migrate exec gpu1 7 -- tar -x -C /tmp     stdin is passed on
      migrate exec gpu1 --env nb -- python -V   # no JOB: in the env nb

    One CMD argument is a shell command line as it is; several are quoted word by word (as in
    `migrate run`). It runs where the job runs: `docker exec -i CONTAINER sh -c CMD` for a container
    job, `bash -lc CMD` in the job's directory with its environment for a process job. stdout and
    stderr stay apart and are streamed; the exit code is CMD's (1 with one `error:` line when the
    job is unknown, queued or finished, 2 for a job id a cluster does not know; 255 when ssh itself
    fails).
    """
    if python_env is not None:
        _finish(env_request(host, job, words, python_env, False, conn, rank), dry_run)
        return
    if not words:
        raise UsageError("give CMD after --", hint=f"migrate exec {host} {job} -- nvidia-smi")
    _finish(SessionRequest(host=host, job=job, words=words, tty=False, conn=conn), dry_run, rank)
