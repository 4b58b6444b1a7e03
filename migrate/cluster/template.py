"""`migrate run CLUSTER --from-template DIR --experiments a,b`: the copies on every cluster host.

Ray may start a job on any node, so each experiment's copy of DIR goes to every host, at the same
home-relative path (`<dest>/<experiment>`, default ~/.migrate/runs/<DIR name>/<experiment>), before
anything is submitted. The copy is the one a single host gets (jobs.submit.copy_template: one archive,
unpacked into new directories only; an experiment directory that exists on any host stops it before
anything is copied), so a queued experiment's code never changes under it; each job's cwd is its copy
(`~/...`, expanded on the node by the polite wrapper, so hosts with different home directories agree).
"""

from __future__ import annotations

from collections.abc import Callable

from migrate import ui
from migrate.cluster.state import ClusterRecord
from migrate.errors import MigrateError, UsageError
from migrate.jobs import template as tpl
from migrate.jobs.spec import JobSpec
from migrate.remote.connection import connect
from migrate.remote.host import Host
from migrate.remote.hosts import ConnectOptions
from migrate.remote.parallel import for_each_host


def check_dest(plan: tpl.TemplatePlan) -> None:
    """The copies live under the user's home on every host: same path everywhere, no root needed."""
    if not plan.dest.startswith("~/") and plan.dest != "~":
        raise UsageError(f"--template-dest {plan.dest}: on a cluster the copies go under your home on every host",
                         hint="give a path starting with ~/ (default ~/.migrate/runs/<DIR name>)")


def copies(record: ClusterRecord, plan: tpl.TemplatePlan) -> list[dict]:
    """What goes where: one row per experiment, the same directory on every host (pure)."""
    return [{"experiment": e, "dest": plan.experiment_dir(e), "hosts": list(record.hosts)} for e in plan.experiments]


def point_specs(plan: tpl.TemplatePlan, specs: list[JobSpec]) -> None:
    """Each job runs in its experiment's copy (the ~/ path, the same on every host)."""
    for spec in specs:
        if spec.image:
            raise UsageError("--from-template with --image is not supported on a cluster yet",
                             hint="drop --image, or queue the container jobs on one host")
        spec.cwd = plan.experiment_dir(spec.env["MIGRATE_EXPERIMENT"])


def describe(record: ClusterRecord, plan: tpl.TemplatePlan) -> str:
    return (f"{plan.source} ({len(plan.files)} files, {ui.human_bytes(plan.total_bytes)}, {len(plan.ignored)} "
            f"ignored) to {plan.dest}/{{{','.join(plan.experiments)}}} on the {len(record.hosts)} hosts of cluster "
            f"{record.name} ({', '.join(record.hosts)})")


def sync(record: ClusterRecord, plan: tpl.TemplatePlan, conn: ConnectOptions, *, dry_run: bool,
         connector: Callable[[str], Host] | None = None) -> None:
    """Copy the template into every experiment directory on every host, as on one host; raise if an
    experiment directory exists on any host (nothing is copied then) or a host fails."""
    if dry_run:
        ui.step(f"would copy {describe(record, plan)} (new directories only) before submitting")
        return
    from migrate.jobs.submit import copy_template

    connector = connector or (lambda h: connect(h, conn))
    outcomes = for_each_host(list(record.hosts), connector)
    remotes = [o.value for o in outcomes if o.ok and o.value is not None]
    try:
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise MigrateError(f"could not copy the template to {failed[0].host}: {failed[0].error}",
                               hint="nothing was submitted; fix that host or take it out of the cluster")
        copy_template(remotes, plan, f" on the {len(remotes)} hosts of cluster {record.name}")
    finally:
        for remote in remotes:
            remote.close()
