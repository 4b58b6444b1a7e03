"""`migrate shell NAME JOB` and `migrate exec NAME JOB -- CMD` where NAME is a cluster (issue 15).

Where: the head's job API says the job's state and, for a one-node job, the node its entrypoint (the
polite wrapper, hence the command) runs on (`driver_node_id`, the `node` column of `status`). A gang
job's rank K runs on the K-th node of the `migrate: N nodes reserved: IP0, IP1...` line its driver
logs (gang.py); the IP is mapped back to the host alias of the cluster record.

What: on that node the polite wrapper keeps a private record of the running command (pid, process
group, cwd, environment; ~/.migrate/ray/run/, 0600). `shipped/enter_job.py`, sent as `python3 -I -S -c`
(so no version of it has to be installed on the node), checks the record and becomes `bash -l` /
`bash -lc CMD` there. As for a single host: one `--check` call over the ControlMaster first (a job that
has no running command is a one-line error, never an exit code), then the session through
`jobs.shell.session_argv` with `-t` (shell) or `-T` (exec); the exit code is the shell's or CMD's.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from migrate import ui
from migrate.cluster import state
from migrate.cluster.jobapi import job_api
from migrate.cluster.jobs import find_job, latest_attempts, node_hosts
from migrate.cluster.state import ClusterRecord
from migrate.errors import ConnectError, MigrateError, UsageError
from migrate.jobs.model import Job, JobState
from migrate.jobs.shell import check_terminal, run_ssh, session_argv
from migrate.remote import shell
from migrate.remote.hosts import ConnectOptions, openssh_argv
from migrate.remote.openssh import OpenSshSession

ENTER_SRC = Path(__file__).parent / "shipped" / "enter_job.py"
RESERVED_RE = re.compile(r"migrate: (\d+) nodes reserved: ([0-9a-fA-F.:, ]+)")


@dataclass
class Placement:
    """Where one cluster job's command runs: the node (host alias of the record) and its rank."""

    cluster: str
    job: str           # migrate's id on the cluster ("7")
    name: str
    rank: int
    host: str


# -- pure ------------------------------------------------------------------------------------------
def enter_argv(cluster: str, job: str, rank: int, *, tty: bool, check: bool = False,
               words: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The enter script's arguments: options, then cluster, job, rank, `--` and CMD."""
    opts = (["--tty"] if tty else []) + (["--check"] if check else [])
    return [*opts, cluster, job, str(rank), "--", *words]


def enter_command(args: list[str], source: str | None = None) -> str:
    """The remote command line: `exec python3 -I -S -c SRC ARGS` (every argument quoted), so the shell or
    CMD the script becomes is what sshd waits for."""
    src = source if source is not None else ENTER_SRC.read_text()
    return f"exec python3 -I -S -c {shell.quote(src)} {shell.join(args)}"


def reserved_ips(log: str) -> list[str]:
    """The node IPs of a gang job, rank by rank, from its driver's log ([] before they are reserved)."""
    m = RESERVED_RE.search(log)
    return [ip.strip() for ip in m.group(2).split(",") if ip.strip()] if m else []


def not_running_error(j: dict, cluster: str) -> MigrateError:
    """A one-line error for a job that is not running, with what to do instead (pure)."""
    job = Job.from_ray(j)
    jid, st = job.id, job.state or JobState.LOST
    ref = f"job {jid} ({job.name or '?'}) on cluster {cluster}"
    if st is JobState.QUEUED:
        return MigrateError(f"{ref} is queued, not running yet",
                            hint=f"`migrate logs {cluster} {jid} -f` waits for it to start")
    code = job.exit_code
    what = {JobState.DONE: f"finished (exit {code if code is not None else 0})",
            JobState.FAILED: f"failed (exit {code})" if code is not None else "failed",
            JobState.CANCELLED: "was cancelled"}.get(st, f"is {st.value}")
    return MigrateError(f"{ref} {what}; its processes are gone",
                        hint=f"see its output with `migrate logs {cluster} {jid}`")


def place(record: ClusterRecord, j: dict, hosts: dict[str, str], rank: int | None, log: str = "") -> Placement:
    """Where job `j` (a running Ray job) runs its rank `rank` (pure; `log` is needed for a gang job)."""
    job = Job.from_ray(j)
    jid, name, nodes = job.id, job.name or "?", job.nodes
    if not nodes:
        if rank:
            raise UsageError(f"--rank {rank}: job {jid} runs on one node (rank 0)")
        host = hosts.get(j.get("driver_node_id") or "")
        if not host:
            raise MigrateError(f"job {jid} ({name}) on cluster {record.name} is starting: no node yet",
                               hint="try again in a few seconds")
        return Placement(record.name, jid, name, 0, host)
    rank = rank or 0
    if rank >= nodes:
        raise UsageError(f"--rank {rank}: job {jid} has ranks 0 to {nodes - 1}")
    ips = reserved_ips(log)
    if len(ips) <= rank:
        raise MigrateError(f"job {jid} ({name}) on cluster {record.name} is waiting for its {nodes} nodes",
                           hint=f"`migrate logs {record.name} {jid} -f` shows when they are reserved")
    node = record.node_by_ip(ips[rank])
    return Placement(record.name, jid, name, rank, node.host if node else ips[rank])


def check_answer(stdout: str) -> dict:
    """The enter script's --check JSON line (the last line: a login banner may precede it)."""
    lines = stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise MigrateError("the node did not answer the job check as expected: "
                           + (lines[-1] if lines else "no output"),
                           hint="is python3 installed on the node?") from None


# -- running ---------------------------------------------------------------------------------------
def locate(name: str, conn: ConnectOptions, job: str, rank: int | None) -> Placement:
    """Ask the head's job API where JOB runs; one-line errors for unknown, queued and finished jobs."""
    record = state.load(name)
    with job_api(record, conn) as api:
        j = find_job(latest_attempts(api.jobs()), job)
        if j.get("status") != "RUNNING":
            raise not_running_error(j, name)
        hosts = node_hosts(record, api.nodes())
        log = api.logs(j["submission_id"]) if Job.from_ray(j).nodes else ""
    return place(record, j, hosts, rank, log)


def open_cluster_session(name: str, job: str, *, words: tuple[str, ...], tty: bool, conn: ConnectOptions,
                         rank: int | None = None, dry_run: bool = False) -> int:
    """Run `migrate shell/exec NAME JOB` on the node where the job runs; the shell's or CMD's exit code."""
    check_terminal(tty and not dry_run)
    where = locate(name, conn, job, rank)
    ui.debug(f"job {where.job} ({where.name}) of cluster {name}: rank {where.rank} on {where.host}")
    args = enter_argv(name, where.job, where.rank, tty=tty, words=words)
    if dry_run:
        session = OpenSshSession(where.host, conn)
        base = openssh_argv(session.target, config_file=session.configs.openssh_file())
        sys.stdout.write(shell.join(session_argv(base, tty=tty, remote_command=enter_command(args))) + "\n")
        return 0
    with OpenSshSession(where.host, conn) as session:
        try:
            session.open()
        except ConnectError as exc:
            raise ConnectError(f"cannot reach node {where.host} of cluster {name}, where job {where.job} runs: "
                               f"{exc}", hint=exc.hint) from None
        check = enter_command(enter_argv(name, where.job, where.rank, tty=tty, check=True))
        res = session.run(check, check=False, timeout=60, what="find the job on its node")
        if res.exit_code != 0:
            last = (res.stderr.strip().splitlines() or [f"exit {res.exit_code}"])[-1]
            raise MigrateError(f"cannot look for job {where.job} on node {where.host}: {last}",
                               hint="is python3 installed on the node?")
        answer = check_answer(res.stdout)
        if answer.get("error"):
            raise MigrateError(f"{answer['error']} (node {where.host})", hint=answer.get("hint") or None)
        ui.debug(f"pid {answer.get('pid')} in {answer.get('cwd')}, GPUs {answer.get('gpus') or '-'}")
        argv = session_argv(session.openssh_argv(), tty=tty, remote_command=enter_command(args))
        return run_ssh(argv)
