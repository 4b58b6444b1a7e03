"""The one job model of the laptop side: `JobState` and `Job`, read from a host's agent or a cluster.

A host's agent (migrate/agent, stdlib only, so it keeps its own string constants in agent/db.py) and a
cluster (Ray's job API and migrate's launcher, which answer with Ray's PENDING/RUNNING/... statuses)
both become the same `Job` here. Every client-side test of a job's state goes through `JobState`:
`is_terminal` (it ended: done, failed, cancelled, lost) and `is_active` (it has, or is getting,
processes: starting, running). A job that is neither is queued.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from migrate.agent import db


class JobState(str, Enum):
    """A job's state, spelled as the agent and every table and JSON answer spell it."""

    QUEUED = db.QUEUED
    STARTING = db.STARTING
    RUNNING = db.RUNNING
    DONE = db.DONE
    FAILED = db.FAILED
    CANCELLED = db.CANCELLED
    LOST = db.LOST

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        """It ended and will not change unless retried."""
        return self in TERMINAL

    @property
    def is_active(self) -> bool:
        """It has (or is getting) processes: what `shell`/`exec` can enter."""
        return self in (JobState.STARTING, JobState.RUNNING)

    @classmethod
    def parse(cls, text: str) -> JobState:
        """A state from its name; ValueError for anything else."""
        return cls(text)

    @classmethod
    def from_ray(cls, status: str) -> JobState:
        """A Ray (or launcher) job status as a migrate state; an unknown status reads as lost."""
        return RAY_STATES.get(status, cls.LOST)


TERMINAL = (JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.LOST)
RETRY_ALL = (JobState.FAILED, JobState.CANCELLED, JobState.LOST)  # `retry --all`: what did not succeed
RAY_STATES = {"PENDING": JobState.QUEUED, "RUNNING": JobState.RUNNING, "SUCCEEDED": JobState.DONE,
              "FAILED": JobState.FAILED, "STOPPED": JobState.CANCELLED}
RAY_TERMINAL = tuple(s for s, st in RAY_STATES.items() if st.is_terminal)
NAMES = tuple(s.value for s in JobState)


def state_of(text: str | None) -> JobState | None:
    """A state from a JSON field (None for a missing or unknown one) (pure)."""
    try:
        return JobState(text) if text else None
    except ValueError:
        return None


def is_terminal(text: str | None) -> bool:
    """Whether a state string of a JSON answer means the job ended (pure)."""
    st = state_of(text)
    return st is not None and st.is_terminal


@dataclass
class Job:
    """One job of a host or a cluster, as the tables, `wait` and the verbs see it."""

    id: str
    name: str = ""
    state: JobState | None = None
    exit_code: int | None = None
    runtime_s: float | None = None
    reason: str = ""
    key: str = ""
    attempt: int = 1
    gpus: int = 0
    nodes: int = 0                      # a cluster's --nodes job: the servers it spans (0: one)
    retries_left: int = 0
    command: str = ""
    submission_id: str = ""             # a cluster job's Ray submission id (of this attempt)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the answer it was read from

    @property
    def state_name(self) -> str:
        return self.state.value if self.state else "?"

    @classmethod
    def from_agent(cls, d: dict[str, Any]) -> Job:
        """A job of the agent's `status --json` (also the shape of a cluster's `status NAME --json`)."""
        code = d.get("exit_code")
        return cls(id=str(d.get("id")), name=str(d.get("name") or ""), state=state_of(d.get("state")),
                   exit_code=code if isinstance(code, int) else None, runtime_s=d.get("runtime_s"),
                   reason=str(d.get("reason") or ""), key=str(d.get("key") or ""),
                   attempt=int(d.get("attempt") or 1), gpus=int(d.get("gpus") or 0), nodes=int(d.get("nodes") or 0),
                   command=str(d.get("command") or ""), submission_id=str(d.get("submission_id") or ""), raw=d)

    @classmethod
    def from_ray(cls, j: dict[str, Any], now: float | None = None) -> Job:
        """A job of the cluster's job API (Ray's or the launcher's JSON), its migrate fields in the metadata
        (the one place they are read); `now` (epoch seconds) gives a running job its runtime."""
        meta = j.get("metadata") or {}
        code = j.get("driver_exit_code")
        st = JobState.from_ray(str(j.get("status", "")))
        start, end = (j.get("start_time") or 0) / 1000, (j.get("end_time") or 0) / 1000
        stop = end or now
        runtime = (stop - start) if start and stop else None
        return cls(id=str(meta.get("migrate_id", "?")), name=str(meta.get("migrate_name") or ""), state=st,
                   exit_code=code if isinstance(code, int) else None, runtime_s=runtime,
                   reason=str(j.get("message") or "") if st is JobState.FAILED else "",
                   key=str(meta.get("migrate_key") or ""), attempt=int(meta.get("migrate_attempt", "1") or 1),
                   gpus=int(meta.get("migrate_gpus", "0") or 0), nodes=int(meta.get("migrate_nodes", "0") or 0),
                   retries_left=int(meta.get("migrate_retries", "0") or 0),
                   command=str(meta.get("migrate_command") or ""), submission_id=str(j.get("submission_id") or ""),
                   raw=j)
