"""Which queued job may start now, and on which GPUs: the free-GPU rule, as pure functions.

A GPU (or MIG instance) is free for us when ALL of these hold:
- NVML reports no error for it;
- it is not reserved by one of our jobs (reservations come from the queue, written before launch);
- no foreign process is on it (compute, graphics or MPS: any process on an unreserved GPU is
  someone else's, or a leftover that still holds memory);
- its used memory is under the idle threshold (memory in use without a listed process means
  someone NVML does not show us, e.g. another container). The threshold is measured: the lowest
  `used` seen on that device while it had no process and no reservation of ours (its idle
  baseline, see `learn_idle_baseline`) plus `Policy.idle_margin_mib`, never above a ceiling.
  With NVML's v2 memory API `used` excludes the driver's reservation; drivers that only have v1
  count it (~480 MiB on an idle H100, ~900 MiB on an A100), so the ceiling is
  `Policy.idle_mem_mib` for v2 and `Policy.idle_mem_mib_v1` for v1 readings, which is also the
  threshold until a baseline has been seen;
- its utilisation is under `Policy.max_util_pct`;
- it is in the job's `gpu_pool` (UUIDs, UUID prefixes or indices; a MIG instance belongs to the
  pool of its parent), and has at least the job's `min_free_mem_mib` free.

`allow_shared` jobs may also use GPUs that are busy only because of foreign processes or memory,
when the job's `min_free_mem_mib` fits in what is free (utilisation is then not a reason to wait).

Order: highest priority first, then oldest. Smaller jobs may start past a blocked bigger one
(backfill), but once the first blocked GPU job has waited `Policy.backfill_wait_s`, no later GPU job
is admitted until it starts, so big jobs are not starved. Multi-GPU jobs get whole GPUs only (a
CUDA process uses one MIG instance at most). Among candidates, whole GPUs come before MIG
instances, then the most free memory, then the highest index (GPU 0 is the one people hard-code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FREE, SHARED, RESERVED, BUSY, ERROR, MIG_PARENT = "free", "shared", "reserved", "busy", "error", "mig-parent"


@dataclass
class Policy:
    max_util_pct: int = 10
    idle_mem_mib: int = 512
    idle_mem_mib_v1: int = 1024
    idle_margin_mib: int = 256
    backfill_wait_s: float = 600.0
    cpu_slots: int = 4


@dataclass
class GpuVerdict:
    device: Any  # GpuDevice
    verdict: str  # free | busy | reserved | error | mig-parent
    reason: str = ""
    shareable: bool = False  # busy only because of foreign processes/memory (allow_shared may use it)


@dataclass
class Admission:
    job: dict
    devices: list  # of GpuDevice (empty for CPU jobs)


def _mib(n: int | None) -> str:
    if n is None:
        return "? MiB"
    return f"{n / 1024.0:.1f} GiB" if n >= 1024 else f"{n} MiB"


def _baseline_key(dev: Any) -> str:
    return f"{dev.uuid}/{dev.memory_api or 'fake'}"


def learn_idle_baseline(devices: list, reserved: dict, baselines: dict) -> dict:
    """Update the per-device idle baseline: the lowest `used` MiB seen with no process on it and no
    reservation of ours (pure; returns a new dict). Keyed by UUID and memory API (v1 and v2
    readings of the same GPU differ by the driver's reservation)."""
    out = dict(baselines)
    for d in devices:
        if d.error or d.mig_mode or d.processes or d.uuid in reserved or d.memory_used_mib is None:
            continue
        key = _baseline_key(d)
        if key not in out or d.memory_used_mib < out[key]:
            out[key] = int(d.memory_used_mib)
    return out


def load_idle_baselines(queue: Any) -> dict:
    """The baselines kept in the queue's meta table ({} when absent or unreadable)."""
    import json

    try:
        data = json.loads(queue.get_meta("idle_baselines") or "{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): int(v) for k, v in data.items() if isinstance(v, (int, float))}


def idle_threshold(dev: Any, policy: Policy, baselines: dict | None = None) -> int:
    """MiB of used memory above which a device with no listed process counts as busy."""
    ceiling = policy.idle_mem_mib_v1 if dev.memory_api == "v1" else policy.idle_mem_mib
    base = (baselines or {}).get(_baseline_key(dev))
    if base is None:
        return ceiling
    return min(ceiling, int(base) + policy.idle_margin_mib)


def gpu_verdict(dev: Any, reserved: dict, policy: Policy, owners: dict | None = None,
                baselines: dict | None = None) -> GpuVerdict:
    """Judge one device for everybody (job-specific checks are in `fits`)."""
    if dev.error:
        return GpuVerdict(dev, ERROR, dev.error)
    if dev.mig_mode:
        return GpuVerdict(dev, MIG_PARENT, "MIG enabled: its instances are scheduled")
    if dev.uuid in reserved:
        return GpuVerdict(dev, RESERVED, f"reserved by job {reserved[dev.uuid]}")
    if dev.processes:
        owners = owners or {}
        parts = []
        for p in dev.processes[:3]:
            who = owners.get(p.pid)
            parts.append(f"pid {p.pid}{(f' ({who})' if who else '')} {_mib(p.used_mib)}")
        more = f" +{len(dev.processes) - 3} more" if len(dev.processes) > 3 else ""
        return GpuVerdict(dev, BUSY, "in use by " + ", ".join(parts) + more, shareable=True)
    idle = idle_threshold(dev, policy, baselines)
    if dev.memory_used_mib is not None and dev.memory_used_mib > idle:
        return GpuVerdict(dev, BUSY, f"{_mib(dev.memory_used_mib)} used by processes NVML does not list "
                          f"(idle threshold {_mib(idle)})", shareable=True)
    if dev.utilization is not None and dev.utilization > policy.max_util_pct:
        return GpuVerdict(dev, BUSY, f"utilisation {dev.utilization}%")
    return GpuVerdict(dev, FREE, "")


def in_pool(dev: Any, pool: list | None, parents: dict) -> bool:
    """True when the device (or its MIG parent) matches an entry of the pool (or there is no pool)."""
    if not pool:
        return True
    candidates = [dev]
    if dev.parent_uuid and dev.parent_uuid in parents:
        candidates.append(parents[dev.parent_uuid])
    for d in candidates:
        for entry in pool:
            entry = str(entry).strip()
            if not entry:
                continue
            if entry == d.index or entry == d.uuid or (len(entry) >= 8 and d.uuid.startswith(entry)):
                return True
    return False


def fits(v: GpuVerdict, job: dict) -> bool:
    """Can this job use this device (given the device's verdict)?"""
    need = job.get("min_free_mem_mib")
    free = v.device.free_mib
    if v.verdict == FREE:
        return need is None or (free is not None and free >= need)
    if v.verdict == BUSY and v.shareable and job.get("allow_shared") and need is not None:
        return free is not None and free >= need
    return False


def _candidate_key(v: GpuVerdict) -> tuple:
    free = v.device.free_mib or 0
    index = v.device.sort_index
    return (1 if v.device.is_mig else 0, 0 if v.verdict == FREE else 1, -free, tuple(-i for i in index))


def _summary(verdicts: list, job: dict) -> str:
    counts = {}  # type: dict
    first = {}  # type: dict
    for v in verdicts:
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
        first.setdefault(v.verdict, v)
    n_free = sum(1 for v in verdicts if fits(v, job))
    parts = []
    for verdict in (RESERVED, BUSY, ERROR):
        if counts.get(verdict):
            v = first[verdict]
            parts.append(f"{counts[verdict]} {verdict} (GPU {v.device.index}: {v.reason})")
    if counts.get(FREE, 0) > n_free:
        parts.append(f"{counts[FREE] - n_free} free but under --min-free-mem {_mib(job.get('min_free_mem_mib'))}")
    plural = "s" if job["gpus"] != 1 else ""
    detail = ": " + "; ".join(parts) if parts else ""
    return f"waiting for {job['gpus']} GPU{plural}, {n_free} of {len(verdicts)} usable now{detail}"


def never_fits(job: dict, snapshot: Any) -> str | None:
    """Why this job can never start on this host's GPUs (one line), or None.

    Counts whole GPUs, lost or in MIG mode included (they may come back, or leave MIG mode): a
    job that needs more than that, in its pool, is refused at submit. What could change later
    (MIG, lost GPUs, other people) is left to the queue, whose reason `status` shows.
    """
    need = int(job.get("gpus", 1))
    if need <= 0 or snapshot is None:
        return None
    gpus = [d for d in snapshot.devices if not d.is_mig]
    pool = job.get("gpu_pool")
    offered = [d for d in gpus if in_pool(d, pool, {})]
    if need <= len(offered):
        return None
    names = sorted({d.name for d in offered if d.name})
    what = ", ".join(d.index for d in offered) + (f" ({'; '.join(names)})" if names else "") if offered else "none"
    where = " in --gpu-pool {}".format(",".join(pool)) if pool else ""
    label = f"job '{job['name']}'" if job.get("name") else "the job"
    return (f"{label} needs {need} GPU{'s' if need != 1 else ''}; this host "
            f"offers {len(offered)}{where}: {what}")


def plan(queued: list, snapshot: Any, snapshot_error: str | None, reserved: dict, running_cpu_jobs: int,
         policy: Policy, now: float, owners: dict | None = None, baselines: dict | None = None) -> tuple:
    """Decide admissions for this tick.

    `queued` is in dispatch order (priority desc, id asc); `snapshot` is a GpuSnapshot or None.
    `baselines` are the devices' idle baselines (`learn_idle_baseline`).
    Returns (admissions, reasons) where reasons maps job id -> why it still waits.
    """
    admissions = []  # type: list
    reasons = {}  # type: dict
    taken = dict(reserved)
    cpu_running = running_cpu_jobs
    gpu_hold = None  # a starving job that stops backfilling
    parents = {}  # type: dict
    devices = []  # type: list
    if snapshot is not None:
        parents = {d.uuid: d for d in snapshot.devices if d.mig_mode}
        devices = snapshot.leaves()
    for job in queued:
        need = int(job.get("gpus", 1))
        if need <= 0:
            if cpu_running < policy.cpu_slots:
                admissions.append(Admission(job, []))
                cpu_running += 1
            else:
                reasons[job["id"]] = (f"waiting for a CPU slot ({cpu_running} CPU jobs running, "
                                      f"limit {policy.cpu_slots})")
            continue
        if snapshot is None:
            reasons[job["id"]] = f"waiting: GPU view unavailable ({snapshot_error or 'not read yet'})"
            continue
        if gpu_hold is not None:
            reasons[job["id"]] = f"waiting behind job {gpu_hold['id']} ({gpu_hold['name']}), which has waited longest"
            continue
        pool = job.get("gpu_pool")
        eligible = [d for d in devices if in_pool(d, pool, parents) and (need == 1 or not d.is_mig)]
        if len(eligible) < need:
            where = "in --gpu-pool {}".format(",".join(pool)) if pool else "on this host"
            reasons[job["id"]] = f"cannot start: needs {need} GPU{('s' if need != 1 else '')}, {len(eligible)} {where}"
            continue
        verdicts = [gpu_verdict(d, taken, policy, owners, baselines) for d in eligible]
        usable = sorted((v for v in verdicts if fits(v, job)), key=_candidate_key)
        if len(usable) >= need:
            chosen = [v.device for v in usable[:need]]
            for d in chosen:
                taken[d.uuid] = job["id"]
            admissions.append(Admission(job, chosen))
            continue
        reasons[job["id"]] = _summary(verdicts, job)
        if now - float(job.get("queued_at") or now) >= policy.backfill_wait_s:
            gpu_hold = job
    return admissions, reasons
