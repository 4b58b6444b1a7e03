"""apply's orchestration: a playbook's stages in order on every host, each through its package.

setup -> `migrate.setup.orchestrator.setup_hosts`, images -> (optional local `docker build`, then)
`migrate.image.push.push_images`, envs -> `migrate.env.push.push_env`, data -> `migrate.data.push.push_data`,
run -> `migrate.jobs`
(`submit_jobs`, or a compose project synced and queued as one job). Each job is identified by
playbook + parameters, so a re-apply queues nothing new. A host that fails a stage skips its later
stages; the other hosts go on. The result is an `ApplyReport` (one cell per host and stage) that
`commands/apply.py` prints; nothing here exits. The data and run stages reach each host over one
OpenSSH session (`SessionPool`): one handshake per host for both.

The stage functions import their package lazily: the CLI stays quick to start, and tests replace
the package functions (`migrate.data.push.push_data`, ...) where they live.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

from migrate import local, ui
from migrate.errors import MigrateError
from migrate.playbook.jobs import plan_jobs
from migrate.playbook.loader import Playbook
from migrate.remote.host import Host
from migrate.remote.hosts import ConnectOptions
from migrate.remote.openssh import SessionPool


@dataclass
class StageOutcome:
    """One stage on one host: a short verdict for the summary and whether it changed something."""

    text: str
    changed: int = 0
    failed: bool = False


@dataclass
class ApplyReport:
    """Everything apply did, per host and stage."""

    hosts: list[str]
    stages: list[str]
    cells: dict[tuple[str, str], StageOutcome] = field(default_factory=dict)

    def failed_hosts(self) -> set[str]:
        return {h for (h, _), o in self.cells.items() if o.failed}

    @property
    def changed(self) -> int:
        return sum(o.changed for o in self.cells.values())


# (playbook, hosts, connection options, dry run, report, the apply's one OpenSSH session per host)
StageRunner = Callable[[Playbook, list[str], ConnectOptions, bool, ApplyReport, "SessionPool | None"], None]


def _setup_stage(pb: Playbook, hosts: list[str], conn: ConnectOptions, dry_run: bool, report: ApplyReport,
                 sessions: SessionPool | None = None) -> None:
    from migrate.setup.options import HostSetupOptions
    from migrate.setup.orchestrator import setup_hosts

    s = pb.setup or {}
    options = HostSetupOptions(docker_source=s["docker_source"], nvidia=s["nvidia"],
                               default_runtime=s.get("default_runtime"), registry_mirrors=s["registry_mirrors"],
                               data_root=s.get("data_root"), force=s["force"])
    if s.get("offline"):
        options.offline = s["offline"]
    for r in setup_hosts(hosts, conn, options, dry_run=dry_run):
        if r.error or not r.ok:
            failed_step = next((s for s in r.steps if s.status == "failed"), None)
            why = r.error or (f"{failed_step.name}: {failed_step.detail}" if failed_step else "a step failed")
            report.cells[(r.host, "setup")] = StageOutcome(f"failed: {why}", failed=True)
        else:
            verb = "would change" if dry_run else "changed"
            report.cells[(r.host, "setup")] = StageOutcome(f"{r.changed} {verb}" if r.changed else "ok",
                                                           changed=r.changed)


def _build_images(pb: Playbook, dry_run: bool) -> None:
    for img in pb.images:
        if not img.build:
            continue
        argv = ["docker", "build", "-t", img.name, "-f", f"{img.build}/{img.dockerfile}"]
        for k, v in img.build_args.items():
            argv += ["--build-arg", f"{k}={v}"]
        argv.append(img.build)
        if dry_run:
            ui.info("would build: " + " ".join(argv))
            continue
        ui.step(f"building {img.name} from {img.build}")
        local.run(argv, what=f"docker build {img.name}", timeout=3600,
                  hint="fix the Dockerfile or build the image yourself, then rerun apply")


def _images_stage(pb: Playbook, hosts: list[str], conn: ConnectOptions, dry_run: bool, report: ApplyReport,
                  sessions: SessionPool | None = None) -> None:
    from migrate.image.push import PushImageOptions, push_images

    _build_images(pb, dry_run)
    from migrate.image.hostpull import pull_images
    from migrate.image.local import image_exists

    # a dry run builds nothing: an image built before (an earlier apply) is checked against the hosts as
    # the real apply checks its rebuild (the same image while its Dockerfile and context are unchanged);
    # one never built would be pushed whole
    built_later = {i.name for i in pb.images if i.build and not image_exists(i.name)} if dry_run else set()
    names = [i.name for i in pb.images if i.name not in built_later and not i.pull]
    pulls = [i.name for i in pb.images if i.pull]
    # in a dry run, a host whose setup would still change (e.g. install Docker) cannot be asked yet
    after_setup = [h for h in hosts if dry_run and report.cells.get((h, "setup"), StageOutcome("")).changed]
    for h in after_setup:
        report.cells[(h, "images")] = StageOutcome(f"would push {len(pb.images)} image(s) after setup",
                                                   changed=len(pb.images))
    hosts = [h for h in hosts if h not in after_setup]
    results = push_images(names, hosts, conn, PushImageOptions(dry_run=dry_run)) if names and hosts else []
    results += pull_images(pulls, hosts, conn, dry_run=dry_run) if pulls and hosts else []  # the host pulls these
    for h in hosts:
        mine = [r for r in results if r.host == h]
        failed = [r for r in mine if r.status == "failed"]
        sent = [r for r in mine if r.status not in ("failed", "up to date")]
        if failed:
            report.cells[(h, "images")] = StageOutcome(f"failed: {failed[0].error}", failed=True)
        elif dry_run:
            pending = len(sent) + len(built_later)
            report.cells[(h, "images")] = StageOutcome(f"would push {pending} image(s)" if pending else "up to date",
                                                       changed=pending)
        elif sent:
            pulled = len([r for r in sent if r.status == "pulled"])
            parts = [f"{len(sent) - pulled} sent ({ui.human_bytes(sum(r.bytes_sent for r in sent))})"] \
                if len(sent) > pulled else []
            parts += [f"{pulled} pulled by the host"] if pulled else []
            report.cells[(h, "images")] = StageOutcome(", ".join(parts), changed=len(sent))
        else:
            report.cells[(h, "images")] = StageOutcome("up to date")


def _envs_stage(pb: Playbook, hosts: list[str], conn: ConnectOptions, dry_run: bool, report: ApplyReport,
                sessions: SessionPool | None = None) -> None:
    from migrate.env import push
    from migrate.env.source import check_name, read_source

    per_host: dict[str, list] = {h: [] for h in hosts}
    for entry in pb.envs:
        live = [h for h in hosts if not any(r.error for r in per_host[h])]
        if not live:
            break
        opts = push.PushEnvOptions(name=check_name(entry.name), python=entry.python, dry_run=dry_run)
        for r in push.push_env(live, read_source(entry.source), opts, conn):
            per_host.setdefault(r.host, []).append(r)
    for h, results in per_host.items():
        failed = [r for r in results if r.error]
        changed = [r for r in results if r.status != "unchanged"]
        if failed:
            report.cells[(h, "envs")] = StageOutcome(f"failed: {failed[0].error}", failed=True)
        elif changed:
            verb = "would install or update" if dry_run else "installed or updated"
            report.cells[(h, "envs")] = StageOutcome(f"{len(changed)} env(s) {verb}", changed=len(changed))
        else:
            report.cells[(h, "envs")] = StageOutcome("up to date")


def _data_stage(pb: Playbook, hosts: list[str], conn: ConnectOptions, dry_run: bool, report: ApplyReport,
                sessions: SessionPool | None = None) -> None:
    from migrate.data.plan import PushDataOptions
    from migrate.data.push import Reach, push_data

    per_host: dict[str, list] = {h: [] for h in hosts}
    for entry in pb.data:
        options = PushDataOptions(into=entry.into, exclude=list(entry.exclude), delete=entry.delete,
                                  yes=False, dry_run=dry_run, sudo=entry.sudo)
        live = [h for h in hosts if not any(r.status == "failed" for r in per_host[h])]
        if not live:
            break
        reach = Reach.ssh(conn, sessions) if sessions is not None else None  # the run stage reuses it
        for r in push_data([entry.src], live, entry.dest, conn, options, reach=reach):
            per_host.setdefault(r.host, []).append(r)
    for h, results in per_host.items():
        failed = [r for r in results if r.status == "failed"]
        changed = [r for r in results if r.status == "changed"]
        if failed:
            report.cells[(h, "data")] = StageOutcome(f"failed: {failed[0].error}", failed=True)
        elif dry_run:
            # counted like a real apply (one change per entry that sends something): a dry run must
            # say what it would change, so a script can decide whether to apply
            pending = [r for r in results if r.files_transferred]
            files = sum(r.files_transferred for r in pending)
            report.cells[(h, "data")] = StageOutcome(f"would send {files} file(s)" if pending else "up to date",
                                                     changed=len(pending))
        elif changed:
            report.cells[(h, "data")] = StageOutcome(
                f"{sum(r.files_transferred for r in changed)} file(s) sent", changed=len(changed))
        else:
            report.cells[(h, "data")] = StageOutcome("up to date")


def _run_stage(pb: Playbook, hosts: list[str], conn: ConnectOptions, dry_run: bool, report: ApplyReport,
               sessions: SessionPool | None = None) -> None:
    from migrate.jobs.client import submit_jobs
    from migrate.jobs.spec import DispatcherOptions, JobSpec

    assert pb.run is not None
    if pb.cluster:
        _cluster_run_stage(pb, hosts, conn, dry_run, report)
        return
    if pb.run.get("compose"):
        _compose_stage(pb, hosts, conn, dry_run, report, sessions)
        return
    planned = plan_jobs(pb.name, pb.run, hosts)
    for h in hosts:
        mine = [j for j in planned if j.host == h]
        if dry_run:
            existing, why_unknown = existing_job_keys(h, conn, sessions.get(h) if sessions else None)
            new = [j for j in mine if j.key not in existing]
            for j in new:
                ui.info(f"{h}: would queue {j.name}: {j.command}")
            report.cells[(h, "run")] = StageOutcome(
                dry_run_jobs_text(len(new), len(mine) - len(new), why_unknown), changed=len(new))
            continue
        specs = [JobSpec(command=j.command, name=j.name, key=j.key, **{k: v for k, v in j.spec.items()
                                                                        if v is not None})
                 for j in mine]
        try:
            submitted = submit_jobs(h, conn, specs, DispatcherOptions(), remote=sessions.get(h) if sessions else None)
        except MigrateError as exc:
            report.cells[(h, "run")] = StageOutcome(f"failed: {exc.one_line()}", failed=True)
            continue
        from migrate.jobs import lastrun
        from migrate.jobs.submit import sync_groups

        jobs = [{"id": s.id} for s in submitted]  # what `migrate wait HOST` waits for (and pulls back)
        lastrun.record(h, [j["id"] for j in jobs], sync=sync_groups(specs, jobs, None))
        queued = [s for s in submitted if s.status == "queued"]
        already = len(submitted) - len(queued)
        text = f"{len(queued)} queued" + (f", {already} already there" if already else "")
        report.cells[(h, "run")] = StageOutcome(text, changed=len(queued))


def _cluster_run_stage(pb: Playbook, hosts: list[str], conn: ConnectOptions, dry_run: bool,
                       report: ApplyReport) -> None:
    """`cluster:` in the playbook: bring the hosts up as one Ray cluster (idempotent) and submit every job to
    it once (by key); the cell on the first host says what was submitted, the others name the cluster."""
    import os

    from migrate.cluster import ops
    from migrate.cluster import state as cluster_state
    from migrate.cluster.jobapi import job_api
    from migrate.cluster.jobs import existing_keys, submit_specs
    from migrate.jobs.spec import JobSpec

    assert pb.run is not None and pb.cluster
    name = pb.cluster
    planned = plan_jobs(pb.name, pb.run, [name])
    for h in hosts[1:]:
        report.cells[(h, "run")] = StageOutcome(f"jobs placed by Ray (cluster {name})")
    if dry_run:
        up = cluster_state.exists(name) and sorted(cluster_state.load(name).hosts) == sorted(hosts)
        existing, why = set(), None
        if up:
            try:
                with job_api(cluster_state.load(name), conn) as api:
                    existing = existing_keys(api)
            except MigrateError as exc:
                why = exc.one_line()
        new = [j for j in planned if j.key not in existing]
        for j in new:
            ui.info(f"cluster {name}: would submit {j.name}: {j.command}")
        text = ("" if up else f"would bring up cluster {name}; ") + dry_run_jobs_text(len(new), len(planned) - len(new),
                                                                                       why)
        report.cells[(hosts[0], "run")] = StageOutcome(text, changed=len(new))
        return
    try:
        ops.up(ops.UpOptions(name=name, hosts=hosts, gpu_backend=os.environ.get("MIGRATE_GPU_BACKEND")), conn)
        specs = [JobSpec(command=j.command, name=j.name, key=j.key, **{k: v for k, v in j.spec.items()
                                                                        if v is not None}) for j in planned]
        with job_api(cluster_state.load(name), conn) as api:
            submitted, already = submit_specs(api, cluster_state.load(name), specs)
    except MigrateError as exc:
        for h in hosts:
            report.cells[(h, "run")] = StageOutcome(f"failed: {exc.one_line()}", failed=True)
        return
    text = f"{len(submitted)} submitted to cluster {name}" + (f", {len(already)} already there" if already else "")
    report.cells[(hosts[0], "run")] = StageOutcome(text, changed=len(submitted))


def _compose_stage(pb: Playbook, hosts: list[str], conn: ConnectOptions, dry_run: bool,
                   report: ApplyReport, sessions: SessionPool | None = None) -> None:
    """A compose project: synced to and run on every host, once (keyed by the file's content)."""
    import hashlib
    from pathlib import Path

    from migrate.jobs.client import submit_jobs
    from migrate.jobs.compose import plan_compose
    from migrate.jobs.spec import DispatcherOptions
    from migrate.jobs.submit import compose_spec, sync_compose_project

    assert pb.run is not None
    run = pb.run
    plan = plan_compose(run["compose"], run.get("name") or pb.name)
    digest = hashlib.sha256(Path(run["compose"]).read_bytes() + str(run.get("gpus_per_job")).encode()).hexdigest()
    spec = compose_spec(plan, name=run.get("name") or f"{pb.name}-compose", gpus=run.get("gpus_per_job", 1),
                        key=f"{pb.name}:compose:{digest[:10]}", priority=run.get("priority", 0),
                        retries=run.get("retries", 0), min_free_mem=None, env=dict(run.get("env") or {}),
                        notify=run.get("notify"))
    spec.min_free_mem_mib = run.get("min_free_mem")
    for h in hosts:
        if dry_run:
            existing, why_unknown = existing_job_keys(h, conn, sessions.get(h) if sessions else None)
            if spec.key in existing:
                report.cells[(h, "run")] = StageOutcome("compose job already there")
                continue
            ui.info(f"{h}: would sync {plan.source_dir} and queue {spec.name} (compose: {', '.join(plan.services)})")
            report.cells[(h, "run")] = StageOutcome(
                "would queue 1 compose job" + (f" (existing jobs not checked: {why_unknown})" if why_unknown else ""),
                changed=1)
            continue
        try:
            sync_compose_project(h, conn, plan)
            [submitted] = submit_jobs(h, conn, [spec], DispatcherOptions(),
                                      remote=sessions.get(h) if sessions else None)
        except MigrateError as exc:
            report.cells[(h, "run")] = StageOutcome(f"failed: {exc.one_line()}", failed=True)
            continue
        new = submitted.status == "queued"
        report.cells[(h, "run")] = StageOutcome("1 compose job queued" if new else "compose job already there",
                                                changed=int(new))


class _AgentMissing(Exception):
    """The agent of this migrate version is not on the host (a dry run installs nothing)."""


def existing_job_keys(host: str, conn: ConnectOptions, remote: Host | None = None) -> tuple[set[str], str | None]:
    """The idempotency keys already queued on HOST, read without installing or starting anything.

    Returns (keys, None), or (set(), why) when they could not be read (no agent of this version
    there, host unreachable...): then every job counts as one that would be queued. `remote`: a
    connection the caller holds open (apply's), else a new one.
    """
    from migrate.jobs.client import AgentClient
    from migrate.remote.connection import connect

    class ReadOnlyAgent(AgentClient):
        def install(self) -> None:
            raise _AgentMissing

    try:
        with nullcontext(remote) if remote is not None else connect(host, conn) as r:
            data = ReadOnlyAgent(r).call(["status", "--all"], what="read job status", need_queue=True)
    except _AgentMissing:
        return set(), "no dispatcher agent of this version there"
    except MigrateError as exc:
        return set(), exc.one_line()
    return {j["key"] for j in data.get("jobs") or [] if j.get("key")}, None


def dry_run_jobs_text(new: int, existing: int, why_unknown: str | None) -> str:
    """The run cell of a dry run: what would be queued and what is already there (pure)."""
    text = f"would queue {new} job(s)" if new else "up to date"
    if existing:
        text += f", {existing} already there"
    if why_unknown:
        text += f" (existing jobs not checked: {why_unknown})"
    return text


RUNNERS: dict[str, StageRunner] = {"setup": _setup_stage, "images": _images_stage, "envs": _envs_stage,
                                   "data": _data_stage,
                                   "run": _run_stage}


def apply_playbook(pb: Playbook, hosts: list[str], conn: ConnectOptions, *, only: list[str],
                   dry_run: bool) -> ApplyReport:
    """Run the playbook's stages in order on every host; a host that fails a stage skips the rest."""
    stages = [s for s in pb.stages() if not only or s in only]
    report = ApplyReport(hosts=hosts, stages=stages)
    with SessionPool(conn) as sessions:
        _apply_stages(pb, hosts, conn, stages, dry_run, report, sessions)
    return report


def _apply_stages(pb: Playbook, hosts: list[str], conn: ConnectOptions, stages: list[str], dry_run: bool,
                  report: ApplyReport, sessions: SessionPool) -> None:
    for i, stage in enumerate(stages, 1):
        live = [h for h in hosts if h not in report.failed_hosts()]
        for h in hosts:
            if h not in live:
                report.cells[(h, stage)] = StageOutcome("skipped (earlier stage failed)")
        if not live:
            continue
        ui.step(f"[{i}/{len(stages)}] {stage} on {', '.join(live)}" + (" (dry run)" if dry_run else ""))
        t0 = time.monotonic()
        try:
            with ui.data_to_stderr():
                RUNNERS[stage](pb, live, conn, dry_run, report, sessions)
        except MigrateError as exc:  # a stage-wide failure (bad image name, local build failed...)
            for h in live:
                report.cells.setdefault((h, stage), StageOutcome(f"failed: {exc.one_line()}", failed=True))
        ui.debug(f"{stage} took {time.monotonic() - t0:.1f}s")
