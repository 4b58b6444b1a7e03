"""The host-setup steps as pure planners: facts + options -> what each step would do.

`plan_steps(facts, ctx)` returns one `StepPlan` per step, in order. A step is `ok` (nothing to
do), `change` (its actions change the host), `check` (read-only actions: verify), `skipped` or
`failed` (with a message and hint). Each planner also updates a *predicted* copy of the facts
(docker installed, group created, dockerd restarted...) so that `--dry-run` on a fresh host shows
the whole plan. The runner re-gathers the real facts after every step that changed something and
re-plans, so execution always acts on what is really there.

Actions are plain data; `describe()` gives the exact lines `--dry-run` prints.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field

from migrate.errors import MigrateError
from migrate.remote import shell
from migrate.setup import apt, daemon_json, sources
from migrate.setup.facts import SetupFacts
from migrate.setup.options import DockerSource, HostSetupOptions

STEP_ORDER = ["host", "docker-repo", "docker-engine", "nvidia-repo", "nvidia-toolkit", "daemon-json",
              "docker-service", "docker-group", "verify"]

ROOT_EQUIVALENT = ("members of the docker group are root-equivalent on {host} (they can mount / into a "
                   "container); remove yourself with `migrate host-setup {host_args} --undo` when done")


# --------------------------------------------------------------------------------------------
# actions (data)

@dataclass(frozen=True)
class Run:
    """A shell command line, as root unless sudo=False."""

    title: str
    command: str
    sudo: bool = True
    timeout: float = 120

    def describe(self) -> list[str]:
        return [f"{'[root] ' if self.sudo else ''}$ {self.command}"]


@dataclass(frozen=True)
class MakeDir:
    """Create a root-owned directory (journalled: --undo removes it again if empty)."""

    path: str
    mode: str = "755"

    @property
    def command(self) -> str:
        return shell.join(["install", "-d", "-m", self.mode, self.path])

    def describe(self) -> list[str]:
        return [f"[root] $ {self.command}"]


@dataclass(frozen=True)
class DownloadKey:
    """Fetch a repository signing key on the host (apt's own downloader) into a keyring file."""

    url: str
    dest: str
    dearmor: bool = False
    replace: bool = False  # a keyring is there already: back it up, then replace it

    def describe(self) -> list[str]:
        how = ", dearmored like `gpg --dearmor`" if self.dearmor else ""
        old = f", old key kept as {self.dest}.migrate-backup-<time>" if self.replace else ""
        return [f"$ /usr/lib/apt/apt-helper download-file {shell.quote(self.url)} ~/.migrate/tmp/<key>",
                f"[root] install key as {self.dest} (0644{how}{old})"]


@dataclass(frozen=True)
class WriteFile:
    """Write a root-owned file atomically (temp file + rename), backing up the old one."""

    path: str
    content: str
    old: str | None = None
    mode: str = "644"
    backup: bool = False
    validate_with: str = ""  # dockerd path when `dockerd --validate` exists

    def validate_command(self, candidate: str) -> str:
        return shell.join([self.validate_with, "--validate", "--config-file", candidate])

    def describe(self) -> list[str]:
        lines = [f"[root] write {self.path} (mode {self.mode}, atomic rename"
                 + (f", old file kept as {self.path}.migrate-backup-<time>" if self.backup else "") + ")"]
        if self.validate_with:
            lines.append(f"[root] $ {self.validate_command(self.path + '.migrate-new')}")
        elif self.path == daemon_json.PATH:
            lines.append("validate: JSON parse (this dockerd has no --validate)")
        lines += ["  " + ln for ln in daemon_json.unified_diff(self.old, self.content, self.path).splitlines()]
        return lines


@dataclass(frozen=True)
class AptInstall:
    """Install packages with apt (from the repositories, or from pushed .deb files offline)."""

    packages: tuple[str, ...]
    optional: tuple[tuple[str, int], ...] = ()  # first of these with a candidate is added
    if_packaged: tuple[str, ...] = ()  # each of these is added when apt has a candidate for it
    offline_files: tuple[str, ...] = ()  # local .deb paths to push and install
    lock_timeout: int = 300

    def describe(self) -> list[str]:
        lines = []
        if self.offline_files:
            names = " ".join(os.path.basename(p) for p in self.offline_files)
            lines.append(f"push {len(self.offline_files)} .deb file(s) over SFTP to ~/.migrate/host-setup/offline/ "
                         f"and check their sha256: {names}")
            lines.append("[root] $ " + apt.install_command(["./<each .deb whose package is not installed yet>"],
                                                           self.lock_timeout))
            return lines
        lines.append("[root] $ " + apt.update_command(self.lock_timeout))
        pkgs = list(self.packages)
        pkgs += [f"<{name}, if packaged>" for name in self.if_packaged]
        if self.optional:
            pkgs.append("<" + " or ".join(n for n, _ in self.optional) + ", if packaged>")
        lines.append("[root] $ " + apt.install_command(pkgs, self.lock_timeout))
        lines.append("  (detached from the SSH session: nohup, output to /var/tmp/migrate-apt-<id>.log, so a dropped "
                     "connection cannot leave dpkg half-done)")
        return lines


@dataclass(frozen=True)
class CheckRestartAllowed:
    """Refuse to restart docker over running containers (unless live-restore or --force-restart)."""

    def describe(self) -> list[str]:
        return ["[root] $ docker ps -q   (refuse if containers run and live-restore is off, "
                "unless --force-restart)"]


@dataclass(frozen=True)
class RestartDocker:
    """Restart (or start) docker once; with `rollback`, restore that file's backup if dockerd fails."""

    reason: str
    rollback: str | None = None
    unit: str = "yes"

    @property
    def command(self) -> str:
        if self.unit == "initd":
            return "service docker restart"
        return "systemctl reset-failed docker.service >/dev/null 2>&1; systemctl restart docker.service"

    def describe(self) -> list[str]:
        lines = [f"[root] $ {self.command}   ({self.reason})"]
        if self.rollback:
            lines.append(f"  if docker does not come back: restore {self.rollback} from its backup, restart "
                         "again, fail with the journal lines")
        return lines


@dataclass(frozen=True)
class AddToGroup:
    """Create the group if missing, add the user, reconnect, prove `docker info` works without sudo."""

    group: str
    user: str
    create: bool = False

    def describe(self) -> list[str]:
        lines = []
        if self.create:
            lines.append(f"[root] $ {shell.join(['groupadd', '--system', self.group])}")
        lines.append(f"[root] $ {shell.join(['usermod', '-aG', self.group, self.user])}")
        lines.append("reconnect, then $ docker info   (as the user, without sudo)")
        return lines


@dataclass(frozen=True)
class Verify:
    """Read-only proof: docker info (runtimes, default), and a GPU container when there is a GPU."""

    expect_runtime: str | None = None
    expect_default: str | None = None
    gpu_test: bool = False
    image: str | None = None

    def describe(self) -> list[str]:
        from migrate.setup import verify as v
        lines = [f"$ {v.DOCKER_INFO}"]
        if self.gpu_test:
            image = self.image or "<a local image>"
            lines.append(f"$ {v.gpu_test_command(image)}")
        return lines


@dataclass
class StepPlan:
    """One step: status ok | change | check | skipped | failed, a detail line, the actions."""

    name: str
    status: str
    detail: str = ""
    actions: list = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hint: str = ""


@dataclass
class OfflineSet:
    """The .deb files of an --offline directory, split into engine and NVIDIA packages."""

    directory: str
    engine: list[tuple[str, str]] = field(default_factory=list)  # (package, path)
    nvidia: list[tuple[str, str]] = field(default_factory=list)
    target: str = ""  # the manifest's "for", e.g. debian:12

    @property
    def engine_package(self) -> str:
        names = {n for n, _ in self.engine}
        return "docker-ce" if "docker-ce" in names else ("docker.io" if "docker.io" in names else "")


@dataclass
class PlanContext:
    """Everything the planners need besides the facts."""

    options: HostSetupOptions
    source: DockerSource
    nvidia_base: str
    offline: OfflineSet | None = None
    display: str = ""  # how to name the host in messages


# --------------------------------------------------------------------------------------------
# planners (each mutates `state`, the predicted facts, after deciding)

def _fail(name: str, message: str, hint: str = "") -> StepPlan:
    return StepPlan(name, "failed", message, hint=hint)


def plan_host(state: SetupFacts, ctx: PlanContext) -> StepPlan:
    h = state.host
    name = h.os_pretty or f"{h.os_id} {h.os_version_id}".strip() or "unknown OS"
    if not h.os_family:
        return _fail("host", f"unsupported OS: {name}",
                     "host-setup supports Debian and Ubuntu and their derivatives (apt-based)")
    if not h.dpkg_arch:
        return _fail("host", f"{name} has no dpkg/apt", "host-setup installs packages with apt")
    if h.sudo == "none":
        return _fail("host", f"{h.user} has no sudo on this host: host-setup needs root",
                     "ask the owner for sudo rights, or log in as a user who has them")
    warnings = []
    if state.dpkg_busy:
        warnings.append(f"apt/dpkg is busy ({state.dpkg_busy}); apt will wait up to "
                        f"{ctx.options.apt_lock_timeout}s for the lock")
    if state.docker_host_env:
        warnings.append(f"DOCKER_HOST={state.docker_host_env} is set in your sessions: host-setup configures the "
                        "system daemon (/var/run/docker.sock)")
    if not h.systemd:
        warnings.append("systemd is not PID 1: docker is restarted with `service docker restart`")
    if state.docker_unit == "" and state.docker_installed and h.systemd:
        warnings.append("docker is installed but has no docker.service unit")
    if ctx.offline and ctx.offline.target:
        family, _, release = ctx.offline.target.partition(":")
        if family != h.os_family or release not in (h.os_version_id, h.os_codename, h.ubuntu_codename):
            warnings.append(f"the offline files were downloaded for {ctx.offline.target}; this host is {name}")
    gpu = (f"{len(h.gpus)} GPU(s), driver {h.gpus[0].driver}" if h.gpus and state.has_driver
           else "no NVIDIA driver" if not h.nvidia_smi else "nvidia-smi fails")
    detail = f"{name}, {h.docker_arch}, cgroup v{h.cgroup_version}, sudo {h.sudo}, {gpu}"
    return StepPlan("host", "ok", detail, warnings=warnings)


def _tls_prerequisite(state: SetupFacts, url: str, lock_timeout: int) -> list:
    """apt and apt-helper need the CA bundle for an https repository (minimal images lack it)."""
    if url.startswith("https://") and "ca-certificates" not in state.packages:
        state.packages["ca-certificates"] = "(new)"
        return [AptInstall(("ca-certificates",), lock_timeout=lock_timeout)]
    return []


def plan_docker_repo(state: SetupFacts, ctx: PlanContext) -> StepPlan:
    name = "docker-repo"
    src = ctx.source
    if ctx.offline:
        return StepPlan(name, "skipped", "offline install: no repository needed")
    if not src.uses_repo:
        return StepPlan(name, "skipped", "distro packages (docker.io): no extra repository")
    own = state.files.get(sources.DOCKER_SOURCES_FILE)
    pkg = state.docker_package
    will_install = not state.docker_installed or (ctx.options.force_source and pkg != "docker-ce")
    if not will_install and own is None:
        return StepPlan(name, "skipped", f"engine kept ({pkg or 'docker'}): repository not added")
    h = state.host
    try:
        suite = sources.docker_codename(h.os_family, h.os_id, h.os_codename, h.ubuntu_codename, h.os_version_id,
                                        ctx.options.codename)
    except MigrateError as exc:
        return _fail(name, exc.message, exc.hint or "")
    url = sources.docker_repo_url(src.base_url, h.os_family)
    warnings = [suite.note] if suite.note and not ctx.options.codename else []
    others = sources.other_files_defining(url, state.apt_sources, sources.DOCKER_SOURCES_FILE)
    if others and own is None:
        return StepPlan(name, "ok", f"{url} already configured in {', '.join(others)}", warnings=warnings)
    actions: list = _tls_prerequisite(state, src.base_url, ctx.options.apt_lock_timeout)
    if not state.keyrings_dir:
        actions.append(MakeDir(sources.KEYRINGS_DIR))
    want = sources.docker_sources(src.base_url, h.os_family, suite.name, h.docker_arch)
    have_key = sources.DOCKER_KEYRING in state.keyrings
    if not have_key or own != want:  # a new or changed repository definition gets its key fetched again
        actions.append(DownloadKey(sources.docker_key_url(src.base_url, h.os_family), sources.DOCKER_KEYRING,
                                   replace=have_key))
    if own != want:
        actions.append(WriteFile(sources.DOCKER_SOURCES_FILE, want, old=own, backup=own is not None))
    state.keyrings_dir = True
    state.keyrings.add(sources.DOCKER_KEYRING)
    state.files[sources.DOCKER_SOURCES_FILE] = want
    if (sources.DOCKER_SOURCES_FILE, url) not in state.apt_sources:
        state.apt_sources.append((sources.DOCKER_SOURCES_FILE, url))
    where = f"{url} {suite.name} stable ({src.label})"
    if not actions:
        return StepPlan(name, "ok", where, warnings=warnings)
    return StepPlan(name, "change", f"add Docker's repository {where}", actions, warnings)


def _predict_docker_installed(state: SetupFacts, package: str) -> None:
    state.packages[package] = "(new)"
    for other in ("docker-ce", "docker.io"):
        if other != package:
            state.packages.pop(other, None)
    state.host.docker.installed = True
    state.dockerd = state.dockerd or "/usr/bin/dockerd"
    state.docker_group = True
    state.docker_active = "active"
    state.docker_unit = state.docker_unit or ("yes" if state.host.systemd else "initd")
    state.dockerd_age = 0
    state.now = max(state.now, (state.hook_ctime or 0) + 1, (state.daemon_json_mtime or 0) + 1)
    state.etc_docker = True


def plan_docker_engine(state: SetupFacts, ctx: PlanContext) -> StepPlan:
    name = "docker-engine"
    o = ctx.options
    pkg = state.docker_package
    warnings: list[str] = []
    if pkg == "snap":
        if o.nvidia:
            return _fail(name, "Docker is the snap package, which cannot use the NVIDIA runtime (its dockerd "
                               "never sees nvidia-container-runtime-hook)",
                         "remove it yourself (`sudo snap remove docker`, its images go with it) and rerun, or "
                         "use --no-nvidia")
        return StepPlan(name, "ok", "snap Docker kept", warnings=["snap Docker keeps its daemon.json inside the snap; "
                                                                  "host-setup does not manage it"])
    if ctx.offline:
        want = ctx.offline.engine_package
        label = f"offline files in {ctx.offline.directory}"
    else:
        want = "docker-ce" if ctx.source.uses_repo else "docker.io"
        label = ctx.source.label
    if pkg == "docker.io" and sources.docker_ce_sources(state.apt_sources):
        files = ", ".join(sources.docker_ce_sources(state.apt_sources))
        warnings.append(f"conflicting mix: docker.io (distro) is installed but a Docker CE repository is configured "
                        f"in {files}; not changed")
    if state.host.docker.rootless:
        warnings.append("a rootless Docker daemon runs for you as well; migrate uses the system daemon")
    if state.docker_installed:
        version = state.packages.get(pkg) or state.host.docker.engine_version or state.host.docker.client_version
        kept = f"{pkg or 'docker (not from a package)'} {version}".strip()
        switch = o.force_source and want and pkg != want
        if not switch:
            if want and pkg and pkg != want:
                warnings.append(f"asked for {label} ({want}) but {pkg} is installed: kept "
                                "(--force-source switches engines)")
            if state.host.docker.cli_missing:
                return _plan_missing_cli(state, ctx, kept, warnings)
            return StepPlan(name, "ok", f"{kept} (kept)", warnings=warnings)
        warnings.append(f"--force-source: installing {want} replaces {kept}; images in /var/lib/docker stay")
    if ctx.offline:
        if not want:
            return _fail(name, f"no docker-ce or docker.io .deb in {ctx.offline.directory}",
                         "fill it with `migrate host-setup --download-offline DIR --for OS:VERSION`")
        action = AptInstall(tuple(n for n, _ in ctx.offline.engine),
                            offline_files=tuple(p for _, p in ctx.offline.engine), lock_timeout=o.apt_lock_timeout)
        detail = f"install {want} and {len(ctx.offline.engine) - 1} other package(s) from {ctx.offline.directory}"
    elif want == "docker-ce":
        action = AptInstall(tuple(sources.OFFICIAL_DOCKER_PACKAGES), lock_timeout=o.apt_lock_timeout)
        detail = f"install {' '.join(sources.OFFICIAL_DOCKER_PACKAGES)} ({label})"
    else:
        action = AptInstall(tuple(sources.DISTRO_DOCKER_PACKAGES), tuple(sources.DISTRO_COMPOSE_CANDIDATES),
                            if_packaged=(sources.DISTRO_CLI_PACKAGE,), lock_timeout=o.apt_lock_timeout)
        detail = ("install docker.io, docker-cli where the engine comes without the `docker` command (Debian 13+), "
                  "and the compose plugin if the distribution packages it")
    _predict_docker_installed(state, want)
    return StepPlan(name, "change", detail, [action], warnings)


def _plan_missing_cli(state: SetupFacts, ctx: PlanContext, kept: str, warnings: list[str]) -> StepPlan:
    """The engine is there but `docker` is not (docker.io on Debian 13+ without its Recommends)."""
    name = "docker-engine"
    cli = sources.OFFICIAL_CLI_PACKAGE if state.docker_package == "docker-ce" else sources.DISTRO_CLI_PACKAGE
    if ctx.offline:
        debs = [p for n, p in ctx.offline.engine if n == cli]
        if not debs:
            return _fail(name, f"{kept} is installed but the `docker` command is missing, and {ctx.offline.directory} "
                               f"has no {cli} .deb",
                         f"download it again with `migrate host-setup --download-offline DIR --for OS:VERSION`, "
                         f"or install {cli} yourself")
        action = AptInstall((cli,), offline_files=tuple(debs), lock_timeout=ctx.options.apt_lock_timeout)
    else:
        action = AptInstall((cli,), lock_timeout=ctx.options.apt_lock_timeout)
    state.packages[cli] = "(new)"
    state.host.docker.path = "/usr/bin/docker"
    state.host.docker.installed = True
    return StepPlan(name, "change", f"{kept} (kept); install {cli}: the engine is there but the `docker` command is "
                                    "missing (Debian 13+ ships it separately)", [action], warnings)


def _no_driver(state: SetupFacts) -> bool:
    return not state.has_driver


def plan_nvidia_repo(state: SetupFacts, ctx: PlanContext) -> StepPlan:
    name = "nvidia-repo"
    o = ctx.options
    if not o.nvidia:
        return StepPlan(name, "skipped", "--no-nvidia")
    if ctx.offline:
        return StepPlan(name, "skipped", "offline install: no repository needed")
    own = state.files.get(sources.NVIDIA_SOURCES_FILE)
    warnings = []
    legacy = sources.legacy_nvidia_sources(state.apt_sources)
    if legacy:
        warnings.append(f"legacy NVIDIA repository file(s) {', '.join(legacy)} (nvidia-docker2 era); NVIDIA "
                        "advises removing them if apt reports conflicting Signed-By values; not changed")
    if state.toolkit_installed and own is None:
        return StepPlan(name, "skipped", "toolkit already installed: repository not touched", warnings=warnings)
    if _no_driver(state) and not o.force and own is None:
        return StepPlan(name, "skipped", "no NVIDIA driver (see nvidia-toolkit)", warnings=warnings)
    url = sources.nvidia_repo_url(ctx.nvidia_base)
    others = sources.other_files_defining(url, state.apt_sources, sources.NVIDIA_SOURCES_FILE)
    if others and own is None:
        return StepPlan(name, "ok", f"{url} already configured in {', '.join(others)}", warnings=warnings)
    actions: list = _tls_prerequisite(state, ctx.nvidia_base, o.apt_lock_timeout)
    want = sources.nvidia_sources(ctx.nvidia_base)
    have_key = sources.NVIDIA_KEYRING in state.keyrings
    if not have_key or own != want:
        actions.append(DownloadKey(sources.nvidia_key_url(ctx.nvidia_base), sources.NVIDIA_KEYRING, dearmor=True,
                                   replace=have_key))
    if own != want:
        actions.append(WriteFile(sources.NVIDIA_SOURCES_FILE, want, old=own, backup=own is not None))
    state.keyrings.add(sources.NVIDIA_KEYRING)
    state.files[sources.NVIDIA_SOURCES_FILE] = want
    if (sources.NVIDIA_SOURCES_FILE, url) not in state.apt_sources:
        state.apt_sources.append((sources.NVIDIA_SOURCES_FILE, url))
    if not actions:
        return StepPlan(name, "ok", url, warnings=warnings)
    return StepPlan(name, "change", f"add NVIDIA's container toolkit repository {url}", actions, warnings)


def plan_nvidia_toolkit(state: SetupFacts, ctx: PlanContext) -> StepPlan:
    name = "nvidia-toolkit"
    o = ctx.options
    if not o.nvidia:
        return StepPlan(name, "skipped", "--no-nvidia")
    warnings = []
    if "nvidia-docker2" in state.packages:
        warnings.append(f"legacy nvidia-docker2 {state.packages['nvidia-docker2']} is installed (superseded by "
                        "nvidia-container-toolkit; versions <= 2.12 own daemon.json); not changed")
    if state.toolkit_installed:
        version = state.packages.get("nvidia-container-toolkit", "")
        what = f"nvidia-container-toolkit {version}".strip() if version else f"{state.runtime_bin} (not a package)"
        return StepPlan(name, "ok", what, warnings=warnings)
    if _no_driver(state) and not o.force:
        warnings.append("no NVIDIA driver on this host (nvidia-smi missing or failing): the container toolkit is not "
                        "installed; host-setup never installs drivers. --force installs the toolkit anyway, "
                        "--no-nvidia silences this")
        return StepPlan(name, "skipped", "no NVIDIA driver: toolkit not installed (--force installs it anyway)",
                        warnings=warnings)
    if _no_driver(state):
        warnings.append("no NVIDIA driver: installing the toolkit anyway (--force); GPU containers will fail until "
                        "the owner installs a driver")
    if ctx.offline:
        if not ctx.offline.nvidia:
            return _fail(name, f"no nvidia-container-toolkit .deb in {ctx.offline.directory}",
                         "download it with --download-offline (without --no-nvidia), or use --no-nvidia")
        action = AptInstall(tuple(n for n, _ in ctx.offline.nvidia),
                            offline_files=tuple(p for _, p in ctx.offline.nvidia), lock_timeout=o.apt_lock_timeout)
    else:
        action = AptInstall(tuple(sources.NVIDIA_PACKAGES), lock_timeout=o.apt_lock_timeout)
    state.packages["nvidia-container-toolkit"] = "(new)"
    state.runtime_bin = "/usr/bin/nvidia-container-runtime"
    state.hook_ctime = state.now + 1
    state.now += 2
    return StepPlan(name, "change", "install nvidia-container-toolkit", [action], warnings)


def _restart_gate(state: SetupFacts) -> list:
    return [CheckRestartAllowed()] if state.docker_active == "active" else []


def plan_daemon_json(state: SetupFacts, ctx: PlanContext) -> StepPlan:
    name = "daemon-json"
    o = ctx.options
    if state.docker_package == "snap":
        return StepPlan(name, "skipped", "snap Docker: config lives inside the snap; not managed")
    if not state.docker_installed:
        return StepPlan(name, "skipped", "docker is not installed")
    try:
        current = state.daemon_config()
    except daemon_json.DaemonJsonError as exc:
        return _fail(name, exc.message, exc.hint or "")
    want_nvidia = o.nvidia and state.toolkit_installed
    if o.default_runtime == "nvidia" and not state.toolkit_installed:
        return _fail(name, "--default-runtime nvidia needs the NVIDIA container toolkit, which is not installed",
                     "install a driver first, or add --force to install the toolkit anyway")
    try:
        m = daemon_json.merge(current, nvidia_runtime=want_nvidia, default_runtime=o.default_runtime,
                              registry_mirrors=o.registry_mirrors, data_root=o.data_root)
    except daemon_json.DaemonJsonError as exc:
        return _fail(name, exc.message, exc.hint or "")
    kept = f"{len(current)} existing key(s) kept" if current else "no existing keys"
    if not m.changes:
        what = "nothing to add" if not state.daemon_json_exists else f"up to date ({kept})"
        return StepPlan(name, "ok", f"{daemon_json.PATH}: {what}", warnings=m.warnings)
    conflicts = daemon_json.flag_conflicts(state.exec_start, m.keys)
    if conflicts:
        return _fail(name, f"cannot set {', '.join(conflicts)} in {daemon_json.PATH}: dockerd refuses a setting given "
                           "both as a flag and in the file",
                     "remove the flag from docker.service (systemctl edit docker) or leave out that option")
    new_text = daemon_json.render(m.config, like=state.daemon_json_text)
    actions: list = []
    if not state.etc_docker:
        actions.append(MakeDir("/etc/docker"))
    actions += _restart_gate(state)
    actions.append(WriteFile(daemon_json.PATH, new_text, old=state.daemon_json_text if state.daemon_json_exists
                             else None, mode=state.daemon_json_mode if state.daemon_json_exists else "644",
                             backup=state.daemon_json_exists,
                             validate_with=state.dockerd if state.dockerd_validate else ""))
    actions.append(RestartDocker("apply daemon.json", rollback=daemon_json.PATH, unit=state.docker_unit or "yes"))
    state.daemon_json_exists = True
    state.daemon_json_text = new_text
    state.etc_docker = True
    state.dockerd_age = 0
    state.daemon_json_mtime = state.now
    state.now += 1
    state.docker_active = "active"
    return StepPlan(name, "change", "; ".join(m.changes) + f" ({kept})", actions, m.warnings)


def restart_reasons(state: SetupFacts, nvidia: bool = True) -> list[str]:
    """Why docker must be (re)started now (empty: it is running with the current config and hook).

    The NVIDIA hook only counts when GPU support is wanted (`nvidia`)."""
    reasons = []
    started = state.dockerd_started
    if state.docker_active != "active":
        reasons.append(f"docker is {state.docker_active or 'not running'}")
    elif started is not None:
        if nvidia and state.hook_ctime is not None and state.hook_ctime > started:
            reasons.append("the NVIDIA hook was installed after dockerd started (--gpus needs a restart)")
        if state.daemon_json_mtime is not None and state.daemon_json_mtime > started:
            reasons.append("daemon.json changed after dockerd started")
    return reasons


def plan_docker_service(state: SetupFacts, ctx: PlanContext) -> StepPlan:
    name = "docker-service"
    if state.docker_package == "snap":
        return StepPlan(name, "skipped", "snap Docker")
    if not state.docker_installed:
        return StepPlan(name, "skipped", "docker is not installed")
    if not state.docker_unit:
        return StepPlan(name, "skipped", "no docker service to manage",
                        warnings=["docker has no systemd unit or init script: start dockerd yourself"])
    reasons = restart_reasons(state, ctx.options.nvidia)
    if not reasons:
        return StepPlan(name, "ok", "running")
    verb = "start" if state.docker_active != "active" else "restart"
    actions = _restart_gate(state) + [RestartDocker("; ".join(reasons), unit=state.docker_unit)]
    state.docker_active = "active"
    state.dockerd_age = 0
    state.now += 1
    return StepPlan(name, "change", f"{verb} docker: {'; '.join(reasons)}", actions)


def plan_docker_group(state: SetupFacts, ctx: PlanContext) -> StepPlan:
    name = "docker-group"
    h = state.host
    if h.uid == 0:
        return StepPlan(name, "skipped", "logged in as root")
    if not state.docker_installed:
        return StepPlan(name, "skipped", "docker is not installed")
    if h.docker.cli_missing:  # never blame the group for a missing command
        return _fail(name, "the `docker` command is missing (the engine is installed)",
                     "install docker-cli (Debian 13+) or docker-ce-cli; `migrate doctor HOST` shows what is there")
    if state.user_in_docker_group():
        return StepPlan(name, "ok", f"{h.user} is in group docker")
    warning = ROOT_EQUIVALENT.format(host=ctx.display or "this host", host_args=shell.quote(ctx.display or "HOST"))
    action = AddToGroup("docker", h.user, create=not state.docker_group)
    state.docker_group = True
    state.docker_group_members.append(h.user)
    return StepPlan(name, "change", f"add {h.user} to group docker" + (" (created)" if action.create else ""),
                    [action], [warning])


def plan_verify(state: SetupFacts, ctx: PlanContext) -> StepPlan:
    o = ctx.options
    if not state.docker_installed:
        return StepPlan("verify", "skipped", "docker is not installed")
    expect = "nvidia" if o.nvidia and state.toolkit_installed else None
    gpu = bool(expect and state.has_driver and state.host.gpus)
    action = Verify(expect_runtime=expect, expect_default=o.default_runtime, gpu_test=gpu, image=o.verify_image)
    what = "docker info without sudo" + (", nvidia runtime" if expect else "")
    what += ", a GPU container" if gpu else ""
    return StepPlan("verify", "check", what, [action])


PLANNERS = {
    "host": plan_host, "docker-repo": plan_docker_repo, "docker-engine": plan_docker_engine,
    "nvidia-repo": plan_nvidia_repo, "nvidia-toolkit": plan_nvidia_toolkit, "daemon-json": plan_daemon_json,
    "docker-service": plan_docker_service, "docker-group": plan_docker_group, "verify": plan_verify,
}


def plan_steps(facts: SetupFacts, ctx: PlanContext) -> list[StepPlan]:
    """Every step in order, planned against predicted facts. After a failed step the rest are
    `skipped` ("not run"): nothing after a failure is planned on a guess."""
    state = copy.deepcopy(facts)
    plans: list[StepPlan] = []
    failed = None
    for name in STEP_ORDER:
        if failed:
            plans.append(StepPlan(name, "skipped", f"not run: {failed} failed"))
            continue
        p = PLANNERS[name](state, ctx)
        plans.append(p)
        if p.status == "failed":
            failed = name
    return plans


def render_plan(plans: list[StepPlan]) -> list[tuple[str, str, str]]:
    """(style, text) lines for --dry-run: each step's status and detail, then its exact actions."""
    marks = {"ok": "ok", "change": "would change", "check": "would check", "skipped": "skipped", "failed": "FAILED"}
    lines: list[tuple[str, str, str]] = []
    for p in plans:
        lines.append((p.status, f"{p.name:<15} {marks[p.status]:<13}", p.detail + (f" (hint: {p.hint})" if p.hint
                                                                                    else "")))
        for w in p.warnings:
            lines.append(("warn", "    warning:", w))
        for action in p.actions:
            for ln in action.describe():
                lines.append(("action", "   ", ln))
    return lines
