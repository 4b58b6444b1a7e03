"""`migrate run HOST [options] -- CMD`: queue experiments on the host's GPU dispatcher.

Also the API that `migrate apply` uses for playbook jobs: `JobSpec`, `SubmittedJob`,
`DispatcherOptions`, `submit_jobs()` and `job_statuses()` (defined in `migrate.jobs`).
"""

from __future__ import annotations

import io
import posixpath
import shlex
import sys
import uuid

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.errors import UsageError
from migrate.jobs import template as tpl
from migrate.jobs.client import (
    AgentClient,
    job_statuses,
    report_dispatcher,
    submit_jobs,
    submit_with,
)
from migrate.jobs.compose import ComposePlan, compose_job_command, plan_compose
from migrate.jobs.limits import confirm_many_jobs
from migrate.jobs.options import gpu_backend_option
from migrate.jobs.render import SUBMITTED_COLUMNS, submitted_rows
from migrate.jobs.spec import (
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
from migrate.remote.connection import Remote, connect
from migrate.remote.hosts import ConnectOptions

__all__ = ["DispatcherOptions", "JobSpec", "SubmittedJob", "command", "job_statuses", "submit_jobs"]


def command_text(words: tuple[str, ...]) -> str:
    """One argument is a shell command line as is; several are an argv, quoted word by word."""
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return shlex.join(words)


def parse_env(items: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"bad --env {item!r}", hint="use --env KEY=VALUE")
        env[key] = value
    return env


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
                experiments: list[str] | None) -> list[JobSpec]:
    """The jobs a `migrate run` command line asks for (pure)."""
    cmd = command_text(words)
    if jobs_file:
        if cmd:
            raise UsageError("give either a command or --jobs FILE, not both")
        if sweeps or experiments:
            raise UsageError("--sweep and --from-template go inside the jobs file here",
                             hint="use `sweep:` in the jobs file")
        return load_jobs_file(jobs_file)
    if not cmd.strip():
        raise UsageError("no command to run", hint="put it after --, e.g. migrate run HOST -- python train.py")
    if image is not None:
        check_image(image)
    base = JobSpec(command=cmd, name=name, cwd=cwd, env=env, gpus=gpus,
                   min_free_mem_mib=parse_size_mib(min_free_mem), priority=priority, retries=retries,
                   image=image, mounts=list(mounts), shm_size=shm_size, ports=list(ports), key=key,
                   allow_shared=allow_shared or None, gpu_pool=gpu_pool)
    return expand(base, parse_sweeps(sweeps), experiments=experiments)


def _upload_template(remote: Remote, plan: tpl.TemplatePlan, data: bytes) -> None:
    home = remote.home()
    tmp_dir = posixpath.join(home, ".migrate", "tmp")
    remote.run(shell.mkdir_private(posixpath.join(home, ".migrate")) + " && " + shell.mkdir_private(tmp_dir),
               what="create ~/.migrate/tmp")
    archive = posixpath.join(tmp_dir, f"template-{uuid.uuid4().hex}.tar.gz")
    sftp = remote.connection.sftp()
    with ui.transfer_progress(transient=True) as progress:
        task = progress.add_task(f"template {plan.source.name}", total=len(data))
        sftp.putfo(io.BytesIO(data), archive, file_size=len(data),
                   callback=lambda done, total: progress.update(task, completed=done))
    remote.run(tpl.unpack_command(plan, archive), what="unpack the template")


def prepare_template(remote: Remote, plan: tpl.TemplatePlan, specs: list[JobSpec]) -> None:
    """Copy the template once per experiment and point each job at its copy (absolute paths)."""
    existing = remote.run(tpl.existing_check_command(plan), what="check experiment directories").stdout.split()
    if existing:
        raise UsageError(f"experiment directory {existing[0]} already exists on {remote.name}",
                         hint="choose new --experiments names (or --template-dest), or remove the old copy")
    if plan.total_bytes > tpl.LARGE_TEMPLATE:
        ui.warn(f"the template is {ui.human_bytes(plan.total_bytes)}: data belongs in push-data, "
                "templates are for code and configs")
    data = tpl.pack(plan)
    ui.step(f"copying template {plan.source} ({len(plan.files)} files, {ui.human_bytes(plan.total_bytes)}) "
            f"to {plan.dest}/{{{','.join(plan.experiments)}}}")
    _upload_template(remote, plan, data)
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
                 retries: int, min_free_mem: str | None, env: dict[str, str]) -> JobSpec:
    """The one process-mode job that runs a compose project."""
    return JobSpec(command=compose_job_command(plan), name=name or f"compose-{plan.project}", gpus=gpus,
                   key=key, priority=priority, retries=retries, min_free_mem_mib=parse_size_mib(min_free_mem),
                   env=env)


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
                compose: ComposePlan | None = None) -> int:
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
        if as_json:
            ui.print_json({"host": remote.target.display, "jobs": jobs,
                           "dispatcher": (data.get("dispatcher") or {}).get("daemon")})
        else:
            ui.table(f"queued on {remote.name}", SUBMITTED_COLUMNS, submitted_rows(jobs, specs))
            existing = sum(1 for j in jobs if j["status"] == "existing")
            if existing:
                ui.info(f"{existing} job(s) already existed (same --key) and were not queued again")
            ui.info(f"follow with `migrate status {host}` and `migrate logs {host} {jobs[0]['id']} -f`")
        if follow:
            if len(jobs) != 1:
                ui.warn("--follow shows one job; several were queued (use migrate logs HOST JOB -f)")
                return 0
            return client.stream(["logs", str(jobs[0]["id"]), "--follow"])
    return 0


def _show_plan(host: str, specs: list[JobSpec], options: DispatcherOptions, plan: tpl.TemplatePlan | None,
               as_json: bool) -> None:
    if as_json:
        ui.print_json({"host": host, "dry_run": True, "jobs": [s.payload(options) for s in specs],
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
    rows = [(s.name or "(auto)", "cpu" if s.gpus == 0 else str(s.gpus), s.image or "", s.cwd or "~", s.command)
            for s in specs]
    ui.table(f"dry run: {len(specs)} job(s) would be queued on {host}", ["name", "gpus", "image", "cwd", "command"],
             rows)


@click.command("run", context_settings=CONTEXT_SETTINGS)
@click.argument("host")
@click.argument("words", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD...]")
@connection_options
@click.option("--name", help="Job name (sweeps add [k=v,...]; default job-<id>).")
@click.option("--cwd", help="Working directory on the host (default ~); in a container: -w.")
@click.option("-e", "--env", "env_items", multiple=True, metavar="KEY=VALUE", help="Environment variable (repeatable).")
@click.option("--gpus-per-job", "gpus", type=click.IntRange(0, 64), default=1, show_default=True,
              help="GPUs each job needs; 0 = CPU-only job.")
@click.option("--min-free-mem", metavar="SIZE", help="Free GPU memory a GPU needs, e.g. 20g (default: any).")
@click.option("--allow-shared", is_flag=True,
              help="Admit onto GPUs other people use when --min-free-mem fits (default: only idle GPUs).")
@click.option("--gpu-pool", metavar="LIST", help="Only these GPUs: indices or UUIDs, comma-separated.")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher starts first.")
@click.option("--retries", type=click.IntRange(0, 100), default=0, show_default=True,
              help="Requeue a job that exits non-zero up to N times.")
@click.option("--image", help="Run in this Docker image (container mode) instead of a host process; "
              "checked against Docker's reference grammar [registry[:port]/]path[:tag][@digest].")
@click.option("--mount", "mounts", multiple=True, metavar="SRC:DST[:ro]", help="Bind mount (container mode).")
@click.option("--shm-size", help="Container shared memory, e.g. 16g (default: --ipc=host).")
@click.option("--publish", "ports", multiple=True, metavar="[HOSTPORT:]PORT", help="Publish a container port.")
@click.option("--jobs", "jobs_file", type=click.Path(dir_okay=False), help="Queue the jobs listed in a YAML file.")
@click.option("--sweep", "sweeps", multiple=True, metavar="NAME=V1,V2",
              help="Grid: one job per combination; {NAME} in the command is replaced (repeatable).")
@click.option("--from-template", "template", type=click.Path(file_okay=False),
              help="Copy this local directory once per experiment and run each job in its copy.")
@click.option("--experiments", help="Experiment names for --from-template ({experiment} in the command).")
@click.option("--template-dest", help="Where the copies go on the host (default ~/.migrate/runs/<dir name>).")
@click.option("--ignore", "ignores", multiple=True, metavar="PATTERN",
              help="Leave matching files out of the template copy (repeatable; also .migrateignore).")
@click.option("--compose", "compose_file", type=click.Path(dir_okay=False),
              help="Run a docker-compose project as one job: its directory is synced to the host, GPUs are "
                   "handed over as $MIGRATE_GPU_UUIDS (see docs/run.md).")
@click.option("--key", help="Idempotency key: a job with this key is queued only once.")
@gpu_backend_option("what the host uses now, nvml on a new host")
@click.option("--cpu-slots", type=click.IntRange(1, 1024), help="CPU-only jobs running at once on this host.")
@click.option("--enable-linger", is_flag=True,
              help="Let your dispatcher outlive logout on hosts that kill user processes (sudo loginctl "
                   "enable-linger USER).")
@click.option("-f", "--follow", is_flag=True, help="Then follow the job's output (one job).")
@click.option("--dry-run", is_flag=True, help="Show the jobs that would be queued; connect to nothing.")
@click.option("-y", "--yes", is_flag=True, help="Queue more than 1000 jobs without asking (for scripts).")
@click.option("--json", "as_json", is_flag=True, help="Print the queued jobs as JSON.")
def command(host: str, words: tuple[str, ...], conn: ConnectOptions, name: str | None, cwd: str | None,
            env_items: tuple[str, ...], gpus: int, min_free_mem: str | None, allow_shared: bool,
            gpu_pool: str | None, priority: int, retries: int, image: str | None, mounts: tuple[str, ...],
            shm_size: str | None, ports: tuple[str, ...], jobs_file: str | None, sweeps: tuple[str, ...],
            template: str | None, experiments: str | None, template_dest: str | None, ignores: tuple[str, ...],
            compose_file: str | None, key: str | None, gpu_backend: str | None, cpu_slots: int | None,
            enable_linger: bool, follow: bool, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Queue experiments on HOST's GPU dispatcher and return at once.

    \b
      migrate run HOST -- python train.py --lr 1e-3
      migrate run HOST --sweep lr=1e-3,1e-4 --sweep seed=0,1 -- python train.py --lr {lr} --seed {seed}
      migrate run HOST --jobs jobs.yaml
      migrate run HOST --from-template ./exp --experiments base,wide -- python train.py --cfg {experiment}
      migrate run HOST --image mylab/torch:2.3 --mount /data:/data --gpus-per-job 2 -- python train.py
      migrate run HOST --compose ./stack/docker-compose.yml --gpus-per-job 1

    A job starts when enough GPUs are free: no other user's process on them, memory and
    utilisation near idle (memory within 256 MiB of the lowest idle reading the dispatcher has
    seen on that GPU), not reserved by another of your jobs. It gets
    CUDA_VISIBLE_DEVICES=<GPU UUIDs> and CUDA_DEVICE_ORDER=PCI_BUS_ID, runs in its own process
    group (or container), and keeps running when you log out. The first run installs a small
    agent in ~/.migrate on the host (python3 >= 3.8, nothing else) and starts the dispatcher.
    One CMD argument is a shell command line; several are quoted as separate words.
    """
    if bool(template) != bool(experiments):
        raise UsageError("--from-template and --experiments go together",
                         hint="e.g. --from-template ./exp --experiments a,b")
    exps = tpl.parse_experiments(experiments) if experiments else None
    options = DispatcherOptions(gpu_backend=gpu_backend, allow_shared=allow_shared,
                                gpu_pool=parse_pool(gpu_pool), enable_linger=enable_linger, cpu_slots=cpu_slots)
    if compose_file:
        if words or jobs_file or sweeps or template or image:
            raise UsageError("--compose runs the compose file's services; give no command, --jobs, --sweep, "
                             "--from-template or --image with it")
        cplan = plan_compose(compose_file, name)
        spec = compose_spec(cplan, name=name, gpus=gpus, key=key, priority=priority, retries=retries,
                            min_free_mem=min_free_mem, env=parse_env(env_items))
        sys.exit(run_command(host, conn, [spec], options, plan=None, dry_run=dry_run, as_json=as_json,
                             follow=follow, compose=cplan))
    specs = build_specs(words, jobs_file=jobs_file, sweeps=sweeps, name=name, cwd=cwd, env=parse_env(env_items),
                        gpus=gpus, min_free_mem=min_free_mem, allow_shared=allow_shared,
                        gpu_pool=parse_pool(gpu_pool), priority=priority, retries=retries, image=image,
                        mounts=mounts, shm_size=shm_size, ports=ports, key=key, experiments=exps)
    if not dry_run:
        confirm_many_jobs(len(specs), where=host, yes=yes)  # above 1000: ask (or --yes); over 10000 never built
    plan = None
    if template and exps:
        plan = tpl.plan_template(template, exps, template_dest, list(ignores))
    sys.exit(run_command(host, conn, specs, options, plan=plan, dry_run=dry_run, as_json=as_json, follow=follow))
