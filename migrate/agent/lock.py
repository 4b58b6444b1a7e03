"""The dispatcher's lock (one dispatcher per user) and its own log file; cheap to import."""

from __future__ import annotations

import errno
import fcntl
import os
import time

LOG_MAX_BYTES = 5 * 1024 * 1024


class AgentLog:
    """The dispatcher's own log: one timestamped line per event, rotated at 5 MiB."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, message: str) -> None:
        line = "{} {}\n".format(time.strftime("%Y-%m-%d %H:%M:%S"), message)
        try:
            if os.path.exists(self.path) and os.path.getsize(self.path) > LOG_MAX_BYTES:
                os.replace(self.path, self.path + ".1")
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as fh:
                fh.write(line)
        except OSError:
            pass


def acquire_lock(path: str, wait_s: float = 0.0) -> int | None:
    """An exclusive flock on `path` (an fd to keep open), or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        if time.monotonic() >= deadline:
            os.close(fd)
            return None
        time.sleep(0.1)


def lock_is_held(path: str) -> bool:
    """True when some process holds the dispatcher lock."""
    if not os.path.exists(path):
        return False
    fd = acquire_lock(path)
    if fd is None:
        return True
    os.close(fd)
    return False
