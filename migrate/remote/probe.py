"""Facts about a host in one round trip: OS, arch, kernel, cgroups, systemd, sudo, Docker, NVIDIA
GPUs, free disk, python3, rsync and zstd.

`PROBE_SCRIPT` is plain POSIX sh (the host may have nothing else); it prints `key=value` lines that
`parse_probe` turns into `HostFacts`. Both halves are pure and unit-tested; `probe(remote)` runs it.
Nothing in the script needs root or changes anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from migrate.remote import shell
from migrate.remote.host import Host
from migrate.remote.probe_fragments import ARCH, DOCKERD, FREE_SPACE, KV, SUDO, as_is, assign, yes

PROBE_SCRIPT = KV + SUDO + DOCKERD + FREE_SPACE + r"""
if [ -r /etc/os-release ]; then
  . /etc/os-release
  kv os.id "${ID:-}"; kv os.version_id "${VERSION_ID:-}"; kv os.codename "${VERSION_CODENAME:-}"
  kv os.ubuntu_codename "${UBUNTU_CODENAME:-}"; kv os.id_like "${ID_LIKE:-}"; kv os.pretty "${PRETTY_NAME:-}"
fi
""" + ARCH + r"""kv dpkg_arch "$(dpkg --print-architecture 2>/dev/null)"
kv kernel "$(uname -r)"
if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ]; then kv cgroup 2; else kv cgroup 1; fi
if [ -d /run/systemd/system ]; then kv systemd yes; else kv systemd no; fi
kv systemd_version "$(systemctl --version 2>/dev/null | head -n 1 | awk '{print $2}')"
kv virt "$(systemd-detect-virt 2>/dev/null || true)"
kv user "$(id -un)"; kv uid "$(id -u)"; kv groups "$(id -nG)"; kv home "$HOME"
kv sudo "$(sudo_mode)"
if command -v docker >/dev/null 2>&1; then
  kv docker.path "$(command -v docker)"
  kv docker.client "$(docker version --format '{{.Client.Version}}' 2>/dev/null)"
  info=$(docker info --format '{{.ServerVersion}}|{{.Driver}}|{{.DockerRootDir}}|{{.DefaultRuntime}}|{{.CgroupDriver}}|{{range $k, $v := .Runtimes}}{{$k}},{{end}}|{{range .DriverStatus}}{{index . 0}}:{{index . 1}};{{end}}' 2>&1)
  if [ $? -eq 0 ]; then kv docker.access yes; kv docker.info "$info"
  else kv docker.access no; kv docker.error "$(printf '%s' "$info" | tail -n 1)"; fi
else kv docker.path ""; fi
d=$(dockerd_path)
if [ -n "$d" ]; then
  kv docker.dockerd "$d"
  kv docker.daemon_version "$("$d" --version 2>/dev/null | sed -n 's/^Docker version \([^,]*\).*/\1/p')"
fi
pidof dockerd >/dev/null 2>&1 && kv docker.daemon_running yes
for p in docker-ce docker.io docker-cli docker-ce-cli docker-ce-rootless-extras nvidia-container-toolkit nvidia-docker2 rsync zstd; do
  v=$(dpkg-query -W -f='${Status} ${Version}' "$p" 2>/dev/null | sed -n 's/^install ok installed //p')
  [ -n "$v" ] && kv "pkg.$p" "$v"
done
if command -v snap >/dev/null 2>&1 && snap list docker >/dev/null 2>&1; then kv docker.snap yes; fi
[ -S "${XDG_RUNTIME_DIR:-/run/user/$(id -u)}/docker.sock" ] && kv docker.rootless_socket yes
kv nvidia_ctk "$(command -v nvidia-ctk 2>/dev/null)"
kv nvidia_runtime "$(command -v nvidia-container-runtime 2>/dev/null)"
if command -v nvidia-smi >/dev/null 2>&1; then
  kv nvidia_smi "$(command -v nvidia-smi)"
  nvidia-smi --query-gpu=index,name,uuid,memory.total,driver_version --format=csv,noheader,nounits 2>/dev/null \
    | while IFS= read -r line; do kv gpu "$line"; done
  kv nvidia_smi_exit "$(nvidia-smi -L >/dev/null 2>&1; echo $?)"
fi
disk() { kv "disk.$2" "$(free_space "$1" '$4 " " $2 " " $6')"; }
disk "$HOME" home; disk /var/lib/docker docker; disk /tmp tmp
if command -v python3 >/dev/null 2>&1; then
  kv python3 "$(python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)"
fi
command -v rsync >/dev/null 2>&1 && kv rsync "$(rsync --version 2>/dev/null | head -n 1 | awk '{print $3}')"
kv apptainer "$(command -v apptainer 2>/dev/null || command -v singularity 2>/dev/null)"
command -v zstd >/dev/null 2>&1 && kv zstd "$(zstd --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p')"
kv cpus "$(nproc 2>/dev/null)"
kv aes "$(grep -m1 -wo aes /proc/cpuinfo 2>/dev/null)"
kv boot_id "$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"
exit 0
"""


@dataclass
class Gpu:
    """One NVIDIA GPU as nvidia-smi lists it."""

    index: int
    name: str
    uuid: str
    memory_mib: int | None
    driver: str


@dataclass
class Disk:
    """Free and total space of the filesystem holding `path` (KiB from df -P)."""

    path: str
    free_kib: int
    total_kib: int
    mount: str


@dataclass
class Docker:
    """What Docker looks like on the host."""

    installed: bool = False
    path: str = ""
    client_version: str = ""
    access: bool = False
    error: str = ""
    server_version: str = ""
    storage_driver: str = ""
    root_dir: str = ""
    default_runtime: str = ""
    cgroup_driver: str = ""
    runtimes: list[str] = field(default_factory=list)
    package: str = ""  # docker-ce, docker.io, snap, or '' when unknown
    rootless: bool = False
    dockerd: str = ""  # path of the daemon binary, found even when the `docker` CLI is missing
    daemon_version: str = ""  # `dockerd --version` (needs no daemon access)
    daemon_running: bool = False
    driver_status: dict[str, str] = field(default_factory=dict)  # docker info's DriverStatus

    @property
    def cli_missing(self) -> bool:
        """The engine is installed but the `docker` command is not (Debian 13+ ships it in docker-cli)."""
        return not self.path and bool(self.dockerd)

    @property
    def image_store(self) -> str:
        """'containerd' when the daemon keeps images in containerd (snapshotters), else 'graphdriver'
        (overlay2 and friends); '' when docker info could not be read."""
        if not self.server_version:
            return ""
        if self.driver_status.get("driver-type", "").startswith("io.containerd.snapshotter"):
            return "containerd"
        return "graphdriver"

    @property
    def engine_version(self) -> str:
        """The daemon's version: from docker info, else from `dockerd --version`."""
        return self.server_version or self.daemon_version


@dataclass
class HostFacts:
    """Everything `doctor` shows and the other commands plan with."""

    os_id: str = ""
    os_version_id: str = ""
    os_codename: str = ""
    ubuntu_codename: str = ""
    os_id_like: str = ""
    os_pretty: str = ""
    arch: str = ""
    dpkg_arch: str = ""
    kernel: str = ""
    cgroup_version: int = 0
    systemd: bool = False
    systemd_version: int = 0
    virt: str = ""
    user: str = ""
    uid: int = -1
    groups: list[str] = field(default_factory=list)
    home: str = ""
    sudo: str = "none"
    docker: Docker = field(default_factory=Docker)
    packages: dict[str, str] = field(default_factory=dict)
    nvidia_smi: str = ""
    nvidia_smi_ok: bool = False
    nvidia_ctk: str = ""
    nvidia_runtime: str = ""
    gpus: list[Gpu] = field(default_factory=list)
    disks: dict[str, Disk] = field(default_factory=dict)
    python3: str = ""
    rsync: str = ""
    zstd: str = ""
    apptainer: str = ""  # path of apptainer (or singularity): SIF images run without root or Docker
    cpus: int = 0
    aes: bool = False
    boot_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data for --json (with the derived Docker facts doctor reports)."""
        data = asdict(self)
        data["docker"].update(image_store=self.docker.image_store, cli_missing=self.docker.cli_missing,
                              engine_version=self.docker.engine_version)
        return data

    @property
    def os_family(self) -> str:
        """'ubuntu', 'debian' or '' (derivatives mapped through ID_LIKE)."""
        ids = [self.os_id, *self.os_id_like.split()]
        if "ubuntu" in ids:
            return "ubuntu"
        if "debian" in ids or "raspbian" in ids:
            return "debian"
        return ""

    @property
    def docker_arch(self) -> str:
        """The arch name Docker uses (amd64, arm64, ...)."""
        return normalize_arch(self.dpkg_arch or self.arch)

    def python_at_least(self, major: int, minor: int) -> bool:
        """True when python3 exists and is at least major.minor."""
        try:
            parts = [int(x) for x in self.python3.split(".")[:2]]
        except ValueError:
            return False
        return len(parts) == 2 and (parts[0], parts[1]) >= (major, minor)


ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armhf": "arm", "i686": "386",
                "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x"}


def normalize_arch(arch: str) -> str:
    """uname/dpkg arch names to Docker's (x86_64 -> amd64, aarch64 -> arm64)."""
    return ARCH_ALIASES.get(arch, arch)


def _int(text: str, default: int = 0) -> int:
    try:
        return int(text.strip())
    except (ValueError, AttributeError):
        return default


PROBE_KEYS: dict[str, tuple[str, Callable[[str], Any]]] = {
    **{f"os.{k}": (attr, as_is) for k, attr in (("id", "os_id"), ("version_id", "os_version_id"),
                                                  ("codename", "os_codename"), ("ubuntu_codename", "ubuntu_codename"),
                                                  ("id_like", "os_id_like"), ("pretty", "os_pretty"))},
    **{k: (k, as_is) for k in ("arch", "dpkg_arch", "kernel", "virt", "user", "home", "sudo", "nvidia_smi",
                               "nvidia_ctk", "nvidia_runtime", "python3", "rsync", "zstd", "boot_id",
                               "apptainer")},
    "cgroup": ("cgroup_version", _int), "systemd": ("systemd", yes), "systemd_version": ("systemd_version", _int),
    "uid": ("uid", lambda v: _int(v, -1)), "groups": ("groups", str.split), "cpus": ("cpus", _int),
    "aes": ("aes", lambda v: v == "aes"), "nvidia_smi_exit": ("nvidia_smi_ok", lambda v: v == "0"),
    "docker.dockerd": ("docker.dockerd", as_is), "docker.daemon_version": ("docker.daemon_version", as_is),
    "docker.daemon_running": ("docker.daemon_running", yes), "docker.client": ("docker.client_version", as_is),
    "docker.access": ("docker.access", yes), "docker.error": ("docker.error", as_is),
}


def parse_probe(text: str) -> HostFacts:
    """Turn the probe's key=value lines into HostFacts (unknown keys are ignored)."""
    f = HostFacts()
    d = f.docker
    for key, value in assign(f, text, PROBE_KEYS, strip=True):
        if key == "docker.path":
            d.path = value
            d.installed = bool(value)
        elif key == "docker.info":
            parts = value.split("|")
            parts += [""] * (7 - len(parts))
            d.server_version, d.storage_driver, d.root_dir, d.default_runtime, d.cgroup_driver = parts[:5]
            d.runtimes = sorted(r for r in parts[5].split(",") if r)
            for item in parts[6].split(";"):
                k, sep, v = item.partition(":")
                if sep:
                    d.driver_status[k.strip()] = v.strip()
        elif key == "docker.snap":
            d.package = "snap"
        elif key == "docker.rootless_socket":
            d.rootless = True
        elif key.startswith("pkg."):
            f.packages[key[4:]] = value
        elif key == "gpu":
            cols = [c.strip() for c in value.split(",")]
            if len(cols) >= 5:
                f.gpus.append(Gpu(index=_int(cols[0]), name=cols[1], uuid=cols[2],
                                  memory_mib=_int(cols[3], 0) or None, driver=cols[4]))
        elif key.startswith("disk."):
            cols = value.split()
            if len(cols) >= 3:
                f.disks[key[5:]] = Disk(path=key[5:], free_kib=_int(cols[0]), total_kib=_int(cols[1]),
                                        mount=cols[2])
    if not d.package:
        if "docker-ce" in f.packages:
            d.package = "docker-ce"
        elif "docker.io" in f.packages:
            d.package = "docker.io"
    return f


def probe(remote: Host) -> HostFacts:
    """Run the probe on an open `Remote` (one round trip) and parse it."""
    res = remote.run(shell.sh_c(PROBE_SCRIPT), what="probe host facts")
    facts = parse_probe(res.stdout)
    if facts.sudo in ("root", "nopasswd", "password", "none"):
        remote.set_sudo_mode(facts.sudo)
    return facts
