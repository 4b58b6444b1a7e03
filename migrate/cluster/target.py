"""A Ray cluster as a job target (migrate/jobs/target.py): the job verbs for a cluster name.

The work is in migrate/cluster/jobs.py (the head's job API) and shell.py (entering a job on its
node); this class gives them the interface every job verb calls, with the options meaning what
they mean on one host, and refuses (one usage line, before anything connects) what a cluster
cannot do yet.
"""

from __future__ import annotations

from collections.abc import Sequence

from migrate import ui
from migrate.cluster import jobs as cluster_jobs
from migrate.cluster import state
from migrate.cluster.jobapi import job_api
from migrate.cluster.shell import open_cluster_session
from migrate.data.syncback import cluster_sync_groups
from migrate.errors import UsageError
from migrate.jobs import idcache, lastrun
from migrate.jobs.limits import confirm_many_jobs
from migrate.jobs.model import RETRY_ALL, Job
from migrate.jobs.render import select_jobs
from migrate.jobs.shell import SessionRequest
from migrate.jobs.target import Submission, show_would_retry
from migrate.jobs.wait import ClusterReader, JobReader
from migrate.remote.hosts import ConnectOptions


class ClusterTarget:
    """The cluster `name` (a record of `migrate cluster up`), through its head's job API."""

    kind = "cluster"

    def __init__(self, name: str, conn: ConnectOptions) -> None:
        self.name = name
        self.conn = conn

    @property
    def files_host(self) -> str:
        return state.load(self.name).head.host

    def require_one_host(self, what: str) -> None:
        raise UsageError(f"{self.name} is a cluster; {what}",
                         hint=f"name one of its hosts: {', '.join(state.load(self.name).hosts)}")

    def check_submit(self, *, nodes: int, notify: bool, compose: bool) -> None:
        if notify:  # Ray jobs have no dispatcher to post; the URL is not stored here
            raise UsageError("--notify is not supported on a cluster",
                             hint=f"let the laptop post it: migrate wait {self.name} --notify URL")
        if compose:
            raise UsageError("--compose is not supported on a cluster yet",
                             hint="queue them on one host: migrate run HOST ...")

    def submit(self, sub: Submission) -> int:
        per_host = [flag for flag, given in (("--gpu-backend", sub.options.gpu_backend),
                                             ("--cpu-slots", sub.options.cpu_slots),
                                             ("--enable-linger", sub.options.enable_linger)) if given]
        if per_host:
            raise UsageError(f"{', '.join(per_host)}: a setting of one host's dispatcher, not of a cluster job",
                             hint=f"a cluster's GPU backend is chosen at `migrate cluster up {self.name} ... "
                                  "--gpu-backend`; Ray runs CPU jobs on the CPUs each node offers (--num-cpus)")
        if any(s.image and s.image.endswith(".sif") for s in sub.specs):
            raise UsageError("SIF images are not supported on a cluster yet",
                             hint="run on each host: migrate run HOST ...")
        if not sub.dry_run:
            confirm_many_jobs(len(sub.specs), where=self.name, yes=sub.yes)
        cluster_sync_groups(sub.specs, [], None)  # one --sync-back for the run, checked before submitting
        seq = state.load(self.name).job_seq
        code = cluster_jobs.run_on_cluster(self.name, self.conn, sub.specs, dry_run=sub.dry_run, as_json=sub.as_json,
                                           follow=sub.follow, nodes=sub.nodes, gpus_per_node=sub.gpus_per_node,
                                           template=sub.template)
        if not sub.dry_run:  # the ids this run took (cluster ids count up): what `migrate wait NAME` waits for
            ids = list(range(seq + 1, state.load(self.name).job_seq + 1))
            lastrun.record(self.name, ids, sync=cluster_sync_groups(sub.specs, ids, sub.every))  # from the head
        return code

    def status(self, *, show_all: bool, states: list[str] | None, last: int, as_json: bool) -> int:
        every = cluster_jobs.cluster_jobs(self.name, self.conn)
        idcache.remember(self.name, every)  # for completing JOB in the shell
        return cluster_jobs.show_status(self.name, self.conn, as_json=as_json, show_all=show_all, states=states,
                                        last=last, every=every)

    def status_answer(self, *, show_all: bool, states: list[str] | None, last: int) -> dict:
        every = cluster_jobs.cluster_jobs(self.name, self.conn)
        counts: dict[str, int] = {}
        for j in every:
            counts[j["state"]] = counts.get(j["state"], 0) + 1
        jobs, hidden = select_jobs(every, show_all=show_all, states=states, last=last)
        return {"host": self.name, "cluster": True, "counts": counts, "jobs": jobs, "hidden_finished": hidden}

    def logs(self, job: str, *, follow: bool, tail: int | None) -> int:
        return cluster_jobs.logs(self.name, self.conn, job, follow=follow, tail=tail)

    def cancel(self, refs: Sequence[str], *, all_jobs: bool, grace: float, dry_run: bool, as_json: bool) -> int:
        return cluster_jobs.cancel(self.name, self.conn, tuple(refs), all_jobs=all_jobs, as_json=as_json,
                                   grace=grace, dry_run=dry_run)

    def would_retry(self, refs: Sequence[str], all_jobs: bool) -> list[dict]:
        """The jobs a retry would submit again (id, name, was); a job not finished is a usage error."""
        with job_api(state.load(self.name), self.conn) as api:
            latest = cluster_jobs.latest_attempts(api.jobs())
        chosen = list(latest.values()) if all_jobs else [cluster_jobs.find_job(latest, j) for j in refs]
        rows = []
        for raw in chosen:
            job = Job.from_ray(raw)
            if all_jobs and job.state not in RETRY_ALL:
                continue
            if job.state is None or not job.state.is_terminal:
                raise UsageError(f"job {job.id} is {job.state_name}",
                                 hint=f"cancel it first: migrate cancel {self.name} {job.id}")
            rows.append({"id": job.id, "name": job.name, "was": job.state_name})
        return rows

    def retry(self, refs: Sequence[str], *, all_jobs: bool, dry_run: bool, as_json: bool) -> int:
        if dry_run or all_jobs:
            rows = self.would_retry(refs, all_jobs)
            if dry_run:
                if as_json:
                    ui.print_json({"cluster": self.name, "would_retry": rows})
                else:
                    show_would_retry(self.name, rows)
                return 0
            if not rows:
                ui.info("nothing to retry")
                return 0
            refs = [r["id"] for r in rows]
        return cluster_jobs.retry(self.name, self.conn, tuple(refs), as_json=as_json)

    def enter(self, request: SessionRequest, *, rank: int | None, dry_run: bool) -> int:
        if request.job is None:
            raise UsageError(f"{self.name} is a cluster: give a JOB",
                             hint=f"migrate shell {self.name} JOB, or `migrate shell HOST` on one of its hosts")
        return open_cluster_session(self.name, request.job, words=request.words, tty=request.tty,
                                    conn=request.conn, rank=rank, dry_run=dry_run)

    def reader(self) -> JobReader:
        return ClusterReader(self.name, self.conn)

