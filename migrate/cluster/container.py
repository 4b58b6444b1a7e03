"""Container jobs on a cluster (`migrate run CLUSTER --image IMG -- CMD`).

The image is pushed to every cluster host first (the ordinary push-image: only the layers a host
lacks). Each job stays an ordinary Ray job run through the polite wrapper; only its COMMAND is a
small sh script, built here on the laptop, that starts the container on the node Ray chose:

- the `docker run` line is the single-host dispatcher's (`migrate.agent.launch.docker_argv`: --init,
  labels, `--gpus "device=..."` or no GPU, --shm-size or --ipc=host, -u UID:GID, mounts, ports, -w),
  plus `--rm` and the cluster's labels; what is only known on the node (the GPUs Ray assigned in
  CUDA_VISIBLE_DEVICES, the uid, the attempt) is filled in there by the shell;
- the container's name is `migrate-<cluster>-<job>-<attempt>` (the attempt from MIGRATE_JOB_ATTEMPT,
  which `again` bumps);
- Docker is used the way this account can: directly, through the docker group (`sg docker -c`), or
  `sudo -n`, decided by the host probes' shell fragment (`probe_fragments.DOCKER_ACCESS`); none of them
  gives one line and exit 125;
- the job's variables go through a 0600 env file (never the command line), removed when the job ends;
- cancel: Ray's SIGTERM reaches `docker run` (which proxies it to the container) and the script's
  trap, which starts `docker stop -t 10 NAME` in a session of its own, so the container is stopped
  (and removed: --rm) even if the job's processes are SIGKILLed right after.
"""

from __future__ import annotations

import re

from migrate import ui
from migrate.agent.launch import docker_argv
from migrate.cluster.state import ClusterRecord
from migrate.errors import MigrateError
from migrate.jobs.spec import JobSpec
from migrate.remote import shell
from migrate.remote.hosts import ConnectOptions
from migrate.remote.probe_fragments import DOCKER_ACCESS

STOP_GRACE_S = 10

# Values only the node knows: docker_argv gets these sentinels, which become shell expansions.
_NAME, _ENVFILE, _GPUS, _UID, _GID, _USER = "@NAME@", "@ENVFILE@", "@GPUS@", "@UID@", "@GID@", "@USER@"
_RAW = {
    _NAME: '"$MIGRATE_CONTAINER"',
    _ENVFILE: '"$MIGRATE_ENV_FILE"',
    f"{_UID}:{_GID}": '"$(id -u):$(id -g)"',
    f'"device={_GPUS}"': '"\\"device=$CUDA_VISIBLE_DEVICES\\""',
    f"migrate.user={_USER}": '"migrate.user=$(id -un)"',
}

# Picks the way this account reaches Docker (probe_fragments' docker_denied_mode, as every host probe
# decides it); sets D (the docker command) and via.
ACCESS = DOCKER_ACCESS + """\
via=
if docker version >/dev/null 2>&1; then via=direct D=docker
else case $(docker_denied_mode) in
  group) via=group D=docker ;;
  sudo) if sudo -n docker version >/dev/null 2>&1; then via=sudo D='sudo -n docker'; fi ;;
esac
fi
[ -n "$via" ] || { echo "migrate: $(id -un) cannot use Docker on $(hostname) (not directly, not through the docker \
group, not with sudo -n; is it installed?)" >&2; exit 125; }
export D via
"""

SCRIPT = """\
{access}{mount_checks}export MIGRATE_CONTAINER={name}
umask 077
MIGRATE_ENV_FILE=$(mktemp "${{TMPDIR:-/tmp}}/migrate-env.XXXXXX") || exit 125
export MIGRATE_ENV_FILE
{env_lines}
stopper() {{
  trap '' TERM INT HUP
  setsid sh -c 'if [ "$via" = group ]; then sg docker -c "docker stop -t {grace} $MIGRATE_CONTAINER"; \
else $D stop -t {grace} "$MIGRATE_CONTAINER"; fi' </dev/null >/dev/null 2>&1 &
}}
trap stopper TERM INT HUP
echo "migrate: container $MIGRATE_CONTAINER ({image}) via $via, gpus=${{CUDA_VISIBLE_DEVICES:-none}}"
if [ "$via" = group ]; then sg docker -c {run_group} </dev/null & else eval {run_eval} </dev/null & fi
pid=$!
while :; do wait "$pid"; rc=$?; kill -0 "$pid" 2>/dev/null || break; done
rm -f "$MIGRATE_ENV_FILE"
exit "$rc"
"""


def container_name(cluster: str, job_id: str) -> str:
    """`migrate-<cluster>-<job>-` + the attempt, as a shell word (the attempt is read on the node)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"migrate-{cluster}-{job_id}")
    return f'{safe}-"${{MIGRATE_JOB_ATTEMPT:-1}}"'


def docker_run_line(record: ClusterRecord, spec: JobSpec, job_id: str) -> str:
    """`run ... IMAGE sh -c CMD` (without the leading `docker`), a shell command line whose node-only
    values are expansions: the agent's builder, plus --rm and the cluster's labels (pure)."""
    job = {"id": job_id, "image": spec.image, "command": spec.command, "cwd": spec.cwd, "mounts": spec.mounts,
           "ports": spec.ports, "shm_size": spec.shm_size}
    argv = docker_argv(job, name=_NAME, user=_USER, uid=_UID, gid=_GID,  # type: ignore[arg-type]
                       gpu_uuids=[_GPUS] if spec.gpus else [], token=f"cluster-{record.name}-{job_id}",
                       env_file=_ENVFILE)
    at = argv.index("--init") + 1
    argv[at:at] = ["--rm", "--label", f"migrate.cluster={record.name}", "--label", "migrate.attempt=@ATTEMPT@"]
    words = [_RAW.get(a) or (_mount_word(a) if argv[i] == "-v" else shell.quote(a))
             for i, a in enumerate(argv[1:])]
    return " ".join(words).replace("migrate.attempt=@ATTEMPT@", '"migrate.attempt=${MIGRATE_JOB_ATTEMPT:-1}"')


def _mount_word(mount: str) -> str:
    """A mount as a shell word; `~/src:dst` is the node's home (the dispatcher expands it on its host)."""
    return shell.home_path(mount[2:]) if mount.startswith("~/") else shell.quote(mount)


def mount_sources(spec: JobSpec) -> list[str]:
    return [m.partition(":")[0] for m in spec.mounts]


def env_names(spec: JobSpec) -> list[str]:
    """The variables the container gets (values are read from the job's environment on the node)."""
    return list(spec.env) + ["MIGRATE_JOB_ID", "MIGRATE_JOB_ATTEMPT", "MIGRATE_CLUSTER"]


def container_command(record: ClusterRecord, spec: JobSpec, job_id: str) -> str:
    """The sh script the polite wrapper runs for a container job (pure)."""
    run = "docker " + docker_run_line(record, spec, job_id)
    env_lines = "\n".join(f'printf "%s=%s\\n" {shell.quote(n)} "${{{n}:-}}" >> "$MIGRATE_ENV_FILE"'
                          for n in env_names(spec))
    env_lines += '\nprintf "%s=%s\\n" CUDA_DEVICE_ORDER PCI_BUS_ID >> "$MIGRATE_ENV_FILE"'
    checks = "".join(f'[ -e {_mount_word(src)} ] || {{ echo "migrate: mount source "{shell.quote(src)}" does not exist '
                     f'on $(hostname) (Docker would create it as an empty root-owned directory)" >&2; exit 125; }}\n'
                     for src in mount_sources(spec))
    return SCRIPT.format(access=ACCESS, mount_checks=checks, name=container_name(record.name, job_id),
                         env_lines=env_lines,
                         grace=STOP_GRACE_S, image=shell.quote(spec.image), run_group=shell.quote(run),
                         run_eval=shell.quote(run.replace("docker ", "$D ", 1)))


def remove_containers_command(cluster: str) -> str:
    """`docker rm -f` every container of this cluster's jobs on a host (`cluster down`: its kill of
    leftover processes can take the `docker stop` of a job being stopped with it). Prints how many;
    nothing when Docker is absent or out of reach (pure)."""
    label = shell.quote(f"label=migrate.cluster={cluster}")
    script = ("command -v docker >/dev/null 2>&1 || exit 0\n" + ACCESS
              + f'if [ "$via" = group ]; then ids=$(sg docker -c "docker ps -aq --filter "{label} </dev/null); '
              f"else ids=$($D ps -aq --filter {label}); fi\n"
              '[ -n "$ids" ] || exit 0\n'
              'if [ "$via" = group ]; then sg docker -c "docker rm -f $(echo $ids)" </dev/null; '
              "else $D rm -f $ids; fi >/dev/null 2>&1\n"
              'echo "$ids" | wc -l\n')
    return shell.sh_c(script)


# -- the image, on every host first ---------------------------------------------------------------------
def push_to_cluster(record: ClusterRecord, images: list[str], conn: ConnectOptions, *, dry_run: bool) -> None:
    """The ordinary push-image to every cluster host (only missing layers). Raises if a host failed."""
    from migrate.image.push import PushImageOptions, push_images

    hosts = record.hosts
    what = ", ".join(images)
    if dry_run:
        ui.step(f"would push {what} to the {len(hosts)} hosts of cluster {record.name} ({', '.join(hosts)}; "
                "only the layers each host lacks) before submitting")
        return
    ui.step(f"pushing {what} to the {len(hosts)} hosts of cluster {record.name} (only the layers each lacks)")
    results = push_images(images, hosts, conn, PushImageOptions())
    failed = [r for r in results if r.status == "failed"]
    for r in results:
        if r.status != "failed":
            ui.info(f"  {r.host}: {r.image} {r.status}"
                    + (f" ({ui.human_bytes(r.bytes_sent)} sent)" if r.bytes_sent else ""))
    if failed:
        raise MigrateError(f"could not push {failed[0].image} to {failed[0].host}: {failed[0].error}",
                           hint="nothing was submitted; fix that host (migrate push-image IMAGE HOST) or take it "
                                "out of the cluster")
