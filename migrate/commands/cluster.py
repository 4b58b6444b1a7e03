"""`migrate cluster up|status|down NAME`: several borrowed servers as one Ray cluster (migrate.cluster.ops)."""

from __future__ import annotations

import sys

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, Size, connection_options, host_option, hosts_from
from migrate.cluster import ops, plan
from migrate.completion import complete_cluster, complete_host
from migrate.errors import UsageError
from migrate.jobs.options import gpu_backend_option
from migrate.remote.hosts import ConnectOptions
from migrate.units import MIB

# every Ray port sits at a fixed offset from --port-base: the highest must stay a port (issue 20.6: 65000
# was accepted and died in bind() with an OverflowError)
_HIGHEST_OFFSET = max(vars(plan.Ports()).values()) - plan.Ports().gcs
MAX_PORT_BASE = 65535 - _HIGHEST_OFFSET


def _check_port_base(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and not 1024 <= value <= MAX_PORT_BASE:
        raise UsageError(f"--port-base {value} is out of range "
                         f"(Ray's ports would be {value} to {value + _HIGHEST_OFFSET})",
                         hint=f"give 1024 to {MAX_PORT_BASE}")
    return value


@click.group("cluster", context_settings=CONTEXT_SETTINGS)
def group() -> None:
    """Several borrowed servers as one Ray cluster: up, status, down.

    \b
    Examples:
      migrate cluster up lab gpu1 gpu2 gpu3          gpu1 is the head
      migrate run lab --sweep lr=1e-3,1e-4 -- python train.py --lr {lr}
      migrate run lab --nodes 2 --gpus-per-node 4 -- torchrun ... train.py
      migrate status lab;  migrate cluster status lab;  migrate cluster down lab

    Ray (one pinned version) goes into a private venv under ~/.migrate/ray on each host, no root.
    See docs/cluster.md.
    """


@group.command("up", context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@click.argument("hosts", nargs=-1, shell_complete=complete_host)
@host_option("A host of the cluster (repeatable; as HOSTS, which may be given instead).")
@connection_options
@click.option("--head", help="The head node (default: the first host).")
@click.option("--gpu-pool", "gpu_pool", multiple=True, metavar="[HOST=]LIST",
              help="Offer only these GPUs (indices or UUIDs); HOST= for one host (repeatable). "
                   "Default: the GPUs migrate's free-GPU rule admits now.")
@click.option("--offline", is_flag=True, default=None,
              help="Install from wheels downloaded here and pushed (default: only for hosts that cannot "
                   "reach the package index).")
@click.option("--port-base", type=int, callback=_check_port_base, metavar="N",
              help=f"GCS port; Ray's other ports follow it at fixed offsets, up to {_HIGHEST_OFFSET} above it "
                   f"(default 26379; 1024 to {MAX_PORT_BASE}).")
@click.option("--head-address", help="The head's address as the other hosts reach it (default: probed).")
@click.option("--num-cpus", "cpus", type=click.IntRange(1, 4096), help="CPUs each node offers (default: its count).")
@click.option("--object-store", "object_store_mib", type=Size(MIB, "MiB", 80, 1 << 20), default=128,
              show_default=True, help="Ray's object store per node: a size (1G, 512M; a plain number is MiB); "
                                      "jobs here pass little data through it.")
@gpu_backend_option("nvml")
@click.option("--restart", is_flag=True,
              help="When the cluster's head is gone: stop what is left of it everywhere (its jobs end) and start "
                   "it again. Without it a rerun only repairs lost worker nodes and keeps every running job.")
@click.option("-n", "--dry-run", is_flag=True,
              help="Preflight every host and show the plan; install and start nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the cluster record as JSON.")
def up_command(name: str, hosts: tuple[str, ...], host: tuple[str, ...], conn: ConnectOptions, head: str | None,
               gpu_pool: tuple[str, ...],
               offline: bool | None, port_base: int | None, head_address: str | None, cpus: int | None,
               object_store_mib: int, gpu_backend: str | None, restart: bool, dry_run: bool, as_json: bool) -> None:
    """Make HOSTS one Ray cluster called NAME (idempotent: a running cluster is left as it is).

    Preflight first, on every host, before anything is installed: python3 version, machine,
    free disk, ports free, and every worker opening a TCP connection to the head's GCS port.
    Each node offers Ray only the GPUs that are free now (or --gpu-pool); the job API and
    migrate's job launcher (jobs start on warm Ray workers) stay on the head's 127.0.0.1 and are
    reached through SSH. Ray runs with token authentication: a fresh token, in a 0600 file on
    each host, so other users of the servers cannot run code through Ray's ports. One cluster per
    user on a host: a host that is a node of another of your clusters is refused.

    Rerun with the same options: nothing to do; a stopped launcher is started again; worker nodes
    that are gone are started again while every running job keeps running. A head that is gone
    needs --restart (its jobs are lost with it). Other options than the running cluster's are
    refused with the command that applies them.

    \b
    Examples:
      migrate cluster up lab gpu1 gpu2 gpu3 --dry-run
      migrate cluster up lab gpu1 gpu2 gpu3 --gpu-pool gpu1=0,1
      migrate cluster up lab gpu1 gpu2 gpu3 --restart      the head was rebooted
      migrate cluster up lab -H gpu1 -H gpu2 -n            the plan only
    """
    every = hosts_from("cluster up", hosts, host)
    if not every:
        raise UsageError("name the cluster's hosts", hint=f"migrate cluster up {name} gpu1 gpu2, or -H gpu1 -H gpu2")
    opts = ops.UpOptions(name=name, hosts=every, head=head, gpu_pool=ops.parse_gpu_pool(gpu_pool),
                         offline=offline, port_base=port_base, head_address=head_address, gpu_backend=gpu_backend,
                         object_store_mib=object_store_mib, cpus=cpus, dry_run=dry_run, restart=restart)
    report = ops.up(opts, conn, as_json=as_json)
    if as_json:
        ui.print_json(report)
    sys.exit(0)


@group.command("status", context_settings=CONTEXT_SETTINGS)
@click.argument("name", shell_complete=complete_cluster)
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print nodes and job counts as JSON.")
def status_command(name: str, conn: ConnectOptions, as_json: bool) -> None:
    """Nodes of cluster NAME: state, GPUs offered and used, running jobs (jobs: `migrate status NAME`).

    \b
    Examples:
      migrate cluster status lab
      migrate cluster status lab --json
    """
    data = ops.status(name, conn)
    if as_json:
        ui.print_json(data)
        sys.exit(0 if data["reachable"] else 1)
    if not data["reachable"]:
        jobs = "the head does not answer: its jobs are unknown"
    else:
        jobs = ", ".join(f"{n} {s}" for s, n in data["job_counts"].items()) or "no jobs"
    ui.info(f"cluster {name}: head {data['head']}, Ray {data['ray_version']}, {jobs}")
    ui.table(None, ["host", "ip", "role", "state", "gpus offered", "gpus used", "running jobs"],
             [(n["host"], n["ip"], n["role"], n["state"], ",".join(n["gpus_offered"]) or "-", str(n["gpus_used"]),
               str(n["running_jobs"])) for n in data["nodes"]])
    if data["reachable"] and not data["launcher"]:
        ui.warn("migrate's job launcher is not answering on the head: jobs start as plain Ray jobs (about a "
                f"second slower); `migrate cluster up {name} HOST...` starts it again")
    sys.exit(0 if data["reachable"] else 1)


@group.command("down", context_settings=CONTEXT_SETTINGS)
@click.argument("name", shell_complete=complete_cluster)
@click.argument("hosts", nargs=-1, shell_complete=complete_host)
@connection_options
@click.option("--purge", is_flag=True, help="Also remove ~/.migrate/ray (the venvs, wheels, logs) on every host.")
@click.option("--forget", is_flag=True, help="Forget the cluster here even if some hosts cannot be reached.")
@host_option("A host of the cluster (repeatable; as HOSTS).")
@click.option("-n", "--dry-run", is_flag=True, help="Show the hosts and the commands; connect to nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print what was stopped as JSON.")
def down_command(name: str, hosts: tuple[str, ...], conn: ConnectOptions, purge: bool, forget: bool,
                 host: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Stop Ray on every host of NAME and check no Ray process of ours is left (idempotent).

    A host that has since become a node of another cluster of yours is left alone. HOSTS are needed
    only when the local record of NAME is corrupt (then they say where to stop it).

    \b
    Examples:
      migrate cluster down lab
      migrate cluster down lab --purge               also remove ~/.migrate/ray
      migrate cluster down lab --forget gpu1 gpu2    the record here is unreadable
      migrate cluster down lab -n                    what it would run, where
    """
    report = ops.down(name, conn, purge=purge, forget=forget, hosts=hosts_from("cluster down", hosts, host),
                      dry_run=dry_run)
    if as_json:
        ui.print_json(report)
    elif report.get("dry_run"):
        ui.info(f"dry run: would stop Ray on {', '.join(report['hosts'])} and forget cluster {name} here; "
                "on each host:")
        for c in report["commands"]:
            ui.line("  " + c)
    sys.exit(0)
