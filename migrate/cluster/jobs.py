"""The job verbs on a cluster: `migrate run/status/logs/cancel/retry NAME` where NAME is a cluster.

Each migrate job is one Ray job, submitted through the head's job API (jobapi.py). Ids are short and
per cluster ("1", "2", ...); attempt k of job N is Ray's submission `<cluster>-<N>` (k = 1) or
`<cluster>-<N>.<k>`. Ray keeps the jobs for the cluster's lifetime; migrate's own fields ride in each
job's metadata (id, name, GPUs, attempt, retries left, the user's command and cwd), so `retry` and the
tables need nothing stored here. Every command runs through the polite wrapper (shipped/job_wrapper.py).
"""

from __future__ import annotations

import re
import sys
import time
from typing import cast

from rich.text import Text

from migrate import ui
from migrate.agent.raynode import next_attempt, retries_left, submission_id
from migrate.cluster import container, plan, state
from migrate.cluster import template as cluster_template
from migrate.cluster.jobapi import JobApi, job_api
from migrate.cluster.state import ClusterRecord
from migrate.env import push as push_env
from migrate.errors import UsageError
from migrate.jobs.model import RAY_TERMINAL, Job, JobState
from migrate.jobs.render import STATE_COLOURS, duration, select_jobs
from migrate.jobs.spec import PYTHON_ENV_VAR, JobSpec, check_specs
from migrate.jobs.template import TemplatePlan
from migrate.remote import shell
from migrate.remote.hosts import ConnectOptions

COLUMNS = ["id", "name", "state", "gpu", "node", "runtime", "exit", "info"]


def check_cluster_spec(spec: JobSpec) -> None:
    """The job validator every job passes (jobs.spec.check_specs), then what a cluster job cannot do
    (yet): one clear line instead of silently ignoring it."""
    check_specs([spec])
    if spec.gpu_pool:
        raise UsageError("--gpu-pool is not supported per job on a cluster",
                         hint="queue it on one host (`migrate run HOST ...`); on a cluster the GPUs are "
                              "chosen at `cluster up` (--gpu-pool)")


def offered_line(record: ClusterRecord) -> str:
    """`gpu1: 2, gpu2: 2, gpu3: 0 GPU(s)`: what each node offers Ray (pure)."""
    return ", ".join(f"{n.host}: {len(n.gpus)}" for n in record.nodes) + " GPU(s)"


def check_feasible(record: ClusterRecord, specs: list[JobSpec], nodes: int = 0, gpus_per_node: int = 0) -> None:
    """Refuse at submit a job no node (or no set of `nodes` nodes) of the cluster can ever hold: Ray
    would keep it pending for ever (pure)."""
    offered = sorted((len(n.gpus) for n in record.nodes), reverse=True)
    if nodes:
        if gpus_per_node and (len(offered) < nodes or offered[nodes - 1] < gpus_per_node):
            raise UsageError(f"--nodes {nodes} --gpus-per-node {gpus_per_node} needs {nodes} nodes with "
                             f"{gpus_per_node} GPU(s) each; cluster {record.name} offers {offered_line(record)}",
                             hint="fewer GPUs per node, or `cluster up` with more GPUs (--gpu-pool)")
        return
    need = max((s.gpus for s in specs), default=0)
    if need > (offered[0] if offered else 0):
        raise UsageError(f"a job needs {need} GPU(s) on one node; cluster {record.name} offers "
                         f"{offered_line(record)}",
                         hint="--nodes N --gpus-per-node G spreads one job over several nodes")


def waiting_reason(job: dict, record: ClusterRecord, used: dict[str, int]) -> str:
    """Why a queued job waits (pure): `used` is GPUs taken per node host by running jobs."""
    gpus, nodes = job["gpus"], job["nodes"]
    if not gpus:
        return "waiting for a CPU slot on a node"
    free = {n.host: len(n.gpus) - used.get(n.host, 0) for n in record.nodes}
    if nodes:
        return (f"waiting for {nodes} nodes with {gpus // nodes} free GPU(s) each (free now: "
                + ", ".join(f"{h}: {f}" for h, f in free.items()) + ")")
    return (f"waiting for {gpus} free GPU(s) on one node (free now: "
            + ", ".join(f"{h}: {f}" for h, f in free.items()) + "; jobs before it are served first)")


def submission_order(specs: list[JobSpec]) -> list[JobSpec]:
    """Higher --priority first, ties in the given order (stable). Ray starts jobs in the order they
    were submitted, so this is what priority means on a cluster: the order within one run (pure)."""
    return sorted(specs, key=lambda s: -s.priority)


def entrypoint(record: ClusterRecord, command: str, cwd: str | None) -> str:
    """The Ray entrypoint: the venv's python runs the polite wrapper, which execs COMMAND (pure)."""
    py = shell.home_path(f"{plan.venv_dir(record.ray_version)}/bin/python")
    return f"{py} {shell.home_path(plan.WRAPPER)} --cwd {shell.quote(cwd or '~')} -- {shell.quote(command)}"


def gang_entrypoint(record: ClusterRecord, command: str, cwd: str | None, nodes: int, gpus_per_node: int,
                    master_port: int) -> str:
    py = shell.home_path(f"{plan.venv_dir(record.ray_version)}/bin/python")
    args = ["--nodes", nodes, "--gpus-per-node", gpus_per_node, "--master-port", master_port, "--cwd", cwd or "~"]
    return f"{py} {shell.home_path(plan.GANG)} {shell.join(args)} -- {shell.quote(command)}"


def job_env(record: ClusterRecord, spec_env: dict[str, str], job_id: str, attempt: int = 1, *,
            min_free_mem_mib: int | None = None, allow_shared: bool = False,
            python_env: str | None = None) -> dict[str, str]:
    """The job's variables; the polite wrapper reads MIGRATE_MIN_FREE_MEM_MIB and MIGRATE_ALLOW_SHARED
    (it waits on the GPUs Ray gave the job until they admit it, as the dispatcher would) and
    MIGRATE_ENV (it activates ~/.migrate/envs/NAME on the node, as the agent does on a host)."""
    env = dict(spec_env)
    if python_env:
        env[PYTHON_ENV_VAR] = python_env
    if min_free_mem_mib is not None:
        env["MIGRATE_MIN_FREE_MEM_MIB"] = str(min_free_mem_mib)
    if allow_shared:
        env["MIGRATE_ALLOW_SHARED"] = "1"
    env["MIGRATE_JOB_ID"] = job_id
    env["MIGRATE_JOB_ATTEMPT"] = str(attempt)  # a container job's name ends with it
    env["MIGRATE_CLUSTER"] = record.name
    env.setdefault("RAY_DEDUP_LOGS", "0")  # every rank's lines, not "repeated 2x across cluster"
    if record.agent:
        env["MIGRATE_AGENT"] = record.agent
    if record.gpu_backend:
        env["MIGRATE_GPU_BACKEND"] = record.gpu_backend
    return env


def payload(record: ClusterRecord, spec: JobSpec, job_id: str, *, attempt: int = 1, nodes: int = 0,
            gpus_per_node: int = 0, master_port: int = 29500) -> dict:
    """The POST /api/jobs/ body for one attempt of one job (pure)."""
    name = spec.name or f"job-{job_id}"
    if nodes:
        ep = gang_entrypoint(record, spec.command, spec.cwd, nodes, gpus_per_node, master_port)
        gpus, num_gpus, num_cpus = nodes * gpus_per_node, 0, 0
    elif spec.image:  # the wrapper runs a script that starts the container; --cwd is the container's -w
        ep = entrypoint(record, container.container_command(record, spec, job_id), None)
        gpus = spec.gpus
        num_gpus, num_cpus = spec.gpus, (0 if spec.gpus else 1)
    else:
        ep = entrypoint(record, spec.command, spec.cwd)
        gpus = spec.gpus
        num_gpus, num_cpus = spec.gpus, (0 if spec.gpus else 1)
    meta = {"migrate_cluster": record.name, "migrate_id": job_id, "migrate_name": name, "migrate_gpus": str(gpus),
            "migrate_attempt": str(attempt),
            "migrate_retries": str(spec.retries), "migrate_command": spec.command, "migrate_cwd": spec.cwd or "",
            "migrate_nodes": str(nodes), "migrate_key": spec.key or "",
            "migrate_image": spec.image or "", "migrate_priority": str(spec.priority)}
    return {"entrypoint": ep, "submission_id": submission_id(record.name, job_id, attempt),
            "entrypoint_num_gpus": num_gpus, "entrypoint_num_cpus": num_cpus,
            "runtime_env": {"env_vars": job_env(record, spec.env, job_id, attempt,
                                                min_free_mem_mib=spec.min_free_mem_mib,
                                                allow_shared=bool(spec.allow_shared),
                                                python_env=spec.python_env)}, "metadata": meta}


def again(job: dict, *, use_retry: bool = False) -> dict:
    """The next attempt of a Ray job we submitted: same entrypoint, resources, env (pure). The rule is the
    agent's (`migrate.agent.raynode.next_attempt`), the one the launcher on the head retries with."""
    return next_attempt(job, use_retry=use_retry)


# -- run -----------------------------------------------------------------------------------------------
def run_on_cluster(name: str, conn: ConnectOptions, specs: list[JobSpec], *, dry_run: bool, as_json: bool,
                   follow: bool, nodes: int = 0, gpus_per_node: int = 0, master_port: int = 29500,
                   template: TemplatePlan | None = None) -> int:
    """Submit every spec as a Ray job; print what was submitted (or would be). Returns the exit code.
    With a --from-template plan, its copies go to every host first and each job runs in its copy."""
    record = state.load(name)
    for spec in specs:
        check_cluster_spec(spec)
    if template is not None:
        cluster_template.check_dest(template)
        cluster_template.point_specs(template, specs)
    if nodes:
        if len(specs) != 1:
            raise UsageError("--nodes runs one job across servers; give one command (no --sweep/--jobs)")
        if nodes > len(record.nodes):
            raise UsageError(f"--nodes {nodes}: cluster {name} has {len(record.nodes)} nodes")
        if specs[0].image:
            raise UsageError("--nodes with --image is not supported on a cluster yet",
                             hint="run the ranks as processes (drop --image), or one container job per host")
    check_feasible(record, specs, nodes, gpus_per_node)
    order = submission_order(specs)
    images = sorted({s.image for s in specs if s.image})
    envs = sorted({s.python_env for s in specs if s.python_env})
    if envs:  # Ray may place a job on any node: every node gets the env first (a dry run connects to nothing)
        push_env.ensure_on_hosts(record.hosts, envs, conn, where=name, dry_run=dry_run)
    if dry_run:
        if template is not None and not as_json:
            cluster_template.sync(record, template, conn, dry_run=True)
        if images and not as_json:
            container.push_to_cluster(record, images, conn, dry_run=True)
        rows = [payload(record, s, "?", nodes=nodes, gpus_per_node=gpus_per_node, master_port=master_port)
                for s in order]
        if as_json:
            ui.print_json({"cluster": name, "dry_run": True, "images_to_push": images, "envs_to_push": envs,
                           "hosts": record.hosts,
                           "template": None if template is None else {
                               "source": str(template.source), "files": len(template.files),
                               "bytes": template.total_bytes, "copies": cluster_template.copies(record, template)},
                           "jobs": rows})
        else:
            ui.table(f"dry run: {len(specs)} job(s) would be submitted to cluster {name}, in this order",
                     ["name", "gpus", "priority", "image", "cwd", "command"],
                     [(s.name or "(auto)", str(nodes * gpus_per_node if nodes else s.gpus) if (s.gpus or nodes)
                       else "cpu", str(s.priority), s.image or (f"env {s.python_env}" if s.python_env else ""),
                       s.cwd or "~", s.command) for s in order])
        return 0
    if template is not None:
        cluster_template.sync(record, template, conn, dry_run=False)
    if images:
        container.push_to_cluster(record, images, conn, dry_run=False)
    with job_api(record, conn) as api:
        submitted, existing = submit_specs(api, record, specs, nodes=nodes, gpus_per_node=gpus_per_node,
                                           master_port=master_port)
        if as_json:
            ui.print_json({"cluster": name, "jobs": submitted, "already_there": existing})
        else:
            ui.table(f"submitted to cluster {name}", ["id", "name", "gpus"],
                     [(j["id"], j["name"], str(j["gpus"]) if j["gpus"] else "cpu") for j in submitted])
            if existing:
                ui.info(f"{len(existing)} job(s) with the same --key already on the cluster: not submitted again")
        if follow:
            if len(submitted) != 1:
                ui.warn(f"--follow shows one job; several were submitted (use migrate logs {name} JOB -f)")
                return 0
            return follow_logs(api, submitted[0]["submission_id"])
    return 0


def existing_keys(api: JobApi) -> set[str]:
    """The keys of every job on the cluster (whatever its state): a key is submitted only once."""
    keys = {(j.get("metadata") or {}).get("migrate_key") for j in api.jobs()} - {None, ""}
    return cast("set[str]", keys)  # None taken out; keys are strings in the metadata we write


def submit_specs(api: JobApi, record: ClusterRecord, specs: list[JobSpec], *, nodes: int = 0,
                 gpus_per_node: int = 0, master_port: int = 29500) -> tuple[list[dict], list[str]]:
    """Submit the specs whose key is not on the cluster yet: (submitted jobs, keys already there)."""
    have = existing_keys(api) if any(s.key for s in specs) else set()
    fresh = [s for s in specs if not s.key or s.key not in have]
    already = [s.key for s in specs if s.key and s.key in have]
    ids = state.next_job_ids(record.name, len(fresh)) if fresh else []  # ids follow the given order
    submitted = []
    by_priority = sorted(zip(fresh, ids), key=lambda pair: -pair[0].priority)  # Ray starts in submission order
    for spec, job_id in by_priority:
        body = payload(record, spec, job_id, nodes=nodes, gpus_per_node=gpus_per_node, master_port=master_port)
        api.submit(body)
        submitted.append({"id": job_id, "name": body["metadata"]["migrate_name"], "key": spec.key,
                          "submission_id": body["submission_id"], "gpus": int(body["metadata"]["migrate_gpus"])})
    return submitted, already


# -- status --------------------------------------------------------------------------------------------
def ray_state(j: dict) -> str:
    """A job of the job API: its migrate state's name (pure)."""
    return JobState.from_ray(str(j.get("status", ""))).value


def latest_attempts(jobs: list[dict]) -> dict[str, dict]:
    """migrate id -> the Ray job of its latest attempt (jobs without our metadata are left out)."""
    out: dict[str, dict] = {}
    for j in jobs:
        meta = j.get("metadata") or {}
        jid = meta.get("migrate_id")
        if not jid:
            continue
        if jid not in out or int(meta.get("migrate_attempt", "1")) > int(
                out[jid]["metadata"].get("migrate_attempt", "1")):
            out[jid] = j
    return out


def job_view(j: dict, node_hosts: dict[str, str], now: float) -> dict:
    """One row of `status NAME --json` (the single-host table's fields, plus node and Ray's ids)."""
    job = Job.from_ray(j, now)
    return {"id": job.id, "name": job.name, "state": job.state_name, "gpus": job.gpus, "nodes": job.nodes,
            "node": node_hosts.get(j.get("driver_node_id") or "", ""), "attempt": job.attempt,
            "retries_left": job.retries_left, "command": job.command, "runtime_s": job.runtime_s,
            "exit_code": j.get("driver_exit_code"), "reason": j.get("message") if job.state is JobState.FAILED else "",
            "submission_id": j.get("submission_id")}


def node_hosts(record: ClusterRecord, nodes: list[dict]) -> dict[str, str]:
    by_ip = {n.ip: n.host for n in record.nodes}
    return {n["node_id"]: by_ip.get(n["node_ip"], n["node_ip"]) for n in nodes}


def auto_retry(api: JobApi, latest: dict[str, dict]) -> list[str]:
    """Resubmit failed jobs that have --retries left, whenever the jobs are read: plain Ray jobs (the
    launcher resubmits its own at once, so its failed attempts are rarely the latest)."""
    out = []
    for jid, j in latest.items():
        if j.get("status") == "FAILED" and retries_left(j) > 0:
            body = again(j, use_retry=True)
            api.submit(body)
            latest[jid] = {**j, **body, "status": "PENDING", "start_time": time.time() * 1000, "end_time": None,
                           "driver_exit_code": None, "driver_node_id": None}
            out.append(jid)
    return out


def cluster_jobs(name: str, conn: ConnectOptions) -> list[dict]:
    """Every job on the cluster, as `migrate status NAME --json` prints them (latest attempt each)."""
    record = state.load(name)
    with job_api(record, conn) as api:
        nodes = api.nodes()
        latest = latest_attempts(api.jobs())
        retried = auto_retry(api, latest)
    if retried:
        ui.info(f"failed job(s) {', '.join(retried)} resubmitted (--retries)")
    hosts = node_hosts(record, nodes)
    now = time.time()
    views = sorted((job_view(j, hosts, now) for j in latest.values()), key=lambda v: int(v["id"]))
    used: dict[str, int] = {}
    for v in views:
        if v["state"] == JobState.RUNNING and v["node"] and not v["nodes"]:
            used[v["node"]] = used.get(v["node"], 0) + v["gpus"]
    for v in views:
        if v["state"] == JobState.QUEUED:
            v["reason"] = waiting_reason(v, record, used)
    return views


def show_status(name: str, conn: ConnectOptions, *, as_json: bool, show_all: bool = False,
                states: list[str] | None = None, last: int = 20, every: list[dict] | None = None) -> int:
    """The cluster's jobs (`every`, read now when None), chosen by --state/--all/--last as on one host
    (render.select_jobs); the counts cover every job, as on one host."""
    every = cluster_jobs(name, conn) if every is None else every
    jobs, hidden = select_jobs(every, show_all=show_all, states=states, last=last)
    if as_json:
        counts: dict[str, int] = {}
        for j in every:
            counts[j["state"]] = counts.get(j["state"], 0) + 1
        ui.print_json({"cluster": name, "counts": counts, "hidden_finished": hidden, "jobs": jobs})
        return 0
    rows = [(j["id"], j["name"], Text(j["state"], style=STATE_COLOURS.get(j["state"], "")),
             (f"{j['nodes']}×{j['gpus'] // max(j['nodes'], 1)}" if j["nodes"] else str(j["gpus"])) if j["gpus"]
             else "cpu", j["node"], duration(j["runtime_s"]),
             "" if j["exit_code"] is None else str(j["exit_code"]),
             ((j["reason"] or "")[:70] if j["state"] in (JobState.FAILED, JobState.QUEUED) else j["command"][:70])
             + (f" (attempt {j['attempt']})" if j["attempt"] > 1 else "")) for j in jobs]
    ui.info(f"cluster {name}: " + (", ".join(f"{sum(1 for j in every if j['state'] == s)} {s}"
                                            for s in JobState
                                            if any(j["state"] == s for j in every)) or "no jobs yet"))
    ui.table(None, COLUMNS, rows)
    if hidden:
        ui.info(f"{hidden} older finished job(s) not shown (--all shows every job)")
    return 0


# -- logs / cancel / retry -----------------------------------------------------------------------------
def find_job(latest: dict[str, dict], job: str) -> dict:
    if job in latest:
        return latest[job]
    named = [j for j in latest.values() if (j.get("metadata") or {}).get("migrate_name") == job]
    if len(named) == 1:
        return named[0]
    raise UsageError(f"no job {job!r} on this cluster" if not named else f"several jobs are named {job!r}",
                     hint="see the ids in `migrate status NAME`")


# Ray's own log records in a job's driver log ("2026-12-06 16:40:01,123\tINFO job_manager.py:531 -- ..."),
# the colour codes of its worker prefixes, and the FutureWarnings its import prints: not the job's output
RAY_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\s+(INFO|DEBUG)\s+\S+\.py:\d+ -- ")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
RAY_WARNING = re.compile(r"^\S*/site-packages/ray/\S+:\d+: \w*Warning: ")


def clean_log(text: str) -> str:
    """A cluster job's log as the job wrote it (pure): Ray's INFO/DEBUG records, its own warnings
    (with their `warnings.warn(` source line) and terminal colour codes removed."""
    out, skip_source = [], False
    for line in ANSI.sub("", text).splitlines(keepends=True):
        if skip_source and line.startswith("  "):
            skip_source = False
            continue
        skip_source = bool(RAY_WARNING.match(line))
        if skip_source or RAY_RECORD.match(line):
            continue
        out.append(line)
    return "".join(out)


def complete_lines(text: str, final: bool) -> str:
    """Up to the last newline (a half-written line may still turn out to be Ray's), or all when final."""
    return text if final else text[:text.rfind("\n") + 1]


def follow_logs(api: JobApi, submission: str, *, follow: bool = True) -> int:
    """Print the job's log; with follow, keep printing until it ends. Exit code: the job's (0 when unknown)."""
    shown = 0
    while True:
        text = clean_log(complete_lines(api.logs(submission), final=not follow))
        sys.stdout.write(text[shown:])
        sys.stdout.flush()
        shown = len(text)
        job = api.job(submission)
        if not follow or job.get("status") in RAY_TERMINAL:
            if follow:
                text = clean_log(api.logs(submission))
                sys.stdout.write(text[shown:])
            code = job.get("driver_exit_code")
            return 0 if not follow else (code if isinstance(code, int) else (0 if job["status"] == "SUCCEEDED"
                                                                              else 1))
        time.sleep(1)


def logs(name: str, conn: ConnectOptions, job: str, *, follow: bool, tail: int | None = None) -> int:
    record = state.load(name)
    with job_api(record, conn) as api:
        j = find_job(latest_attempts(api.jobs()), job)
        if tail and not follow:
            lines = clean_log(api.logs(j["submission_id"])).splitlines()[-tail:]
            sys.stdout.write("\n".join(lines) + ("\n" if lines else ""))
            return 0
        return follow_logs(api, j["submission_id"], follow=follow)


def cancel(name: str, conn: ConnectOptions, jobs: tuple[str, ...], *, all_jobs: bool, as_json: bool,
           grace: float | None = None, dry_run: bool = False) -> int:
    """Stop the chosen jobs (launcher jobs: SIGTERM, SIGKILL after `grace` s); --dry-run only lists them."""
    if all_jobs == bool(jobs):
        raise UsageError("give job ids or --all" if not jobs else "give job ids or --all, not both")
    record = state.load(name)
    with job_api(record, conn) as api:
        latest = latest_attempts(api.jobs())
        chosen = list(latest.values()) if all_jobs else [find_job(latest, j) for j in jobs]
        rows = []
        for raw in chosen:
            job = Job.from_ray(raw)
            if job.state is None or job.state.is_terminal:
                if not all_jobs:
                    rows.append({"id": job.id, "was": job.state_name, "outcome": "left as it is"})
                continue
            if not dry_run:
                api.stop(job.submission_id, grace)
            rows.append({"id": job.id, "was": job.state_name, "outcome": "would stop" if dry_run else "stopped"})
    if as_json:
        ui.print_json({"cluster": name, "dry_run": dry_run, "cancelled": [] if dry_run else rows,
                       **({"would_cancel": rows} if dry_run else {})})
    elif rows:
        ui.table(f"{'dry run: would cancel' if dry_run else 'cancelled'} on cluster {name}", ["id", "was", "outcome"],
                 [(r["id"], r["was"], r["outcome"]) for r in rows])
    else:
        ui.info("nothing to cancel")
    return 0


def retry(name: str, conn: ConnectOptions, jobs: tuple[str, ...], *, as_json: bool) -> int:
    """Submit the jobs' next attempt (same id, command, resources, env); Ray places it on a live node."""
    record = state.load(name)
    out = []
    with job_api(record, conn) as api:
        latest = latest_attempts(api.jobs())
        for ref in jobs:
            raw = find_job(latest, ref)
            job = Job.from_ray(raw)
            if job.state is None or not job.state.is_terminal:
                raise UsageError(f"job {ref} is {job.state_name}", hint=f"cancel it first: migrate cancel {name} {ref}")
            body = again(raw)
            api.submit(body)
            out.append({"id": job.id, "was": job.state_name, "attempt": body["metadata"]["migrate_attempt"]})
    if as_json:
        ui.print_json({"cluster": name, "retried": out})
    else:
        for r in out:
            ui.step(f"job {r['id']} was {r['was']}: submitted again (attempt {r['attempt']})")
    return 0

