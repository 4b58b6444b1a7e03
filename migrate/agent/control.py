"""Starting, finding and stopping the dispatcher so that it outlives the SSH session.

Two ways to start it, chosen per host:
- `systemd-run --user` as a transient service (KillMode=process so stopping it never kills
  jobs, Restart=on-failure so a crash restarts it), when the user's systemd manager is reachable
  AND lingering is enabled: without linger, systemd stops every user service about 10 s after
  the last session ends;
- otherwise a double fork + setsid, which survives logout on hosts with logind's default
  KillUserProcesses=no (Debian, Ubuntu). On hosts that kill user processes at logout the result
  carries a warning with the fix (`migrate run --enable-linger`).

`ensure()` is idempotent: it starts a dispatcher only if none of the same version (and GPU
backend, and group membership) holds the lock, and restarts an outdated one; running jobs are
untouched either way (the new dispatcher adopts them).
"""

from __future__ import annotations

import os
import signal
import sys
import time

from . import VERSION, procs
from .layout import Layout, read_json
from .lock import AgentLog, lock_is_held

READY_TIMEOUT_S = 15.0


def entry_argv() -> tuple:
    """How to run this agent again: ([python, -I, -S, zipapp] or [python, -m, pkg]) and extra env.

    `-I -S`: the agent needs only the standard library and its own files, so it ignores the host's
    PYTHON* variables and site-packages (faster start, nothing of the host's Python leaks in).
    """
    zipapp = os.environ.get("MIGRATE_AGENT_ZIPAPP", "")
    if zipapp.endswith(".pyz") and os.path.isfile(zipapp):
        return [sys.executable, "-I", "-S", zipapp], {}
    package = __package__ or "migrate.agent"
    source_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    pythonpath = os.environ.get("PYTHONPATH", "")
    return [sys.executable, "-m", package], {"PYTHONPATH": source_root + (os.pathsep + pythonpath if pythonpath
                                                                           else "")}


def daemon_info(layout: Layout) -> dict:
    """What the pid file says, and whether that dispatcher is really alive."""
    info = read_json(layout.pidfile) or {}
    alive = bool(info.get("pid")) and procs.is_running(int(info["pid"]), info.get("start_ticks"))
    held = lock_is_held(layout.lock)
    info["running"] = bool(alive and held)
    if not info["running"]:
        info["pid"] = None
    return info


def linger_enabled(user: str) -> bool:
    return os.path.exists(os.path.join("/var/lib/systemd/linger", user))


def kill_user_processes() -> bool | None:
    """Does logind kill a user's processes at logout on this host? (None: unknown)."""
    import glob
    import subprocess

    try:
        proc = subprocess.run(["busctl", "get-property", "org.freedesktop.login1", "/org/freedesktop/login1",
                               "org.freedesktop.login1.Manager", "KillUserProcesses"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, timeout=5)
        if proc.returncode == 0 and proc.stdout.split()[:1] == ["b"]:
            return proc.stdout.split()[1] == "true"
    except (OSError, subprocess.TimeoutExpired, IndexError):
        pass
    value = None
    for path in ["/etc/systemd/logind.conf"] + sorted(glob.glob("/etc/systemd/logind.conf.d/*.conf")):
        try:
            with open(path) as fh:
                for line in fh:
                    line = line.strip()
                    if line.startswith("KillUserProcesses="):
                        value = line.split("=", 1)[1].strip().lower() in ("yes", "true", "1", "on")
        except OSError:
            continue
    return value


def systemd_user_available() -> bool:
    """Can we reach our systemd user manager (through the session bus or its private socket)?"""
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    sockets = (os.path.join(runtime, "bus"), os.path.join(runtime, "systemd", "private"))
    import shutil

    return bool(shutil.which("systemd-run")) and any(os.path.exists(p) for p in sockets)


def choose_mode(preference: str, user: str) -> str:
    """'systemd' or 'setsid' (see the module docstring)."""
    if preference == "setsid":
        return "setsid"
    if systemd_user_available() and linger_enabled(user):
        return "systemd"
    return "setsid"


def _daemon_env(layout: Layout, mode: str, extra: dict) -> dict:
    env = dict(os.environ)
    env.update(extra)
    env["MIGRATE_AGENT_HOME"] = layout.home
    env["MIGRATE_AGENT_MODE"] = mode
    env.setdefault("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")
    return env


def start_systemd(layout: Layout, argv: list, extra_env: dict) -> str:
    """Start the dispatcher as a transient user service; return the unit name."""
    import subprocess

    unit = f"migrate-agent-{int(time.time())}-{os.getpid()}"
    env = _daemon_env(layout, "systemd:" + unit, extra_env)
    cmd = ["systemd-run", "--user", "--quiet", "--collect", "--unit", unit,
           "--description", f"migrate dispatcher (GPU job queue of {layout.home})",
           "-p", "KillMode=process", "-p", "Restart=on-failure", "-p", "RestartSec=2"]
    for key in ("MIGRATE_AGENT_HOME", "MIGRATE_AGENT_MODE", "PYTHONPATH", "PATH", "LANG"):
        if env.get(key):
            cmd.append(f"--setenv={key}={env[key]}")
    proc = subprocess.run(cmd + ["--"] + argv, capture_output=True, text=True, env=env, timeout=30)
    if proc.returncode != 0:
        raise OSError(f"systemd-run failed: {proc.stderr.strip() or proc.returncode}")
    return unit


def start_setsid(layout: Layout, argv: list, extra_env: dict) -> None:
    """Double fork + setsid: the dispatcher leaves our session and process group for good."""
    env = _daemon_env(layout, "setsid", extra_env)
    out_path = os.path.join(layout.state_dir, "agent.out")
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.setsid()
            if os.fork() > 0:
                os._exit(0)
            os.chdir(os.path.expanduser("~"))
            os.umask(0o077)
            devnull = os.open(os.devnull, os.O_RDWR)
            out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(devnull, 0)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.closerange(3, 65536)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    os.waitpid(pid, 0)


def stop(layout: Layout, timeout: float = 10.0) -> bool:
    """SIGTERM the dispatcher (jobs keep running) and wait for it to release the lock."""
    info = daemon_info(layout)
    if not info["running"]:
        return False
    pid = int(info["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not lock_is_held(layout.lock):
            return True
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    time.sleep(0.2)
    return True


def wake(layout: Layout) -> None:
    """Tell a running dispatcher to look at the queue now (SIGUSR1)."""
    info = daemon_info(layout)
    if info["running"]:
        try:
            os.kill(int(info["pid"]), signal.SIGUSR1)
        except OSError:
            pass


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return " / ".join(ln.strip() for ln in text.strip().splitlines()[-lines:])


def cleanup_old_agents(layout: Layout, keep: str) -> list:
    """Remove zipapps of other versions and their unpacked copies (their dispatcher is gone)."""
    import glob

    removed = []
    keep_stem = os.path.abspath(keep)[:-4]
    for path in glob.glob(os.path.join(layout.agent_dir, "migrate-agent-*")):
        stem = path[:-4] if path.endswith(".pyz") else path[:-2] if path.endswith(".d") else None
        if stem is None or os.path.abspath(stem) == keep_stem:
            continue
        try:
            if os.path.isdir(path):
                import shutil

                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(os.path.basename(path))
        except OSError:
            pass
    return removed


def ensure(layout: Layout, backend: str, *, mode_preference: str = "auto") -> dict:
    """Make sure a dispatcher of this version with this backend runs; return what was done."""
    user = procs.user_name(os.getuid())
    info = daemon_info(layout)
    reason = ""
    if info["running"]:
        mine = procs.groups_of(os.getpid())
        theirs = procs.groups_of(int(info["pid"]))
        if info.get("version") != VERSION:
            reason = "version {} -> {}".format(info.get("version"), VERSION)
        elif info.get("backend") != backend:
            reason = "GPU backend {} -> {}".format(info.get("backend"), backend)
        elif (str(info.get("mode") or "") == "setsid" and mode_preference == "auto"
              and choose_mode(mode_preference, user) == "systemd"):
            reason = "lingering is on: moving the dispatcher under systemd --user so it survives logout"
        elif (mine is not None and theirs is not None and mine != theirs
              and not str(info.get("mode") or "").startswith("systemd")):
            # a setsid dispatcher restarted from this session gets the new groups; one under the
            # systemd user manager would inherit the manager's old groups again, so it is left alone
            reason = "your group membership changed (e.g. added to the docker group)"
        else:
            return {"action": "running", "reason": "", "daemon": info, "warnings": warnings(user, info)}
        AgentLog(layout.log)(f"restarting the dispatcher (pid {info['pid']}): {reason}")
        stop(layout)
    base, extra_env = entry_argv()
    zipapp = base[-1] if base[-1].endswith(".pyz") else None
    argv = base + ["daemon", "--backend", backend]
    mode = choose_mode(mode_preference, user)
    old_pid = info.get("pid")
    if mode == "systemd":
        try:
            start_systemd(layout, argv, extra_env)
        except Exception:  # OSError, TimeoutExpired: fall back to the double fork
            mode = "setsid"
    if mode == "setsid":
        start_setsid(layout, argv, extra_env)
    deadline = time.monotonic() + READY_TIMEOUT_S
    new = daemon_info(layout)
    while time.monotonic() < deadline:
        new = daemon_info(layout)
        if new["running"] and new.get("pid") != old_pid and new.get("version") == VERSION:
            break
        time.sleep(0.05)
    else:
        last = _tail(layout.log) or _tail(os.path.join(layout.state_dir, "agent.out")) or "no log"
        raise RuntimeError(f"the dispatcher did not start within {READY_TIMEOUT_S:.0f}s: {last}")
    if zipapp:
        cleanup_old_agents(layout, zipapp)
    return {"action": "restarted" if reason else "started", "reason": reason, "daemon": new,
            "warnings": warnings(user, new)}


def warnings(user: str, info: dict) -> list:
    """What could still kill the dispatcher on this host."""
    out = []
    mode = str(info.get("mode") or "")
    if not mode.startswith("systemd") and kill_user_processes():
        if linger_enabled(user):
            out.append("this host kills your processes when your last SSH session ends (logind "
                       "KillUserProcesses=yes) and the dispatcher could not start under systemd --user: it and its "
                       "jobs will die at logout; ask the owner why `systemd-run --user` fails")
        else:
            out.append("this host kills your processes when your last SSH session ends (logind "
                       f"KillUserProcesses=yes) and lingering is off for {user}: the dispatcher and its jobs will "
                       f"die at logout; rerun with --enable-linger (runs `sudo loginctl enable-linger {user}`)")
    return out


def describe(info: dict) -> dict:
    """The part of daemon_info a client shows."""
    keys = ("running", "pid", "version", "backend", "mode", "started_at", "python")
    return {k: info.get(k) for k in keys}
