"""`migrate shell/exec CLUSTER JOB` on the node where the job runs (sent as `python3 -I -S -c`, never stored).

usage: python3 -c SRC [--tty] [--check] CLUSTER JOB RANK -- [CMD...]

Reads the record the polite wrapper (job_wrapper.py) keeps while the job's command runs
(~/.migrate/ray/run/CLUSTER-JOB-RANK.json, 0600), checks that the process is still the job's (pid, its
process group, its start time), and replaces itself with `bash -l` (with CMD: `bash -lc CMD`) in the
job's working directory with the job's environment (its -e variables, CUDA_VISIBLE_DEVICES as Ray gave
it, NODE_RANK... of a gang rank; never Ray's RAY_* variables), keeping this SSH session's terminal
variables. With --check it prints one JSON line instead: {"ok": true, ...} or {"error": ..., "hint": ...}.
Without --check an error is one `error:` line on stderr and exit 1. Stdlib only; python >= 3.8.
"""

import json
import os
import shlex
import shutil
import sys

RUN_DIR = "~/.migrate/ray/run"
KEEP_FROM_SESSION = ("SSH_AUTH_SOCK", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "TERM", "LANG", "LC_ALL")


class NotEnterable(Exception):
    def __init__(self, message, hint=""):
        super().__init__(message)
        self.hint = hint


def record_path(cluster, job, rank):
    return os.path.join(os.path.expanduser(RUN_DIR), f"{cluster}-{job}-{rank}.json")


def start_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def alive(rec):
    """Whether the recorded command still runs: the pid exists, leads its group, same start time."""
    pid = int(rec.get("pid") or 0)
    if pid <= 0:
        return False
    try:
        if os.getpgid(pid) != int(rec.get("pgid") or pid):
            return False
    except OSError:
        return False
    ticks = rec.get("ticks")
    return not ticks or start_ticks(pid) == ticks


def load(cluster, job, rank):
    """The job's record, checked; NotEnterable when its command is not running here."""
    where = f"job {job} of cluster {cluster}" + (f" (rank {rank})" if rank != "0" else "")
    logs = f"see `migrate logs {cluster} {job}`"
    try:
        with open(record_path(cluster, job, rank)) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        raise NotEnterable(f"{where} has no running command on this node: it is starting, waiting for its "
                           "GPUs, or has just ended", logs) from None
    if not alive(rec):
        raise NotEnterable(f"{where}: its command (pid {rec.get('pid')}) has ended", logs)
    if not os.path.isdir(rec.get("cwd") or ""):
        raise NotEnterable(f"{where}: its working directory {rec.get('cwd')} is gone")
    return rec


def command_line(words):
    if not words:
        return None
    return words[0] if len(words) == 1 else " ".join(shlex.quote(w) for w in words)


def plan(rec, words, session_env, bash):
    """(argv, env, cwd) of the shell or command inside the job (pure)."""
    env = {str(k): str(v) for k, v in (rec.get("env") or {}).items()}
    for k in KEEP_FROM_SESSION:
        if k in session_env:
            env[k] = session_env[k]
    cwd = rec["cwd"]
    env["PWD"] = cwd
    command = command_line(words)
    if command is not None:
        argv = [bash, "-lc", command] if bash else ["/bin/sh", "-c", command]
    else:
        argv = [bash, "-l"] if bash else ["/bin/sh", "-l"]
    return argv, env, cwd


def main(argv):
    tty = check = False
    while argv and argv[0] in ("--tty", "--check"):
        tty, check = tty or argv[0] == "--tty", check or argv[0] == "--check"
        argv = argv[1:]
    cluster, job, rank = argv[:3]
    words = argv[4:] if argv[3:4] == ["--"] else argv[3:]
    try:
        rec = load(cluster, job, rank)
    except NotEnterable as exc:
        if check:
            print(json.dumps({"error": str(exc), "hint": exc.hint}))
            return 0
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args, env, cwd = plan(rec, words, dict(os.environ), shutil.which("bash"))
    if check:
        print(json.dumps({"ok": True, "pid": rec["pid"], "cwd": cwd, "tty": tty,
                          "gpus": env.get("CUDA_VISIBLE_DEVICES", "")}))
        return 0
    os.chdir(cwd)
    os.execvpe(args[0], args, env)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
