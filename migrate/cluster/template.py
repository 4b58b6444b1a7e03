"""`migrate run CLUSTER --from-template DIR --experiments a,b`: the copies on every cluster host.

Ray may start a job on any node, so each experiment's copy of DIR goes to every host, at the same
home-relative path (`<dest>/<experiment>`, default ~/.migrate/runs/<DIR name>/<experiment>), before
anything is submitted. The copy is the ordinary push-data rsync (all hosts in parallel, only changed
files on a rerun), leaving out exactly what plan_template left out; each job's cwd is its copy (`~/...`,
expanded on the node by the polite wrapper, so hosts with different home directories agree).
"""

from __future__ import annotations

from migrate import ui
from migrate.cluster.state import ClusterRecord
from migrate.errors import MigrateError, UsageError
from migrate.jobs import template as tpl
from migrate.jobs.spec import JobSpec
from migrate.remote.hosts import ConnectOptions


def check_dest(plan: tpl.TemplatePlan) -> None:
    """The copies live under the user's home on every host: same path everywhere, no root needed."""
    if not plan.dest.startswith("~/") and plan.dest != "~":
        raise UsageError(f"--template-dest {plan.dest}: on a cluster the copies go under your home on every host",
                         hint="give a path starting with ~/ (default ~/.migrate/runs/<DIR name>)")


def excludes(plan: tpl.TemplatePlan) -> list[str]:
    """rsync patterns that leave out what plan_template left out, anchored at the template's root (pure)."""
    return [f"/{rel}" for rel in plan.ignored]


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


def sync(record: ClusterRecord, plan: tpl.TemplatePlan, conn: ConnectOptions, *, dry_run: bool) -> None:
    """Copy the template into every experiment directory on every host; raise if a host failed."""
    if dry_run:
        ui.step(f"would copy {describe(record, plan)} (rsync: only changed files) before submitting")
        return
    from migrate.data.plan import PushDataOptions
    from migrate.data.push import push_data

    if plan.total_bytes > tpl.LARGE_TEMPLATE:
        ui.warn(f"the template is {ui.human_bytes(plan.total_bytes)}: data belongs in push-data, "
                "templates are for code and configs")
    ui.step(f"copying template {describe(record, plan)}")
    options = PushDataOptions(method="rsync", exclude=excludes(plan))
    for row in copies(record, plan):
        results = push_data([str(plan.source)], row["hosts"], row["dest"], conn, options)
        failed = [r for r in results if r.status == "failed"]
        for r in results:
            if r.status != "failed":  # "up to date" on a rerun where nothing changed
                ui.info(f"  {r.host}:{row['dest']} {r.status}"
                        + (f" ({r.files_transferred} files sent)" if r.files_transferred else ""))
        if failed:
            raise MigrateError(f"could not copy the template to {failed[0].host}:{row['dest']}: {failed[0].error}",
                               hint="nothing was submitted; fix that host or take it out of the cluster")
