"""`migrate run HOST --compose FILE`: a docker-compose project as one dispatcher job (pure parts).

The compose file's directory is synced to `~/.migrate/compose/<project>/` on the host, and one
process-mode job runs `docker compose up` there (or `docker-compose` v1), then `down`. The
dispatcher picks the GPUs as for any job and exports them as `$MIGRATE_GPU_UUIDS` (and
`$CUDA_VISIBLE_DEVICES`), which the compose file hands to its services:

    deploy:
      resources:
        reservations:
          devices: [{driver: nvidia, device_ids: ["${MIGRATE_GPU_UUIDS}"], capabilities: [gpu]}]

So a compose project waits for free GPUs, never takes a GPU someone else uses, keeps its logs, and
`migrate cancel` stops it (SIGTERM makes compose stop the containers, then `down` removes them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from migrate.errors import UsageError
from migrate.remote import shell
from migrate.yamlfile import compose, construct

COMPOSE_ROOT = ".migrate/compose"


@dataclass
class ComposePlan:
    """Where a compose project goes and how it is run."""

    source_dir: Path
    file_name: str
    project: str
    services: list[str]

    @property
    def remote_dir(self) -> str:
        """Home-relative directory on the host."""
        return f"{COMPOSE_ROOT}/{self.project}"


def project_name(text: str) -> str:
    """Compose project names: lowercase letters, digits, '-' and '_' (starting with a letter/digit)."""
    name = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    if not name:
        raise UsageError(f"cannot make a compose project name from {text!r}", hint="pass --name")
    return name


def plan_compose(file: str, name: str | None = None) -> ComposePlan:
    """Validate the compose file locally (exists, YAML, has services) and plan where it goes."""
    path = Path(file)
    if not path.is_file():
        raise UsageError(f"compose file {file} not found")
    text = path.read_text()
    data = construct(compose(text, file))
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict) or not services:
        raise UsageError(f"{file} has no services", hint="a compose file needs a top-level `services:` mapping")
    for svc, spec in services.items():
        if isinstance(spec, dict) and spec.get("build") and not spec.get("image"):
            raise UsageError(f"service {svc!r} is built from source: build it locally and push-image it",
                             hint="give the service an `image:` that migrate push-image can send")
    return ComposePlan(source_dir=path.resolve().parent, file_name=path.name,
                       project=project_name(name or path.resolve().parent.name), services=sorted(services))


def compose_job_command(plan: ComposePlan) -> str:
    """The job's shell command: up in the foreground, then down; SIGTERM stops it cleanly."""
    q = shell.quote
    f, p = q(plan.file_name), q(plan.project)
    return (
        f"cd {q(plan.remote_dir)} || exit 1; "
        "if docker compose version >/dev/null 2>&1; then dc='docker compose'; "
        "elif command -v docker-compose >/dev/null 2>&1; then dc=docker-compose; "
        "else echo 'migrate: neither docker compose nor docker-compose is installed on this host' >&2; exit 127; fi; "
        "trap 'echo \"migrate: stopping the compose project\"' TERM INT; "
        f"$dc -p {p} -f {f} up --abort-on-container-exit --remove-orphans; rc=$?; "
        f"$dc -p {p} -f {f} down --remove-orphans >/dev/null 2>&1; "
        "exit $rc"
    )
