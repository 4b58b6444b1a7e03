"""`migrate sandbox`: local rehearsal hosts, each a systemd-booted Docker container with sshd.

After `up N`, hosts `sandbox1..N` are reachable by every migrate command with no flags: the
sandbox writes an ssh_config block (HostName, Port, User alice, its own key and known_hosts) that
the connection layer reads before ~/.ssh/config. `down` removes the containers, volumes, network
and state files it made (objects carry the label `migrate.sandbox=<name>`) and nothing else.

Several independent sandboxes can coexist: `MIGRATE_SANDBOX=name` changes the host names
(`name1`, `name2`...), container/network/volume names and state directory;
`MIGRATE_SANDBOX_SUBNET` and `MIGRATE_SANDBOX_PORT` move the network and published ports.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shlex
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from migrate import local, ui
from migrate.errors import LocalCommandError, MigrateError, UsageError
from migrate.paths import cache_root, private_dir, sandbox_root
from migrate.remote.hosts import remove_cached_configs
from migrate.sandbox import link as linkmod
from migrate.sandbox import mocknvml, recipe
from migrate.sandbox.mocknvml import state as mstate

IMAGE_REPO = "migrate-sandbox"
IMAGE = f"{IMAGE_REPO}:{recipe.SUITE}"  # the default release's image
LABEL = "migrate.sandbox"
DEFAULT_NAME = "sandbox"
DEFAULT_SUBNET = "172.31.250.0/24"
DEFAULT_BASE_PORT = 2222
BOB_PASSWORD = "bobpass"  # a fixed test fixture for the password-sudo user; not a secret
SMALL_DISK = "64m"


@dataclass
class SandboxSettings:
    """Names, network and ports of one sandbox (see module docstring for the env knobs)."""

    name: str = DEFAULT_NAME
    subnet: str = DEFAULT_SUBNET
    base_port: int = DEFAULT_BASE_PORT
    bind_addr: str = "127.0.0.1"
    suite: str = recipe.SUITE
    docker_from: str = ""  # "" (the release's own packages) or "sid"
    image_store: str = "overlay2"  # or "containerd": daemon.json asks for the containerd image store
    mirror: str = recipe.MIRROR
    security_mirror: str = recipe.SECURITY_MIRROR
    bob_password: str = BOB_PASSWORD
    extra_docker_args: list[str] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> SandboxSettings:
        """Settings from MIGRATE_SANDBOX* environment variables."""
        name = os.environ.get("MIGRATE_SANDBOX", DEFAULT_NAME)
        if not name.isidentifier() or not name.isascii() or name[-1].isdigit():
            raise UsageError(f"bad sandbox name {name!r}", hint="letters and '_' only, not ending in a digit")
        try:
            port = int(os.environ.get("MIGRATE_SANDBOX_PORT", DEFAULT_BASE_PORT))
        except ValueError as exc:
            raise UsageError("MIGRATE_SANDBOX_PORT must be a number") from exc
        return cls(
            name=name,
            subnet=os.environ.get("MIGRATE_SANDBOX_SUBNET", DEFAULT_SUBNET),
            base_port=port,
            mirror=os.environ.get("MIGRATE_SANDBOX_MIRROR", recipe.MIRROR),
            security_mirror=os.environ.get("MIGRATE_SANDBOX_SECURITY_MIRROR", recipe.SECURITY_MIRROR),
        ).with_flavour(os.environ.get("MIGRATE_SANDBOX_RELEASE", recipe.SUITE),
                       os.environ.get("MIGRATE_SANDBOX_DOCKER_FROM", ""),
                       os.environ.get("MIGRATE_SANDBOX_IMAGE_STORE", "overlay2"))

    def with_flavour(self, release: str, docker_from: str = "", image_store: str = "overlay2") -> SandboxSettings:
        """These settings with another Debian release, engine source and image store (validated)."""
        if release not in recipe.RELEASES:
            raise UsageError(f"unknown sandbox release {release!r}", hint=f"choose one of {', '.join(recipe.RELEASES)}")
        if docker_from and docker_from not in recipe.DOCKER_FROM:
            raise UsageError(f"unknown --docker-from {docker_from!r}", hint="the only other source is sid")
        if docker_from == "sid" and release != "trixie":
            raise UsageError("--docker-from sid needs --release trixie",
                             hint="sid's packages are built for trixie's libraries, not bookworm's")
        if image_store not in recipe.IMAGE_STORES:
            raise UsageError(f"unknown image store {image_store!r}",
                             hint=f"choose one of {', '.join(recipe.IMAGE_STORES)}")
        self.suite, self.docker_from, self.image_store = release, docker_from, image_store
        return self

    @property
    def image(self) -> str:
        """The Docker image this sandbox's hosts run (one per release)."""
        return f"{IMAGE_REPO}:{self.suite}"

    @property
    def flavour(self) -> dict[str, str]:
        """Release, engine source and image store, as recorded for the hosts."""
        return {"release": self.suite, "docker_from": self.docker_from or "", "image_store": self.image_store}

    def alias(self, i: int) -> str:
        return f"{self.name}{i}"

    def container(self, i: int) -> str:
        return f"migrate-{self.name}{i}"

    @property
    def network(self) -> str:
        return f"migrate-{self.name}"

    def ip(self, i: int) -> str:
        net = ipaddress.ip_network(self.subnet)
        return str(net.network_address + 10 + i)

    def port(self, i: int) -> int:
        return self.base_port + i - 1


def _docker(*args: str, check: bool = True, input: str | None = None, what: str | None = None,
            timeout: float | None = 120) -> subprocess.CompletedProcess:
    return local.run(["docker", *args], check=check, input=input, what=what or f"docker {args[0]}",
                     timeout=timeout)


def docker_available() -> None:
    """Raise a clear error when no Docker daemon answers."""
    local.require("docker")
    proc = _docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=20)
    if proc.returncode != 0:
        raise MigrateError("the local Docker daemon does not answer",
                           hint="start it (scripts/bootstrap does: apt-get install docker.io; dockerd &)")


def host_nameservers() -> str:
    """Upstream resolvers for the sandbox (never loopback ones, which do not work inside)."""
    for path in ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        keep = [ln for ln in lines if ln.startswith(("nameserver ", "search ", "options "))]
        keep = [ln for ln in keep if not (ln.startswith("nameserver ") and ln.split()[1].startswith(("127.", "::1")))]
        if any(ln.startswith("nameserver ") for ln in keep):
            return "\n".join(keep)
    return ""


def host_apt_conf() -> str:
    """apt settings copied from this machine (a frozen snapshot mirror needs Check-Valid-Until false)."""
    try:
        dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    wanted = ('Acquire::Check-Valid-Until "false";', 'Acquire::Check-Date "false";')
    return "\n".join(ln for ln in dump.splitlines() if ln in wanted)


@contextmanager
def _build_lock(path: Path, holder: str):
    """The image build lock (one build at a time on this machine); says so when another holds it.

    `holder` (who we are) is written into the file once we hold it, so a waiter can name us.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:  # not "w": that would erase the holder's name before we may read it
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            other = fh.read().strip() or "another `migrate sandbox up`"
            ui.info(f"waiting for {other} to finish building the sandbox image (lock {path})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(holder)
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def config_marker(name: str) -> str:
    """The first words of sandbox `name`'s ssh_config: how its cached `ssh -F` copies are recognised."""
    return f"# migrate sandbox '{name}':"


class Sandbox:
    """One named sandbox: build its image, bring hosts up and down, describe them."""

    def __init__(self, settings: SandboxSettings | None = None) -> None:
        self.s = settings or SandboxSettings.from_env()
        self.state = sandbox_root() / self.s.name
        self.cache = cache_root() / "sandbox"
        self.key = self.state / "ssh" / "id_ed25519"
        self.known_hosts = self.state / "ssh" / "known_hosts"
        self.ssh_config = self.state / "ssh_config"
        self.hosts_json = self.state / "hosts.json"
        self.link_ports: dict[int, int] = {}  # host index -> the link relay's port (sandbox/link.py)
        self.link_text = ""

    # -- image ------------------------------------------------------------------------------
    @property
    def recipe_id(self) -> str:
        return recipe.recipe_hash(self.s.suite, self.s.mirror, self.s.security_mirror)

    @property
    def tarball(self) -> Path:
        return self.cache / f"rootfs-{self.s.suite}-{self.recipe_id}.tar.zst"

    def image_is_current(self) -> bool:
        proc = _docker("image", "inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", self.s.image,
                       check=False)
        return proc.returncode == 0 and f"MIGRATE_SANDBOX_RECIPE={self.recipe_id}" in proc.stdout.split()

    def build(self, force: bool = False) -> None:
        """Make sure the sandbox image exists for the current recipe (cached rootfs tarball)."""
        with _build_lock(self.cache / "build.lock", f"sandbox '{self.s.name}' (pid {os.getpid()})"):
            if not force and self.image_is_current():
                ui.debug(f"sandbox image {self.s.image} is current (recipe {self.recipe_id})")
                return
            if force or not self.tarball.is_file():
                self._debootstrap()
            else:
                ui.step(f"using cached rootfs {self.tarball}")
            self._import()

    def _debootstrap(self) -> None:
        if os.geteuid() != 0:
            raise MigrateError("building the sandbox image needs root (debootstrap)",
                               hint="run `migrate sandbox up` as root once; later runs reuse the cached image")
        local.require("debootstrap")
        local.require("zstd")
        root = private_dir(self.cache / "build") / "rootfs"
        self._umount_under(root)
        shutil.rmtree(root, ignore_errors=True)
        log = self.cache / "debootstrap.log"
        t0 = time.monotonic()
        with ui.err.status(f"building the sandbox rootfs with debootstrap ({self.s.suite}); "
                           "about 90 s, once (log: {log})"):
            with open(log, "w") as fh:
                proc = subprocess.run(
                    ["debootstrap", "--variant=minbase", f"--include={','.join(recipe.PACKAGES)}",
                     f"--cache-dir={private_dir(self.cache / 'debs')}", self.s.suite, str(root), self.s.mirror],
                    stdout=fh, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                self._umount_under(root)
                tail = log.read_text().splitlines()[-3:]
                raise MigrateError(f"debootstrap failed: {' / '.join(tail)}", hint=f"full log: {log}")
            env = dict(os.environ, R=str(root), MIRROR=self.s.mirror, SECURITY_MIRROR=self.s.security_mirror,
                       SUITE=self.s.suite, INIT_SHIM=recipe.INIT_SHIM, NETFIX=recipe.NETFIX,
                       NETFIX_UNIT=recipe.NETFIX_UNIT)
            local.run(["sh", "-c", recipe.CUSTOMIZE], env=env, what="customize sandbox rootfs")
            tmp = self.tarball.with_suffix(".tmp")
            pipeline = (f"tar --numeric-owner --xattrs --xattrs-include='*' -C {shlex.quote(str(root))} -cf - . "
                        f"| zstd -q -T0 -6 > {shlex.quote(str(tmp))}")
            local.run(["bash", "-o", "pipefail", "-c", pipeline], what="pack sandbox rootfs")
            tmp.replace(self.tarball)
            for old in self.cache.glob(f"rootfs-{self.s.suite}-*.tar.zst"):
                if old != self.tarball:
                    old.unlink()
            shutil.rmtree(root, ignore_errors=True)
        ui.step(f"built sandbox rootfs in {time.monotonic() - t0:.0f}s ({ui.human_bytes(self.tarball.stat().st_size)})")

    @staticmethod
    def _umount_under(path: Path) -> None:
        if not path.exists():
            return
        prefix = str(path.resolve()) + "/"
        try:
            mounts = [ln.split()[1] for ln in Path("/proc/self/mounts").read_text().splitlines()]
        except OSError:
            return
        for m in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)

    def _import(self) -> None:
        old = _docker("image", "inspect", "-f", "{{.Id}}", self.s.image, check=False).stdout.strip()
        changes = ['CMD ["/usr/local/sbin/migrate-sandbox-init"]', "ENV container=docker",
                   f"ENV MIGRATE_SANDBOX_RECIPE={self.recipe_id}"]
        argv = ["docker", "import", *[x for c in changes for x in ("--change", c)],
                "--message", f"migrate sandbox, recipe {self.recipe_id}", "-", self.s.image]
        with ui.err.status("importing the sandbox image"):
            pipeline = f"zstd -dc {shlex.quote(str(self.tarball))} | {shlex.join(argv)} >/dev/null"
            local.run(["bash", "-o", "pipefail", "-c", pipeline], what="docker import", timeout=600)
        new = _docker("image", "inspect", "-f", "{{.Id}}", self.s.image).stdout.strip()
        if old and old != new:
            _docker("image", "rm", old, check=False)

    # -- hosts ------------------------------------------------------------------------------
    def _ensure_key(self) -> None:
        private_dir(self.key.parent)
        if not self.key.is_file():
            local.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"migrate-{self.s.name}",
                       "-f", str(self.key)], what="ssh-keygen")
        self.known_hosts.touch(mode=0o600)

    def _ensure_network(self) -> None:
        if _docker("network", "inspect", self.s.network, check=False).returncode == 0:
            return
        _docker("network", "create", "--label", f"{LABEL}={self.s.name}", "--subnet", self.s.subnet,
                self.s.network, what="create sandbox network",
                )

    def _start(self, i: int) -> None:
        name = self.s.container(i)
        state = _docker("inspect", "-f", "{{.State.Status}}", name, check=False).stdout.strip()
        if state == "running":
            return
        if state:
            _docker("start", name, what=f"start {name}")
            return
        volume = f"{name}-docker"
        cvolume = f"{name}-containerd"
        for v in (volume, cvolume):
            _docker("volume", "create", "--label", f"{LABEL}={self.s.name}", v)
        _docker(
            "run", "-d", "--name", name, "--hostname", self.s.alias(i), "--label", f"{LABEL}={self.s.name}",
            "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
            "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "--security-opt", "systempaths=unconfined",
            "--device-cgroup-rule", "a *:* rwm", "--cgroupns=private",
            "--stop-signal", "SIGRTMIN+3", "--tmpfs", "/run", "--tmpfs", "/run/lock",
            "--tmpfs", f"/mnt/small:size={SMALL_DISK},mode=1777",
            "--network", self.s.network, "--ip", self.s.ip(i),
            "-p", f"{self.s.bind_addr}:{self.s.port(i)}:22",
            "-v", f"{volume}:/var/lib/docker",
            # containerd's snapshotter cannot mount on the container's own overlay either
            "-v", f"{cvolume}:/var/lib/containerd",
            *self.s.extra_docker_args,
            self.s.image, what=f"create {name}",
        )

    def _configure(self, i: int, n: int, gpus: int, kill_user_processes: bool) -> list[str]:
        hosts = "".join(f"{self.s.ip(j)} {self.s.alias(j)} # migrate-sandbox\n" for j in range(1, n + 1))
        if gpus:
            self._copy_mock_nvml(i)
        env = {"BOBPW": self.s.bob_password, "HOSTS": hosts, "NS": host_nameservers(),
               "KUP": "yes" if kill_user_processes else "no", "APTCONF": host_apt_conf(), "GPUS": str(gpus),
               "FAKE_NVIDIA_SMI": recipe.FAKE_NVIDIA_SMI, "MOCK_STATE": mstate.render(mstate.fresh(gpus)),
               "MOCK_LIB_DIR": recipe.MOCK_LIB_DIR, "DOCKER_FROM": self.s.docker_from,
               "IMAGE_STORE": self.s.image_store, "SID_PACKAGES": " ".join(recipe.SID_PACKAGES)}
        argv = ["exec", "-i"]
        for k, v in env.items():
            argv += ["-e", f"{k}={v}"]
        argv += [self.s.container(i), "sh", "-c", recipe.CONFIGURE]
        pub = (self.key.with_suffix(".pub")).read_text()
        # a restarted container may first run systemd-tmpfiles over a /tmp full of old test data,
        # which holds up sshd for minutes: wait for it rather than failing at 2 minutes
        try:
            proc = _docker(*argv, input=pub, what=f"configure {self.s.alias(i)}", timeout=360)
        except LocalCommandError as exc:
            if "is not running" not in str(exc):
                raise
            raise self._died_at_boot(i) from None
        return [ln.strip() for ln in proc.stdout.splitlines() if ln.startswith(("ssh-", "ecdsa-"))]

    def mock_nvml_libraries(self) -> dict:
        """The mock NVML library's driver generations, compiled here once per source (gcc)."""
        try:
            return mocknvml.build(self.cache / "mocknvml")
        except mocknvml.BuildError as exc:
            raise MigrateError(f"cannot build the sandbox's mock GPU library: {exc}",
                               hint="install gcc and libc6-dev, or start the sandbox without --gpus") from None

    def mock_gpus(self, i: int, gpus: int) -> None:
        """Install (gpus > 0) or remove host i's mock NVML library, state and nvidia-smi; nothing else."""
        if gpus:
            self._copy_mock_nvml(i)
        env = {"GPUS": str(gpus), "MOCK_STATE": mstate.render(mstate.fresh(gpus)), "MOCK_LIB_DIR": recipe.MOCK_LIB_DIR,
               "FAKE_NVIDIA_SMI": recipe.FAKE_NVIDIA_SMI}
        argv = ["exec"] + [x for k, v in env.items() for x in ("-e", f"{k}={v}")]
        script = "set -eu\n" + (recipe.MOCK_NVML_ON if gpus else recipe.MOCK_NVML_OFF)
        _docker(*argv, self.s.container(i), "sh", "-c", script, what=f"mock GPUs on {self.s.alias(i)}")

    def _copy_mock_nvml(self, i: int) -> None:
        """Put every driver generation of the mock library on host i (CONFIGURE installs one)."""
        libs = self.mock_nvml_libraries()
        folder = next(iter(libs.values())).parent
        _docker("exec", self.s.container(i), "mkdir", "-p", recipe.MOCK_LIB_DIR)
        _docker("cp", f"{folder}/.", f"{self.s.container(i)}:{recipe.MOCK_LIB_DIR}", what="copy the mock NVML library")

    def _died_at_boot(self, i: int) -> MigrateError:
        """Why a host's container stopped while booting (its last log line), and the usual cause."""
        logs = _docker("logs", "--tail", "20", self.s.container(i), check=False)
        lines = [ln.strip() for ln in (logs.stdout + logs.stderr).splitlines() if ln.strip()]
        last = lines[-1] if lines else "no output"
        hint = "see `docker logs " + self.s.container(i) + "`"
        if "inotify" in (logs.stdout + logs.stderr).lower() or "too many open files" in last.lower():
            hint = ("systemd ran out of inotify instances: `sysctl -w fs.inotify.max_user_instances=1024` "
                    "(scripts/bootstrap does)")
        return MigrateError(f"sandbox host {self.s.alias(i)} stopped while booting: {last}", hint=hint)

    def _write_known_hosts(self, entries: dict[int, list[str]]) -> None:
        lines: list[str] = []
        for i, keys in sorted(entries.items()):
            for key in keys:
                keytype, b64 = key.split()[:2]
                names = [f"[{self.s.bind_addr}]:{self.s.port(i)}", self.s.ip(i)]
                if i in self.link_ports:
                    names.append(f"[{self.s.bind_addr}]:{self.link_ports[i]}")
                lines += [f"{name} {keytype} {b64}" for name in names]
        tmp = self.known_hosts.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.chmod(0o600)
        tmp.replace(self.known_hosts)

    def running_indices(self) -> list[int]:
        """Indices of this sandbox's containers that exist (any state)."""
        proc = _docker("ps", "-a", "--filter", f"label={LABEL}={self.s.name}", "--format", "{{.Names}}")
        prefix = f"migrate-{self.s.name}"
        out = []
        for name in proc.stdout.split():
            suffix = name[len(prefix):]
            if name.startswith(prefix) and suffix.isdigit():
                out.append(int(suffix))
        return sorted(out)

    def recorded_flavour(self) -> dict[str, str] | None:
        """Release, engine source and image store of the hosts that exist now (None: no hosts)."""
        hosts = [h for h in self.describe() if h["state"] != "missing"]
        if not hosts:
            return None
        h = hosts[0]
        return {"release": h.get("release", recipe.SUITE), "docker_from": h.get("docker_from", ""),
                "image_store": h.get("image_store", "overlay2")}

    def choose_flavour(self, release: str | None, docker_from: str | None, image_store: str | None) -> None:
        """Settle the flavour: what was asked, else what the running hosts have, else the settings'.

        Hosts of one sandbox share one flavour: asking for another while hosts exist is refused.
        """
        recorded = self.recorded_flavour()
        base = recorded or self.s.flavour
        wanted = {"release": release if release is not None else base["release"],
                  "docker_from": docker_from if docker_from is not None else base["docker_from"],
                  "image_store": image_store if image_store is not None else base["image_store"]}
        if recorded and wanted != recorded:
            have = "/".join(v for v in recorded.values() if v)
            raise UsageError(f"sandbox '{self.s.name}' is up as {have}; its hosts cannot change release, "
                             "engine source or image store",
                             hint="`migrate sandbox down` first, or give another sandbox a name: MIGRATE_SANDBOX=other")
        self.s.with_flavour(wanted["release"], wanted["docker_from"], wanted["image_store"])

    def up(self, n: int, *, gpus: int = 0, kill_user_processes: bool = False, rebuild: bool = False,
           release: str | None = None, docker_from: str | None = None, image_store: str | None = None,
           link: str | None = None) -> list[dict]:
        """Start hosts 1..n (reusing running ones), configure them, write ssh_config; return host info.

        `link`: "RATE/DELAY" puts a slow, far link in front of the hosts' SSH ports, "off" removes
        it, None keeps what is there (sandbox/link.py)."""
        if link not in (None, "off"):
            linkmod.parse_link(link)  # a typo fails before anything starts
        if not 1 <= n <= 50:
            raise UsageError(f"cannot start {n} sandbox hosts", hint="choose 1 to 50")
        if gpus < 0 or gpus > 16:
            raise UsageError("--gpus must be between 0 and 16")
        docker_available()
        self.choose_flavour(release, docker_from, image_store)
        t0 = time.monotonic()
        self.build(force=rebuild)
        private_dir(self.state)
        self._ensure_key()
        self._ensure_network()
        existing = self.running_indices()
        total = max([n, *existing])
        for i in range(1, n + 1):
            self._start(i)
        keys: dict[int, list[str]] = {}
        with ui.err.status(f"configuring {total} sandbox host(s)"):
            for i in range(1, total + 1):
                if i in existing or i <= n:
                    keys[i] = self._configure(i, total, gpus, kill_user_processes)
        self.link_ports = self._apply_link(link, sorted(keys))
        self._write_known_hosts(keys)
        self._write_coords(sorted(keys), gpus)
        ui.step(f"{len(keys)} sandbox host(s) ready in {time.monotonic() - t0:.0f}s")
        return self.describe()

    def _apply_link(self, link: str | None, indices: list[int]) -> dict[int, int]:
        """Start, keep or stop the link relay for these hosts; return {index: relay port}."""
        current = linkmod.read_state(self.state)
        before = linkmod.recorded(self.state)  # a relay that died (a reboot) is started again
        if link == "off" or (link is None and before is None):
            linkmod.stop(self.state)
            return {}
        # no link given means one is recorded (returned above otherwise); up() refuses an empty --link
        text = self.link_text = link or cast(dict, before)["link"]
        if current and current["link"] == text and set(current["ports"]) == {str(i) for i in indices}:
            return {int(i): port for i, port in current["ports"].items()}
        state = linkmod.start(self.state, linkmod.parse_link(text), {i: self.s.ip(i) for i in indices},
                              self.s.bind_addr)
        ui.step(f"link {linkmod.parse_link(text).describe()} between this machine and the hosts")
        return {int(i): port for i, port in state["ports"].items()}

    def link_state(self) -> dict | None:
        """The running link relay's record (sandbox/link.py), or None."""
        return linkmod.read_state(self.state)

    def _write_coords(self, indices: list[int], gpus: int) -> None:
        blocks = []
        hosts = []
        for i in indices:
            alias = self.s.alias(i)
            port = self.link_ports.get(i, self.s.port(i))
            blocks.append(
                f"Host {alias}\n  HostName {self.s.bind_addr}\n  Port {port}\n  User alice\n"
                f"  IdentityFile {self.key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {self.known_hosts}\n"
                f"  StrictHostKeyChecking yes\n"
            )
            hosts.append({"alias": alias, "container": self.s.container(i), "hostname": self.s.bind_addr,
                          "port": port, "published_port": self.s.port(i), "ip": self.s.ip(i), "user": "alice",
                          "sudo": "nopasswd",
                          "password_sudo_user": "bob", "password_sudo_user_password": self.s.bob_password,
                          "identity_file": str(self.key), "known_hosts": str(self.known_hosts),
                          "fake_gpus": gpus, **self.s.flavour,
                          **({"link": self.link_text} if i in self.link_ports else {})})
        header = f"{config_marker(self.s.name)} written by `migrate sandbox up`; removed by `down`\n"
        self.ssh_config.write_text(header + "\n".join(blocks))
        self.ssh_config.chmod(0o600)
        self.hosts_json.write_text(json.dumps(hosts, indent=2) + "\n")
        self.hosts_json.chmod(0o600)

    def describe(self) -> list[dict]:
        """Host info from hosts.json plus each container's live state."""
        try:
            hosts = json.loads(self.hosts_json.read_text())
        except (OSError, ValueError):
            return []
        states = {}
        proc = _docker("ps", "-a", "--filter", f"label={LABEL}={self.s.name}",
                       "--format", "{{.Names}} {{.State}}", check=False)
        for line in proc.stdout.splitlines():
            name, _, state = line.partition(" ")
            states[name] = state
        for h in hosts:
            h["state"] = states.get(h["container"], "missing")
        return hosts

    def openssh_config(self) -> str:
        """The ssh_config text for `ssh -F`, `rsync -e` and scripts."""
        if not self.ssh_config.is_file():
            raise MigrateError(f"sandbox '{self.s.name}' is not up", hint="run `migrate sandbox up`")
        return self.ssh_config.read_text()

    def down(self, purge: bool = False) -> list[str]:
        """Remove this sandbox's containers, volumes, network and state files; return what went."""
        removed: list[str] = []
        try:
            docker_available()
        except (MigrateError, LocalCommandError):
            if purge or not self.state.exists():
                raise
            ui.warn("Docker daemon not answering; removing only the local state files")
        else:
            label = f"label={LABEL}={self.s.name}"
            names = _docker("ps", "-aq", "--filter", label).stdout.split()
            if names:
                _docker("rm", "-f", "-v", *names, what="remove sandbox containers")
                removed.append(f"{len(names)} container(s)")
            vols = _docker("volume", "ls", "-q", "--filter", label).stdout.split()
            if vols:
                _docker("volume", "rm", *vols, what="remove sandbox volumes")
                removed.append(f"{len(vols)} volume(s)")
            nets = _docker("network", "ls", "-q", "--filter", label).stdout.split()
            if nets:
                _docker("network", "rm", *nets, what="remove sandbox network")
                removed.append("network")
            if purge:
                for release in recipe.RELEASES:
                    image = f"{IMAGE_REPO}:{release}"
                    if _docker("image", "rm", image, check=False).returncode == 0:
                        removed.append(f"image {image}")
        if linkmod.stop(self.state):
            removed.append("link relay")
        if self.state.exists():
            shutil.rmtree(self.state)
            removed.append(f"state {self.state}")
        cached = remove_cached_configs(config_marker(self.s.name))  # ssh -F copies naming these hosts
        if cached:
            removed.append(f"{len(cached)} cached ssh_config file(s)")
        if purge and self.cache.exists():
            shutil.rmtree(self.cache)
            removed.append(f"cache {self.cache}")
        return removed
