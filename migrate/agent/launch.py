"""How a job is started: its environment, its command line (process or container mode), the spawn.

Process mode runs `bash -lc CMD` in the job's working directory, in its own session and process
group (so cancel can signal the whole tree and an SSH logout or dispatcher restart does not touch
it), with stdout+stderr appended to the job's log. Container mode runs `docker run` (attached, so
its output goes to the same log) with the job's GPUs passed as `--gpus '"device=UUID,..."'`.

Both go through `WRAPPER`, a few lines of POSIX sh that wait for the job and write its exit code
to `jobs/<id>/exit` atomically; a restarted dispatcher reads the exit codes of jobs that ended
while it was away from there. The builders here are pure and unit-tested; `spawn` runs them.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

WRAPPER = r"""# migrate job wrapper: wait for the job, then record its exit code for the dispatcher.
d=$1; container=$2; shift 2
trap ':' TERM INT HUP
"$@"
rc=$?
printf '%s\n' "$rc" > "$d/exit.tmp" && mv -f "$d/exit.tmp" "$d/exit"
if [ -n "$container" ]; then docker rm -f "$container" >/dev/null 2>&1; fi
exit "$rc"
"""

# Variables of the dispatcher's own environment that must not leak into jobs.
_DROP_PREFIXES = ("SSH_", "MIGRATE_")
_DROP = {"XDG_SESSION_ID", "XDG_SESSION_TYPE", "XDG_SESSION_CLASS", "NOTIFY_SOCKET", "INVOCATION_ID",
         "JOURNAL_STREAM", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "MANAGERPID", "SYSTEMD_EXEC_PID",
         "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "OLDPWD", "PWD"}

# Set by the dispatcher; a job's own env may not override them.
RESERVED_ENV = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")


def container_name(user: str, job_id: int) -> str:
    """Docker names are global on a host: include the user so two migrate users never collide."""
    safe = "".join(c if c.isalnum() or c in "_.-" else "_" for c in user) or "user"
    return f"migrate-{safe}-{job_id}"


def job_env(job: dict, base_env: dict, gpu_uuids: list, token: str) -> dict:
    """The environment of a process-mode job (pure)."""
    env = {k: v for k, v in base_env.items() if k not in _DROP and not k.startswith(_DROP_PREFIXES)}
    env.update({str(k): str(v) for k, v in (job.get("env") or {}).items()})
    env.update(dispatcher_env(job, gpu_uuids, token))
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_uuids)  # '' hides every GPU from a CPU-only job
    return env


def dispatcher_env(job: dict, gpu_uuids: list, token: str) -> dict:
    """Variables the dispatcher gives every job (both modes)."""
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "MIGRATE_JOB_ID": str(job["id"]),
        "MIGRATE_JOB_NAME": str(job.get("name") or ""),
        "MIGRATE_JOB_ATTEMPT": str(job.get("attempt") or 1),
        "MIGRATE_JOB_TOKEN": token,
        "MIGRATE_GPU_UUIDS": ",".join(gpu_uuids),
    }


ENV_VAR = "MIGRATE_ENV"  # a job's env names its push-env environment here (migrate.jobs.spec.PYTHON_ENV_VAR)


# what `conda activate` also does: run the env's activation scripts (a CUDA toolkit's variables, GDAL_DATA...)
CONDA_ACTIVATE_D = ('for f in "$CONDA_PREFIX"/etc/conda/activate.d/*.sh; do [ -r "$f" ] && . "$f"; done; '
                    'unset f; ')


def activate(command: str, env: dict, home: str) -> str:
    """The command run inside ~/.migrate/envs/NAME when the job names one (after the login shell's
    profile, which may reset PATH): VIRTUAL_ENV, or CONDA_PREFIX for a conda env (and its
    etc/conda/activate.d/*.sh scripts, as `conda activate` runs them), and PATH. A missing
    environment fails the job with one line in its log (pure but for one isdir)."""
    name = env.get(ENV_VAR)
    if not name:
        return command
    import shlex

    prefix = os.path.join(home, ".migrate", "envs", name)
    if not os.path.isdir(prefix):
        return ("echo " + shlex.quote(f"migrate: no environment {name} on this host (~/.migrate/envs/{name}); "
                                      f"push it with: migrate push-env HOST --name {name} SOURCE") + " >&2; exit 127")
    conda = os.path.isdir(os.path.join(prefix, "conda-meta"))
    var = "CONDA_PREFIX" if conda else "VIRTUAL_ENV"
    return (f"{var}={shlex.quote(prefix)}; export {var}; PATH=\"${var}/bin:$PATH\"; export PATH; "
            f"unset PYTHONHOME; {CONDA_ACTIVATE_D if conda else ''}{command}")


def shell_argv(command: str, bash: str | None) -> list:
    """`bash -lc CMD` (a login shell, so ~/.profile sets PATH, conda, modules...), else `sh -c`."""
    return [bash, "-lc", command] if bash else ["/bin/sh", "-c", command]


def wrapper_argv(job_dir: str, container: str, inner: list) -> list:
    return ["/bin/sh", "-c", WRAPPER, "migrate-job", job_dir, container] + list(inner)


def env_file_text(job: dict, gpu_uuids: list, token: str) -> str:
    """The container's environment as a docker --env-file (keeps values off the command line)."""
    env = {str(k): str(v) for k, v in (job.get("env") or {}).items()}
    env.update(dispatcher_env(job, gpu_uuids, token))
    return "".join(f"{k}={v}\n" for k, v in env.items())


def docker_argv(job: dict, *, name: str, user: str, uid: int, gid: int, gpu_uuids: list, token: str,
                env_file: str) -> list:
    """`docker run ...` for a container-mode job (pure)."""
    argv = ["docker", "run", "--name", name, "--init",
            "--label", f"migrate.job={job['id']}", "--label", f"migrate.token={token}",
            "--label", f"migrate.user={user}", "--env-file", env_file]
    if gpu_uuids:
        argv += ["--gpus", '"device={}"'.format(",".join(gpu_uuids))]
    else:
        argv += ["-e", "NVIDIA_VISIBLE_DEVICES=void"]
    if job.get("shm_size"):
        argv += ["--shm-size", str(job["shm_size"])]
    else:
        argv += ["--ipc=host"]
    argv += ["-u", f"{uid}:{gid}"]
    for m in job.get("mounts") or []:
        argv += ["-v", str(m)]
    for p in job.get("ports") or []:
        argv += ["-p", str(p)]
    if job.get("cwd"):
        argv += ["-w", str(job["cwd"])]
    argv += [str(job["image"]), "sh", "-c", str(job["command"])]
    return argv


class LaunchPlan:
    """Everything needed to start one job attempt."""

    def __init__(self, argv: list, env: dict, cwd: str, log_path: str, container: str | None,
                 env_file: str | None = None, env_file_text: str | None = None) -> None:
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self.container = container
        self.env_file = env_file
        self.env_file_text = env_file_text


def plan_launch(job: dict, *, job_dir: str, log_path: str, gpu_uuids: list, token: str, base_env: dict,
                home: str, user: str, uid: int, gid: int, bash: str | None) -> LaunchPlan:
    """Build the launch of one job (pure)."""
    if job.get("image"):
        name = container_name(user, job["id"])
        env_file = os.path.join(job_dir, "container.env")
        argv = docker_argv(job, name=name, user=user, uid=uid, gid=gid, gpu_uuids=gpu_uuids, token=token,
                           env_file=env_file)
        env = {k: v for k, v in base_env.items() if k not in _DROP and not k.startswith(_DROP_PREFIXES)}
        env.update(dispatcher_env(job, gpu_uuids, token))  # the marker, so recovery can find the wrapper
        return LaunchPlan(wrapper_argv(job_dir, name, argv), env, home, log_path, name, env_file,
                          env_file_text(job, gpu_uuids, token))
    cwd = os.path.expanduser(job.get("cwd") or home)
    env = job_env(job, base_env, gpu_uuids, token)
    return LaunchPlan(wrapper_argv(job_dir, "", shell_argv(activate(job["command"], env, home), bash)),
                      env, cwd, log_path, None)


def find_bash() -> str | None:
    import shutil

    return shutil.which("bash")


def spawn(plan: LaunchPlan) -> Any:
    """Start the job in its own session; return the Popen (raises OSError if it cannot start)."""
    if plan.env_file and plan.env_file_text is not None:
        fd = os.open(plan.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(plan.env_file_text)
    if not os.path.isdir(plan.cwd):
        raise FileNotFoundError(f"working directory {plan.cwd} does not exist")
    log_fd = os.open(plan.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return subprocess.Popen(plan.argv, cwd=plan.cwd, env=plan.env, stdin=subprocess.DEVNULL, stdout=log_fd,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    finally:
        os.close(log_fd)
