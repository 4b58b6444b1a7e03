"""The job queue: one SQLite database (WAL) per user under ~/.migrate/dispatcher, 0600.

Every change is one short `BEGIN IMMEDIATE` transaction, so the dispatcher and the clients'
subcommands (submit, cancel, retry...) can write at the same time from different processes.

A job's GPUs are *reserved* while it is `starting` or `running`: the dispatcher writes the state
`starting` together with the chosen GPU UUIDs in one transaction BEFORE it launches anything, and
the reservation ends only when the job leaves those states. That closes the gap of several seconds
between a launch and the job's first GPU allocation, during which NVML still shows the GPU idle.

States and the allowed moves (`TRANSITIONS`):

    queued -> starting -> running -> done | failed | cancelled | lost
       |          |           '-> queued            (automatic retry, --retries N)
       '-> cancelled   '-> queued | failed | lost   (recovery after a crash / launch error)
    done | failed | cancelled | lost -> queued      (migrate retry)
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from typing import Any

SCHEMA_VERSION = 1

QUEUED, STARTING, RUNNING = "queued", "starting", "running"
DONE, FAILED, CANCELLED, LOST = "done", "failed", "cancelled", "lost"
STATES = (QUEUED, STARTING, RUNNING, DONE, FAILED, CANCELLED, LOST)
ACTIVE = (STARTING, RUNNING)
FINAL = (DONE, FAILED, CANCELLED, LOST)

TRANSITIONS = {
    QUEUED: {STARTING, CANCELLED},
    STARTING: {RUNNING, QUEUED, DONE, FAILED, CANCELLED, LOST},
    RUNNING: {DONE, FAILED, CANCELLED, LOST, QUEUED},
    DONE: {QUEUED},
    FAILED: {QUEUED},
    CANCELLED: {QUEUED},
    LOST: {QUEUED},
}

# Columns that hold JSON text, and the empty value of each.
JSON_COLUMNS: dict = {"env": {}, "gpu_pool": None, "mounts": [], "ports": [], "gpu_uuids": [], "gpu_indices": []}

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT UNIQUE,
    name TEXT NOT NULL,
    command TEXT NOT NULL,
    cwd TEXT,
    env TEXT NOT NULL DEFAULT '{}',
    gpus INTEGER NOT NULL DEFAULT 1,
    min_free_mem_mib INTEGER,
    allow_shared INTEGER NOT NULL DEFAULT 0,
    gpu_pool TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    auto_retries_used INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    image TEXT,
    mounts TEXT NOT NULL DEFAULT '[]',
    shm_size TEXT,
    ports TEXT NOT NULL DEFAULT '[]',
    state TEXT NOT NULL DEFAULT 'queued',
    exit_code INTEGER,
    gpu_uuids TEXT NOT NULL DEFAULT '[]',
    gpu_indices TEXT NOT NULL DEFAULT '[]',
    pid INTEGER,
    pgid INTEGER,
    start_ticks INTEGER,
    token TEXT,
    container TEXT,
    boot_id TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    submitted_at REAL NOT NULL,
    queued_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, priority DESC, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


MAX_JOB_ID = 2**63 - 1  # SQLite's INTEGER: a larger number can name no job


def job_ref_problem(ref: str) -> str | None:
    """Why `ref` (a job's id, name or key) can name no job, or None (pure). The client checks it before it
    connects, the agent again (a 38-digit id was an OverflowError from SQLite)."""
    ref = ref.strip()
    if not ref:
        return "an empty job id"
    if ref.isascii() and ref.isdigit() and int(ref) > MAX_JOB_ID:
        return f"job id {ref} is out of range (ids are 1 to {MAX_JOB_ID})"
    return None


class QueueError(Exception):
    """A request the queue refuses (unknown job, wrong state): message and hint for the user."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def check_transition(old: str, new: str) -> None:
    """Raise ValueError for a move the state machine does not allow."""
    if new not in TRANSITIONS.get(old, set()):
        raise ValueError(f"job state {old} -> {new} is not allowed")


def _decode(text: str | None, empty: Any) -> Any:
    if not text:
        return empty.copy() if isinstance(empty, (list, dict)) else empty
    if text == "[]":  # the common cases, without the JSON parser (status --all reads 10k rows)
        return []
    if text == "{}":
        return {}
    return json.loads(text)


def _row_to_job(row: sqlite3.Row) -> dict:
    job = dict(row)
    for col, empty in JSON_COLUMNS.items():
        if col in job:
            job[col] = _decode(job[col], empty)
    job["allow_shared"] = bool(job.get("allow_shared"))
    job["cancel_requested"] = bool(job.get("cancel_requested"))
    return job


class Queue:
    """The job queue of one user. Cheap to open; use one per process."""

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.path = path
        existed = os.path.exists(path)
        self.conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        if not existed:
            _chmod_private(path)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        self._init_schema()

    def close(self) -> None:
        self.conn.close()

    # -- plumbing ----------------------------------------------------------------------------
    def _init_schema(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise QueueError(f"the job queue {self.path} was written by a newer migrate (schema {version})",
                             "upgrade migrate on this machine")
        with self.transaction():
            for statement in _statements(SCHEMA):
                self.conn.execute(statement)
            self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        for suffix in ("-wal", "-shm"):
            _chmod_private(self.path + suffix)

    def transaction(self) -> _Transaction:
        """`with queue.transaction():` runs the block in BEGIN IMMEDIATE ... COMMIT."""
        return _Transaction(self.conn)

    # -- meta --------------------------------------------------------------------------------
    def get_meta(self, key: str, default: str = "") -> str:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self._set_meta(key, value)

    def _set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                          "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    # -- submit ------------------------------------------------------------------------------
    def submit(self, specs: list[dict], now: float | None = None) -> list[dict]:
        """Queue jobs (one transaction). A spec whose `key` exists returns that job as 'existing'."""
        now = time.time() if now is None else now
        out = []
        with self.transaction():
            for spec in specs:
                key = spec.get("key")
                if key:
                    row = self.conn.execute("SELECT id, key, name, state FROM jobs WHERE key = ?", (key,)).fetchone()
                    if row:
                        out.append({"id": row["id"], "key": row["key"], "name": row["name"], "status": "existing",
                                    "state": row["state"]})
                        continue
                cur = self.conn.execute(
                    "INSERT INTO jobs (key, name, command, cwd, env, gpus, min_free_mem_mib, allow_shared, gpu_pool,"
                    " priority, retries, image, mounts, shm_size, ports, state, submitted_at, queued_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                    (key or None, spec.get("name") or "", spec["command"], spec.get("cwd"),
                     json.dumps(spec.get("env") or {}), int(spec.get("gpus", 1)), spec.get("min_free_mem_mib"),
                     1 if spec.get("allow_shared") else 0,
                     json.dumps(spec["gpu_pool"]) if spec.get("gpu_pool") else None,
                     int(spec.get("priority", 0)), int(spec.get("retries", 0)), spec.get("image"),
                     json.dumps(spec.get("mounts") or []), spec.get("shm_size"), json.dumps(spec.get("ports") or []),
                     now, now))
                job_id = cur.lastrowid
                name = spec.get("name") or f"job-{job_id}"
                if not spec.get("name"):
                    self.conn.execute("UPDATE jobs SET name = ? WHERE id = ?", (name, job_id))
                out.append({"id": job_id, "key": key or None, "name": name, "status": "queued", "state": QUEUED})
        return out

    # -- reading -----------------------------------------------------------------------------
    def get(self, job_id: int) -> dict | None:
        row = self.conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row_to_job(row) if row else None

    def find(self, ref: str) -> dict:
        """A job by id, key or (unique) name; QueueError when there is none or several."""
        ref = str(ref).strip()
        problem = job_ref_problem(ref)
        if problem:
            raise QueueError(problem, "list jobs with `migrate status HOST`")
        if ref.isascii() and ref.isdigit():  # `int()` takes other scripts' digits too: those are names
            job = self.get(int(ref))
            if job:
                return job
        row = self.conn.execute("SELECT * FROM jobs WHERE key = ?", (ref,)).fetchone()
        if row:
            return _row_to_job(row)
        rows = self.conn.execute("SELECT * FROM jobs WHERE name = ? ORDER BY id", (ref,)).fetchall()
        if len(rows) == 1:
            return _row_to_job(rows[0])
        if len(rows) > 1:
            ids = ", ".join(str(r["id"]) for r in rows[:10])
            raise QueueError(f"job name {ref!r} is ambiguous (jobs {ids})", "give the job id instead")
        raise QueueError(f"no job {ref!r}", "list jobs with `migrate status HOST`")

    def jobs(self, states: Iterable[str] | None = None, ids: Iterable[int] | None = None) -> list[dict]:
        """Jobs (optionally filtered by state or id), in id order."""
        sql, args = "SELECT * FROM jobs", []  # type: str, list
        where = []
        if states is not None:
            states = list(states)
            where.append("state IN ({})".format(",".join("?" * len(states))))
            args += states
        if ids is not None:
            ids = list(ids)
            where.append("id IN ({})".format(",".join("?" * len(ids))))
            args += ids
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_row_to_job(r) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def queued(self) -> list[dict]:
        """Queued jobs in dispatch order: highest priority first, then oldest."""
        rows = self.conn.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY priority DESC, id")
        return [_row_to_job(r) for r in rows]

    def active(self) -> list[dict]:
        return self.jobs(ACTIVE)

    def recent(self, finished_limit: int) -> tuple[list[dict], int]:
        """Unfinished jobs plus the newest `finished_limit` finished ones; and how many were left out."""
        active = self.jobs((QUEUED,) + ACTIVE)
        marks = ",".join("?" * len(FINAL))
        rows = self.conn.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id DESC LIMIT ?",
                                 FINAL + (finished_limit,)).fetchall()
        finished = [_row_to_job(r) for r in rows]
        total_finished = self.conn.execute(f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks})", FINAL).fetchone()[0]
        jobs = sorted(active + finished, key=lambda j: j["id"])
        return jobs, total_finished - len(finished)

    def counts(self) -> dict:
        """Number of jobs per state."""
        out = dict.fromkeys(STATES, 0)
        for state, n in self.conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            out[state] = n
        return out

    def reservations(self) -> dict:
        """GPU UUID -> id of the job holding it (jobs starting or running)."""
        out = {}
        for row in self.conn.execute("SELECT id, gpu_uuids FROM jobs WHERE state IN ('starting', 'running')"):
            for uuid in json.loads(row["gpu_uuids"] or "[]"):
                out[uuid] = row["id"]
        return out

    # -- dispatcher transitions --------------------------------------------------------------
    def _move(self, job_id: int, old_states: tuple, new: str, **fields: Any) -> bool:
        row = self.conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or row["state"] not in old_states:
            return False
        check_transition(row["state"], new)
        fields["state"] = new
        cols = ", ".join(f"{k} = ?" for k in fields)
        vals = [json.dumps(v) if k in JSON_COLUMNS else v for k, v in fields.items()]
        self.conn.execute(f"UPDATE jobs SET {cols} WHERE id = ?", vals + [job_id])
        return True

    def reserve(self, job_id: int, gpu_uuids: list[str], gpu_indices: list[str], token: str, boot_id: str,
                now: float | None = None) -> bool:
        """queued -> starting with the chosen GPUs (the reservation), before anything is launched.

        Refuses (returns False) if the job is no longer queued or a GPU is already reserved.
        """
        now = time.time() if now is None else now
        with self.transaction():
            taken = self.reservations()
            if any(u in taken for u in gpu_uuids):
                return False
            attempt = self.conn.execute("SELECT attempt FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if attempt is None:
                return False
            return self._move(job_id, (QUEUED,), STARTING, gpu_uuids=list(gpu_uuids),
                              gpu_indices=list(gpu_indices), token=token, boot_id=boot_id, started_at=now,
                              ended_at=None, exit_code=None, pid=None, pgid=None, start_ticks=None, container=None,
                              attempt=attempt[0] + 1, reason="")

    def mark_running(self, job_id: int, pid: int, pgid: int, start_ticks: int | None,
                     container: str | None = None) -> bool:
        """starting -> running, recording how to find the job's processes again."""
        with self.transaction():
            return self._move(job_id, (STARTING,), RUNNING, pid=pid, pgid=pgid, start_ticks=start_ticks,
                              container=container)

    def unreserve(self, job_id: int, reason: str) -> bool:
        """starting -> queued: the launch never happened (found after a crash)."""
        with self.transaction():
            row = self.conn.execute("SELECT attempt FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return self._move(job_id, (STARTING,), QUEUED, gpu_uuids=[], gpu_indices=[], token=None,
                              attempt=max(0, (row[0] if row else 1) - 1), reason=reason, queued_at=time.time())

    def finish(self, job_id: int, exit_code: int | None, *, lost: bool = False, reason: str = "",
               now: float | None = None, ended_at: float | None = None) -> str | None:
        """An active job ended: done / failed / cancelled / lost, or back to queued for a retry.

        Returns the new state, or None when the job was not active any more (someone else
        recorded it first). `ended_at`: when it really ended, if that was before `now`.
        """
        now = time.time() if now is None else now
        ended = now if ended_at is None else ended_at
        with self.transaction():
            job = self.get(job_id)
            if job is None or job["state"] not in ACTIVE:
                return None
            if job["cancel_requested"]:
                new = CANCELLED
            elif lost:
                new = LOST
            elif exit_code == 0:
                new = DONE
            else:
                new = FAILED
            if new == FAILED and job["auto_retries_used"] < job["retries"]:
                used = job["auto_retries_used"] + 1
                self._move(job_id, ACTIVE, QUEUED, exit_code=exit_code, ended_at=ended, queued_at=now,
                           auto_retries_used=used, pid=None, pgid=None, start_ticks=None,
                           reason=f"retry {used} of {job['retries']} after exit code {exit_code}"
                                  + (f": {reason}" if reason else ""))
                return QUEUED
            self._move(job_id, ACTIVE, new, exit_code=exit_code, ended_at=ended, reason=reason)
            return new

    def set_reasons(self, reasons: dict) -> None:
        """Update the 'why is it waiting' text of queued jobs (only rows that change)."""
        if not reasons:
            return
        with self.transaction():
            for job_id, reason in reasons.items():
                self.conn.execute("UPDATE jobs SET reason = ? WHERE id = ? AND state = 'queued' AND reason != ?",
                                  (reason, job_id, reason))

    # -- user requests -----------------------------------------------------------------------
    def request_cancel(self, job_ids: Iterable[int], now: float | None = None) -> tuple[list[dict], list[dict]]:
        """Cancel: queued jobs become `cancelled` at once; active ones are flagged and returned.

        Returns (cancelled_now, to_signal). Finished jobs are left alone.
        """
        now = time.time() if now is None else now
        cancelled, to_signal = [], []
        with self.transaction():
            for job_id in job_ids:
                job = self.get(job_id)
                if job is None:
                    continue
                if job["state"] == QUEUED:
                    self._move(job_id, (QUEUED,), CANCELLED, ended_at=now, reason="cancelled before it started")
                    row = self.get(job_id)
                    assert row is not None  # read back in the transaction that just updated it
                    cancelled.append(row)
                elif job["state"] in ACTIVE:
                    self.conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                    job["cancel_requested"] = True
                    to_signal.append(job)
        return cancelled, to_signal

    def retry(self, job_id: int, now: float | None = None) -> dict:
        """A finished job goes back to the queue (keeping its id, log and attempt count)."""
        now = time.time() if now is None else now
        with self.transaction():
            job = self.get(job_id)
            if job is None:
                raise QueueError(f"no job {job_id}")
            refusal = retry_refusal(job)
            if refusal:
                raise refusal
            self._move(job_id, FINAL, QUEUED, queued_at=now, cancel_requested=0, auto_retries_used=0,
                       exit_code=None, ended_at=None, gpu_uuids=[], gpu_indices=[], pid=None, pgid=None,
                       start_ticks=None, container=None, reason="retried by the user")
            return self.get(job_id)  # type: ignore[return-value]


def retry_refusal(job: dict) -> QueueError | None:
    """Why `job` cannot be retried (it has not finished), or None."""
    if job["state"] in FINAL:
        return None
    return QueueError(f"job {job['id']} ({job['name']}) is {job['state']}, not finished",
                      "only done, failed, cancelled or lost jobs can be retried")


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.nested = False

    def __enter__(self) -> sqlite3.Connection:
        self.nested = self.conn.in_transaction
        if not self.nested:
            self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.nested:
            return
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _chmod_private(path: str) -> None:
    try:
        os.chmod(path, 0o600)
    except OSError:
        pass
