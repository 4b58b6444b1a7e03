"""`migrate shell HOST [JOB]` and `migrate exec HOST JOB -- CMD`: a terminal on the host or inside a job,
and one command inside a job (docs/shell.md)."""

from __future__ import annotations

import sys

import click

from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.errors import UsageError
from migrate.jobs.shell import SessionRequest, dry_run_argv, open_session
from migrate.remote import shell as quoting
from migrate.remote.hosts import ConnectOptions


def _finish(request: SessionRequest, dry_run: bool) -> None:
    if dry_run:
        sys.stdout.write(quoting.join(dry_run_argv(request)) + "\n")
        return
    sys.exit(open_session(request))


@click.command("shell", context_settings=CONTEXT_SETTINGS)
@click.argument("host")
@click.argument("job", required=False)
@click.argument("words", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD...]")
@connection_options
@click.option("--dry-run", is_flag=True, help="Print the ssh command instead of running it (connects to nothing).")
def command(host: str, job: str | None, words: tuple[str, ...], conn: ConnectOptions, dry_run: bool) -> None:
    """An interactive shell on HOST, or inside JOB (its id, name or key) on HOST.

    \b
      migrate shell gpu1                  a login shell on gpu1
      migrate shell gpu1 7                inside job 7: its container, or its directory and env
      migrate shell gpu1 7 -- nvtop       one program inside job 7, with a terminal

    Container job: `docker exec -it` into its container (bash if the image has it, else sh), through
    the Docker access your account has (direct, docker group, sudo). Process job: a login shell in
    the job's working directory with the job's environment (CUDA_VISIBLE_DEVICES with its GPUs,
    its -e variables, MIGRATE_JOB_ID...). The terminal follows your window size; the shell's exit
    code is migrate's. Needs a terminal: for scripts use `migrate exec`. A queued or finished job
    is an error (see `migrate logs`). Same SSH settings and host-key checks as every verb.
    """
    if words and job is None:
        raise UsageError("CMD needs a JOB", hint="migrate shell HOST JOB -- CMD, or `ssh HOST CMD` on the host")
    _finish(SessionRequest(host=host, job=job, words=words, tty=True, conn=conn), dry_run)


@click.command("exec", context_settings=CONTEXT_SETTINGS)
@click.argument("host")
@click.argument("job")
@click.argument("words", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD...")
@connection_options
@click.option("--dry-run", is_flag=True, help="Print the ssh command instead of running it (connects to nothing).")
def exec_command(host: str, job: str, words: tuple[str, ...], conn: ConnectOptions, dry_run: bool) -> None:
    """Run CMD inside JOB (its id, name or key) on HOST, without a terminal; exit with CMD's exit code.

    \b
      migrate exec gpu1 7 -- nvidia-smi
      migrate exec gpu1 7 -- 'ls -l checkpoints | tail -3'
      migrate exec gpu1 train-a -- python -c 'import torch; print(torch.cuda.device_count())'
      tar -c cfg | migrate exec gpu1 7 -- tar -x -C /tmp     stdin is passed on

    One CMD argument is a shell command line as it is; several are quoted word by word (as in
    `migrate run`). It runs where the job runs: `docker exec -i CONTAINER sh -c CMD` for a container
    job, `bash -lc CMD` in the job's directory with its environment for a process job. stdout and
    stderr stay apart and are streamed; the exit code is CMD's (1 with one `error:` line when the
    job is unknown, queued or finished; 255 when ssh itself fails).
    """
    _finish(SessionRequest(host=host, job=job, words=words, tty=False, conn=conn), dry_run)
