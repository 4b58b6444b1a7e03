"""What host-setup needs to know about a host, in one read-only round trip, without root.

The general probe (`migrate.remote.probe.PROBE_SCRIPT`: OS, arch, docker, GPUs, sudo...) runs in
a subshell, followed by `SETUP_PROBE` which adds `hs.*` lines: daemon.json, apt sources, keyrings,
the docker group, the docker service, dockerd's start time against the NVIDIA hook's install time,
a busy dpkg, the journal. `parse_setup_facts` is pure; `gather(remote)` runs it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from migrate.remote import shell
from migrate.remote.host import Host
from migrate.remote.probe import PROBE_SCRIPT, HostFacts, parse_probe
from migrate.remote.probe_fragments import DOCKERD
from migrate.setup import daemon_json, sources

JOURNAL_DIR = ".migrate/host-setup"
JOURNAL_FILE = ".migrate/host-setup/journal.jsonl"

# Packages whose presence and version the planners look at.
WATCHED_PACKAGES = (
    "docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin", "docker.io",
    "docker-compose", "docker-compose-v2", "containerd", "runc", "podman-docker", "ca-certificates",
    *sources.NVIDIA_PACKAGE_NAMES,
)

SETUP_PROBE = DOCKERD + r"""
hs() { printf 'hs.%s=%s\n' "$1" "$2"; }
hs now "$(date +%s)"
f=/etc/docker/daemon.json
if [ -e "$f" ]; then
  hs daemon_json.exists yes
  hs daemon_json.mode "$(stat -c %a "$f")"
  hs daemon_json.mtime "$(stat -c %Y "$f")"
  if [ -r "$f" ]; then hs daemon_json.b64 "$(base64 < "$f" | tr -d '\n')"; else hs daemon_json.readable no; fi
fi
[ -d /etc/docker ] && hs etc_docker yes
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  grep -vE '^[[:space:]]*#' "$f" 2>/dev/null | grep -oE '(https?|ftp|file|cdrom)://[^] "'"'"'>]+' \
    | while IFS= read -r u; do hs apt_source "$f|$u"; done
done
for f in MANAGED_FILES; do [ -f "$f" ] && hs file "$f|$(base64 < "$f" | tr -d '\n')"; done
for k in KEYRINGS; do [ -s "$k" ] && hs keyring "$k"; done
[ -d /etc/apt/keyrings ] && hs keyrings_dir yes
g=$(getent group docker) && hs docker_group "$g"
dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\n' WATCHED 2>/dev/null \
  | while read -r st p v; do case "$st" in ?i*) hs pkg "$p|$v";; esac; done
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  if systemctl cat docker.service >/dev/null 2>&1; then
    hs docker_unit yes
    hs docker_active "$(systemctl is-active docker 2>/dev/null)"
    hs exec_start "$(systemctl show docker -p ExecStart --value 2>/dev/null | head -c 3000 | tr '\n' ' ')"
  fi
elif [ -x /etc/init.d/docker ]; then
  hs docker_unit initd
  if service docker status >/dev/null 2>&1; then hs docker_active active; else hs docker_active inactive; fi
fi
d=$(dockerd_path)
if [ -n "$d" ]; then
  hs dockerd "$d"
  "$d" --help 2>/dev/null | grep -q -- '--validate' && hs dockerd_validate yes
fi
pid=$(pidof dockerd 2>/dev/null | cut -d' ' -f1)
[ -n "$pid" ] && hs dockerd_age "$(ps -o etimes= -p "$pid" | tr -d ' ')"
h=$(command -v nvidia-container-runtime-hook 2>/dev/null || ls /usr/bin/nvidia-container-runtime-hook 2>/dev/null)
[ -n "$h" ] && hs hook_ctime "$(stat -Lc %Z "$h")"
r=$(command -v nvidia-container-runtime 2>/dev/null || ls /usr/bin/nvidia-container-runtime 2>/dev/null)
[ -n "$r" ] && hs runtime_bin "$r"
busy=$(pgrep -a -x 'apt|apt-get|aptitude|dpkg|unattended-upgr|unattended-upgrade' 2>/dev/null | head -n 3 | tr '\n' ';')
[ -n "$busy" ] && hs dpkg_busy "$busy"
if [ -x /usr/lib/apt/apt-helper ]; then hs downloader apt-helper
elif command -v curl >/dev/null 2>&1; then hs downloader curl
elif command -v wget >/dev/null 2>&1; then hs downloader wget; fi
[ -n "${DOCKER_HOST:-}" ] && hs docker_host "$DOCKER_HOST"
j="$HOME/JOURNAL"
[ -s "$j" ] && hs journal_entries "$(wc -l < "$j" | tr -d ' ')"
for m in "$HOME"/JDIR/apt-open-*; do [ -e "$m" ] && hs apt_open "${m##*apt-open-}"; done
exit 0
"""


def setup_probe_script() -> str:
    """The setup probe with its file lists filled in (quoted)."""
    keyrings = " ".join(shell.quote(k) for k in (sources.DOCKER_KEYRING, sources.NVIDIA_KEYRING))
    return (SETUP_PROBE.replace("MANAGED_FILES", " ".join(shell.quote(f) for f in sources.MANAGED_FILES))
            .replace("KEYRINGS", keyrings)
            .replace("WATCHED", " ".join(shell.quote(p) for p in WATCHED_PACKAGES))
            .replace("JOURNAL", JOURNAL_FILE)
            .replace("JDIR", JOURNAL_DIR))


def combined_script() -> str:
    """General probe (in a subshell, it ends with `exit 0`) then the setup probe: one round trip."""
    return "(\n" + PROBE_SCRIPT + "\n)\n" + setup_probe_script()


@dataclass
class SetupFacts:
    """HostFacts plus what the host-setup planners look at."""

    host: HostFacts = field(default_factory=HostFacts)
    now: int = 0
    daemon_json_exists: bool = False
    daemon_json_readable: bool = True
    daemon_json_text: str | None = None
    daemon_json_mode: str = "644"
    daemon_json_mtime: int | None = None
    etc_docker: bool = False
    apt_sources: list[tuple[str, str]] = field(default_factory=list)  # (file, url) of active entries
    files: dict[str, str] = field(default_factory=dict)  # content of the repo files migrate manages
    keyrings: set[str] = field(default_factory=set)
    keyrings_dir: bool = False
    docker_group: bool = False
    docker_group_members: list[str] = field(default_factory=list)
    packages: dict[str, str] = field(default_factory=dict)
    docker_unit: str = ""  # "yes" (systemd), "initd", "" (none)
    docker_active: str = ""
    exec_start: str = ""
    dockerd: str = ""
    dockerd_validate: bool = False
    dockerd_age: int | None = None  # seconds since dockerd started
    hook_ctime: int | None = None  # when nvidia-container-runtime-hook was installed
    runtime_bin: str = ""
    dpkg_busy: str = ""
    downloader: str = ""
    docker_host_env: str = ""
    journal_entries: int = 0
    apt_open: list[str] = field(default_factory=list)  # apt runs whose result never came back

    @property
    def dockerd_started(self) -> int | None:
        return None if self.dockerd_age is None else self.now - self.dockerd_age

    @property
    def docker_installed(self) -> bool:
        return self.host.docker.installed or bool(self.dockerd) or any(
            p in self.packages for p in ("docker-ce", "docker.io"))

    @property
    def docker_package(self) -> str:
        """docker-ce | docker.io | snap | '' (unknown origin or absent)."""
        if self.host.docker.package == "snap":
            return "snap"
        if "docker-ce" in self.packages:
            return "docker-ce"
        if "docker.io" in self.packages:
            return "docker.io"
        return ""

    @property
    def toolkit_installed(self) -> bool:
        return "nvidia-container-toolkit" in self.packages or bool(self.runtime_bin)

    @property
    def has_driver(self) -> bool:
        return bool(self.host.nvidia_smi) and self.host.nvidia_smi_ok

    def user_in_docker_group(self) -> bool:
        """Membership in the group database (a running session may not have it yet)."""
        return self.host.user in self.docker_group_members

    def daemon_config(self) -> dict:
        """The current daemon.json as a dict (raises DaemonJsonError when it is not a JSON object)."""
        return daemon_json.parse(self.daemon_json_text if self.daemon_json_exists else None)


def _b64(text: str) -> str | None:
    try:
        return base64.b64decode(text, validate=False).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return None


def _int(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


def parse_setup_facts(text: str) -> SetupFacts:
    """The combined probe's output -> SetupFacts (unknown keys ignored)."""
    f = SetupFacts(host=parse_probe(text))
    for line in text.splitlines():
        if not line.startswith("hs."):
            continue
        key, sep, value = line[3:].partition("=")
        if not sep:
            continue
        if key == "now":
            f.now = _int(value) or 0
        elif key == "daemon_json.exists":
            f.daemon_json_exists = True
        elif key == "daemon_json.mode":
            f.daemon_json_mode = value.strip() or "644"
        elif key == "daemon_json.mtime":
            f.daemon_json_mtime = _int(value)
        elif key == "daemon_json.readable":
            f.daemon_json_readable = False
        elif key == "daemon_json.b64":
            f.daemon_json_text = _b64(value) if value else ""
        elif key == "etc_docker":
            f.etc_docker = True
        elif key == "apt_source":
            path, _, url = value.partition("|")
            if url:
                f.apt_sources.append((path, url))
        elif key == "file":
            path, _, b64 = value.partition("|")
            content = _b64(b64) if b64 else ""
            if content is not None:
                f.files[path] = content
        elif key == "keyring":
            f.keyrings.add(value.strip())
        elif key == "keyrings_dir":
            f.keyrings_dir = True
        elif key == "docker_group":
            parts = value.strip().split(":")
            f.docker_group = True
            if len(parts) >= 4 and parts[3]:
                f.docker_group_members = parts[3].split(",")
        elif key == "pkg":
            name, _, version = value.partition("|")
            f.packages[name] = version
        elif key == "docker_unit":
            f.docker_unit = value.strip()
        elif key == "docker_active":
            f.docker_active = value.strip()
        elif key == "exec_start":
            f.exec_start = value.strip()
        elif key == "dockerd":
            f.dockerd = value.strip()
        elif key == "dockerd_validate":
            f.dockerd_validate = True
        elif key == "dockerd_age":
            f.dockerd_age = _int(value)
        elif key == "hook_ctime":
            f.hook_ctime = _int(value)
        elif key == "runtime_bin":
            f.runtime_bin = value.strip()
        elif key == "dpkg_busy":
            f.dpkg_busy = value.strip().strip(";")
        elif key == "downloader":
            f.downloader = value.strip()
        elif key == "docker_host":
            f.docker_host_env = value.strip()
        elif key == "journal_entries":
            f.journal_entries = _int(value) or 0
        elif key == "apt_open":
            f.apt_open.append(value.strip())
    if f.daemon_json_exists and f.daemon_json_text is None and f.daemon_json_readable:
        f.daemon_json_text = ""
    return f


def gather(remote: Host) -> SetupFacts:
    """Run the combined probe on an open Remote and parse it (also records the sudo mode)."""
    res = remote.run(shell.sh_c(combined_script()), what="probe host for host-setup", timeout=120)
    facts = parse_setup_facts(res.stdout)
    if facts.host.sudo in ("root", "nopasswd", "password", "none"):
        remote.set_sudo_mode(facts.host.sudo)
    return facts
