"""Docker and NVIDIA apt repositories as data: URLs, file contents, codename fallback, keyrings.

Keys live in files referenced by `signed-by` (never `apt-key`): Docker's armored key in
/etc/apt/keyrings/docker.asc (deb822 `docker.sources`), NVIDIA's dearmored key in
/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg (one-line `.list`, NVIDIA's own layout).
A mirror gets the same files with every URL pointing at the mirror. Everything here is pure.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from migrate.errors import MigrateError

KEYRINGS_DIR = "/etc/apt/keyrings"
DOCKER_KEYRING = "/etc/apt/keyrings/docker.asc"
DOCKER_SOURCES_FILE = "/etc/apt/sources.list.d/docker.sources"
NVIDIA_KEYRING = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
NVIDIA_SOURCES_FILE = "/etc/apt/sources.list.d/nvidia-container-toolkit.list"
MANAGED_FILES = (DOCKER_SOURCES_FILE, NVIDIA_SOURCES_FILE)

OFFICIAL_DOCKER_PACKAGES = ["docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin",
                            "docker-compose-plugin"]
DISTRO_DOCKER_PACKAGES = ["docker.io"]
# From Debian 13 on, docker.io ships the daemon only; the `docker` command is docker-cli (a Recommends,
# which --no-install-recommends skips). Installed with the engine wherever apt has a candidate for it.
DISTRO_CLI_PACKAGE = "docker-cli"
OFFICIAL_CLI_PACKAGE = "docker-ce-cli"
# Compose for the distro engine, first one with a candidate wins: (package, minimum major version).
# Debian bookworm's docker-compose is the old Python 1.x (not a CLI plugin), trixie's is 2.x.
DISTRO_COMPOSE_CANDIDATES = [("docker-compose-v2", 0), ("docker-compose-plugin", 0), ("docker-compose", 2)]
NVIDIA_PACKAGES = ["nvidia-container-toolkit"]
NVIDIA_PACKAGE_NAMES = ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools",
                        "libnvidia-container1", "nvidia-docker2", "nvidia-container-runtime")

# Releases Docker publishes (newest first) with their version numbers, for the codename fallback.
DOCKER_RELEASES = {
    "ubuntu": [("resolute", "26.04"), ("noble", "24.04"), ("jammy", "22.04"), ("focal", "20.04")],
    "debian": [("trixie", "13"), ("bookworm", "12"), ("bullseye", "11")],
}
# Interim/extra Docker-published Ubuntu codenames we accept as they are.
DOCKER_EXTRA_UBUNTU = ("questing", "plucky", "oracular")

# Legacy NVIDIA repository files (nvidia-docker2 era) that NVIDIA's troubleshooting says to remove.
LEGACY_NVIDIA_LISTS = ("nvidia-docker.list", "libnvidia-container.list", "nvidia-container-runtime.list")

HEADER = "# Added by `migrate host-setup`; `migrate host-setup HOST --undo` removes it.\n"


@dataclass(frozen=True)
class Codename:
    """The Docker repository suite to use, and a note when it is not the host's own."""

    name: str
    note: str = ""


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return ()


def docker_codename(family: str, os_id: str, codename: str, ubuntu_codename: str, version_id: str,
                    override: str | None = None) -> Codename:
    """Pick the suite of Docker's repository for this host.

    Ubuntu derivatives use UBUNTU_CODENAME; an interim or unknown release falls back to the
    newest supported release that is not newer than the host (or the newest one when the
    version is unknown), and says so. `override` (--codename) always wins.
    """
    if override:
        return Codename(override, f"using --codename {override}")
    releases = DOCKER_RELEASES.get(family)
    if not releases:
        raise MigrateError(f"no Docker repository for OS family {family or 'unknown'!r}")
    names = [n for n, _ in releases]
    own = (ubuntu_codename or codename) if family == "ubuntu" else codename
    if own in names or (family == "ubuntu" and own in DOCKER_EXTRA_UBUNTU):
        return Codename(own)
    # the version number only means something for the distribution itself, not for derivatives
    host_version = _version_key(version_id) if os_id == family else ()
    label = f"{family} {version_id + ' ' if os_id == family and version_id else ''}({own or 'unknown codename'})"
    if host_version:
        older = [(n, v) for n, v in releases if _version_key(v) <= host_version]
        if older:
            name, version = older[0]
            return Codename(name, f"{label} is not in Docker's repository: using {name} ({version}), "
                                  "the newest release before it")
        raise MigrateError(f"{label} is older than every release Docker publishes",
                           hint="upgrade the OS, use --docker-source distro, or force a suite with --codename")
    name, version = releases[0]
    return Codename(name, f"{label} is not in Docker's repository: using {name} ({version}), the newest one")


def docker_dist(family: str) -> str:
    """Docker's path component for the family: linux/ubuntu or linux/debian."""
    return "ubuntu" if family == "ubuntu" else "debian"


def docker_repo_url(base_url: str, family: str) -> str:
    return f"{base_url.rstrip('/')}/linux/{docker_dist(family)}"


def docker_key_url(base_url: str, family: str) -> str:
    return docker_repo_url(base_url, family) + "/gpg"


def docker_sources(base_url: str, family: str, suite: str, arch: str) -> str:
    """deb822 sources file for Docker CE (Docker's documented layout) with Signed-By."""
    return (HEADER
            + "Types: deb\n"
            + f"URIs: {docker_repo_url(base_url, family)}\n"
            + f"Suites: {suite}\n"
            + "Components: stable\n"
            + f"Architectures: {arch}\n"
            + f"Signed-By: {DOCKER_KEYRING}\n")


def nvidia_repo_url(base_url: str) -> str:
    return f"{base_url.rstrip('/')}/stable/deb/$(ARCH)"


def nvidia_key_url(base_url: str) -> str:
    return f"{base_url.rstrip('/')}/gpgkey"


def nvidia_sources(base_url: str) -> str:
    """NVIDIA's flat, codename-free repository line with signed-by (URLs rewritten to `base_url`)."""
    return HEADER + f"deb [signed-by={NVIDIA_KEYRING}] {nvidia_repo_url(base_url)} /\n"


def normalize_url(url: str) -> str:
    """A repository URL for comparisons: no scheme difference http/https, no trailing slash."""
    u = url.strip().rstrip("/")
    for prefix in ("https://", "http://"):
        if u.startswith(prefix):
            return u[len(prefix):]
    return u


def other_files_defining(url: str, sources: list[tuple[str, str]], own_file: str) -> list[str]:
    """Files other than `own_file` whose active entries point at `url` (same repo, other keyring:
    apt would refuse with 'Conflicting values set for option Signed-By')."""
    want = normalize_url(url)
    return sorted({f for f, u in sources if f != own_file and normalize_url(u) == want})


def docker_ce_sources(sources: list[tuple[str, str]]) -> list[str]:
    """Files with a Docker CE repository (download.docker.com or any .../docker-ce mirror)."""
    return sorted({f for f, u in sources if "download.docker.com" in u or "/docker-ce" in u})


def legacy_nvidia_sources(sources: list[tuple[str, str]]) -> list[str]:
    """Files from the nvidia-docker2 era (per-distro lists, the archived nvidia-docker repo)."""
    out = set()
    for f, u in sources:
        name = f.rsplit("/", 1)[-1]
        if name in LEGACY_NVIDIA_LISTS or "nvidia.github.io/nvidia-docker" in u or \
                "nvidia.github.io/nvidia-container-runtime" in u:
            out.add(f)
    return sorted(out)


def dearmor(data: bytes) -> bytes:
    """ASCII-armored OpenPGP key -> binary keyring (what `gpg --dearmor` does); binary passes through.

    Raises MigrateError when `data` is neither (an HTML error page, an empty download...).
    """
    if data[:1] and data[0] & 0x80:
        return data
    text = data.decode("ascii", errors="replace")
    begin = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
    if begin not in text:
        raise MigrateError("the downloaded key is not an OpenPGP public key",
                           hint="check the repository URL (a proxy or captive portal may answer instead)")
    body = text.split(begin, 1)[1].split("-----END PGP PUBLIC KEY BLOCK-----", 1)[0]
    lines = body.strip().splitlines()
    # armor headers (e.g. "Comment: ...") end at the first blank line, when there are any
    if any(not ln.strip() for ln in lines):
        first_blank = next(i for i, ln in enumerate(lines) if not ln.strip())
        if all(":" in ln for ln in lines[:first_blank]):
            lines = lines[first_blank + 1:]
    b64 = "".join(ln.strip() for ln in lines if ln.strip() and not ln.startswith("="))
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MigrateError(f"the downloaded key is not valid armored data: {exc}") from exc
    if not raw or not raw[0] & 0x80:
        raise MigrateError("the downloaded key is not an OpenPGP public key")
    return raw


def looks_like_key(data: bytes) -> bool:
    """True for an armored or binary OpenPGP public key."""
    try:
        dearmor(data)
    except MigrateError:
        return False
    return True
