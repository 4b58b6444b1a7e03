"""Queueing jobs from this machine: what `migrate run` and `migrate apply` share.

The job specs a command line asks for (`build_specs`, `parse_env`, `parse_pool`), the compose
project's job (`compose_spec`, `sync_compose_project`), the --from-template copy
(`prepare_template`), and `run_command`: queue on one host and print what was queued (or, with
--dry-run, what would be). The Python API `migrate apply` uses is re-exported here: `JobSpec`,
`SubmittedJob`, `DispatcherOptions` (migrate.jobs.spec), `submit_jobs()` and `job_statuses()`
(migrate.jobs.client). Nothing here exits: `run_command` returns the exit code.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
import uuid

from migrate import ui
from migrate.agent.notify import describe as notify_describe
from migrate.errors import MigrateError, UsageError
from migrate.jobs import lastrun
from migrate.jobs import template as tpl
from migrate.jobs.client import AgentClient, job_statuses, report_dispatcher, submit_jobs, submit_with
from migrate.jobs.compose import ComposePlan, compose_job_command
from migrate.jobs.render import SUBMITTED_COLUMNS, submitted_rows
from migrate.jobs.spec import (
    ENV_NAME,
    DispatcherOptions,
    JobSpec,
    SubmittedJob,
    check_image,
    expand,
    load_jobs_file,
    parse_size_mib,
    parse_sweeps,
)
from migrate.remote import shell
from migrate.remote.connection import connect
from migrate.remote.host import Host
from migrate.remote.hosts import ConnectOptions

__all__ = ["DispatcherOptions", "JobSpec", "SubmittedJob", "build_specs", "compose_spec", "copy_template",
           "job_statuses", "parse_env", "parse_pool", "prepare_template", "run_command", "submit_jobs",
           "sync_compose_project"]


def command_text(words: tuple[str, ...]) -> str:
    """One argument is a shell command line as is; several are an argv, quoted word by word."""
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return shlex.join(words)


def parse_env(items: tuple[str, ...]) -> dict[str, str]:
    """`--env KEY=VALUE` only (where a pushed environment cannot apply: compose jobs)."""
    env, name = split_env(items)
    if name:
        raise UsageError(f"bad --env {name!r} here", hint="use --env KEY=VALUE")
    return env


def split_env(items: tuple[str, ...]) -> tuple[dict[str, str], str | None]:
    """`--env KEY=VALUE` (variables) and `--env NAME` (an environment pushed with push-env, at most one)."""
    env: dict[str, str] = {}
    names = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep and ENV_NAME.match(item):
            names.append(item)
            continue
        if not sep or not key:
            raise UsageError(f"bad --env {item!r}",
                             hint="use --env KEY=VALUE, or --env NAME for a push-env environment")
        env[key] = value
    if len(names) > 1:
        raise UsageError(f"--env names two environments ({names[0]}, {names[1]})", hint="a job runs in one")
    return env, (names[0] if names else None)


def parse_pool(text: str | None) -> list[str] | None:
    if not text:
        return None
    pool = [p.strip() for p in text.split(",") if p.strip()]
    if not pool:
        raise UsageError("--gpu-pool is empty", hint="list GPU indices or UUIDs, e.g. --gpu-pool 2,3")
    return pool


def build_specs(words: tuple[str, ...], *, jobs_file: str | None, sweeps: tuple[str, ...], name: str | None,
                cwd: str | None, env: dict[str, str], gpus: int, min_free_mem: str | None, allow_shared: bool,
                gpu_pool: list[str] | None, priority: int, retries: int, image: str | None,
                mounts: tuple[str, ...], shm_size: str | None, ports: tuple[str, ...], key: str | None,
                experiments: list[str] | None, notify: str | None = None,
                sync_back: str | None = None, python_env: str | None = None) -> list[JobSpec]:
    """The jobs a `migrate run` command line asks for (pure)."""
    cmd = command_text(words)
    if jobs_file:
        if cmd:
            raise UsageError("give either a command or --jobs FILE, not both")
        if sweeps or experiments:
            raise UsageError("--sweep and --from-template go inside the jobs file here",
                             hint="use `sweep:` in the jobs file")
        specs = load_jobs_file(jobs_file)
        for spec in specs:  # --notify on the command line: for every job of the file that sets none
            spec.notify = spec.notify or notify
            spec.sync_back = spec.sync_back or sync_back
        return specs
    if not cmd.strip():
        raise UsageError("no command to run", hint="put it after --, e.g. migrate run HOST -- python train.py")
    if image is not None:
        check_image(image)
    base = JobSpec(command=cmd, name=name, cwd=cwd, env=env, gpus=gpus,
                   min_free_mem_mib=parse_size_mib(min_free_mem), priority=priority, retries=retries,
                   image=image, mounts=list(mounts), shm_size=shm_size, ports=list(ports), key=key,
                   allow_shared=allow_shared or None, gpu_pool=gpu_pool, notify=notify, sync_back=sync_back,
                   python_env=python_env)
    return expand(base, parse_sweeps(sweeps), experiments=experiments)


def _archive_path(remote: Host) -> str:
    """A new path for the template archive in the host's private ~/.migrate/tmp (made if missing)."""
    home = remote.home()
    tmp_dir = posixpath.join(home, ".migrate", "tmp")
    remote.run(shell.mkdir_private(posixpath.join(home, ".migrate")) + " && " + shell.mkdir_private(tmp_dir),
               what="create ~/.migrate/tmp")
    return posixpath.join(tmp_dir, f"template-{uuid.uuid4().hex}.tar.gz")


def _put_archive(remote: Host, plan: tpl.TemplatePlan, data: bytes) -> str:
    """The template archive, sent from here; its path there."""
    archive = _archive_path(remote)
    with ui.transfer_progress(transient=True) as progress:
        task = progress.add_task(f"template {plan.source.name}", total=len(data))
        remote.put_file(data, archive, progress=lambda done, total: progress.update(task, completed=done))
    return archive


def _upload_template(remote: Host, plan: tpl.TemplatePlan, data: bytes) -> None:
    remote.run(tpl.unpack_command(plan, _put_archive(remote, plan, data)), what="unpack the template")


def _relay_template(remotes: list[Host], plan: tpl.TemplatePlan, data: bytes) -> list[Host]:
    """Several hosts, a big template: the first gets the archive from here and feeds the others over the
    hosts' network (relay/files.py); each copy is unpacked where it landed. Returns the hosts still
    to be sent a copy from here (the seed could not feed them)."""
    from migrate.relay.files import feed_file
    from migrate.remote.connection import Remote

    seed = remotes[0]
    others = [r for r in remotes[1:] if isinstance(r, Remote)]
    if not isinstance(seed, Remote) or len(others) != len(remotes) - 1:
        return remotes  # test hosts: one copy each
    archive = _put_archive(seed, plan, data)
    landing: dict[str, str] = {}
    try:
        landing = {r.name: _archive_path(r) for r in others}
        why = feed_file(seed, archive, [(r, landing[r.name]) for r in others], hashlib.sha256(data).hexdigest())
    except MigrateError as exc:
        why = {r.name: exc.one_line() for r in others}
    finally:
        seed.run(tpl.unpack_command(plan, archive), what="unpack the template")
    rest: list[Host] = []
    for r in others:
        if why.get(r.name, "not fed") == "":
            ui.info(f"{r.name}: template fed by {seed.name} over the hosts' network")
            r.run(tpl.unpack_command(plan, landing[r.name]), what="unpack the template")
        else:
            ui.info(f"{r.name}: template sent from here ({why.get(r.name, 'not fed')})")
            if r.name in landing:
                r.run(f"rm -f {shell.quote(landing[r.name])}", check=False, what="remove a partial template copy")
            rest.append(r)
    return rest


def copy_template(remotes: list[Host], plan: tpl.TemplatePlan, where: str = "") -> None:
    """Copy the template once per experiment to every host (one host, or every host of a cluster): the
    archive is unpacked into new directories only, so an experiment's copy never changes under its job.
    An experiment directory that exists on any host stops it before anything is copied anywhere. Several
    hosts and an archive of relay.files.MIN_BYTES or more: one copy from here, the first host feeds the
    others."""
    for remote in remotes:
        existing = remote.run(tpl.existing_check_command(plan), what="check experiment directories").stdout.split()
        if existing:
            raise UsageError(f"experiment directory {existing[0]} already exists on {remote.name}",
                             hint="choose new --experiments names (or --template-dest), or remove the old copy")
    if plan.total_bytes > tpl.LARGE_TEMPLATE:
        ui.warn(f"the template is {ui.human_bytes(plan.total_bytes)}: data belongs in push-data, "
                "templates are for code and configs")
    data = tpl.pack(plan)
    ui.step(f"copying template {plan.source} ({len(plan.files)} files, {ui.human_bytes(plan.total_bytes)}) "
            f"to {plan.dest}/{{{','.join(plan.experiments)}}}{where}")
    from migrate.relay.files import MIN_BYTES

    rest = _relay_template(remotes, plan, data) if len(remotes) > 1 and len(data) >= MIN_BYTES else remotes
    for remote in rest:
        _upload_template(remote, plan, data)


def prepare_template(remote: Host, plan: tpl.TemplatePlan, specs: list[JobSpec]) -> None:
    """Copy the template once per experiment and point each job at its copy (absolute paths)."""
    copy_template([remote], plan)
    home = remote.home()
    for spec in specs:
        d = plan.experiment_dir(spec.env["MIGRATE_EXPERIMENT"])
        absolute = home + d[1:] if d.startswith("~/") else d
        if spec.image:
            spec.mounts.append(f"{absolute}:{absolute}")
            spec.cwd = spec.cwd or absolute
        else:
            spec.cwd = absolute


def compose_spec(plan: ComposePlan, *, name: str | None, gpus: int, key: str | None, priority: int,
                 retries: int, min_free_mem: str | None, env: dict[str, str], notify: str | None = None) -> JobSpec:
    """The one process-mode job that runs a compose project."""
    return JobSpec(command=compose_job_command(plan), name=name or f"compose-{plan.project}", gpus=gpus,
                   key=key, priority=priority, retries=retries, min_free_mem_mib=parse_size_mib(min_free_mem),
                   env=env, notify=notify)


def sync_compose_project(host: str, conn: ConnectOptions, plan: ComposePlan) -> None:
    """Copy the compose file's directory to ~/.migrate/compose/<project>/ (rsync: only changes)."""
    from migrate.data.plan import PushDataOptions
    from migrate.data.push import push_data

    ui.step(f"syncing compose project {plan.source_dir} to {host}:~/{plan.remote_dir}")
    [result] = push_data([str(plan.source_dir)], [host], plan.remote_dir, conn, PushDataOptions(method="rsync"))
    if result.status == "failed":
        raise UsageError(f"could not copy the compose project to {host}: {result.error}")


def run_command(host: str, conn: ConnectOptions, specs: list[JobSpec], options: DispatcherOptions, *,
                plan: tpl.TemplatePlan | None, dry_run: bool, as_json: bool, follow: bool,
                compose: ComposePlan | None = None, every: float | None = None) -> int:
    """Queue the jobs (after copying the template or compose project), print what was queued."""
    if dry_run:
        if compose is not None:
            ui.step(f"would sync {compose.source_dir} to {host}:~/{compose.remote_dir} "
                    f"(services: {', '.join(compose.services)})")
        _show_plan(host, specs, options, plan, as_json)
        return 0
    if compose is not None:
        sync_compose_project(host, conn, compose)
    with connect(host, conn) as remote:
        client = AgentClient(remote)
        if plan is not None:
            prepare_template(remote, plan, specs)
        data = submit_with(client, specs, options)
        if data.get("dispatcher"):
            report_dispatcher(data["dispatcher"], remote.name)
        if data.get("paused"):
            ui.warn(f"the queue on {remote.name} is paused: {data['paused']}")
        jobs = data["jobs"]
        lastrun.record(host, [j["id"] for j in jobs], sync=sync_groups(specs, jobs, every))  # for `migrate wait`
        if as_json:
            ui.print_json({"host": remote.target.display, "jobs": jobs,
                           "dispatcher": (data.get("dispatcher") or {}).get("daemon")})
        else:
            ui.table(f"queued on {remote.name}", SUBMITTED_COLUMNS, submitted_rows(jobs, specs))
            existing = sum(1 for j in jobs if j["status"] == "existing")
            if existing:
                ui.info(f"{existing} job(s) already existed (same --key) and were not queued again")
            ui.info(f"follow with `migrate status {host}` and `migrate logs {host} {jobs[0]['id']} -f`")
            targets = sorted({notify_describe(s.notify) for s in specs if s.notify})
            if targets:
                ui.info(f"{remote.name} posts to {', '.join(targets)} when "
                        + ("the job ends" if len(specs) == 1 else "the last of these jobs ends"))
        if follow:
            if len(jobs) != 1:
                ui.warn("--follow shows one job; several were queued (use migrate logs HOST JOB -f)")
                return 0
            return client.stream(["logs", str(jobs[0]["id"]), "--follow"])
    return 0


def sync_groups(specs: list[JobSpec], jobs: list[dict], every: float | None) -> list[dict]:
    """The run's sync-backs: one per HOST_PATH:LOCAL_DIR with the ids of its jobs (pure)."""
    groups: dict[str, list] = {}
    for spec, job in zip(specs, jobs):
        if spec.sync_back:
            groups.setdefault(spec.sync_back, []).append(job["id"])
    return [{"spec": s, "every": every, "jobs": ids} for s, ids in groups.items()]


def redacted(payload: dict) -> dict:
    """A job's payload fit to print: a notify URL only as its format, scheme and host (it carries a token)."""
    if payload.get("notify"):
        return {**payload, "notify": notify_describe(payload["notify"])}
    return payload


def _show_plan(host: str, specs: list[JobSpec], options: DispatcherOptions, plan: tpl.TemplatePlan | None,
               as_json: bool) -> None:
    if as_json:
        ui.print_json({"host": host, "dry_run": True, "jobs": [redacted(s.payload(options)) for s in specs],
                       "template": None if plan is None else {
                           "source": str(plan.source), "dest": plan.dest, "experiments": plan.experiments,
                           "files": len(plan.files), "bytes": plan.total_bytes}})
        return
    if plan is not None:
        ui.step(f"would copy {plan.source} ({len(plan.files)} files, {ui.human_bytes(plan.total_bytes)}, "
                f"{len(plan.ignored)} ignored) to {', '.join(plan.experiment_dir(e) for e in plan.experiments)}")
    ui.step(f"would install the dispatcher agent in ~/.migrate/agent on {host} if missing, start the "
            f"dispatcher if it is not running" + (f" (GPU backend {options.gpu_backend})" if options.gpu_backend
                                                   else ""))
    rows = [(s.name or "(auto)", "cpu" if s.gpus == 0 else str(s.gpus),
             s.image or (f"env {s.python_env}" if s.python_env else ""), s.cwd or "~", s.command) for s in specs]
    ui.table(f"dry run: {len(specs)} job(s) would be queued on {host}", ["name", "gpus", "image", "cwd", "command"],
             rows)
