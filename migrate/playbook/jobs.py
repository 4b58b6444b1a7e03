"""Turning a playbook's `run` section into concrete jobs with stable identities.

A job's key is `<run.key or the playbook name>:<parameters>:<hash of what it runs>`, so applying
the same playbook again finds the jobs it already queued (no duplicates), while editing the command or the image
makes new jobs. With several hosts the jobs are spread round-robin, deterministically, so a re-apply
sends each job to the host that already has it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from migrate.agent.fields import JOB_FIELDS, JobField
from migrate.jobs.spec import JOB_DEFAULTS
from migrate.playbook.loader import expand_sweep

NOT_IN_SPEC = {"command", "name", "key"}  # a PlannedJob's own attributes
LATER_FIELDS = {"ports", "allow_shared", "gpu_pool", "python_env"}  # not in playbooks before the job table
NOT_HASHED = {"notify", "sync_back"}  # where to say a job ended is not what it runs: changing it queues nothing new


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


def _spec_value(f: JobField, value: Any) -> Any:
    """A playbook value as JobSpec holds it (lists and maps copied, an empty gpu_pool is no pool)."""
    if f.kind == "str_list":
        return list(value or []) or JOB_DEFAULTS.get(f.name, [])  # gpu_pool: None when empty
    if f.kind == "str_map":
        return dict(value or {})
    return f.default if value is None else value


def plan_jobs(playbook_name: str, run: dict[str, Any], hosts: list[str]) -> list[PlannedJob]:
    """Expand the sweep and assign each job a host and a key (pure)."""
    spec = {f.name: _spec_value(f, run.get(f.playbook or f.name)) for f in JOB_FIELDS
            if f.playbook and f.name not in NOT_IN_SPEC}
    prefix = run.get("name") or playbook_name
    # Fields playbooks gained later count only when set, so the keys of older playbooks stay the same.
    hashed = {k: v for k, v in spec.items()
              if k not in NOT_HASHED and (k not in LATER_FIELDS or v not in (None, []))}
    what = json.dumps({"command": run["command"], **hashed}, sort_keys=True)
    digest = hashlib.sha256(what.encode()).hexdigest()[:10]
    key_prefix = run.get("key") or playbook_name
    jobs = []
    for i, (params, command) in enumerate(expand_sweep(run["command"], run.get("sweep") or {})):
        ptext = _params_text(params)
        name = prefix if not params else f"{prefix}[{ptext}]"
        jobs.append(PlannedJob(host=hosts[i % len(hosts)], key=f"{key_prefix}:{ptext}:{digest}",
                               name=name, command=command, params=params, spec=dict(spec)))
    return jobs
