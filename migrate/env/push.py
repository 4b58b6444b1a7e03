"""`migrate push-env`: probe, resolve here, send only the wheels the host lacks, `uv pip sync` there.

Per host, in parallel: one probe (python, machine, glibc, uv, the wheel cache, the env's lock hash);
the lock for that python and platform is resolved here by uv (once per platform); an environment
already synced to the same lock is left alone (nothing sent). Otherwise a host that reaches an
index installs from it; one that does not gets the missing wheels (and uv, once) as one tar stream
over the host's ssh, into ~/.migrate/wheels/, and installs with --no-index.
"""

from __future__ import annotations

import shutil
import tarfile
import threading
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from migrate import ui
from migrate.cluster import install
from migrate.cluster import plan as cluster_plan
from migrate.env import conda, plan, resolve
from migrate.env.source import Source, python_fits
from migrate.errors import MigrateError, installer_failure
from migrate.remote import shell
from migrate.remote.connection import connect
from migrate.remote.host import Host
from migrate.remote.hosts import ConnectOptions
from migrate.remote.parallel import for_each_host


@dataclass
class PushEnvOptions:
    name: str
    python: str = "python3"        # the interpreter on the host the venv is made from
    offline: bool | None = None    # None: push wheels only when the host reaches no index
    dry_run: bool = False


@dataclass
class EnvResult:
    """One host's outcome (`--json` prints these)."""

    host: str
    name: str
    status: str = "failed"         # unchanged | installed | updated | would-install | would-update | failed
    python: str = ""
    packages: int = 0
    source: str = ""               # "index" | "pushed wheels"
    wheels_sent: int = 0
    bytes_sent: int = 0            # the wheels' bytes (uv, once per host, is counted apart)
    uv_sent: bool = False
    wheels_missing: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""


class _Locks:
    """Resolve once per (python, platform) for all hosts of one push."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self.done: dict[tuple[str, str, str], str] = {}
        self.lock = threading.Lock()

    def get(self, python: str, machine: str, glibc: str) -> str:
        key = (python, machine, plan.uv_platform(machine, glibc))
        with self.lock:
            if key not in self.done:
                self.done[key] = resolve.compile_lock(self.src, python, machine, glibc)
            return self.done[key]


def probe(remote: Host, name: str, python: str) -> plan.HostFacts:
    res = remote.run(plan.probe_command(name, cluster_plan.UV_VERSION, python), check=False,
                     what="probe python", timeout=60)
    if res.exit_code == 127:
        raise MigrateError(f"{remote.name} has no {python}",
                           hint="push-env makes the venv from a python the host has: --python python3.X or a path")
    if not res.ok:
        raise MigrateError(f"probing {python} on {remote.name} failed: "
                           f"{(res.stderr.strip() or '?').splitlines()[-1]}")
    return plan.HostFacts.parse(remote.name, res.stdout)


def check_python(facts: plan.HostFacts, src: Source, python: str) -> None:
    if src.requires_python and not python_fits(facts.python, src.requires_python):
        raise MigrateError(f"{facts.host}'s {python} is Python {facts.python}; {src.path.name} needs "
                           f"{src.requires_python}",
                           hint="--python python3.X picks another python the host has "
                                "(`ls /usr/bin/python3*` there), or use a conda environment")


def tar_members(wheels: list[Path], uv: Path | None) -> list[tuple[str, Path | bytes]]:
    """What the tar stream holds: bin/uv (+ its version stamp) and wheels/<file> (pure)."""
    out: list[tuple[str, Path | bytes]] = []
    if uv is not None:
        out += [("bin/uv", uv), ("bin/uv.version", (cluster_plan.UV_VERSION + "\n").encode())]
    out += [(f"wheels/{w.name}", w) for w in wheels]
    return out


def stream_tar(remote: Host, members: list[tuple[str, Path | bytes]]) -> None:
    """Stream the members as one tar over OpenSSH (the host's ssh settings) into ~/.migrate."""

    def write(stdin) -> None:
        with tarfile.open(fileobj=stdin, mode="w|") as tar:
            for arcname, item in members:
                if isinstance(item, bytes):
                    info = tarfile.TarInfo(arcname)
                    info.size, info.mode, info.mtime = len(item), 0o600, int(time.time())
                    tar.addfile(info, BytesIO(item))
                else:
                    tar.add(str(item), arcname=arcname)

    _stream(remote, plan.unpack_command(), write, "sending wheels", "rerun: wheels that arrived whole are kept")


def _stream(remote: Host, command: str, write, what: str, hint: str) -> None:
    """Run `command` on the host with `write(stdin)` feeding it (no temp file either side)."""
    remote.stream_in(command, write, what=what, hint=hint)


def push_conda_host(host: str, src: Source, opts: PushEnvOptions, conn: ConnectOptions) -> EnvResult:
    """A conda env: compare its conda-meta identity with the host's, else stream the conda-pack tar."""
    t0 = time.monotonic()
    result = EnvResult(host=host, name=opts.name, source="conda-pack")
    prefix = conda.create_from_yml(src.path) if src.kind == "environment.yml" else src.path
    lock = conda.identity(prefix)
    result.packages = len(lock.splitlines())
    with connect(host, conn) as remote:
        facts = probe(remote, opts.name, "python3")
        want = conda.machine(prefix)
        if want and want != facts.machine:
            raise MigrateError(f"{prefix} is built for {want}; {host} is {facts.machine}",
                               hint=f"create the environment for {facts.machine} and push that")
        fresh = not facts.env_exists
        if facts.lock_sha == plan.lock_sha(lock):
            result.status, result.seconds = "unchanged", time.monotonic() - t0
            return result
        verb = "install" if fresh else "update"
        if opts.dry_run:
            result.status, result.seconds = f"would-{verb}", time.monotonic() - t0
            return result
        packed = conda.pack(prefix, lock)
        remote.run(f"cd && {shell.mkdir_private(plan.ENVS_DIR)}", what="create ~/.migrate/envs")
        remote.put_bytes(lock.encode(), f"{remote.home()}/{plan.lock_upload(opts.name)}")
        ui.step(f"{host}: {verb} ~/{plan.env_dir(opts.name)} from conda-pack ({ui.human_bytes(packed.stat().st_size)})")

        def write(stdin) -> None:
            with open(packed, "rb") as fh:
                shutil.copyfileobj(fh, stdin, 1 << 20)

        _stream(remote, plan.conda_install_command(opts.name), write, "sending the conda environment",
                "rerun: the environment is swapped in only when it arrived whole")
        result.bytes_sent = packed.stat().st_size
        result.status = "installed" if fresh else "updated"
    result.seconds = time.monotonic() - t0
    return result


def push_host(host: str, src: Source, opts: PushEnvOptions, conn: ConnectOptions, locks: _Locks) -> EnvResult:
    if src.kind in ("conda", "environment.yml"):
        return push_conda_host(host, src, opts, conn)
    t0 = time.monotonic()
    result = EnvResult(host=host, name=opts.name)
    with connect(host, conn) as remote:
        facts = probe(remote, opts.name, opts.python)
        result.python = facts.python
        check_python(facts, src, opts.python)
        lock = locks.get(facts.python, facts.machine, facts.glibc)
        try:
            pins = plan.parse_lock(lock)
        except ValueError as exc:
            raise MigrateError(f"cannot push {exc.args[0]!r} (not an exact pin from an index)",
                               hint="push-env installs packages from an index or wheels; "
                                    "push local code with push-data") from None
        result.packages = len(pins)
        fresh = not facts.env_exists or facts.env_python != facts.python
        if facts.lock_sha == plan.lock_sha(lock) and not fresh:
            result.status = "unchanged"
            result.seconds = time.monotonic() - t0
            return result
        on_host = {plan.wheel_key(w) for w in facts.wheels}
        result.wheels_missing = [f"{n}=={v}" for n, v in pins if (n, v) not in on_host]
        offline = opts.offline
        if offline is None:
            offline = remote.run(plan.index_command(facts.mirror), check=False, what="check the index",
                                 timeout=30).stdout.strip() != "ok"
        result.source = "pushed wheels" if offline else (f"mirror {facts.mirror}" if facts.mirror else "index")
        verb = "install" if fresh else "update"
        if opts.dry_run:
            result.status = f"would-{verb}"
            if not offline:
                result.wheels_missing = []
            result.seconds = time.monotonic() - t0
            return result
        sent = []
        if offline:
            have = set(facts.wheels)
            sent = [w for w in resolve.ensure_wheels(pins, facts.python, facts.machine, facts.glibc)
                    if w.name not in have]
        uv = None if facts.uv else install.ensure_uv(facts.machine)
        members = tar_members(sent, uv)
        if members:
            size = sum(w.stat().st_size for w in sent)
            ui.step(f"{host}: sending {len(sent)} wheel(s) ({ui.human_bytes(size)})"
                    + (f" and uv ({ui.human_bytes(uv.stat().st_size)}, once)" if uv else ""))
            stream_tar(remote, members)
            result.wheels_sent, result.bytes_sent, result.uv_sent = len(sent), size, uv is not None
        home = remote.home()
        remote.run(f"cd && {shell.mkdir_private(plan.ENVS_DIR)}", what="create ~/.migrate/envs")
        remote.put_bytes(lock.encode(), f"{home}/{plan.lock_upload(opts.name)}")
        ui.step(f"{host}: {verb} ~/{plan.env_dir(opts.name)} ({len(pins)} packages, python {facts.python}, "
                f"from {result.source})")
        res = remote.run(plan.install_command(opts.name, facts.python_path, facts.python, offline=offline,
                                              index_url=facts.mirror),
                         check=False, what="install the environment", timeout=3600)
        if not res.ok:
            why = installer_failure(res.stderr, res.stdout, res.exit_code)
            raise MigrateError(f"installing {opts.name} on {host} failed: {why}",
                               hint=None if offline else "--offline installs from wheels pushed from here")
        result.status = "installed" if fresh else "updated"
    result.seconds = time.monotonic() - t0
    return result


def push_env(hosts: list[str], src: Source, opts: PushEnvOptions, conn: ConnectOptions) -> list[EnvResult]:
    """Push one environment to every host in parallel; one result per host (failures included)."""
    locks = _Locks(src)
    outcomes = for_each_host(hosts, lambda h: push_host(h, src, opts, conn, locks))
    return [o.value if o.value is not None else EnvResult(host=o.host, name=opts.name, error=o.error or "?")
            for o in outcomes]


def delete_env(hosts: list[str], name: str, conn: ConnectOptions, *, dry_run: bool) -> list[EnvResult]:
    """Remove ~/.migrate/envs/NAME (the wheel cache stays: a later push reuses it)."""

    def one(host: str) -> EnvResult:
        with connect(host, conn) as remote:
            if dry_run:
                exists = remote.run(plan.exists_command(name), check=False).stdout.strip() == "yes"
                return EnvResult(host=host, name=name, status="would-delete" if exists else "absent")
            out = remote.run(plan.delete_command(name), what="delete the environment").stdout.strip()
            return EnvResult(host=host, name=name, status="deleted" if out == "deleted" else "absent")

    outcomes = for_each_host(hosts, one)
    return [o.value if o.value is not None else EnvResult(host=o.host, name=name, error=o.error or "?")
            for o in outcomes]


def ensure_on_hosts(hosts: list[str], names: list[str], conn: ConnectOptions, *, where: str,
                    dry_run: bool) -> list[EnvResult]:
    """Push each named environment, from the SOURCE last pushed from here (env/known.py), to every
    host (`run CLUSTER --env NAME`: all nodes, since Ray may place the job on any of them). An
    unchanged env costs one probe per host. Raises on the first env a host could not get; a dry run
    only checks that each SOURCE is known and says what would be pushed."""
    from migrate.env import known

    results: list[EnvResult] = []
    for name in names:
        src, python = known.recall(name, where)
        if dry_run:  # connects to nothing: says what would be pushed first
            ui.info(f"dry run: environment {name} ({src.describe()}) would be pushed to "
                    f"{', '.join(hosts)} first (unchanged hosts: one probe each)")
            continue
        ui.step(f"environment {name} ({src.describe()}) on every host of {where}")
        got = push_env(hosts, src, PushEnvOptions(name=name, python=python), conn)
        failed = [r for r in got if r.error]
        if failed:
            raise MigrateError(f"pushing environment {name} to {failed[0].host} failed: {failed[0].error}",
                               hint=f"fix it, or push by hand: migrate push-env {failed[0].host} "
                                    f"{src.path} --name {name}")
        results += got
    return results
