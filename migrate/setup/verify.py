"""Proving the result, and turning the errors people actually hit into a cause and a fix (pure).

The same table is documented in docs/troubleshooting.md; a unit test keeps the two in step.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from migrate.remote import shell


@dataclass(frozen=True)
class KnownFailure:
    """A message seen in the wild, what it means and how to fix it."""

    pattern: str
    cause: str
    fix: str

    def matches(self, text: str) -> bool:
        return re.search(self.pattern, text, re.IGNORECASE) is not None


KNOWN_FAILURES = [
    KnownFailure(
        r'could not select device driver "" with capabilities: \[\[gpu\]\]',
        "dockerd has no GPU support loaded: the NVIDIA container toolkit is missing, or docker was not "
        "restarted after it was installed (snap Docker never sees it)",
        "rerun `migrate host-setup HOST` (it installs the toolkit and restarts docker once); with snap Docker, "
        "switch to docker-ce or docker.io"),
    KnownFailure(
        r"Failed to initialize NVML: Unknown Error",
        "the container lost its GPU device permissions (systemd cgroup driver after a daemon-reload, or "
        "missing /dev/char symlinks)",
        "recreate the container; for good: set \"exec-opts\": [\"native.cgroupdriver=cgroupfs\"] in "
        "daemon.json, or run `sudo nvidia-ctk system create-dev-char-symlinks --create-all`, or use CDI "
        "(--runtime nvidia with toolkit >= 1.18); `no-cgroups = true` is only for rootless Docker"),
    KnownFailure(
        r"libnvidia-ml\.so\.1(: cannot open shared object file| not found)|load library failed: libnvidia-ml",
        "no NVIDIA driver on the host (the toolkit needs the driver's libraries)",
        "host-setup never installs drivers: ask the server's owner to install the NVIDIA driver"),
    KnownFailure(
        r"unsatisfied condition: cuda\s*>=",
        "the NVIDIA driver is too old for the CUDA version the image asks for",
        "use an image built for an older CUDA (see the CUDA version in `nvidia-smi`), or ask the owner to "
        "update the driver; NVIDIA_DISABLE_REQUIRES=true skips the check at your own risk"),
    KnownFailure(
        r"permission denied while trying to connect to the docker daemon socket",
        "this session is not in the docker group yet",
        "log in again (new sessions get the group), or run `newgrp docker`; rerun `migrate host-setup HOST` to "
        "add you to the group"),
    KnownFailure(
        r"unknown or invalid runtime name: nvidia",
        "dockerd has no `nvidia` runtime registered",
        "rerun `migrate host-setup HOST` (it adds runtimes.nvidia to /etc/docker/daemon.json and restarts docker)"),
    KnownFailure(
        r'exec: "nvidia-container-runtime": executable file not found',
        "daemon.json names the nvidia runtime but nvidia-container-runtime is not installed",
        "rerun `migrate host-setup HOST` (installs nvidia-container-toolkit), or remove the runtime from "
        "daemon.json"),
    KnownFailure(
        r"docker: (command )?not found",
        "the `docker` command is missing although the engine may be installed (Debian 13+ ships it in the "
        "separate docker-cli package, only a Recommends of docker.io)",
        "rerun `migrate host-setup HOST` (it installs docker-cli), or `sudo apt-get install docker-cli`"),
    KnownFailure(
        r"cannot connect to the docker daemon at",
        "the docker service is not running",
        "rerun `migrate host-setup HOST`, or look at `sudo journalctl -u docker -n 50`"),
    KnownFailure(
        r'exec: "nvidia-smi": executable file not found',
        "the toolkit did not inject nvidia-smi (the container was started without the utility capability "
        "or without --gpus)",
        "run with `--gpus all` (NVIDIA_DRIVER_CAPABILITIES must include utility)"),
]


def explain(text: str) -> KnownFailure | None:
    """The first known failure whose message appears in `text`."""
    for failure in KNOWN_FAILURES:
        if failure.matches(text):
            return failure
    return None


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def describe_failure(text: str, fallback: str) -> tuple[str, str]:
    """(message, hint) for a failed docker command: the known cause and fix, or the last line."""
    known = explain(text)
    line = last_line(text) or fallback
    if known:
        return f"{line} -> {known.cause}", known.fix
    return line, "see docs/troubleshooting.md"


DOCKER_INFO = shell.join(["docker", "info", "--format", "{{json .Runtimes}}|{{.DefaultRuntime}}|{{.ServerVersion}}"])
LIST_IMAGES = shell.join(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"])
PREFERRED_IMAGES = ("nvidia/cuda", "cuda", "pytorch", "tensorflow", "ubuntu", "debian")


def parse_docker_info(text: str) -> tuple[list[str], str, str]:
    """DOCKER_INFO output -> (runtime names, default runtime, server version)."""
    runtimes_json, _, rest = text.strip().partition("|")
    default, _, version = rest.partition("|")
    try:
        runtimes = sorted(json.loads(runtimes_json or "{}"))
    except json.JSONDecodeError:
        runtimes = []
    return runtimes, default.strip(), version.strip()


def pick_local_image(listing: str) -> str | None:
    """A local image for the GPU test, preferring CUDA/framework/distro images; None when there is none."""
    images = [ln.strip() for ln in listing.splitlines() if ln.strip() and "<none>" not in ln]
    for hint in PREFERRED_IMAGES:
        for image in images:
            if hint in image.split(":")[0]:
                return image
    return images[0] if images else None


def gpu_test_command(image: str) -> str:
    """The GPU smoke test: the toolkit injects nvidia-smi into any image."""
    return shell.join(["docker", "run", "--rm", "--gpus", "all", "--entrypoint", "nvidia-smi", image, "-L"])
