"""Turning a playbook's `run` section into concrete jobs with stable identities.

A job's key is `<playbook name>:<parameters>:<hash of what it runs>`, so applying the same playbook
again finds the jobs it already queued (no duplicates), while editing the command or the image
makes new jobs. With several hosts the jobs are spread round-robin, deterministically, so a re-apply
sends each job to the host that already has it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from migrate.playbook.loader import expand_sweep


@dataclass
class PlannedJob:
    """One job of a playbook: what to run, where, and its idempotency key."""

    host: str
    key: str
    name: str
    command: str
    params: dict[str, str] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)  # JobSpec fields other than command/name/key


def _params_text(params: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items()) or "default"


def plan_jobs(playbook_name: str, run: dict[str, Any], hosts: list[str]) -> list[PlannedJob]:
    """Expand the sweep and assign each job a host and a key (pure)."""
    spec = {
        "cwd": run.get("workdir"),
        "env": dict(run.get("env") or {}),
        "gpus": run.get("gpus_per_job", 1),
        "min_free_mem_mib": run.get("min_free_mem"),
        "priority": run.get("priority", 0),
        "retries": run.get("retries", 0),
        "image": run.get("image"),
        "mounts": list(run.get("mounts") or []),
        "shm_size": run.get("shm_size"),
    }
    prefix = run.get("name") or playbook_name
    what = json.dumps({"command": run["command"], **spec}, sort_keys=True)
    digest = hashlib.sha256(what.encode()).hexdigest()[:10]
    jobs = []
    for i, (params, command) in enumerate(expand_sweep(run["command"], run.get("sweep") or {})):
        ptext = _params_text(params)
        name = prefix if not params else f"{prefix}[{ptext}]"
        jobs.append(PlannedJob(host=hosts[i % len(hosts)], key=f"{playbook_name}:{ptext}:{digest}",
                               name=name, command=command, params=params, spec=dict(spec)))
    return jobs
