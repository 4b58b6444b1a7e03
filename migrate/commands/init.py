"""`migrate init`: write a commented starter playbook."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS
from migrate.completion import complete_host
from migrate.errors import MigrateError, UsageError
from migrate.remote.shell import quote

STARTER = """\
# A migrate playbook: one file that describes a whole migration.
# Apply it with `migrate apply {path}` (rehearse first: `migrate apply {path} -H {sandbox_host}`).
# Every key is documented in docs/playbook.md; applying twice changes nothing.

# Hosts you were lent: [user@]host or aliases from ~/.ssh/config.
hosts: [{host}]

# 1. Make the host GPU-container ready (Docker, NVIDIA toolkit, daemon.json merged, docker group).
setup:
  docker_source: official        # or: distro, mirror:tuna, mirror:https://mirror.example/docker-ce
  nvidia: true                   # false on CPU-only hosts
  # default_runtime: nvidia
  # registry_mirrors: []

# 2. Images to push (only missing layers travel). Build one first with `build: DIR`.
images: []
#  - mylab/pytorch:2.3
#  - {{name: mylab/env:1, build: ./env}}   # a directory with a Dockerfile

# 3. Data to copy: the contents of src become dest (no trailing-slash trap).
data: []
#  - {{src: ./datasets/cifar10, dest: /data/cifar10, exclude: ["*.tmp"]}}

# 4. Experiments for the dispatcher: waits for free GPUs, survives SSH disconnects.
run:
  command: python train.py --lr {{lr}} --seed {{seed}}
  sweep: {{lr: [1e-3, 1e-4], seed: [0, 1]}}
  gpus_per_job: 1
  # image: mylab/pytorch:2.3     # container mode; omit to run as plain processes
  # workdir: /workspace
  # mounts: ["/data:/data"]
  # shm_size: 16g
"""


def rehearsal_host() -> str:
    """The first host of the sandbox `migrate sandbox up` brings up here ($MIGRATE_SANDBOX, else sandbox1)."""
    from migrate.sandbox.manager import DEFAULT_NAME, SandboxSettings

    try:
        return SandboxSettings.from_env().alias(1)
    except UsageError:  # a bad $MIGRATE_SANDBOX: `sandbox up` says so itself
        return f"{DEFAULT_NAME}1"


def starter_playbook(path: str, host: str, sandbox_host: str = "sandbox1") -> str:
    """The commented starter text for `path`, aimed at `host`, rehearsed on `sandbox_host`."""
    return STARTER.format(path=quote(path), host=host, sandbox_host=sandbox_host)


@click.command("init", context_settings=CONTEXT_SETTINGS)
@click.argument("path", default="migrate.yml", required=False)
@click.option("-H", "--host", default="alice@gpu-box", show_default=True, shell_complete=complete_host,
              help="Host to put in the playbook.")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
@click.option("-n", "--dry-run", is_flag=True, help="Print the playbook instead of writing it.")
@click.option("--json", "as_json", is_flag=True, help="Print {path, host} of the written playbook as JSON.")
def command(path: str, host: str, force: bool, dry_run: bool, as_json: bool) -> None:
    """Write a commented starter playbook to PATH (default migrate.yml).

    \b
    Examples:
      migrate init                         # migrate.yml for the sandbox
      migrate init lab.yml -H alice@gpu1
      migrate init -n | less               # read it first; write nothing
    """
    target = Path(path)
    if target.exists() and not force and not dry_run:
        raise MigrateError(f"{target} already exists", hint="choose another path or pass --force")
    sandbox_host = rehearsal_host()
    text = starter_playbook(path, host, sandbox_host)
    if dry_run:
        if as_json:
            ui.print_json({"path": str(target), "host": host, "dry_run": True, "text": text})
        else:
            sys.stdout.write(text)
            ui.info(f"dry run: {target} not written")
        return
    target.write_text(text)
    if as_json:
        ui.print_json({"path": str(target), "host": host})
        return
    ui.info(f"wrote {target}; edit it, then rehearse on the sandbox (`migrate sandbox up`): "
            f"`migrate apply {quote(path)} -H {sandbox_host} --dry-run`")
