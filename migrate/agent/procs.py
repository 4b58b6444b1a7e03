"""Facts about processes and the boot, read from /proc (Linux only, no dependencies).

Re-adoption after a dispatcher restart rests on these: a job is identified by its wrapper's pid
*and* that process's start time (so a recycled pid is never mistaken for the job), its process
group, a random token in its environment, and the boot it started in.
"""

from __future__ import annotations

import os
import pwd
from typing import NamedTuple


class ProcStat(NamedTuple):
    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    start_ticks: int


def read_stat(pid: int) -> ProcStat | None:
    """Parse /proc/PID/stat (the command name may contain spaces and parentheses)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2:].split()
    try:
        return ProcStat(pid=pid, state=rest[0], ppid=int(rest[1]), pgid=int(rest[2]), sid=int(rest[3]),
                        start_ticks=int(rest[19]))
    except (IndexError, ValueError):
        return None


def start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (None when it does not exist)."""
    st = read_stat(pid)
    return st.start_ticks if st else None


def is_running(pid: int, ticks: int | None) -> bool:
    """True when PID exists, is not a zombie and (if given) started at `ticks`."""
    if not pid or pid <= 0:
        return False
    st = read_stat(pid)
    if st is None or st.state in ("Z", "X"):
        return False
    return ticks is None or st.start_ticks == ticks


def all_pids() -> list[int]:
    """Every pid in /proc."""
    try:
        return [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid`."""
    if not pgid or pgid <= 1:
        return []
    out = []
    for pid in all_pids():
        st = read_stat(pid)
        if st is not None and st.pgid == pgid and st.state not in ("Z", "X"):
            out.append(pid)
    return out


def environ_has(pid: int, marker: bytes) -> bool:
    """True when /proc/PID/environ contains `marker` (only our own processes are readable)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return marker in fh.read().split(b"\0")
    except OSError:
        return False


def find_by_env(marker: bytes) -> list[int]:
    """Processes whose environment contains exactly `marker` (e.g. b'MIGRATE_JOB_TOKEN=...')."""
    return [pid for pid in all_pids() if environ_has(pid, marker)]


def boot_identity() -> str:
    """The kernel boot id plus the start time of PID 1 in our PID namespace.

    The kernel's boot_id changes at every host reboot; PID 1's start time also changes when a
    container that is the 'host' (like the migrate sandbox) restarts without the kernel rebooting.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
    except OSError:
        boot = "unknown"
    return f"{boot}/{start_ticks(1) or 0}"


def boot_time() -> float | None:
    """When the boot that `boot_identity` names began (PID 1's start), in epoch seconds; None if unknown."""
    try:
        with open("/proc/stat") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return btime + (start_ticks(1) or 0) / float(hz or 100)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def owner(pid: int) -> str | None:
    """The user name owning a process, or None when it does not exist."""
    try:
        return user_name(os.stat(f"/proc/{pid}").st_uid)
    except OSError:
        return None


def cmdline(pid: int) -> str:
    """The command line of a process ('' when unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def groups_of(pid: int) -> list[int] | None:
    """Supplementary group ids of a process (from /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return sorted(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        return None
    return []


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False when there is no such group (or it is not ours)."""
    if not pgid or pgid <= 1:
        return False
    try:
        os.killpg(pgid, sig)
        return True
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is left (zombies count until reaped)."""
    return signal_group(pgid, 0)


def stop_group(pgid: int, grace: float, poll: float = 0.1) -> bool:
    """SIGTERM a process group, SIGKILL what is left of it after `grace` seconds; False when it was gone."""
    import signal
    import time

    if not signal_group(pgid, signal.SIGTERM):
        return False
    end = time.monotonic() + grace
    while time.monotonic() < end:
        if not group_alive(pgid):
            return True
        time.sleep(poll)
    signal_group(pgid, signal.SIGKILL)
    return True
