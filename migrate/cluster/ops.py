"""`cluster up / status / down`: the orchestration. Pure command lines come from plan.py and install.py.

up: connect to every host -> preflight all (python, machine, disk, ports; then can every worker open a
TCP connection to the head's GCS port) -> nothing is installed unless all of it passes -> `--dry-run`
stops here and shows the plan -> the GPUs each node offers (the agent's free-GPU rule now, or
--gpu-pool) -> install Ray where it is missing (offline: pushed wheels) -> `ray start --head`, then the
workers -> record the cluster here and on each host -> check every node joined.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrate import ui
from migrate.cluster import container, install, plan, state
from migrate.cluster.jobapi import job_api
from migrate.cluster.jobs import latest_attempts, ray_state
from migrate.cluster.state import ClusterRecord, Node
from migrate.errors import MigrateError, UsageError, installer_failure
from migrate.jobs.bundle import build_agent
from migrate.jobs.client import AgentClient
from migrate.remote import shell
from migrate.remote.connection import connect
from migrate.remote.host import Host
from migrate.remote.hosts import ConnectOptions
from migrate.remote.parallel import for_each_host
from migrate.remote.probe import HostFacts

SHIPPED = Path(__file__).parent / "shipped"
Connector = Callable[[str], Host]   # host -> an open Remote (or tests' FakeHost)


@dataclass
class UpOptions:
    name: str
    hosts: list[str]
    head: str | None = None
    gpu_pool: dict[str, list[str]] = field(default_factory=dict)   # host ("" = every host) -> GPUs
    offline: bool | None = None        # None: offline only when the host cannot reach the index
    port_base: int | None = None
    head_address: str | None = None    # the address workers use for the head (default: probed)
    gpu_backend: str | None = None
    object_store_mib: int = 128
    cpus: int | None = None
    dry_run: bool = False
    restart: bool = False              # a cluster whose head is gone: stop what is left and start again


def parse_gpu_pool(items: tuple[str, ...]) -> dict[str, list[str]]:
    """`--gpu-pool 0,1` (every host) or `--gpu-pool HOST=2,3` (repeatable)."""
    pools: dict[str, list[str]] = {}
    for item in items:
        host, sep, rest = item.rpartition("=")
        gpus = [g.strip() for g in (rest if sep else item).split(",") if g.strip()]
        if not gpus:
            raise UsageError(f"--gpu-pool {item!r} names no GPU", hint="e.g. --gpu-pool 0,1 or --gpu-pool HOST=2,3")
        bad = [g for g in gpus if not (g.isdigit() or g.startswith(("GPU-", "MIG-")))]
        if bad:
            raise UsageError(f"--gpu-pool {item!r}: {bad[0]!r} is neither a GPU index nor a GPU UUID",
                             hint="e.g. --gpu-pool 0,1, --gpu-pool HOST=2,3 or --gpu-pool GPU-5a4d...")
        pools[host if sep else ""] = gpus
    return pools


def _check(opts: UpOptions) -> tuple[str, list[str]]:
    state.check_name(opts.name)
    if not opts.hosts:
        raise UsageError("no hosts", hint=f"migrate cluster up {opts.name} HOST1 HOST2 ...")
    if len(set(opts.hosts)) != len(opts.hosts):
        raise UsageError("a host is given twice")
    head = opts.head or opts.hosts[0]
    if head not in opts.hosts:
        raise UsageError(f"--head {head} is not one of the hosts")
    for h in opts.gpu_pool:
        if h and h not in opts.hosts:
            raise UsageError(f"--gpu-pool names {h}, which is not one of the hosts")
    return head, [h for h in opts.hosts if h != head]


def preflight(remotes: dict[str, Any], head: str, opts: UpOptions, ports: plan.Ports) -> dict[str, HostFacts]:
    """Every host's facts; MigrateError with every problem found (nothing has been changed)."""
    def probe(host: str) -> HostFacts:
        wanted = ports.head_ports() if host == head else ports.node_ports()
        res = remotes[host].run(plan.preflight_command(wanted, check_index=opts.offline is None),
                                what="preflight", timeout=60)
        return plan.parse_preflight(res.stdout)

    outcomes = for_each_host(list(remotes), probe)
    problems = [f"{o.host}: {o.error}" for o in outcomes if not o.ok]
    facts = {o.host: o.value for o in outcomes if o.value is not None}  # ok: set exactly when no error
    for host, f in facts.items():
        problems += plan.preflight_problems(host, f, head=host == head, cluster=opts.name)
    if problems:
        raise MigrateError("; ".join(problems), hint="nothing was installed or started")
    return facts


def check_reach(remotes: dict[str, Any], head: str, head_ip: str, workers: list[str], port: int) -> None:
    """Can each worker open a TCP connection to the head's GCS port? (a listener stands in for Ray)."""
    if not workers:
        return
    token = "migrate-" + secrets.token_hex(8)
    pid = remotes[head].run(plan.listener_command(port, 30, len(workers), token),
                            what="start a test listener").stdout.split()
    try:
        outcomes = for_each_host(workers, lambda w: remotes[w].run(plan.reach_command(head_ip, port, token),
                                                                   what="reach", timeout=30).stdout.strip())
    finally:   # a failed check must not leave the port taken for the next try
        if pid and pid[0].isdigit():
            remotes[head].run(plan.stop_listener_command(int(pid[0])), check=False, what="stop the test listener")
    bad = [(o.host, o.error or o.value) for o in outcomes if not o.ok or o.value != "ok"]
    if bad:
        host, why = bad[0]
        raise MigrateError(f"{host} cannot reach the head {head} at {head_ip}:{port} ({why}): these hosts cannot "
                           "form one cluster",
                           hint="use per-host queues instead (`migrate run HOST ...` on each, or `migrate apply`), "
                                "or give the head's address the others reach with --head-address")


def offered_gpus(remote: Host, host: str, opts: UpOptions) -> list[str]:
    """GPU indices this node offers Ray: --gpu-pool, else those the free-GPU rule admits now."""
    client = AgentClient(remote)
    args = ["gpus"] + (["--backend", opts.gpu_backend] if opts.gpu_backend else [])
    data = client.call(args, what="read the GPUs", need_queue=False)
    devices = [d for d in data.get("devices", []) if not d.get("mig_mode")]
    pool = opts.gpu_pool.get(host) or opts.gpu_pool.get("")
    if pool:
        by = {str(d["index"]): str(d["index"]) for d in devices} | {d["uuid"]: str(d["index"]) for d in devices}
        missing = [g for g in pool if g not in by]
        if missing and devices:
            raise UsageError(f"{host} has no GPU {missing[0]}", hint="see `migrate gpus " + host + "`")
        return [by.get(g, g) for g in pool]
    free = [str(d["index"]) for d in devices if d.get("verdict") == "free"]
    busy = [d for d in devices if d.get("verdict") != "free"]
    if busy:
        ui.info(f"{host}: not offering GPU(s) {', '.join(str(d['index']) for d in busy)} "
                f"({busy[0].get('verdict')}: {busy[0].get('reason') or '?'})")
    return free


def ensure_installed(remote: Host, host: str, facts: HostFacts, offline: bool | None) -> str:
    """Install the pinned Ray in the host's private venv unless it is there; 'ok' or 'installed'."""
    if facts.node.ray_installed == plan.RAY_VERSION:
        return "ok"
    use_wheels = offline if offline is not None else facts.node.index != "ok"
    wheels = install.ensure_wheels(facts.python_version, facts.arch) if use_wheels else None
    uv = install.ensure_uv(facts.arch)
    mirror = facts.node.mirror
    how = "pushed wheels" if use_wheels else (f"the mirror {mirror}" if mirror else "the package index")
    ui.step(f"{host}: installing ray[default]=={plan.RAY_VERSION} into ~/{plan.venv_dir()} from {how}")
    install.push_bundle(remote, install.bundle_tar(uv, wheels))
    res = remote.run(install.install_command(facts.node.python_path, offline=use_wheels, index_url=mirror),
                     check=False,
                     what="install Ray", timeout=1200)
    if not res.ok:
        why = installer_failure(res.stderr, res.stdout, res.exit_code)
        raise MigrateError(f"installing Ray on {host} failed: {why}",
                           hint="--offline installs from wheels pushed from here" if not use_wheels else None)
    return "installed"


def ship_scripts(remote: Host) -> None:
    """The polite job wrapper, the gang driver, the launcher and the agent zipapp they import (the node side
    of the cluster is the agent's code: migrate/agent/raynode.py), into ~/.migrate/ray/bin (always: they
    are small, and they go together, so the scripts and the agent on a node are of one migrate)."""
    home = remote.home()
    remote.run(f"cd && {shell.mkdir_private(plan.RAY_DIR + '/bin')}", what="create ~/.migrate/ray/bin")
    remote.put_bytes(build_agent().data, f"{home}/{plan.NODE_AGENT}", mode=0o600)
    remote.put_bytes((SHIPPED / "job_wrapper.py").read_bytes(), f"{home}/{plan.WRAPPER}", mode=0o700)
    remote.put_bytes((SHIPPED / "gang.py").read_bytes(), f"{home}/{plan.GANG}", mode=0o700)
    remote.put_bytes((SHIPPED / "launcher.py").read_bytes(), f"{home}/{plan.LAUNCHER}", mode=0o700)


def _dry_run_report(opts: UpOptions, head: str, facts: dict[str, HostFacts], ports: plan.Ports,
                    head_ip: str, as_json: bool) -> dict:
    rows = []
    for host in opts.hosts:
        f = facts[host]
        action = "Ray installed" if f.node.ray_installed == plan.RAY_VERSION else (
            "install from pushed wheels" if (opts.offline or (opts.offline is None and f.node.index != "ok"))
            else f"install from the mirror {f.node.mirror}" if f.node.mirror else "install from the package index")
        pool = opts.gpu_pool.get(host) or opts.gpu_pool.get("")
        rows.append({"host": host, "role": "head" if host == head else "worker", "ip": f.node.ip,
                     "python": f.python_version, "install": action,
                     "gpus": ",".join(pool) if pool else "free GPUs at up (free-GPU rule)"})
    report = {"name": opts.name, "dry_run": True, "head": head, "head_address": f"{head_ip}:{ports.gcs}",
              "ray_version": plan.RAY_VERSION, "ports": ports.to_dict(), "hosts": rows}
    if not as_json:
        ui.table(f"dry run: cluster {opts.name} (Ray {plan.RAY_VERSION}, GCS {head_ip}:{ports.gcs}, "
                 f"job API on the head's 127.0.0.1:{ports.dashboard})",
                 ["host", "role", "ip", "python", "install", "gpus"],
                 [(r["host"], r["role"], r["ip"], r["python"], r["install"], r["gpus"]) for r in rows])
        ui.info("nothing was installed or started")
    return report


def up(opts: UpOptions, conn: ConnectOptions, *, connector: Connector | None = None,
       as_json: bool = False) -> dict:
    """Bring the cluster up (idempotent); the report `cluster up --json` prints."""
    head, workers = _check(opts)
    ports = plan.ports_from(opts.port_base)
    if state.exists(opts.name):
        old = state.load(opts.name)
        changed = differences(old, opts, head, ports)
        if changed:
            raise UsageError(f"cluster {opts.name} is up with other options: {'; '.join(changed)}",
                             hint=f"to apply them: `migrate cluster down {opts.name} && "
                                  f"{up_command_line(opts)}` (ends its jobs)")
        return _rerun(old, opts, conn, connector, as_json)
    connector = connector or (lambda h: connect(h, conn))
    t0 = time.monotonic()
    outcomes = for_each_host(opts.hosts, connector)
    bad = [o for o in outcomes if not o.ok]
    remotes = {o.host: o.value for o in outcomes if o.value is not None}  # ok: set exactly when no error
    try:
        if bad:
            raise MigrateError("; ".join(f"{o.host}: {o.error}" for o in bad), hint="nothing was installed")
        facts = preflight(remotes, head, opts, ports)
        head_ip = opts.head_address or facts[head].node.ip
        check_reach(remotes, head, head_ip, workers, ports.gcs)
        if opts.dry_run:
            return _dry_run_report(opts, head, facts, ports, head_ip, as_json)
        gpus = {o.host: o.value for o in for_each_host(opts.hosts, lambda h: offered_gpus(remotes[h], h, opts))
                if o.value is not None}
        # the tuple runs both steps in one worker; ship_scripts returns None and only its raising counts
        installs = for_each_host(opts.hosts, lambda h: (ensure_installed(remotes[h], h, facts[h], opts.offline),
                                                        ship_scripts(remotes[h]))[0])  # type: ignore[func-returns-value]
        failed = [f"{o.host}: {o.error}" for o in installs if not o.ok] + [
            f"{h}: cannot read its GPUs" for h in opts.hosts if h not in gpus]
        if failed:
            raise MigrateError("; ".join(failed), hint="nothing was started; fix it and run `cluster up` again")
        cpus = {h: opts.cpus or max(1, facts[h].cpus) for h in opts.hosts}
        record = ClusterRecord(name=opts.name, ray_version=plan.RAY_VERSION, ports=ports, gpu_backend=opts.gpu_backend,
                               created=time.time(), agent="~/" + build_agent().remote_relpath,
                               nodes=[Node(host=h, ip=head_ip if h == head else facts[h].node.ip, gpus=gpus[h],
                                           cpus=cpus[h], head=h == head) for h in opts.hosts],
                               auth_token=secrets.token_urlsafe(32), head_home=facts[head].home,
                               gpu_pool=opts.gpu_pool)
        state.save(record)   # before anything starts: `cluster down NAME` can stop a half-started cluster
        tokens = {h: f"{facts[h].home}/{plan.AUTH_TOKEN}" for h in opts.hosts}
        for h in opts.hosts:   # over the SSH channel into a 0600 file: never in an argv or a log
            remotes[h].put_bytes(record.auth_token.encode(), tokens[h], mode=0o600)
        hn = record.head
        ui.step(f"{head}: ray start --head ({len(hn.gpus)} GPU(s) offered: {','.join(hn.gpus) or 'none'})")
        _start(remotes[head], plan.head_start_command(ports, hn.ip, hn.gpus, hn.cpus,
                                                      object_store_mib=opts.object_store_mib,
                                                      auth_token_path=tokens[head]), head)

        def start_worker(h: str) -> None:
            n = next(x for x in record.nodes if x.host == h)
            ui.step(f"{h}: ray start --address {head_ip}:{ports.gcs} ({len(n.gpus)} GPU(s) offered: "
                    f"{','.join(n.gpus) or 'none'})")
            _start(remotes[h], plan.worker_start_command(ports, head_ip, n.ip, n.gpus, n.cpus,
                                                         object_store_mib=opts.object_store_mib,
                                                         auth_token_path=tokens[h]), h)

        started = for_each_host(workers, start_worker)
        failed = [f"{o.host}: {o.error}" for o in started if not o.ok]
        state.save(record)
        text = json.dumps(record.to_dict(), indent=2)
        for h in opts.hosts:
            remotes[h].put_bytes(text.encode(), f"{facts[h].home}/{plan.HOST_RECORD}", mode=0o600)
        if failed:
            raise MigrateError("; ".join(failed), hint=f"`migrate cluster down {opts.name}` stops what started")
    finally:
        for r in remotes.values():
            r.close()
    alive = _wait_nodes(record, conn, len(record.nodes))
    ensure_launcher(record, conn)
    seconds = time.monotonic() - t0
    ui.step(f"cluster {opts.name} is up: {len(alive)} node(s), {sum(len(n.gpus) for n in record.nodes)} GPU(s) "
            f"offered, Ray {record.ray_version} ({seconds:.0f} s)")
    return {"name": opts.name, "action": "started", "seconds": round(seconds, 1), **record.to_dict()}


def differences(old: ClusterRecord, opts: UpOptions, head: str, ports: plan.Ports) -> list[str]:
    """What `cluster up` was asked that differs from the running cluster (pure; empty: the same)."""
    out = []
    if sorted(old.hosts) != sorted(opts.hosts):
        out.append(f"hosts {' '.join(old.hosts)} -> {' '.join(opts.hosts)}")
    if old.head.host != head:
        out.append(f"head {old.head.host} -> {head}")
    if opts.port_base is not None and old.ports != ports:
        out.append(f"--port-base {old.ports.gcs} -> {ports.gcs}")
    if (opts.gpu_backend or None) != (old.gpu_backend or None):
        out.append(f"--gpu-backend {old.gpu_backend or 'nvml'} -> {opts.gpu_backend or 'nvml'}")
    if opts.gpu_pool and opts.gpu_pool != old.gpu_pool:
        def spell(pool: dict) -> str:
            return " ".join(f"{h + '=' if h else ''}{','.join(g)}" for h, g in sorted(pool.items())) or "(free GPUs)"
        out.append(f"--gpu-pool {spell(old.gpu_pool)} -> {spell(opts.gpu_pool)}")
    return out


def up_command_line(opts: UpOptions) -> str:
    """The `migrate cluster up` command that asks for `opts` (pure; for hints)."""
    words = ["migrate", "cluster", "up", opts.name, *opts.hosts]
    if opts.head and opts.head != opts.hosts[0]:
        words += ["--head", opts.head]
    for h, g in sorted(opts.gpu_pool.items()):
        words += ["--gpu-pool", (f"{h}=" if h else "") + ",".join(g)]
    if opts.port_base is not None:
        words += ["--port-base", str(opts.port_base)]
    if opts.gpu_backend:
        words += ["--gpu-backend", opts.gpu_backend]
    if opts.head_address:
        words += ["--head-address", opts.head_address]
    return shell.join(words)


def _rerun(old: ClusterRecord, opts: UpOptions, conn: ConnectOptions, connector: Connector | None,
           as_json: bool) -> dict:
    """`cluster up` of a recorded cluster: nothing to do, repair the nodes that are gone (the running
    jobs keep running), or, with --restart only, start a cluster whose head is gone again."""
    alive = _alive_nodes(old, conn)
    if alive is None:   # the head's job API does not answer: nothing of the cluster can be kept
        if not opts.restart:
            raise MigrateError(f"cluster {old.name}'s head {old.head.host} does not answer: its jobs cannot be "
                               "listed or kept", hint=f"`{up_command_line(opts)} --restart` stops what is left "
                                                      "of it on every host and starts it again")
        if opts.dry_run:
            ui.info(f"dry run: `cluster up --restart` would stop what is left of cluster {old.name} and start it "
                    "again; nothing was changed")
            return {"name": old.name, "action": "would restart", "dry_run": True, **old.to_dict()}
        ui.info(f"cluster {old.name}: its head does not answer; stopping what is left and starting it again "
                "(--restart)")
        _stop_all(old, conn, connector=connector)
        state.remove(old.name)
        report = up(opts, conn, connector=connector, as_json=as_json)
        with state.locked(old.name) as record:     # job ids go on: `logs NAME 3` never means two jobs
            record.job_seq = max(record.job_seq, old.job_seq)
        return report
    alive_ips = {n.get("node_ip") for n in alive}
    # Ray marks a SIGKILLed node dead only after its health checks time out: ask the hosts too
    checks = for_each_host([n.host for n in old.nodes if not n.head and n.ip in alive_ips],
                           lambda h: _raylet_runs(h, conn, connector))
    gone = {o.host for o in checks if o.ok and not o.value}
    missing = [n for n in old.nodes if not n.head and (n.ip not in alive_ips or n.host in gone)]
    if not missing:
        started = False if opts.dry_run else ensure_launcher(old, conn)
        ui.step(f"cluster {old.name} is already up ({len(old.nodes)} nodes, Ray {old.ray_version}): "
                + ("its job launcher was started again" if started else "nothing to do"))
        return {"name": old.name, "action": "changed" if started else "ok", "dry_run": opts.dry_run,
                **old.to_dict()}
    names = ", ".join(n.host for n in missing)
    if opts.dry_run:
        ui.info(f"dry run: node(s) {names} of cluster {old.name} are gone: `cluster up` would start Ray there "
                "again and keep every running job; nothing was changed")
        return {"name": old.name, "action": "would repair", "dry_run": True, "repair": [n.host for n in missing],
                **old.to_dict()}
    ui.step(f"cluster {old.name}: node(s) {names} are gone; starting Ray there again (running jobs are kept)")
    outcomes = for_each_host([n.host for n in missing], lambda h: _repair_node(old, h, opts, conn, connector))
    failed = [f"{o.host}: {o.error}" for o in outcomes if not o.ok]
    state.save(old)
    if failed:
        raise MigrateError("; ".join(failed), hint=f"fix it and run `migrate cluster up {old.name} ...` again")
    _wait_nodes(old, conn, len(old.nodes))
    ensure_launcher(old, conn)
    return {"name": old.name, "action": "repaired", "repaired": [n.host for n in missing], **old.to_dict()}


def _raylet_runs(host: str, conn: ConnectOptions, connector: Connector | None) -> bool:
    with (connector or (lambda h: connect(h, conn)))(host) as remote:
        res = remote.run(plan.raylet_running_command(), check=False, what="look for the raylet")
        return res.stdout.strip() == "yes"


def _repair_node(record: ClusterRecord, host: str, opts: UpOptions, conn: ConnectOptions,
                 connector: Connector | None) -> str:
    """Start Ray again on one worker whose node is gone: what is left of ours there is stopped first
    (a raylet that lost the head), then the token, the scripts and `ray start` as at `up`."""
    node = next(n for n in record.nodes if n.host == host)
    with (connector or (lambda h: connect(h, conn)))(host) as remote:
        facts = plan.parse_preflight(remote.run(plan.preflight_command(record.ports.node_ports()),
                                                      what="preflight", timeout=60).stdout)
        if facts.node.cluster_here and facts.node.cluster_here != record.name:
            raise MigrateError(f"{host} is now a node of cluster {facts.node.cluster_here}: left alone")
        _stop_host(remote, record.ray_version, False, record.name, host)
        facts = plan.parse_preflight(remote.run(plan.preflight_command(record.ports.node_ports()),
                                                      what="preflight", timeout=60).stdout)
        problems = plan.preflight_problems(host, facts, head=False, cluster=record.name)
        if problems:
            raise MigrateError("; ".join(problems))
        node.gpus = offered_gpus(remote, host, UpOptions(name=record.name, hosts=record.hosts,
                                                         gpu_pool=record.gpu_pool, gpu_backend=record.gpu_backend))
        ensure_installed(remote, host, facts, opts.offline)
        ship_scripts(remote)
        token = f"{facts.home}/{plan.AUTH_TOKEN}"
        remote.put_bytes(record.auth_token.encode(), token, mode=0o600)
        remote.put_bytes(json.dumps(record.to_dict(), indent=2).encode(), f"{facts.home}/{plan.HOST_RECORD}",
                         mode=0o600)
        ui.step(f"{host}: ray start --address {record.head.ip}:{record.ports.gcs} ({len(node.gpus)} GPU(s) "
                f"offered: {','.join(node.gpus) or 'none'})")
        _start(remote, plan.worker_start_command(record.ports, record.head.ip, node.ip, node.gpus, node.cpus,
                                                 object_store_mib=opts.object_store_mib, auth_token_path=token), host)
    return "started"


def _start(remote: Host, command: str, host: str) -> None:
    res = remote.run(command, check=False, what="ray start", timeout=300)
    if not res.ok:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
        detail = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "?")
        raise MigrateError(f"ray start failed on {host}: {detail.strip()[:300]}",
                           hint=f"see ~/{plan.TEMP_DIR}/session_latest/logs on {host}")


def ensure_launcher(record: ClusterRecord, conn: ConnectOptions, timeout: float = 90) -> bool:
    """Start migrate's job launcher (a long-lived Ray job on the head, shipped/launcher.py) unless it
    answers already; wait until it does. True when it was started. Jobs run without it (as Ray jobs,
    about a second slower to start), so a launcher that does not come up is a warning, not an error."""
    with job_api(record, conn) as api:
        if state.exists(record.name) and record.head_home and not state.load(record.name).head_home:
            state.save(record)      # a record from before the launcher's socket learns the head's home
        if api.launcher:
            return False
        for j in api.ray_jobs():  # one that is still starting: wait for it rather than start another
            meta = j.get("metadata") or {}
            if meta.get("migrate_role") == "launcher" and j.get("status") in ("PENDING", "RUNNING"):
                sid = j["submission_id"]
                break
        else:
            sid = api.submit_ray_job(plan.launcher_payload(record.name, record.ports, record.ray_version,
                                                           stamp=int(time.time() * 1000)))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = api.job(sid)
            if job.get("status") == "RUNNING" and api.attach_launcher() and api.probe_launcher():
                return True
            if job.get("status") in ("FAILED", "STOPPED", "SUCCEEDED"):
                tail = [ln for ln in api.logs(sid).splitlines() if ln.strip()][-1:]
                ui.warn(f"migrate's job launcher did not start on {record.head.host} ({job.get('message') or ''}"
                        f"{': ' + tail[0][:200] if tail else ''}); jobs will run as plain Ray jobs")
                return False
            time.sleep(0.5)
    ui.warn(f"migrate's job launcher did not answer within {timeout:.0f} s; jobs will run as plain Ray jobs")
    return False


def _alive_nodes(record: ClusterRecord, conn: ConnectOptions) -> list[dict] | None:
    """The ALIVE nodes Ray reports, or None when the head's job API does not answer."""
    try:
        with job_api(record, conn, wait=15, use_launcher=False) as api:
            return [n for n in api.nodes() if n.get("state") == "ALIVE"]
    except MigrateError:
        return None


def _wait_nodes(record: ClusterRecord, conn: ConnectOptions, want: int, timeout: float = 60) -> list[dict]:
    deadline = time.monotonic() + timeout
    with job_api(record, conn, use_launcher=False) as api:
        while True:
            try:
                alive = [n for n in api.nodes() if n.get("state") == "ALIVE"]
            except MigrateError:
                alive = []
            if len(alive) >= want or time.monotonic() > deadline:
                break
            time.sleep(1)
    if len(alive) < want:
        ui.warn(f"only {len(alive)} of {want} nodes joined within {timeout:.0f} s (see `migrate cluster status "
                f"{record.name}`)")
    return alive


# -- status --------------------------------------------------------------------------------------------
def running_jobs_by_ip(jobs: list[dict], id_to_ip: dict[str, str], gang_logs: dict[str, str]) -> dict[str, tuple]:
    """node IP -> (GPUs used, running jobs) (pure). A single-node job counts on the node that runs it; a
    gang job's GPUs count on the nodes its ranks reserved (from its driver's log), not on its driver's."""
    from migrate.cluster.shell import reserved_ips

    out: dict[str, tuple] = {}

    def add(ip: str | None, gpus: int) -> None:
        if ip:
            g, c = out.get(ip, (0, 0))
            out[ip] = (g + gpus, c + 1)

    for j in jobs:
        if j.get("status") != "RUNNING":
            continue
        meta = j.get("metadata") or {}
        gpus, nodes = int(meta.get("migrate_gpus", "0") or 0), int(meta.get("migrate_nodes", "0") or 0)
        if not nodes:
            add(id_to_ip.get(j.get("driver_node_id") or ""), gpus)
            continue
        for ip in reserved_ips(gang_logs.get(j.get("submission_id") or "", "")):
            add(ip, gpus // nodes)
    return out


def status(name: str, conn: ConnectOptions) -> dict:
    """Nodes (state, GPUs offered/used, running jobs) and job counts, from Ray through the forward."""
    record = state.load(name)
    try:
        with job_api(record, conn) as api:
            nodes = api.nodes()
            jobs = api.jobs()
            launcher = api.launcher is not None
            gang_logs = {j["submission_id"]: api.logs(j["submission_id"]) for j in jobs
                         if j.get("status") == "RUNNING" and int((j.get("metadata") or {}).get("migrate_nodes") or 0)}
        reachable = True
    except MigrateError as exc:
        ui.warn(f"the head does not answer: {exc.one_line()}")
        nodes, jobs, reachable, launcher, gang_logs = [], [], False, False, {}
    by_ip = {n["node_ip"]: n for n in sorted(nodes, key=lambda n: n.get("state") == "ALIVE")}  # ALIVE wins
    used = running_jobs_by_ip(jobs, {n["node_id"]: n["node_ip"] for n in nodes}, gang_logs)
    out_nodes = []
    for n in record.nodes:
        ray_node = by_ip.get(n.ip) or {}
        gpus, count = used.get(n.ip, (0, 0))
        out_nodes.append({"host": n.host, "ip": n.ip, "role": "head" if n.head else "worker",
                          "state": (ray_node.get("state") or "missing").lower() if reachable else "unknown",
                          "gpus_offered": n.gpus, "gpus_used": gpus, "running_jobs": count})
    counts: dict[str, int] = {}   # jobs, not attempts: a retried job counts once, in its latest state
    for j in latest_attempts(jobs).values():
        st = ray_state(j)
        counts[st] = counts.get(st, 0) + 1
    return {"name": name, "head": record.head.host, "ray_version": record.ray_version, "reachable": reachable,
            "launcher": launcher,
            "ports": record.ports.to_dict(), "nodes": out_nodes, "job_counts": counts}


# -- down ----------------------------------------------------------------------------------------------
def _stop_host(remote: Host, version: str, purge: bool, name: str = "", host: str = "") -> dict:
    here = remote.run(plan.host_record_name_command(), check=False,
                      what="read the host's cluster record").stdout.strip()
    if name and here and here != name:   # `ray stop` would end that cluster's processes too
        ui.warn(f"{host or 'a host'}: now a node of cluster {here}, not {name}: left alone")
        return {"killed_leftovers": 0, "removed_containers": 0, "purged": False, "left_alone": here}
    remote.run(plan.stop_command(version), check=False, what="ray stop", timeout=120)
    left = remote.run(plan.leftover_command(), check=False, what="look for Ray processes").stdout.strip()
    killed = 0
    if left:
        killed = len(left.splitlines())
        remote.run(plan.kill_leftovers_command(), check=False, what="kill leftover Ray processes")
        time.sleep(1)
        left = remote.run(plan.leftover_command(), check=False, what="look for Ray processes").stdout.strip()
    if left:
        raise MigrateError(f"Ray processes of ours still run: {left.splitlines()[0][:120]}")
    containers = 0
    if name:  # container jobs: their containers are no process of ours (the Docker daemon runs them)
        out = remote.run(container.remove_containers_command(name), check=False, what="remove job containers",
                         timeout=120).stdout.strip()
        containers = int(out) if out.isdigit() else 0
    # the launcher's job table goes with the cluster, as Ray's own job history does
    cleanup = plan.purge_command() if purge else plan.cleanup_command(name or "x")
    remote.run(cleanup, check=False, what="remove the cluster record")
    return {"killed_leftovers": killed, "removed_containers": containers, "purged": purge}


def _stop_all(record: ClusterRecord, conn: ConnectOptions, *, purge: bool = False,
              connector: Connector | None = None) -> list:
    connector = connector or (lambda h: connect(h, conn))

    def work(host: str) -> dict:
        with connector(host) as remote:
            return _stop_host(remote, record.ray_version, purge, record.name, host)

    return for_each_host(record.hosts, work)


def down_commands(name: str, version: str, purge: bool) -> list[str]:
    """What `down` runs on each host, in order (pure; `--dry-run` prints it). Leftover Ray processes are
    killed only when the check after `ray stop` finds some."""
    return [plan.host_record_name_command(), plan.stop_command(version), plan.leftover_command(),
            container.remove_containers_command(name), plan.purge_command() if purge else plan.cleanup_command(name)]


def down(name: str, conn: ConnectOptions, *, purge: bool = False, forget: bool = False,
         connector: Connector | None = None, hosts: list[str] | None = None, dry_run: bool = False) -> dict:
    """Stop Ray on every host and check none of ours is left; forget the cluster. Idempotent.

    A host that fails keeps the record (run `down` again), unless `forget`: for hosts that are gone.
    A corrupt local record needs `forget` and the hosts to stop it on."""
    state.check_name(name)
    if not state.exists(name):
        ui.info(f"no cluster named {name} here: nothing to stop")
        return {"name": name, "action": "none", "hosts": []}
    try:
        record = state.load(name)
        if hosts and sorted(hosts) != sorted(record.hosts):
            raise UsageError(f"cluster {name}'s hosts are {' '.join(record.hosts)}",
                             hint=f"`migrate cluster down {name}` needs no hosts")
    except state.CorruptRecord:
        if not (forget and hosts):
            raise
        ui.warn(f"the record of cluster {name} is corrupt: stopping Ray on {', '.join(hosts)} as you said")
        record = ClusterRecord(name=name, ray_version=plan.RAY_VERSION, ports=plan.Ports(),
                               nodes=[Node(host=h, ip="", head=i == 0) for i, h in enumerate(hosts)])
    if dry_run:  # connect to nothing, change nothing
        commands = down_commands(name, record.ray_version, purge)
        return {"name": name, "action": "would stop", "dry_run": True, "purged": False, "hosts": record.hosts,
                "commands": commands}
    outcomes = _stop_all(record, conn, purge=purge, connector=connector)
    results = [{"host": o.host, "ok": o.ok, "error": o.error, **(o.value or {})} for o in outcomes]
    failed = [o for o in outcomes if not o.ok]
    if failed and forget:
        for o in failed:
            ui.warn(f"{o.host}: {o.error}; forgetting it anyway (--forget)")
    elif failed:
        raise MigrateError("; ".join(f"{o.host}: {o.error}" for o in failed),
                           hint=f"the record is kept: run `migrate cluster down {name}` again once they answer, "
                                "or add --forget if they are gone for good")
    state.remove(name)
    for h in (h for h in results if h["ok"]):
        ui.step(f"{h['host']}: Ray stopped, no Ray process of ours left"
                + (f", {h['removed_containers']} job container(s) removed" if h.get("removed_containers") else "")
                + (", ~/.migrate/ray removed" if purge else ""))
    return {"name": name, "action": "stopped", "purged": purge, "hosts": results}
