"""Offline installs: `--download-offline DIR --for ubuntu:22.04` here, `--offline-dir DIR` on the host.

Downloading runs apt on this machine with a private root (its own sources, keyrings, lists and
dpkg status; nothing of this machine's apt state is touched), so it works from any Debian/Ubuntu
machine with internet access for any supported target. The private dpkg status pretends the
target's `Priority: required` set (and its dependency closure, as apt computes it) is installed,
so DIR gets Docker/the toolkit and every other dependency, but not libc and friends. apt checks
every file against the signed indices; DIR gets a SHA256SUMS file and a `migrate-offline.json`
manifest, and `--offline-dir DIR` checks both before pushing anything.

On the host only packages that are not installed at all are installed (never an up- or
downgrade of the owner's packages), with `apt-get install ./file.deb ...`, which needs no network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from migrate import local, ui
from migrate.errors import LocalCommandError, MigrateError, UsageError
from migrate.paths import cache_root
from migrate.setup import apt, sources
from migrate.setup.options import HostSetupOptions, nvidia_base_url, validate_options
from migrate.setup.plan import OfflineSet

MANIFEST = "migrate-offline.json"
SUMS = "SHA256SUMS"

UBUNTU_VERSIONS = {"20.04": "focal", "22.04": "jammy", "24.04": "noble", "24.10": "oracular", "25.04": "plucky",
                   "25.10": "questing", "26.04": "resolute"}
DEBIAN_VERSIONS = {"11": "bullseye", "12": "bookworm", "13": "trixie"}
ARCHIVES = {
    "debian": ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security", "main",
               "/usr/share/keyrings/debian-archive-keyring.gpg", "debian-archive-keyring"),
    "ubuntu": ("http://archive.ubuntu.com/ubuntu", "http://security.ubuntu.com/ubuntu", "main universe",
               "/usr/share/keyrings/ubuntu-archive-keyring.gpg", "ubuntu-keyring"),
}
UBUNTU_PORTS = "http://ports.ubuntu.com/ubuntu-ports"


def is_nvidia_package(name: str) -> bool:
    return name.startswith(("nvidia-", "libnvidia-container"))


@dataclass(frozen=True)
class Target:
    """What --for names: family, codename, version."""

    family: str
    codename: str
    version: str

    @property
    def label(self) -> str:
        return f"{self.family}:{self.version or self.codename}"


def parse_target(text: str) -> Target:
    """'ubuntu:22.04' | 'ubuntu:jammy' | 'debian:12' | 'debian:bookworm' -> Target (UsageError otherwise)."""
    family, sep, rel = (text or "").strip().lower().partition(":")
    table = {"ubuntu": UBUNTU_VERSIONS, "debian": DEBIAN_VERSIONS}.get(family)
    if not sep or table is None or not rel:
        raise UsageError(f"bad --for {text!r}", hint="use ubuntu:VERSION or debian:VERSION, e.g. ubuntu:22.04")
    if rel in table:
        return Target(family, table[rel], rel)
    for version, codename in table.items():
        if rel == codename:
            return Target(family, codename, version)
    raise UsageError(f"unknown release {text!r}",
                     hint=f"known: {', '.join(f'{family}:{v}' for v in table)}")


# --------------------------------------------------------------------------------------------
# --offline-dir DIR

def read_sums(directory: Path) -> dict[str, str]:
    sums = {}
    path = directory / SUMS
    if path.is_file():
        for line in path.read_text().splitlines():
            digest, _, name = line.strip().partition("  ")
            if digest and name:
                sums[name] = digest
    return sums


def sha256(path: Path) -> str:
    """Hex SHA-256 of a local file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_offline_set(directory: str) -> OfflineSet:
    """The .deb files of DIR, checked against SHA256SUMS when present, split engine/NVIDIA."""
    d = Path(directory)
    sums = read_sums(d)
    bad = []
    engine: list[tuple[str, str]] = []
    nvidia: list[tuple[str, str]] = []
    for path in sorted(d.glob("*.deb")):
        parts = apt.deb_filename_parts(path.name)
        if parts is None:
            raise UsageError(f"--offline-dir: cannot tell the package of {path.name}",
                             hint="keep apt's file names (name_version_arch.deb)")
        if path.name in sums and sha256(path) != sums[path.name]:
            bad.append(path.name)
        (nvidia if is_nvidia_package(parts[0]) else engine).append((parts[0], str(path)))
    if bad:
        raise MigrateError(f"--offline-dir: {', '.join(bad)} do not match {d / SUMS}",
                           hint="download them again with --download-offline")
    target = ""
    if (d / MANIFEST).is_file():
        try:
            target = json.loads((d / MANIFEST).read_text()).get("for", "")
        except (ValueError, AttributeError):
            target = ""
    return OfflineSet(directory=str(d), engine=engine, nvidia=nvidia, target=target)


# --------------------------------------------------------------------------------------------
# --download-offline DIR --for OS:VERSION

@dataclass
class AptRoot:
    """A private apt configuration under `root` (this machine's apt state is never touched)."""

    root: Path
    arch: str
    lines: list[str] = field(default_factory=list)

    def options(self) -> list[str]:
        r = self.root
        opts = {
            "Dir::State": r / "state", "Dir::State::status": r / "status", "Dir::Cache": r / "cache",
            "Dir::Etc::SourceList": r / "sources.list", "Dir::Etc::SourceParts": r / "sources.list.d",
            "Dir::Etc::Preferences": r / "preferences", "Dir::Etc::PreferencesParts": r / "preferences.d",
            "Dir::Etc::TrustedParts": r / "trusted.gpg.d", "Dir::Etc::Trusted": r / "trusted.gpg",
            "Dir::Cache::archives": r / "archives", "APT::Architecture": self.arch,
            "APT::Architectures": self.arch, "Debug::NoLocking": "1", "Acquire::Languages": "none",
            "APT::Get::List-Cleanup": "1", "APT::Install-Recommends": "0",
        }
        if os.geteuid() == 0:
            opts["APT::Sandbox::User"] = "root"
        out = []
        for k, v in opts.items():
            out += ["-o", f"{k}={v}"]
        return out

    def prepare(self) -> None:
        for sub in ("state/lists/partial", "cache", "archives/partial", "sources.list.d", "preferences.d",
                    "trusted.gpg.d", "keyrings"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "status").touch()
        (self.root / "sources.list").write_text("\n".join(self.lines) + "\n")

    def apt_get(self, *args: str, what: str, timeout: float = 1800) -> str:
        argv = ["apt-get", "-q", *self.options(), *args]
        return local.run(argv, what=what, timeout=timeout,
                         hint="check this machine's internet access and the URLs").stdout


def fetch(url: str, dest: Path) -> bytes:
    """Download a small file (a signing key) over HTTP(S)."""
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (http/https URLs only)
            data = resp.read()
    except OSError as exc:
        raise MigrateError(f"cannot download {url}: {exc}",
                           hint="check the URL and this machine's internet access") from exc
    dest.write_bytes(data)
    return data


def parse_simulated(text: str) -> list[str]:
    """`apt-get -s install` output -> the package names it would install ('Inst name (...)')."""
    return [m.group(1) for m in re.finditer(r"^Inst (\S+)", text, re.MULTILINE)]


def read_indexes(lists_dir: Path) -> list[str]:
    """The Packages indexes apt downloaded, as text (apt may keep them lz4/gz-compressed)."""
    texts = []
    for index in sorted(lists_dir.glob("*_Packages*")):
        texts.append(local.run(["/usr/lib/apt/apt-helper", "cat-file", str(index)], what="read an apt index",
                               timeout=120).stdout)
    return texts


def stanzas_for(indexes: list[str], names: set[str]) -> str:
    """Packages-index stanzas of `names` turned into dpkg status stanzas (Status: install ok installed)."""
    out, seen = [], set()
    for text in indexes:
        for block in text.split("\n\n"):
            m = re.search(r"^Package: (\S+)$", block, re.MULTILINE)
            if not m or m.group(1) not in names or m.group(1) in seen:
                continue
            seen.add(m.group(1))
            fields = [ln for ln in block.strip().splitlines()
                      if not ln.startswith(("Filename:", "Size:", "MD5sum:", "SHA256:", "SHA1:", "Description-md5:"))]
            fields.insert(1, "Status: install ok installed")
            out.append("\n".join(fields))
    return "\n\n".join(out) + "\n"


def required_packages(indexes: list[str]) -> list[str]:
    """Every `Priority: required` package of the indexes (the base every Debian/Ubuntu system has)."""
    names = []
    for text in indexes:
        for block in text.split("\n\n"):
            if re.search(r"^Priority: required$", block, re.MULTILINE):
                m = re.search(r"^Package: (\S+)$", block, re.MULTILINE)
                if m:
                    names.append(m.group(1))
    return sorted(set(names))


def top_packages(options: HostSetupOptions, kind: str, target: Target | None = None) -> list[str]:
    """The packages an offline set starts from (their dependencies come along)."""
    packages = list(sources.OFFICIAL_DOCKER_PACKAGES if kind in ("official", "mirror") else
                    sources.DISTRO_DOCKER_PACKAGES)
    if kind not in ("official", "mirror") and target is not None and target.family == "debian" \
            and target.version.isdigit() and int(target.version) >= 13:
        packages.append(sources.DISTRO_CLI_PACKAGE)  # Debian 13+: the CLI is no longer in docker.io
    if options.nvidia:
        packages += sources.NVIDIA_PACKAGES
    return packages


def download_offline(directory: str, target_text: str, options: HostSetupOptions, *, arch: str = "amd64",
                     archive_url: str | None = None, archive_keyring: str | None = None) -> dict:
    """Fill `directory` with the .deb files host-setup needs on `target_text`; return the manifest."""
    if shutil.which("apt-get") is None:
        raise MigrateError("--download-offline needs apt-get on this machine",
                           hint="run it on a Debian or Ubuntu machine with internet access")
    source = validate_options(options)
    target = parse_target(target_text)
    if not re.fullmatch(r"[a-z0-9]+", arch):
        raise UsageError(f"bad --arch {arch!r}", hint="amd64 or arm64")
    archive, security, components, keyring, keyring_pkg = ARCHIVES[target.family]
    if target.family == "ubuntu" and arch != "amd64":
        archive = security = UBUNTU_PORTS
    archive = (archive_url or archive).rstrip("/")
    keyring = archive_keyring or keyring
    if not os.path.isfile(keyring):
        raise MigrateError(f"no {target.family} archive keyring on this machine ({keyring})",
                           hint=f"apt-get install {keyring_pkg}, or pass --archive-keyring FILE")
    out = Path(directory)
    root = AptRoot(cache_root() / "offline-apt" / f"{target.family}-{target.codename}-{arch}", arch)
    if root.root.exists():
        shutil.rmtree(root.root)
    root.root.mkdir(parents=True)
    try:
        lines = [f"deb [signed-by={keyring}] {archive} {target.codename} {components}",
                 f"deb [signed-by={keyring}] {archive} {target.codename}-updates {components}"]
        if not archive_url:
            suite = f"{target.codename}-security" if not (target.family == "debian" and target.version == "10") \
                else f"{target.codename}/updates"
            lines.append(f"deb [signed-by={keyring}] {security} {suite} {components}")
        if source.uses_repo:
            key = root.root / "keyrings" / "docker.asc"
            (root.root / "keyrings").mkdir(parents=True, exist_ok=True)
            fetch(sources.docker_key_url(source.base_url, target.family), key)
            docker_suite = sources.docker_codename(target.family, target.family, target.codename, target.codename,
                                                   target.version, options.codename)
            lines.append(f"deb [signed-by={key}] {sources.docker_repo_url(source.base_url, target.family)} "
                         f"{docker_suite.name} stable")
        if options.nvidia:
            base = nvidia_base_url(options)
            key = root.root / "keyrings" / "nvidia.gpg"
            (root.root / "keyrings").mkdir(parents=True, exist_ok=True)
            raw = fetch(sources.nvidia_key_url(base), root.root / "keyrings" / "nvidia.asc")
            key.write_bytes(sources.dearmor(raw))
            lines.append(f"deb [signed-by={key}] {sources.nvidia_repo_url(base).replace('$(ARCH)', arch)} /")
        root.lines = lines
        root.prepare()
        packages = top_packages(options, source.kind, target)
        with ui.err.status(f"apt-get update for {target.label} ({arch})"):
            root.apt_get("update", what="apt-get update (private root)")
        indexes = read_indexes(root.root / "state" / "lists")
        base_set = required_packages(indexes)
        if not base_set:
            raise MigrateError(f"no package index for {target.label} was downloaded", hint="check --archive-url")
        with ui.err.status("working out the base system"):
            sim = root.apt_get("-s", "install", *base_set, what="simulate the base system")
            installed = set(parse_simulated(sim)) | set(base_set)
            (root.root / "status").write_text(stanzas_for(indexes, installed))
        with ui.err.status(f"downloading {' '.join(packages)} and their dependencies"):
            try:
                root.apt_get("install", "--download-only", "-y", *packages, what="apt-get install --download-only")
            except LocalCommandError as exc:
                raise MigrateError(f"cannot download the packages for {target.label}: {exc.message}",
                                   hint="check the source (--docker-source) and URLs") from exc
        files = sorted((root.root / "archives").glob("*.deb"))
        if not files:
            raise MigrateError("apt downloaded nothing", hint="check the package names and the source")
        out.mkdir(parents=True, exist_ok=True)  # only now: a failed download leaves nothing behind
        for old in out.glob("*.deb"):
            old.unlink()
        names = []
        for f in files:
            shutil.copy2(f, out / f.name)
            names.append(f.name)
        (out / SUMS).write_text("".join(f"{sha256(out / n)}  {n}\n" for n in names))
        manifest = {"for": target.label, "codename": target.codename, "arch": arch, "source": source.kind,
                    "nvidia": options.nvidia, "packages": packages, "files": names}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    finally:
        shutil.rmtree(root.root, ignore_errors=True)  # the private apt root is scratch space
    return manifest


def download_offline_report(directory: str, target_text: str, options: HostSetupOptions, *, arch: str,
                            archive_url: str | None, archive_keyring: str | None, as_json: bool) -> dict:
    """`host-setup --download-offline`: download, then say what is where and what to run next."""
    manifest = download_offline(directory, target_text, options, arch=arch, archive_url=archive_url,
                                archive_keyring=archive_keyring)
    if as_json:
        ui.print_json(manifest)
    else:
        ui.step(f"{len(manifest['files'])} .deb file(s) for {manifest['for']} ({manifest['arch']}) in "
                f"{directory}: {' '.join(manifest['packages'])} and their dependencies")
        ui.info(f"next: migrate host-setup HOST --offline-dir {directory}")
    return manifest
