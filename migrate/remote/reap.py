"""What a dead run of migrate left on this machine: its spool directories and its ssh master connections.

A run killed with SIGKILL (or a crash, a power cut) cannot clean up: its OpenSSH ControlMaster (our
child `ssh -M -N`, reparented to init) stays connected, and a `push-image` spool (a `docker save`
unpacked, hundreds of MiB) stays in the cache. Each run therefore names what it leaves while it works
after its process id (spools also after this machine, the cache may be shared), and a later run
removes what belongs to a process that is gone. A live run's files are never touched: its process
still exists (a recycled pid only keeps a dead run's leftovers a little longer).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from migrate.remote import log

LEGACY_AGE = 24 * 3600  # a spool named before runs named theirs: removed once it is a day old
_SOCKET = re.compile(r"(\d+)-[0-9a-f]{8}")
_SPOOL = re.compile(r"spool-(?P<host>[A-Za-z0-9.-]*)-(?P<pid>\d+)-[A-Za-z0-9_]+")
_reaped = False
_lock = threading.Lock()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (another user's counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def machine() -> str:
    """This machine's name as spool names carry it (letters, digits, dots and dashes)."""
    return re.sub(r"[^A-Za-z0-9.-]", "", os.uname().nodename)[:40] or "host"  # socket.gethostname()'s


def spool_prefix() -> str:
    """The name prefix of this run's spool directories: `spool-<machine>-<pid>-`."""
    return f"spool-{machine()}-{os.getpid()}-"


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []


def reap_spools(base: Path) -> list[Path]:
    """Remove the spool directories under `base` whose run is gone; return them."""
    gone = []
    for path in _entries(base):
        if not path.name.startswith("spool-") or not path.is_dir():
            continue
        m = _SPOOL.fullmatch(path.name)
        if m:
            if m["host"] != machine() or int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"])):
                continue
        else:
            try:
                if time.time() - path.stat().st_mtime < LEGACY_AGE:
                    continue
            except OSError:
                continue
        shutil.rmtree(path, ignore_errors=True)
        log.debug(f"removed {path}: the run that wrote it is gone")
        gone.append(path)
    return gone


def reap_masters(control_dir: Path) -> list[Path]:
    """Stop the ssh masters whose run is gone (`ssh -O exit` on their socket) and remove the sockets."""
    gone = []
    for sock in _entries(control_dir):
        m = _SOCKET.fullmatch(sock.name)
        if not m or int(m[1]) == os.getpid() or pid_alive(int(m[1])):
            continue
        try:  # the master answers on its socket; a stale socket (master gone too) just fails
            subprocess.run(["ssh", "-F", "/dev/null", "-S", str(sock), "-O", "exit", "migrate-orphan"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:
            sock.unlink()
        except OSError:
            pass
        log.debug(f"stopped the ssh master of dead run {m[1]} ({sock})")
        gone.append(sock)
    return gone


def reap_masters_once(control_dir: Path) -> None:
    """`reap_masters` the first time a process opens a master (later calls do nothing)."""
    global _reaped
    with _lock:
        if _reaped:
            return
        _reaped = True
    reap_masters(control_dir)
