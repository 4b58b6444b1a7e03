"""Click options shared by the dispatcher verbs."""

from __future__ import annotations

import click

from migrate.jobs.client import check_backend


def gpu_backend_option(default_help: str):
    """`--gpu-backend nvml|fake:PATH` (also $MIGRATE_GPU_BACKEND); the value is validated."""
    return click.option(
        "--gpu-backend", envvar="MIGRATE_GPU_BACKEND",
        callback=lambda ctx, param, value: check_backend(value),
        help=f"nvml, or fake:PATH: the FAKE test double reading a JSON file on the host; default: {default_help}.")


def backend_args(spec: str | None) -> list[str]:
    """Agent arguments for a chosen backend (none: the host keeps what it uses)."""
    return ["--backend", spec] if spec else []
