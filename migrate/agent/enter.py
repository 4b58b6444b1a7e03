"""`enter JOB`: a shell or one command inside a running job, decided here, on the host.

The client runs `python3 -I -S <agent> enter JOB [--tty] [--check] -- [CMD...]` over SSH. This
module resolves the job in the queue and replaces itself (`os.execvpe`) with what reaches the job:

- a container job: `docker exec -i [-t] <container> sh -c CMD` (a shell: bash if the image has
  it, else sh), through the access to Docker this account has: direct, the docker group (`sg`),
  or sudo (`sudo -n`, or sudo asking for the password on the terminal);
- a process job: `bash -l` (with CMD: `bash -lc CMD`, as the job itself runs) in the job's working
  directory with the job's environment: its `--env` variables, `CUDA_VISIBLE_DEVICES` (the GPU
  UUIDs it was given), `CUDA_DEVICE_ORDER`, `MIGRATE_JOB_ID`... (never `MIGRATE_JOB_TOKEN`: that
  marks the job's own processes for crash recovery, and a shell is not one of them).

`--check` does the same resolution and answers JSON instead (what would run), so the client can
report a queued or finished job as a one-line error before it opens a terminal session. The plan
builders are pure and unit-tested; `docker_access` and `execute` touch the system.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from typing import Any

from .db import ACTIVE, CANCELLED, DONE, FAILED, LOST, QUEUED, STARTING, QueueError
from .launch import _DROP, _DROP_PREFIXES, ENV_VAR, activate, container_name, dispatcher_env

# A shell in a container: bash when the image has it, else sh (busybox, alpine...).
CONTAINER_SHELL = "if command -v bash >/dev/null 2>&1; then exec bash; else exec sh; fi"
# Docker access modes, as `docker_denied_mode` in the client's probes names them.
ACCESS_MODES = ("direct", "group", "sudo", "sudo-password")
# Variables of the SSH session an interactive shell keeps (the job itself never had them).
_KEEP_FROM_SESSION = ("SSH_AUTH_SOCK", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "TERM", "LANG", "LC_ALL")


class EnterPlan:
    """What `enter` executes: argv, environment (None: keep ours), working directory; `kind` for --check."""

    def __init__(self, kind: str, argv: list, env: dict | None, cwd: str | None, target: str) -> None:
        self.kind = kind
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.target = target

    def describe(self) -> dict:
        return {"kind": self.kind, "argv": self.argv, "cwd": self.cwd, "target": self.target}


def command_line(words: list) -> str | None:
    """The CMD after `--` as one shell command line: one word as it is, several quoted (as `run` does)."""
    if not words:
        return None
    return words[0] if len(words) == 1 else shlex.join(words)


def clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def check_enterable(job: dict) -> None:
    """Raise QueueError unless the job is running (pure): queued, starting and finished jobs have no
    process or container to enter."""
    ref = f"job {job['id']} ({job['name']})"
    state = job["state"]
    if state == QUEUED:
        why = f": {job['reason']}" if job.get("reason") else ""
        raise QueueError(f"{ref} is queued, not running yet{why}",
                         f"`migrate logs HOST {job['id']} -f` waits for it to start")
    if state == STARTING:
        raise QueueError(f"{ref} is starting", "try again in a few seconds")
    if state in ACTIVE:
        return
    when = f" at {clock(job['ended_at'])}" if job.get("ended_at") else ""
    code = job.get("exit_code")
    if state == DONE or (state == FAILED and code is not None):
        what = f"finished (exit {code}){when}"
    elif state == CANCELLED:
        what = f"was cancelled{when}"
    elif state == LOST:
        what = f"was lost{when} ({job.get('reason') or 'its end was not seen'})"
    else:
        what = f"is {state}{when}"
    gone = "its container is gone" if job.get("image") else "its processes are gone"
    hint = f"see its output with `migrate logs HOST {job['id']}`"
    if not job.get("image"):
        hint += f"; `migrate shell HOST` and cd {job.get('cwd') or '~'} for its files"
    raise QueueError(f"{ref} {what}; {gone}", hint)


# -- process jobs ------------------------------------------------------------------------------
def process_env(job: dict, session_env: dict) -> dict:
    """The environment of a shell in a process job (pure): the job's, as `launch.job_env` builds it,
    without the recovery token, plus the terminal-related variables of this SSH session."""
    env = {k: v for k, v in session_env.items() if k not in _DROP and not k.startswith(_DROP_PREFIXES)}
    env.update({str(k): str(v) for k, v in (job.get("env") or {}).items()})
    uuids = list(job.get("gpu_uuids") or [])
    env.update(dispatcher_env(job, uuids, ""))
    env.pop("MIGRATE_JOB_TOKEN", None)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(uuids)
    for k in _KEEP_FROM_SESSION:
        if k in session_env:
            env[k] = session_env[k]
    return env


def process_plan(job: dict, *, session_env: dict, home: str, bash: str | None, tty: bool,
                 command: str | None) -> EnterPlan:
    """A login shell (or `bash -lc CMD`) in the job's working directory with its environment (pure)."""
    cwd = os.path.expanduser(job.get("cwd") or home)
    env = process_env(job, session_env)
    if env.get(ENV_VAR):  # a `run --env NAME` job: its env active after the profile, as launch.py runs the job
        inner = activate(command if command is not None else f"exec {bash or '/bin/sh'} -i", env, home)
        argv = [bash, "-lc", inner] if bash else ["/bin/sh", "-c", inner]
    elif command is not None:
        argv = [bash, "-lc", command] if bash else ["/bin/sh", "-c", command]
    else:
        argv = [bash, "-l"] if bash else ["/bin/sh", "-l"]
    env["PWD"] = cwd
    return EnterPlan("process", argv, env, cwd, f"pid {job.get('pid')}")


# -- container jobs ----------------------------------------------------------------------------
def docker_exec_argv(access: str, container: str, *, tty: bool, command: str | None,
                     term: str | None = None) -> list:
    """`docker exec` into a job's container through one Docker access mode (pure).

    The exec'd process gets what the container was started with: its user (`-u UID:GID`), working
    directory (`-w`) and environment (the job's env file, CUDA_DEVICE_ORDER, MIGRATE_JOB_ID...).
    """
    if access not in ACCESS_MODES:
        raise ValueError(f"unknown docker access mode {access!r}")
    flags = ["-i", "-t"] if tty else ["-i"]
    if tty and term:
        flags += ["-e", f"TERM={term}"]
    inner = ["sh", "-c", command if command is not None else CONTAINER_SHELL]
    docker = ["docker", "exec", *flags, container, *inner]
    if access == "group":
        return ["sg", "docker", "-c", shlex.join(docker)]
    if access == "sudo":
        return ["sudo", "-n", *docker]
    if access == "sudo-password":
        return ["sudo", *docker]  # asks for the password on the terminal
    return docker


def job_container(job: dict, user: str) -> str:
    """The container of a container job: as recorded at launch, else the name launch gives it."""
    return job.get("container") or container_name(user, int(job["id"]))


def classify_docker(code: int, out: str, err: str) -> str:
    """One `docker inspect` outcome (pure): 'ok', 'denied', 'missing' (no such container) or 'error'."""
    if code == 0:
        return "ok"
    low = err.lower()
    if "permission denied" in low:
        return "denied"
    if "no such object" in low or "no such container" in low:
        return "missing"
    return "error"


def _run(argv: list) -> tuple:
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{' '.join(argv[:3])} timed out"
    return res.returncode, res.stdout, res.stderr


def in_docker_group(user: str) -> bool:
    import grp

    try:
        g = grp.getgrnam("docker")
    except KeyError:
        return False
    return user in g.gr_mem or g.gr_gid == os.getgid()


def docker_access(container: str, user: str, *, tty: bool, run: Any = _run, which: Any = None) -> tuple:
    """How this account reaches Docker, and the container's status: (access, status).

    status is Docker's State.Status (`running`, `exited`...), 'missing', or '' when it cannot be
    read without a password (sudo-password: checked when `docker exec` runs). Raises QueueError
    when Docker cannot be reached at all.
    """
    inspect = ["docker", "inspect", "--format", "{{.State.Status}}", container]
    code, out, err = run(inspect)
    verdict = classify_docker(code, out, err)
    if verdict in ("ok", "missing"):
        return "direct", out.strip() if verdict == "ok" else "missing"
    if verdict == "error":
        last = (err.strip().splitlines() or [f"exit code {code}"])[-1]
        raise QueueError(f"docker inspect {container} failed: {last}", "is the Docker daemon running?")
    candidates = []
    if in_docker_group(user):
        candidates.append(("group", ["sg", "docker", "-c", shlex.join(inspect)]))
    has_sudo = (which or shutil.which)("sudo") is not None
    if has_sudo:
        candidates.append(("sudo", ["sudo", "-n", *inspect]))
    for access, argv in candidates:
        code, out, err = run(argv)
        verdict = classify_docker(code, out, err)
        if verdict in ("ok", "missing"):
            return access, out.strip() if verdict == "ok" else "missing"
    if not has_sudo:
        raise QueueError("Docker refused this account (permission denied) and there is no sudo",
                         "join the docker group (`migrate host-setup` does), then log in again")
    if tty:
        return "sudo-password", ""
    raise QueueError("Docker needs sudo with a password here, and there is no terminal to ask for it",
                     "use `migrate shell HOST JOB` (it asks), or join the docker group (`migrate host-setup`)")


def container_plan(job: dict, *, access: str, status: str, user: str, tty: bool, command: str | None,
                   term: str | None) -> EnterPlan:
    """`docker exec` into the job's running container (pure, given what `docker_access` found)."""
    name = job_container(job, user)
    if status and status != "running":
        state = "does not exist any more" if status == "missing" else f"is {status}"
        raise QueueError(f"job {job['id']} ({job['name']}): its container {name} {state}",
                         f"see its output with `migrate logs HOST {job['id']}`")
    return EnterPlan("container", docker_exec_argv(access, name, tty=tty, command=command, term=term), None,
                     None, f"container {name} (docker access: {access})")


# -- the subcommand ----------------------------------------------------------------------------
def plan_for(job: dict, *, tty: bool, command: str | None, session_env: dict, home: str, user: str,
             bash: str | None, access_finder: Any = docker_access) -> EnterPlan:
    """Resolve a queue row into what to execute; QueueError when the job cannot be entered."""
    check_enterable(job)
    if job.get("image"):
        name = job_container(job, user)
        access, status = access_finder(name, user, tty=tty)
        return container_plan(job, access=access, status=status, user=user, tty=tty, command=command,
                              term=session_env.get("TERM"))
    plan = process_plan(job, session_env=session_env, home=home, bash=bash, tty=tty, command=command)
    if not os.path.isdir(plan.cwd or ""):
        raise QueueError(f"job {job['id']} ({job['name']}): its working directory {plan.cwd} is gone")
    return plan


def execute(plan: EnterPlan) -> None:
    """Replace this process with the plan (never returns; OSError if the program cannot start)."""
    if plan.cwd:
        os.chdir(plan.cwd)
    if plan.env is None:
        os.execvp(plan.argv[0], plan.argv)
    os.execvpe(plan.argv[0], plan.argv, plan.env)



def enter(queue: Any, job_ref: str, *, tty: bool, check: bool, words: list) -> dict:
    """Resolve `job_ref` in `queue` and build its plan; with `check`, the JSON answer, else execute it
    (QueueError when the job cannot be entered)."""
    from .launch import find_bash
    from .recovery import current_user

    job = queue.find(job_ref)
    plan = plan_for(job, tty=tty, command=command_line(words), session_env=dict(os.environ),
                    home=os.path.expanduser("~"), user=current_user(), bash=find_bash())
    if check:
        return {"job": {"id": job["id"], "name": job["name"], "state": job["state"]}, "plan": plan.describe()}
    execute(plan)
    return {}  # not reached: execute replaces this process
