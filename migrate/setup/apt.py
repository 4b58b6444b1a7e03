"""apt-get and dpkg command lines (pure) and the parsers for their output.

apt always runs non-interactively, waits for the dpkg lock instead of failing, keeps the owner's
changed config files (--force-confold), installs no Recommends (small footprint; docker.io would
otherwise pull git, perl and needrestart), and never lets needrestart restart the owner's services.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from migrate.remote import shell

APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_SUSPEND": "1", "NEEDRESTART_MODE": "l"}

# dpkg-query output: one "<abbrev-status> <package>:<arch> <version>" line per known package
INSTALLED_QUERY = "dpkg-query -W -f='${db:Status-Abbrev} ${binary:Package} ${Version}\\n'"
GROUPS_QUERY = "getent group | cut -d: -f1"
ETC_QUERY = "ls -A /etc"

# What a daemon creates at run time in a directory its package created (owned by no package, so a
# purge leaves it): removed by --undo, only from directories host-setup's apt run created. Names
# ending in "/" are directories, removed only when empty.
RUNTIME_LEFTOVERS = {"/etc/docker": ("key.json",), "/etc/cni": ("net.d/",)}


def _apt_options(lock_timeout: int) -> list[str]:
    return ["-o", f"DPkg::Lock::Timeout={lock_timeout}"]


def update_command(lock_timeout: int) -> str:
    """`apt-get update`, waiting for the lock, retrying flaky downloads."""
    argv = ["apt-get", "-q", *_apt_options(lock_timeout), "-o", "Acquire::Retries=3", "update"]
    return shell.env_prefix(APT_ENV) + shell.join(argv)


def install_command(packages: list[str], lock_timeout: int) -> str:
    """`apt-get install` of exactly `packages` (names or ./file.deb paths)."""
    argv = ["apt-get", "-q", "-y", *_apt_options(lock_timeout), "-o", "Dpkg::Options::=--force-confdef",
            "-o", "Dpkg::Options::=--force-confold", "--no-install-recommends", "install", *packages]
    return shell.env_prefix(APT_ENV) + shell.join(argv)


def purge_command(packages: list[str], lock_timeout: int) -> str:
    """`apt-get purge` of exactly `packages` (used by --undo)."""
    argv = ["apt-get", "-q", "-y", *_apt_options(lock_timeout), "purge", *packages]
    return shell.env_prefix(APT_ENV) + shell.join(argv)


def survive_disconnect(command: str, tag: str) -> str:
    """Wrap a root command so a dropped SSH connection cannot kill it halfway (dpkg "interrupted").

    Without a pty a dead connection only hurts a command when it writes to the closed pipe (SIGPIPE),
    so the output goes to a root-owned log (SIGHUP ignored too); the wrapper then prints the log and
    exits with the command's status, so callers see the same output and exit code as before.
    """
    if not tag.replace("-", "").isalnum():
        raise ValueError(f"bad tag {tag!r}")
    log, rc = f"/var/tmp/migrate-{tag}.log", f"/var/tmp/migrate-{tag}.rc"
    inner = f"( {command}\n) >{log} 2>&1; echo $? >{rc}"
    return (f"nohup sh -c {shell.quote(inner)} </dev/null >/dev/null 2>&1; cat {log} 2>/dev/null; "
            f"s=$(cat {rc} 2>/dev/null || echo 1); rm -f {log} {rc}; exit $s")


def policy_command(packages: list[str]) -> str:
    """`apt-cache policy` for choosing optional packages (read-only)."""
    return shell.join(["apt-cache", "policy", *packages])


def parse_installed(text: str) -> dict[str, str]:
    """dpkg-query lines -> {package: version} for packages that are installed ('ii', 'hi')."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or len(parts[0]) < 2 or parts[0][1] != "i":
            continue
        name = parts[1]
        out[name] = parts[2]
    return out


def bare_name(package: str) -> str:
    """'docker.io:amd64' -> 'docker.io'."""
    return package.split(":", 1)[0]


@dataclass
class PackageDiff:
    """What an apt run changed."""

    installed: list[list[str]] = field(default_factory=list)  # [name, version]
    removed: list[list[str]] = field(default_factory=list)  # [name, version]
    upgraded: list[list[str]] = field(default_factory=list)  # [name, old, new]

    @property
    def empty(self) -> bool:
        return not (self.installed or self.removed or self.upgraded)


def diff_installed(before: dict[str, str], after: dict[str, str]) -> PackageDiff:
    """Compare two parse_installed() snapshots."""
    d = PackageDiff()
    for name in sorted(after):
        if name not in before:
            d.installed.append([name, after[name]])
        elif before[name] != after[name]:
            d.upgraded.append([name, before[name], after[name]])
    for name in sorted(before):
        if name not in after:
            d.removed.append([name, before[name]])
    return d


def parse_candidates(text: str) -> dict[str, str]:
    """`apt-cache policy` output -> {package: candidate version} (packages with a candidate only)."""
    out: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1].strip()
        elif current and line.strip().startswith("Candidate:"):
            cand = line.split(":", 1)[1].strip()
            if cand and cand != "(none)":
                out[current] = cand
    return out


def major(version: str) -> int:
    """Major version of a Debian version string ('1:2.26.1-4' -> 2, '1.29.2-3' -> 1)."""
    v = version.split(":", 1)[-1]
    m = re.match(r"(\d+)", v)
    return int(m.group(1)) if m else 0


def choose_optional(candidates: dict[str, str], options: list[tuple[str, int]]) -> str | None:
    """The first optional package with a candidate of at least the given major version."""
    for name, min_major in options:
        if name in candidates and major(candidates[name]) >= min_major:
            return name
    return None


def update_problems(stderr: str) -> list[str]:
    """The error/warning lines of a failed `apt-get update` (for deciding whose repo broke)."""
    return [ln.strip() for ln in stderr.splitlines() if ln.startswith(("E:", "W:", "Err:"))]


def deb_filename_parts(filename: str) -> tuple[str, str, str] | None:
    """'docker.io_20.10.24+dfsg1-1_amd64.deb' -> (name, version, arch); None for other names.

    apt names downloaded files name_version_arch.deb with ':' in versions written as '%3a'.
    """
    if not filename.endswith(".deb"):
        return None
    parts = filename[:-4].split("_")
    if len(parts) != 3 or not all(parts):
        return None
    name, version, arch = parts
    return name, version.replace("%3a", ":"), arch
