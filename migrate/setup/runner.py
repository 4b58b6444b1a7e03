"""The thin layer that executes host-setup actions on a `Host`, journalling every change.

`run_steps` walks the steps in order: execute a step's actions, and after any change gather
the facts again and re-plan, so each step acts on what is really on the host. A failure stops that
host (the remaining steps are reported as not run); nothing is left half-written: files are written
to a temp name and renamed, daemon.json is validated before the rename and restored if dockerd does
not come back.
"""

from __future__ import annotations

import os
import posixpath
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from migrate.errors import ConnectError, MigrateError
from migrate.remote import shell
from migrate.remote.host import Host
from migrate.setup import apt, daemon_json, journal, sources, verify
from migrate.setup.facts import JOURNAL_DIR, SetupFacts, gather
from migrate.setup.offline import sha256
from migrate.setup.options import StepResult
from migrate.setup.plan import (
    STEP_ORDER,
    AddToGroup,
    AptInstall,
    CheckRestartAllowed,
    DownloadKey,
    MakeDir,
    PlanContext,
    RestartDocker,
    Run,
    StepPlan,
    Verify,
    WriteFile,
    plan_steps,
)

APT_INSTALL_TIMEOUT = 1800
OFFLINE_DIR = f"{JOURNAL_DIR}/offline"


class StepFailed(MigrateError):
    """A step could not do its job (message + hint end up in the report)."""


class TimedRemote:
    """A Host that adds up the time spent waiting on the host (for the report's remote_seconds)."""

    def __init__(self, remote: Host) -> None:
        self.remote = remote
        self.seconds = 0.0

    def _timed(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.monotonic() - t0

    def run(self, *args: Any, **kwargs: Any) -> Any:
        result = self._timed(self.remote.run, *args, **kwargs)
        if result.exit_code == -1:  # the channel closed without an exit status: the host went away
            what = kwargs.get("what") or "a command"
            raise ConnectError(f"connection to {self.remote.name} lost during {what}",
                               hint="rerun when the host is back: finished steps are kept, the journal has the rest")
        return result

    def put_bytes(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self.remote.put_bytes, *args, **kwargs)

    def read_text(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self.remote.read_text, *args, **kwargs)

    def reconnect(self) -> None:
        self._timed(self.remote.reconnect)

    def read_bytes(self, path: str) -> bytes:
        return self._timed(self.remote.read_bytes, path)

    def put_file(self, source: bytes | Path, remote_path: str, *, mode: int = 0o600,
                 progress: Callable[[int, int], None] | None = None) -> None:
        self._timed(self.remote.put_file, source, remote_path, mode=mode, progress=progress)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.remote, name)


@dataclass
class RunContext:
    """Per-host execution state."""

    remote: TimedRemote
    plan_ctx: PlanContext
    home: str
    progress: Callable[[str], None] = lambda text: None
    apt_updated: bool = False
    sources_dirty: bool = False
    docker_restarts: int = 0
    file_entries: dict[str, dict] = field(default_factory=dict)  # path -> last journal entry
    warnings: list[str] = field(default_factory=list)

    @property
    def options(self):
        return self.plan_ctx.options

    def journal(self, entry: dict) -> dict:
        self.remote.run(journal.append_command(entry), what="write the host-setup journal")
        return entry

    def sudo(self, command: str, *, what: str, timeout: float = 120, check: bool = True):
        return self.remote.run(command, sudo=True, what=what, timeout=timeout, check=check)


# --------------------------------------------------------------------------------------------
# one executor per action type

def _tmp_path(ctx: RunContext, prefix: str) -> str:
    return posixpath.join(ctx.home, ".migrate", "tmp", f"{prefix}-{uuid.uuid4().hex[:10]}")


def _write_root_file(ctx: RunContext, step: str, path: str, data: bytes, *, mode: str, existed: bool,
                     backup: bool, validate_with: str = "") -> None:
    """Backup, journal, write to path.migrate-new, validate, rename over path."""
    stamp = journal.timestamp()
    backup_path = journal.backup_path(path, stamp) if existed and backup else None
    entry = ctx.journal(journal.entry("file", step, path=path, existed=existed, backup=backup_path, mode=mode))
    ctx.file_entries[path] = entry
    if backup_path:
        ctx.sudo(shell.join(["cp", "-p", path, backup_path]), what=f"back up {path}")
    candidate = f"{path}.migrate-new"
    ctx.remote.put_bytes(data, candidate, mode=int(mode, 8), sudo=True)
    if validate_with:
        res = ctx.sudo(shell.join([validate_with, "--validate", "--config-file", candidate]),
                       what="dockerd --validate", check=False)
        if not res.ok:
            ctx.sudo(shell.join(["rm", "-f", candidate]), what="remove rejected file", check=False)
            if backup_path:
                ctx.sudo(shell.join(["rm", "-f", backup_path]), what="remove unused backup", check=False)
            ctx.journal(journal.entry("reverted", step, ref=entry["id"]))
            line = verify.last_line(res.stderr or res.stdout) or f"exit code {res.exit_code}"
            raise StepFailed(f"dockerd --validate rejected the new {path}: {line}; nothing changed",
                             hint="fix or leave out the option that causes it")
    ctx.sudo(shell.join(["mv", "-f", candidate, path]), what=f"install {path}")
    if path.startswith("/etc/apt/"):
        ctx.sources_dirty = True


def do_run(a: Run, ctx: RunContext, step: str, facts: SetupFacts) -> None:
    ctx.remote.run(a.command, sudo=a.sudo, what=a.title, timeout=a.timeout)


def do_make_dir(a: MakeDir, ctx: RunContext, step: str, facts: SetupFacts) -> None:
    exists = ctx.remote.run(f"[ -d {shell.quote(a.path)} ]", check=False).ok
    if exists:
        return
    ctx.journal(journal.entry("dir", step, path=a.path))
    ctx.sudo(a.command, what=f"create {a.path}")


def download_command(tool: str, url: str, dest: str) -> str:
    """Fetch `url` into `dest` with what the host has (apt's own helper first)."""
    if tool == "apt-helper":
        return shell.join(["/usr/lib/apt/apt-helper", "download-file", url, dest])
    if tool == "curl":
        return shell.join(["curl", "-fsSL", "--retry", "3", "-o", dest, url])
    if tool == "wget":
        return shell.join(["wget", "-q", "-O", dest, url])
    raise StepFailed("no downloader on the host (apt-helper, curl or wget)", hint="install curl")


def do_download_key(a: DownloadKey, ctx: RunContext, step: str, facts: SetupFacts) -> None:
    ctx.progress(f"{step}: download {a.url}")
    tmp = _tmp_path(ctx, "key")
    ctx.remote.run(shell.mkdir_private(posixpath.dirname(tmp)), what="create ~/.migrate/tmp")
    try:
        res = ctx.remote.run(download_command(facts.downloader, a.url, tmp), what=f"download {a.url}",
                             timeout=180, check=False)
        if not res.ok:
            raise StepFailed(f"cannot download the signing key {a.url}: "
                             f"{verify.last_line(res.stderr or res.stdout) or res.exit_code}",
                             hint="check the URL or mirror, and the host's internet access (or use --offline-dir DIR)")
        data = ctx.remote.read_bytes(tmp)
    finally:
        ctx.remote.run(shell.join(["rm", "-f", tmp]), check=False)
    try:
        key = sources.dearmor(data) if a.dearmor else data
        if not a.dearmor and not sources.looks_like_key(data):
            raise MigrateError("not an OpenPGP key")
    except MigrateError as exc:
        raise StepFailed(f"{a.url} did not return an OpenPGP key ({exc.message})",
                         hint="check the repository URL; a proxy or captive portal may answer instead") from exc
    _write_root_file(ctx, step, a.dest, key, mode="644", existed=a.replace, backup=a.replace)


def do_write_file(a: WriteFile, ctx: RunContext, step: str, facts: SetupFacts) -> None:
    ctx.progress(f"{step}: write {a.path}")
    _write_root_file(ctx, step, a.path, a.content.encode(), mode=a.mode, existed=a.old is not None,
                     backup=a.backup, validate_with=a.validate_with)


def _installed(ctx: RunContext) -> dict[str, str]:
    return apt.parse_installed(ctx.remote.run(apt.INSTALLED_QUERY, what="list installed packages").stdout)


def _groups(ctx: RunContext) -> set[str]:
    return set(ctx.remote.run(apt.GROUPS_QUERY, what="list groups").stdout.split())


def _etc(ctx: RunContext) -> set[str]:
    return set(ctx.remote.run(apt.ETC_QUERY, what="list /etc").stdout.split())


def _our_repo_hosts(ctx: RunContext) -> set[str]:
    hosts = {urlparse(ctx.plan_ctx.nvidia_base).netloc}
    if ctx.plan_ctx.source.base_url:
        hosts.add(urlparse(ctx.plan_ctx.source.base_url).netloc)
    return {h for h in hosts if h}


def _apt_update(ctx: RunContext, step: str) -> None:
    ctx.progress(f"{step}: apt-get update")
    res = ctx.sudo(apt.update_command(ctx.options.apt_lock_timeout), what="apt-get update", timeout=900,
                   check=False)
    ctx.apt_updated, ctx.sources_dirty = True, False
    if res.ok:
        return
    problems = apt.update_problems(res.stderr + "\n" + res.stdout)
    ours = [p for p in problems if any(h in p for h in _our_repo_hosts(ctx))]
    if ours or not problems:
        first = (ours or problems or [verify.last_line(res.stderr)])[0]
        hint = "check the repository URL/mirror and the host's internet access, or use --offline"
        if "NO_PUBKEY" in first or "EXPKEYSIG" in first or "not signed" in first:
            hint = (f"the repository is not signed by the key in {sources.DOCKER_KEYRING} / {sources.NVIDIA_KEYRING}: "
                    "delete that file and rerun to fetch the key again")
        raise StepFailed(f"apt-get update failed: {first}", hint=hint)
    ctx.warnings.append(f"apt-get update reported problems with other repositories (continuing): {problems[0]}")


def _apt_failure_hint(text: str) -> str:
    if "Unable to locate package" in text or "has no installation candidate" in text:
        return "the repository has no such package for this release/architecture (try --codename, or another source)"
    if "Could not get lock" in text or "lock-frontend" in text:
        return "another apt/dpkg is running (unattended upgrades?); wait, or raise --apt-lock-timeout"
    if "unmet dependencies" in text.lower() or "Depends:" in text:
        return "dependencies are missing: for --offline, build the directory with --download-offline --for <this OS>"
    if "dpkg was interrupted" in text:
        return "an earlier apt/dpkg run was interrupted: run `sudo dpkg --configure -a` on the host, then rerun"
    if "Conflicting values set for option Signed-By" in text:
        return "two apt source files name the same repository with different keys: remove the older one"
    return "see the apt output with -vv"


def do_apt_install(a: AptInstall, ctx: RunContext, step: str, facts: SetupFacts) -> None:
    before = _installed(ctx)
    groups_before = _groups(ctx)
    etc_before = _etc(ctx)
    begin = ctx.journal(journal.entry("apt-begin", step, before=before, groups=sorted(groups_before),
                                      etc=sorted(etc_before)))
    ctx.remote.run(f"umask 077 && : > {journal.open_marker(begin['id'])}", what="mark the apt run open")
    remote_dir = None
    launched = returned = False
    try:
        if a.offline_files:
            remote_dir, packages = _push_offline(a, ctx, step, facts, before)
            if not packages:
                return
            command = f"cd {shell.quote(remote_dir)} && " + apt.install_command(packages, a.lock_timeout)
        else:
            if not ctx.apt_updated or ctx.sources_dirty:
                _apt_update(ctx, step)
            packages = list(a.packages)
            if a.if_packaged:
                res = ctx.remote.run(apt.policy_command(list(a.if_packaged)), check=False, what="apt-cache policy")
                candidates = apt.parse_candidates(res.stdout)
                packages += [n for n in a.if_packaged if n in candidates]
            if a.optional:
                res = ctx.remote.run(apt.policy_command([n for n, _ in a.optional]), check=False,
                                     what="apt-cache policy")
                extra = apt.choose_optional(apt.parse_candidates(res.stdout), list(a.optional))
                if extra:
                    packages.append(extra)
            command = apt.install_command(packages, a.lock_timeout)
        ctx.progress(f"{step}: apt-get install {' '.join(os.path.basename(p) for p in packages)}")
        launched = True
        res = ctx.sudo(apt.survive_disconnect(command, f"apt-{begin['id']}"), what="apt-get install",
                       timeout=APT_INSTALL_TIMEOUT, check=False)
        returned = True
        if not res.ok:
            text = res.stderr + "\n" + res.stdout
            errors = [ln for ln in text.splitlines() if ln.startswith("E:")]
            raise StepFailed(f"apt-get install failed: {(errors or [verify.last_line(text)])[0]}",
                             hint=_apt_failure_hint(text))
    finally:
        try:
            if returned or not launched:  # else apt may still run on the host: reconciled by the next run
                _record_apt(ctx, step, begin["id"], before, groups_before, etc_before)
            if remote_dir:
                parent = posixpath.dirname(remote_dir)
                ctx.remote.run(f"rm -rf {shell.quote(remote_dir)}; rmdir {shell.quote(parent)} 2>/dev/null || true",
                               check=False)
        except (ConnectError, MigrateError):
            pass  # connection gone: the apt-begin entry lets --undo work it out later


def _record_apt(ctx: RunContext, step: str, begin_id: str, before: dict[str, str], groups_before: set[str] | None,
                etc_before: set[str] | None, **extra: object) -> None:
    """Journal what an apt run changed (against its before-snapshot) and close its open marker."""
    diff = apt.diff_installed(before, _installed(ctx))
    created = sorted(_groups(ctx) - groups_before) if groups_before is not None else []
    paths = sorted(f"/etc/{name}" for name in _etc(ctx) - etc_before) if etc_before is not None else []
    ctx.journal(journal.entry("packages", step, begin=begin_id, installed=diff.installed, removed=diff.removed,
                              upgraded=diff.upgraded, groups_created=created, paths_created=paths, **extra))
    ctx.remote.run(f"rm -f {journal.open_marker(begin_id)}", what="close the apt run")


def reconcile_open_apt(ctx: RunContext, facts: SetupFacts) -> list[str]:
    """Record what earlier apt runs installed when their result never came back (connection lost).

    apt ran detached on the host and may have finished after we lost it; once no apt/dpkg runs,
    its changes are the difference between its before-snapshot and now. Returns warnings."""
    if not facts.apt_open:
        return []
    if facts.dpkg_busy:
        return [f"an interrupted apt run may still be going ({facts.dpkg_busy}); its changes are recorded next time"]
    entries, _ = journal.parse(ctx.remote.run(journal.read_command(), what="read the journal").stdout)
    begins = {e["id"]: e for e in entries if e.get("type") == "apt-begin"}
    closed = {e.get("begin") for e in entries if e.get("type") == "packages"}
    warnings = []
    for entry_id in facts.apt_open:
        begin = begins.get(entry_id)
        if begin is not None and entry_id not in closed:
            groups = set(begin["groups"]) if "groups" in begin else None
            etc = set(begin["etc"]) if "etc" in begin else None
            _record_apt(ctx, begin.get("step", "?"), entry_id, begin.get("before", {}), groups, etc, reconciled=True)
            warnings.append(f"recorded what an interrupted apt run ({begin.get('time', '?')}) installed, for --undo")
        else:
            ctx.remote.run(f"rm -f {journal.open_marker(entry_id)}", what="close the apt run")
    return warnings


def _push_offline(a: AptInstall, ctx: RunContext, step: str, facts: SetupFacts,
                  installed: dict[str, str]) -> tuple[str, list[str]]:
    """Push the .deb files this host still needs; check them; return (remote dir, ./file list)."""
    arch = facts.host.dpkg_arch or facts.host.docker_arch
    wanted = []
    for name, path in zip(a.packages, a.offline_files):
        parts = apt.deb_filename_parts(os.path.basename(path))
        deb_arch = parts[2] if parts else "all"
        if deb_arch not in ("all", arch):
            continue
        if name in installed or f"{name}:{arch}" in installed:
            continue  # never up- or downgrade what the owner already has
        wanted.append(path)
    if not wanted:
        return "", []
    remote_dir = posixpath.join(ctx.home, OFFLINE_DIR, uuid.uuid4().hex[:10])
    ctx.remote.run(shell.mkdir_private(posixpath.dirname(remote_dir)) + " && " + shell.mkdir_private(remote_dir),
                   what="create the offline upload directory")
    total = sum(os.path.getsize(p) for p in wanted)
    done = 0
    sums = []
    for path in wanted:
        base = os.path.basename(path)
        size = os.path.getsize(path)

        def cb(sent: int, _size: int, _done: int = done) -> None:
            ctx.progress(f"{step}: push {len(wanted)} .deb files {_pct(_done + sent, total)}")

        ctx.remote.put_file(Path(path), posixpath.join(remote_dir, base), progress=cb)
        done += size
        sums.append(f"{sha256(Path(path))}  {base}")
    check = (f"cd {shell.quote(remote_dir)} && printf '%s\\n' {' '.join(shell.quote(s) for s in sums)} "
             "| sha256sum -c --quiet -")
    res = ctx.remote.run(check, what="check the pushed .deb files", check=False)
    if not res.ok:
        raise StepFailed(f"pushed .deb files do not match their checksums: {verify.last_line(res.stdout + res.stderr)}",
                         hint="rerun (the transfer was damaged)")
    return remote_dir, [f"./{os.path.basename(p)}" for p in wanted]


def _pct(done: int, total: int) -> str:
    return f"{100 * done // max(total, 1)}%"


def _live_restore(facts: SetupFacts) -> bool:
    try:
        return bool(facts.daemon_config().get("live-restore"))
    except MigrateError:
        return False


def do_check_restart(a: CheckRestartAllowed, ctx: RunContext, step: str, facts: SetupFacts) -> None:
    if ctx.options.force_restart or _live_restore(facts):
        return
    res = ctx.sudo("docker ps -q", what="list running containers", check=False, timeout=60)
    running = [ln for ln in res.stdout.split() if ln.strip()] if res.ok else []
    if running:
        raise StepFailed(f"restarting docker would stop {len(running)} running container(s); nothing changed",
                         hint="rerun with --force-restart when that is acceptable (or enable live-restore)")


def _docker_up(ctx: RunContext) -> bool:
    for _ in range(10):
        res = ctx.sudo("docker info >/dev/null 2>&1", what="check docker", check=False, timeout=30)
        if res.ok:
            return True
        time.sleep(1)
    return False


def _why_docker_failed(ctx: RunContext, since: str, unit: str) -> list[str]:
    if unit == "initd":
        cmd = "tail -n 30 /var/log/docker.log 2>/dev/null"
    else:
        cmd = f"journalctl -u docker.service --since @{shell.quote(since)} --no-pager -o cat 2>/dev/null | tail -n 40"
    res = ctx.sudo(cmd, what="read docker's journal", check=False)
    return daemon_json.journal_explanation(res.stdout.splitlines())


def _restart(ctx: RunContext, a: RestartDocker) -> bool:
    res = ctx.sudo(a.command, what="restart docker", timeout=180, check=False)
    ctx.docker_restarts += 1
    return res.ok and _docker_up(ctx)


def do_restart(a: RestartDocker, ctx: RunContext, step: str, facts: SetupFacts) -> None:
    ctx.progress(f"{step}: restart docker")
    since = ctx.remote.run("date +%s", what="read the host clock").stdout.strip() or "0"
    if _restart(ctx, a):
        return
    why = _why_docker_failed(ctx, since, a.unit) or ["no journal lines"]
    if not a.rollback:
        raise StepFailed(f"docker did not start: {' | '.join(why)}",
                         hint="look at `sudo journalctl -u docker -n 50` on the host")
    path = a.rollback
    entry = ctx.file_entries.get(path)
    if entry is None:
        raise StepFailed(f"docker did not start with {path}: {' | '.join(why)}", hint="restore it by hand")
    if entry.get("backup"):
        ctx.sudo(shell.join(["mv", "-f", entry["backup"], path]), what=f"restore {path}")
        restored = f"restored the previous {path}"
    else:
        ctx.sudo(shell.join(["rm", "-f", path]), what=f"remove {path}")
        restored = f"removed the new {path} (there was none before)"
    ctx.journal(journal.entry("reverted", step, ref=entry["id"]))
    if _restart(ctx, a):
        raise StepFailed(f"docker did not start with the new {path}: {' | '.join(why)}; {restored} and docker is "
                         "running again", hint="fix or leave out the option that caused it, then rerun")
    why2 = _why_docker_failed(ctx, since, a.unit)
    raise StepFailed(f"docker did not start with the new {path} ({' | '.join(why)}); {restored} but docker still "
                     f"does not start: {' | '.join(why2)}", hint="look at `sudo journalctl -u docker -n 50`")


def do_add_to_group(a: AddToGroup, ctx: RunContext, step: str, facts: SetupFacts) -> None:
    if a.create:
        ctx.journal(journal.entry("group-created", step, group=a.group))
        ctx.sudo(shell.join(["groupadd", "--system", a.group]), what=f"create group {a.group}")
    ctx.journal(journal.entry("group-member", step, group=a.group, user=a.user))
    ctx.sudo(shell.join(["usermod", "-aG", a.group, a.user]), what=f"add {a.user} to group {a.group}")
    ctx.progress(f"{step}: reconnect (new group membership)")
    ctx.remote.reconnect()
    res = ctx.remote.run("docker info >/dev/null", what="docker info without sudo", check=False, timeout=60)
    if not res.ok:
        message, hint = verify.describe_failure(res.stderr, "docker info failed")
        raise StepFailed(f"`docker info` without sudo still fails after joining group {a.group}: {message}", hint=hint)


def do_verify(a: Verify, ctx: RunContext, step: str, facts: SetupFacts) -> str:
    res = ctx.remote.run(verify.DOCKER_INFO, what="docker info", check=False, timeout=60)
    if not res.ok:
        message, hint = verify.describe_failure(res.stderr + res.stdout, "docker info failed")
        raise StepFailed(f"docker info (without sudo) failed: {message}", hint=hint)
    runtimes, default, version = verify.parse_docker_info(res.stdout)
    detail = f"docker {version}, runtimes {','.join(runtimes)}, default {default}"
    if a.expect_runtime and a.expect_runtime not in runtimes:
        raise StepFailed(f"docker lists runtimes {','.join(runtimes)}: no {a.expect_runtime}",
                         hint=verify.explain("unknown or invalid runtime name: nvidia").fix)  # type: ignore[union-attr]
    if a.expect_default and default != a.expect_default:
        raise StepFailed(f"docker's default runtime is {default}, not {a.expect_default}",
                         hint="rerun host-setup; if it persists, check dockerd's command line for --default-runtime")
    if a.gpu_test:
        image = a.image
        if not image:
            listing = ctx.remote.run(verify.LIST_IMAGES, what="list images", check=False).stdout
            image = verify.pick_local_image(listing)
        if not image:
            ctx.warnings.append("GPU container test skipped: no local image (push one with `migrate push-image`, or "
                                "name one with --verify-image IMAGE, which may pull it)")
            return detail + "; GPU test skipped (no local image)"
        ctx.progress(f"{step}: GPU container test with {image}")
        run = ctx.remote.run(verify.gpu_test_command(image), what="GPU container test", check=False,
                             timeout=1800 if a.image else 300)
        if not run.ok:
            message, hint = verify.describe_failure(run.stderr + run.stdout, "GPU container test failed")
            raise StepFailed(f"GPU container test failed: {message}", hint=hint)
        gpus = [ln for ln in run.stdout.splitlines() if ln.startswith("GPU ")]
        detail += f"; GPU container sees {len(gpus)} GPU(s) ({image})"
    return detail


EXECUTORS: dict[type, Callable[..., Any]] = {
    Run: do_run, MakeDir: do_make_dir, DownloadKey: do_download_key, WriteFile: do_write_file,
    AptInstall: do_apt_install, CheckRestartAllowed: do_check_restart, RestartDocker: do_restart,
    AddToGroup: do_add_to_group, Verify: do_verify,
}


def execute_step(plan: StepPlan, ctx: RunContext, facts: SetupFacts) -> StepResult:
    """Run one step's actions; map its outcome to ok / changed / skipped / failed."""
    warnings = list(plan.warnings)
    if plan.status in ("ok", "skipped"):
        return StepResult(plan.name, plan.status, plan.detail, warnings)
    if plan.status == "failed":
        return StepResult(plan.name, "failed", plan.detail + (f" (hint: {plan.hint})" if plan.hint else ""), warnings)
    ctx.progress(f"{plan.name}: {plan.detail}")
    detail = plan.detail
    ctx.warnings = []
    try:
        for action in plan.actions:
            out = EXECUTORS[type(action)](action, ctx, plan.name, facts)
            if isinstance(out, str):
                detail = out
    except MigrateError as exc:
        return StepResult(plan.name, "failed", exc.one_line(), warnings + ctx.warnings)
    status = "ok" if plan.status == "check" else "changed"
    return StepResult(plan.name, status, detail, warnings + ctx.warnings)


def complete_facts(remote: Host, facts: SetupFacts) -> SetupFacts:
    """Read a daemon.json the user may not read (as root); everything else is in the probe."""
    if facts.daemon_json_exists and not facts.daemon_json_readable and facts.host.sudo != "none":
        facts.daemon_json_text = remote.read_text(daemon_json.PATH, sudo=True) or ""
        facts.daemon_json_readable = True
    return facts


def run_steps(ctx: RunContext, facts: SetupFacts, results: list[StepResult] | None = None) -> list[StepResult]:
    """Execute every step in order, re-gathering facts and re-planning after each change.

    Results are appended to `results` as they come, so a caller keeps the finished steps even when
    the host drops off in between (the exception then says why)."""
    results = [] if results is None else results
    reconciled = reconcile_open_apt(ctx, facts)
    plans = {p.name: p for p in plan_steps(facts, ctx.plan_ctx)}
    if reconciled:
        plans["host"].warnings.extend(reconciled)
    for i, name in enumerate(STEP_ORDER):
        result = execute_step(plans[name], ctx, facts)
        results.append(result)
        if result.status == "failed":
            results += [StepResult(rest, "skipped", f"not run: {name} failed") for rest in STEP_ORDER[i + 1:]]
            break
        if result.status == "changed" and i + 1 < len(STEP_ORDER):
            ctx.progress(f"{name}: done; checking the host again")
            facts = complete_facts(ctx.remote, gather(ctx.remote))
            plans = {p.name: p for p in plan_steps(facts, ctx.plan_ctx)}
    return results
