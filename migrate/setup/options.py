"""What `migrate host-setup` is asked to do (HostSetupOptions) and what it reports back.

`HostSetupOptions` has one field per CLI option with the CLI's defaults, so the playbook command
(`migrate apply`) can build one directly. `validate_options` turns bad input into a one-line
UsageError before any host is contacted.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from urllib.parse import urlparse

from migrate.errors import UsageError

STATUSES = ("ok", "changed", "skipped", "failed")

DEFAULT_DOCKER_URL = "https://download.docker.com"
DEFAULT_NVIDIA_URL = "https://nvidia.github.io/libnvidia-container"
DEFAULT_APT_LOCK_TIMEOUT = 300

# Built-in mirror names (section 3 of the research notes): Docker CE mirrors use Docker's own layout.
DOCKER_MIRRORS = {
    "aliyun": "https://mirrors.aliyun.com/docker-ce",
    "tuna": "https://mirrors.tuna.tsinghua.edu.cn/docker-ce",
    "ustc": "https://mirrors.ustc.edu.cn/docker-ce",
    "azure-china": "https://mirror.azure.cn/docker-ce",
}
NVIDIA_MIRRORS = {
    "ustc": "https://mirrors.ustc.edu.cn/libnvidia-container",
}


@dataclass
class HostSetupOptions:
    """Every `migrate host-setup` option; the defaults are the CLI defaults."""

    docker_source: str = "official"  # "official" | "distro" | "mirror:<name-or-url>"
    nvidia: bool = True
    default_runtime: str | None = None  # only "nvidia" (or "runc") when asked
    registry_mirrors: list[str] = field(default_factory=list)
    data_root: str | None = None
    force: bool = False  # install the NVIDIA toolkit even without a driver
    force_source: bool = False  # replace an existing engine from another source
    force_restart: bool = False  # restart docker even if containers are running (no live-restore)
    nvidia_mirror: str | None = None  # name or URL of a libnvidia-container mirror
    docker_url: str = DEFAULT_DOCKER_URL  # base URL of the "official" Docker repository
    nvidia_url: str = DEFAULT_NVIDIA_URL  # base URL of NVIDIA's libnvidia-container repository
    codename: str | None = None  # Docker repository suite to use instead of the detected one
    offline: str | None = None  # directory of .deb files to install from (see --download-offline)
    verify_image: str | None = None  # image for the GPU test; may be pulled
    apt_lock_timeout: int = DEFAULT_APT_LOCK_TIMEOUT


@dataclass
class StepResult:
    """One step on one host: ok | changed | skipped | failed, a detail line, and warnings."""

    name: str
    status: str
    detail: str = ""
    warnings: list[str] = field(default_factory=list)


@dataclass
class HostSetupReport:
    """What happened on one host (`host` is the argument exactly as given, e.g. `gpu1`)."""

    host: str
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None
    dry_run: bool = False
    wall_seconds: float = 0.0
    remote_seconds: float = 0.0  # time spent waiting on remote commands and transfers
    docker_restarts: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None and not any(s.status == "failed" for s in self.steps)

    @property
    def changed(self) -> int:
        return sum(1 for s in self.steps if s.status == "changed")

    def to_dict(self) -> dict:
        """Plain data for --json."""
        return {
            "host": self.host, "ok": self.ok, "changed": self.changed, "error": self.error,
            "dry_run": self.dry_run, "wall_seconds": round(self.wall_seconds, 2),
            "remote_seconds": round(self.remote_seconds, 2), "docker_restarts": self.docker_restarts,
            "steps": [{"name": s.name, "status": s.status, "detail": s.detail, "warnings": s.warnings}
                      for s in self.steps],
        }


@dataclass(frozen=True)
class DockerSource:
    """The parsed --docker-source: kind official | mirror | distro, and the repository base URL."""

    kind: str
    base_url: str = ""
    label: str = ""

    @property
    def uses_repo(self) -> bool:
        return self.kind in ("official", "mirror")


def _check_url(value: str, what: str) -> str:
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or any(c.isspace() for c in value):
        raise UsageError(f"bad {what} {value!r}", hint="give an http:// or https:// URL")
    return value.rstrip("/")


def parse_docker_source(value: str, docker_url: str = DEFAULT_DOCKER_URL) -> DockerSource:
    """'official' | 'distro' | 'mirror:NAME' | 'mirror:URL' -> DockerSource (UsageError otherwise)."""
    text = (value or "").strip()
    if text == "official":
        return DockerSource("official", _check_url(docker_url, "--docker-url"), "official")
    if text == "distro":
        return DockerSource("distro", "", "distro")
    kind, sep, rest = text.partition(":")
    if kind == "mirror":
        rest = rest.strip()
        if not sep or not rest:
            raise UsageError("--docker-source mirror needs a name or URL",
                             hint=f"e.g. mirror:aliyun; names: {', '.join(DOCKER_MIRRORS)}")
        if rest in DOCKER_MIRRORS:
            return DockerSource("mirror", DOCKER_MIRRORS[rest], f"mirror {rest}")
        if "://" not in rest:
            raise UsageError(f"unknown Docker mirror {rest!r}",
                             hint=f"use one of {', '.join(DOCKER_MIRRORS)} or a URL (mirror:https://...)")
        return DockerSource("mirror", _check_url(rest, "Docker mirror URL"), "mirror")
    raise UsageError(f"bad --docker-source {value!r}",
                     hint="use official, distro, or mirror:NAME|URL (names: " + ", ".join(DOCKER_MIRRORS) + ")")


def nvidia_base_url(options: HostSetupOptions) -> str:
    """Where the NVIDIA container toolkit repository lives (mirror rewrite applied)."""
    if options.nvidia_mirror:
        name = options.nvidia_mirror.strip()
        if name in NVIDIA_MIRRORS:
            return NVIDIA_MIRRORS[name]
        if "://" not in name:
            raise UsageError(f"unknown NVIDIA mirror {name!r}",
                             hint=f"use one of {', '.join(NVIDIA_MIRRORS)} or a URL")
        return _check_url(name, "NVIDIA mirror URL")
    return _check_url(options.nvidia_url, "--nvidia-url")


def validate_options(options: HostSetupOptions) -> DockerSource:
    """Check every option; raise UsageError (exit 2) on bad input. Returns the parsed source."""
    source = parse_docker_source(options.docker_source, options.docker_url)
    nvidia_base_url(options)
    for mirror in options.registry_mirrors:
        _check_url(mirror, "--registry-mirror")
    if options.data_root is not None:
        root = options.data_root
        if not root.startswith("/") or any(c.isspace() for c in root) or posixpath.normpath(root) == "/":
            raise UsageError(f"bad --data-root {root!r}", hint="give an absolute directory such as /data/docker")
    if options.default_runtime is not None:
        if options.default_runtime not in ("nvidia", "runc"):
            raise UsageError(f"bad --default-runtime {options.default_runtime!r}", hint="use nvidia (or runc)")
        if options.default_runtime == "nvidia" and not options.nvidia:
            raise UsageError("--default-runtime nvidia contradicts --no-nvidia",
                             hint="drop one of the two options")
    if options.codename is not None and (not options.codename.isascii() or not options.codename.isalnum()):
        raise UsageError(f"bad --codename {options.codename!r}", hint="a release codename such as noble or bookworm")
    if options.apt_lock_timeout < 0:
        raise UsageError("--apt-lock-timeout must be >= 0")
    if options.offline is not None:
        d = options.offline
        if not os.path.isdir(d):
            raise UsageError(f"--offline-dir {d}: no such directory",
                             hint="create it with `migrate host-setup --download-offline DIR --for ubuntu:22.04`")
        if not any(n.endswith(".deb") for n in os.listdir(d)):
            raise UsageError(f"--offline-dir {d}: no .deb files in it",
                             hint="fill it with `migrate host-setup --download-offline DIR --for OS:VERSION`")
    if options.verify_image is not None and (not options.verify_image.strip() or
                                             options.verify_image.startswith("-")):
        raise UsageError(f"bad --verify-image {options.verify_image!r}", hint="an image name such as ubuntu:24.04")
    return source
