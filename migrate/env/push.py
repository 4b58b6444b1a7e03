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
from migrate.data.push import remote_spec
from migrate.data.rsync import rsh_join
from migrate.data.transfer import TransferError, run_rsync
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
    bytes_sent: int = 0            # the wheels' bytes (uv, once per host, is counted apart); conda: what
                                   # crossed the link (rsync's "Total bytes sent", or the whole pack)
    transfer: str = ""             # conda: "rsync" (the delta against the pack kept there) | "stream" (whole)
    pack_bytes: int = 0            # conda: the pack's size (a dry run: about)
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
    """A conda env: compare its conda-meta identity with the host's; else pack it here and send the pack,
    as an rsync delta against the pack kept there from the last push, or whole (plan.conda_transfer)."""
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
        about_pack, unpacked = conda.sizes(prefix)
        cached = conda.pack_file(lock)
        result.pack_bytes = cached.stat().st_size if cached.exists() else about_pack
        how = choose_transfer(host, opts.name, facts, result.pack_bytes, unpacked)  # refused before packing
        packed = None
        if not opts.dry_run:
            packed = conda.pack(prefix, lock)
            result.pack_bytes = packed.stat().st_size
            how = choose_transfer(host, opts.name, facts, result.pack_bytes, unpacked)
        result.transfer = how.path
        if opts.dry_run:
            ui.info(f"{host}: dry run: would {verb} ~/{plan.env_dir(opts.name)} by {how.path}: {how.reason}")
            result.status, result.seconds = f"would-{verb}", time.monotonic() - t0
            return result
        assert packed is not None  # packed above unless a dry run
        remote.run(plan.conda_prepare_command(opts.name, drop_kept=not how.keep), what="create ~/.migrate/envs")
        remote.put_bytes(lock.encode(), f"{remote.home()}/{plan.lock_upload(opts.name)}")
        ui.step(f"{host}: {verb} ~/{plan.env_dir(opts.name)} from conda-pack ({ui.human_bytes(result.pack_bytes)})")
        ui.info(f"{host}: {how.reason}")
        if how.path == "rsync":
            rsh = rsh_join(remote.openssh_argv()[:-1])
            argv = plan.pack_rsync_argv(str(packed), remote_spec(remote, plan.pack_path(opts.name)), rsh)
            try:
                sent = run_rsync(argv, total_bytes=result.pack_bytes, what="rsync of the conda pack").stats
            except TransferError as exc:
                raise MigrateError(exc.message, hint="rerun: the environment and the pack kept on the host stay as "
                                   "they were until the new pack arrived whole") from None
            result.bytes_sent = sent.sent_bytes
            ui.info(f"{host}: sent {ui.human_bytes(sent.sent_bytes)} of the {ui.human_bytes(result.pack_bytes)} pack")
            res = remote.run(plan.conda_extract_command(opts.name), check=False, what="unpack the conda environment",
                             timeout=3600)
            if not res.ok:
                raise MigrateError(f"unpacking {opts.name} on {host} failed: "
                                   f"{(res.stderr.strip() or res.stdout.strip() or '?').splitlines()[-1]}",
                                   hint="rerun: the environment is swapped in only when it unpacked whole")
        else:
            sha = conda.sha256(packed) if how.keep else None

            def write(stdin) -> None:
                with open(packed, "rb") as fh:
                    shutil.copyfileobj(fh, stdin, 1 << 20)

            _stream(remote, plan.conda_install_command(opts.name, keep_sha256=sha), write,
                    "sending the conda environment", "rerun: the environment is swapped in only when it arrived whole")
            result.bytes_sent = result.pack_bytes
        result.status = "installed" if fresh else "updated"
    result.seconds = time.monotonic() - t0
    return result


def choose_transfer(host: str, name: str, facts: plan.HostFacts, pack_bytes: int,
                    unpacked_bytes: int) -> plan.CondaTransfer:
    """The path of this conda push (plan.conda_transfer), or the one-line refusal when it does not fit."""
    how = plan.conda_transfer(local_rsync=shutil.which("rsync") is not None, host_rsync=facts.rsync,
                              kept_bytes=facts.pack_bytes, pack_bytes=pack_bytes, unpacked_bytes=unpacked_bytes,
                              free_bytes=facts.free_bytes, stale_bytes=facts.stale_bytes)
    if not how.path:
        h = ui.human_bytes
        free = (facts.free_bytes or 0) + facts.stale_bytes + max(facts.pack_bytes, 0)
        raise MigrateError(f"not enough space on {host} for the conda environment: need {h(how.need_bytes)} "
                           f"(~/{plan.env_dir(name)}.new unpacked beside the old one, and a margin), {h(free)} free; "
                           "nothing was changed",
                           hint="free space there (the old environment can go first: migrate push-env "
                                f"{host} --name {name} --delete, then push again)")
    return how


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
    """Remove ~/.migrate/envs/NAME and a conda env's kept pack (the wheel cache stays: a later push reuses it)."""

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
