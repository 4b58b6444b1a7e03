"""`migrate run HOST [options] -- CMD`: queue experiments on the host's GPU dispatcher.

The click adapter: it builds the job specs and options and calls `migrate.jobs.submit.run_command`.
The Python API `migrate apply` uses lives in `migrate.jobs.submit` (JobSpec, SubmittedJob,
DispatcherOptions, submit_jobs, job_statuses).
"""

from __future__ import annotations

import sys

import click

from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.completion import complete_target
from migrate.data.syncback import parse_sync_back
from migrate.errors import UsageError
from migrate.jobs import template as tpl
from migrate.jobs.compose import plan_compose
from migrate.jobs.options import gpu_backend_option, job_field_options, notify_format_option, notify_target
from migrate.jobs.spec import DispatcherOptions, check_specs
from migrate.jobs.submit import build_specs, compose_spec, parse_env, parse_pool, split_env
from migrate.jobs.target import Submission, job_target
from migrate.remote.hosts import ConnectOptions
from migrate.units import parse_duration


@click.command("run", context_settings=CONTEXT_SETTINGS)
@click.argument("host", shell_complete=complete_target)
@click.argument("words", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD...]")
@connection_options
@job_field_options  # --name, --image, --cwd, --mount, ... --key: one option per row of the job table
@click.option("--jobs", "jobs_file", type=click.Path(dir_okay=False), help="Queue the jobs listed in a YAML file.")
@click.option("--sweep", "sweeps", multiple=True, metavar="NAME=V1,V2",
              help="Grid: one job per combination; {NAME} in the command is replaced (repeatable).")
@click.option("--from-template", "template", type=click.Path(file_okay=False),
              help="Copy this local directory once per experiment (new directories only: an existing "
                   "copy is never overwritten) and run each job in its copy.")
@click.option("--experiments", help="Experiment names for --from-template ({experiment} in the command).")
@click.option("--template-dest", help="Where the copies go on the host (default ~/.migrate/runs/<dir name>).")
@click.option("--ignore", "ignores", multiple=True, metavar="PATTERN",
              help="Leave matching files out of the template copy (repeatable; also .migrateignore).")
@click.option("--compose", "compose_file", type=click.Path(dir_okay=False),
              help="Run a docker-compose project as one job: its directory is synced to the host, GPUs are "
                   "handed over as $MIGRATE_GPU_UUIDS (see docs/run.md).")
@gpu_backend_option("what the host uses now, nvml on a new host")
@click.option("--cpu-slots", type=click.IntRange(1, 1024), help="CPU-only jobs running at once on this host.")
@click.option("--enable-linger", is_flag=True,
              help="Let your dispatcher outlive logout on hosts that kill user processes (sudo loginctl "
                   "enable-linger USER).")
@click.option("--nodes", type=click.IntRange(1, 1024), help="Cluster only: one job across N servers at once "
              "(MASTER_ADDR, MASTER_PORT, NODE_RANK, NNODES, WORLD_SIZE set for torchrun; docs/cluster.md).")
@click.option("--gpus-per-node", type=click.IntRange(0, 64), help="With --nodes: GPUs on each node "
              "(default: --gpus-per-job).")
@notify_format_option
@click.option("--every", metavar="DURATION", help="With --sync-back: also pull every DURATION (10m, 1h) while "
              "the jobs run, whenever `migrate wait` runs (default: only after they end).")
@click.option("-f", "--follow", is_flag=True, help="Then follow the job's output (one job).")
@click.option("-n", "--dry-run", is_flag=True, help="Show the jobs that would be queued; connect to nothing.")
@click.option("-y", "--yes", is_flag=True, help="Queue more than 1000 jobs without asking (for scripts).")
@click.option("--json", "as_json", is_flag=True, help="Print the queued jobs as JSON.")
def command(host: str, words: tuple[str, ...], conn: ConnectOptions, name: str | None, cwd: str | None,
            env_items: tuple[str, ...], gpus: int, min_free_mem: str | None, allow_shared: bool,
            gpu_pool: str | None, python_env: str | None, priority: int, retries: int, image: str | None,
            mounts: tuple[str, ...],
            shm_size: str | None, ports: tuple[str, ...], jobs_file: str | None, sweeps: tuple[str, ...],
            template: str | None, experiments: str | None, template_dest: str | None, ignores: tuple[str, ...],
            compose_file: str | None, key: str | None, notify: str | None, sync_back: str | None,
            notify_format: str | None, every: str | None,
            gpu_backend: str | None, cpu_slots: int | None, enable_linger: bool, nodes: int | None,
            gpus_per_node: int | None, follow: bool, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Queue experiments on HOST's GPU dispatcher and return at once.

    \b
    Examples:
      migrate run HOST -- python train.py --lr 1e-3
      migrate run HOST --sweep lr=1e-3,1e-4 --sweep seed=0,1 -- \\
          python train.py --lr {lr} --seed {seed}
      migrate run HOST --jobs jobs.yaml
      migrate run HOST --from-template ./exp --experiments base,wide -- \\
          python train.py --cfg {experiment}
      migrate run HOST --image mylab/torch:2.3 --mount /data:/data \\
          --gpus-per-job 2 -- python train.py
      migrate run HOST --compose ./stack/docker-compose.yml --gpus-per-job 1
      migrate run HOST --notify https://ntfy.sh/my-topic -- python train.py
      migrate run HOST --env torch -- python train.py   # env from push-env

    A job starts when enough GPUs are free: no other user's process on them, memory and
    utilisation near idle (memory within 256 MiB of the lowest idle reading the dispatcher has
    seen on that GPU), not reserved by another of your jobs. It gets
    CUDA_VISIBLE_DEVICES=<GPU UUIDs> and CUDA_DEVICE_ORDER=PCI_BUS_ID, runs in its own process
    group (or container), and keeps running when you log out. The first run installs a small
    agent in ~/.migrate on the host (python3 >= 3.8, nothing else) and starts the dispatcher.
    One CMD argument is a shell command line; several are quoted as separate words.
    HOST may be a cluster (`migrate cluster up`): Ray places the jobs, --image, --env NAME (from
    the SOURCE last given to push-env here) and the --from-template copies go to every cluster
    host first (an image, or a template of 8 MiB or more, crosses your link once: the first host
    feeds the others), and --priority orders the submission within this run (docs/cluster.md).
    """
    if bool(template) != bool(experiments):
        raise UsageError("--from-template and --experiments go together",
                         hint="e.g. --from-template ./exp --experiments a,b")
    exps = tpl.parse_experiments(experiments) if experiments else None
    notify = notify_target(notify, notify_format)
    if sync_back:
        parse_sync_back(sync_back)
    every_s = parse_duration(every, what="--every") if every else None
    target = job_target(host, conn)  # a host's queue or a cluster: decided here, once
    target.check_submit(nodes=nodes or 0, notify=bool(notify), compose=bool(compose_file))
    options = DispatcherOptions(gpu_backend=gpu_backend, allow_shared=allow_shared,
                                gpu_pool=parse_pool(gpu_pool), enable_linger=enable_linger, cpu_slots=cpu_slots)
    if compose_file:
        if words or jobs_file or sweeps or template or image:
            raise UsageError("--compose runs the compose file's services; give no command, --jobs, --sweep, "
                             "--from-template or --image with it")
        cplan = plan_compose(compose_file, name)
        spec = compose_spec(cplan, name=name, gpus=gpus, key=key, priority=priority, retries=retries,
                            min_free_mem=min_free_mem, env=parse_env(env_items), notify=notify)
        sys.exit(target.submit(Submission([spec], options, compose=cplan, dry_run=dry_run, as_json=as_json,
                                          follow=follow, yes=yes)))
    variables, env_name = split_env(env_items)
    if env_name and python_env and env_name != python_env:
        raise UsageError(f"--env {env_name} and --python-env {python_env} name two environments")
    python_env = python_env or env_name
    specs = build_specs(words, jobs_file=jobs_file, sweeps=sweeps, name=name, cwd=cwd, env=variables,
                        gpus=gpus, min_free_mem=min_free_mem, allow_shared=allow_shared,
                        gpu_pool=parse_pool(gpu_pool), priority=priority, retries=retries, image=image,
                        mounts=mounts, shm_size=shm_size, ports=ports, key=key, experiments=exps, notify=notify,
                        sync_back=sync_back, python_env=python_env)
    check_specs(specs)  # before a dry run too: e.g. --env NAME with --image
    plan = None
    if template and exps:
        plan = tpl.plan_template(template, exps, template_dest, list(ignores))
    sys.exit(target.submit(Submission(specs, options, template=plan, dry_run=dry_run, as_json=as_json, follow=follow,
                                      yes=yes, every=every_s, nodes=nodes or 0,
                                      gpus_per_node=gpus if gpus_per_node is None else gpus_per_node)))
