"""`migrate sandbox up | status | down | ssh-config`."""

from __future__ import annotations

import sys

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, Size
from migrate.completion import complete_host
from migrate.sandbox import recipe
from migrate.sandbox.link import LINK_HINT, parse_link
from migrate.sandbox.manager import Sandbox
from migrate.sandbox.mocknvml import state as mstate
from migrate.units import MIB


def _show(hosts: list[dict], as_json: bool, sb: Sandbox) -> None:
    if as_json:
        ui.print_json(hosts)
        return
    if not hosts:
        ui.info(f"sandbox '{sb.s.name}' is not up (start it with `migrate sandbox up`)")
        return
    rows = [(h["alias"], h["state"], f"alice@{h['hostname']}:{h['port']}", f"{h['ip']}:22",
             str(h.get("fake_gpus", 0)), _flavour(h)) for h in hosts]
    ui.table(f"sandbox '{sb.s.name}'", ["host", "state", "ssh", "ip", "mock gpus", "debian / docker"], rows)
    live = sb.link_state()
    if live:
        ui.info(f"link: {parse_link(live['link']).describe()} between this machine and the hosts "
                f"(relay pid {live['pid']}; host to host: the Docker network)")
    elif any(h.get("link") for h in hosts):
        ui.warn(f"link {hosts[0].get('link')}: its relay is not running; `migrate sandbox up` starts it again")
    ui.info("users: alice (passwordless sudo), bob (sudo password "
            f"'{sb.s.bob_password}'), carol (no sudo, no docker group); try `migrate doctor {hosts[0]['alias']}`")


def _up(count: int, *, gpus: int, kill_user_processes: bool, rebuild: bool, as_json: bool,
        release: str | None, docker_from: str | None, image_store: str | None, link: str | None = None) -> None:
    """Bring hosts up and show them."""
    sb = Sandbox()
    hosts = sb.up(count, gpus=gpus, kill_user_processes=kill_user_processes, rebuild=rebuild,
                  release=release, docker_from=docker_from, image_store=image_store, link=link)
    _show(hosts, as_json, sb)


def _flavour(h: dict) -> str:
    """`trixie, docker.io from sid, containerd store` for one host."""
    parts = [h.get("release", "bookworm")]
    if h.get("docker_from"):
        parts.append(f"docker.io from {h['docker_from']}")
    if h.get("image_store", "overlay2") != "overlay2":
        parts.append(f"{h['image_store']} image store")
    return ", ".join(parts)


def _status(*, as_json: bool) -> None:
    """Show the hosts."""
    sb = Sandbox()
    _show(sb.describe(), as_json, sb)


def _down(*, purge: bool, as_json: bool = False) -> None:
    """Remove what the sandbox created."""
    sb = Sandbox()
    removed = sb.down(purge=purge)
    if as_json:
        ui.print_json({"sandbox": sb.s.name, "removed": removed})
        return
    ui.info(f"sandbox '{sb.s.name}' down: " + (", ".join(removed) if removed else "nothing to remove"))


def _ssh_config() -> None:
    """Print the OpenSSH config block."""
    sys.stdout.write(Sandbox().openssh_config())


@click.group("sandbox", context_settings=CONTEXT_SETTINGS)
def group() -> None:
    """Local rehearsal hosts: Debian containers with systemd and sshd, no Docker, mock GPUs on request.

    Each host has a user `alice` (passwordless sudo), `bob` (sudo password "bobpass") and `carol`
    (a plain user: no sudo, not in the docker group, e.g. `migrate doctor carol@sandbox1`), working
    apt, its own IP and a 64 MiB disk at /mnt/small. Hosts are named sandbox1, sandbox2, ... and
    work with every migrate command without flags. Needs a local Docker daemon; the first `up`
    builds the image with debootstrap as root (about 90 s), later ones take seconds.

    \b
    Examples:
      migrate sandbox up 2 --gpus 4       # sandbox1, sandbox2 with mock GPUs
      migrate doctor sandbox1
      migrate sandbox down
    """


@group.command("up", context_settings=CONTEXT_SETTINGS)
@click.argument("count", type=click.IntRange(1, 50), default=2, required=False)
@click.option("--gpus", type=click.IntRange(0, 16), default=0,
              help="Give each host N MOCK GPUs: a mock libnvidia-ml.so.1 (so pynvml, the dispatcher, doctor and "
                   "nvidia-smi all see them), a fake nvidia runtime; change them with `migrate sandbox gpu`.")
@click.option("--kill-user-processes", is_flag=True,
              help="Hard mode: logind kills a user's processes at logout, as some hardened servers do.")
@click.option("--rebuild", is_flag=True, help="Rebuild the image from scratch (debootstrap).")
@click.option("--release", type=click.Choice(recipe.RELEASES), default=None,
              help="Debian release of the hosts (default: what is up, else $MIGRATE_SANDBOX_RELEASE, else bookworm). "
                   "One cached image per release.")
@click.option("--docker-from", type=click.Choice(recipe.DOCKER_FROM), default=None,
              help="Let apt on a trixie host install Docker, containerd and apptainer from Debian sid "
                   "(docker.io 28.5, containerd 2.1); nothing else comes from sid.")
@click.option("--image-store", type=click.Choice(recipe.IMAGE_STORES), default=None,
              help="containerd: write {\"features\": {\"containerd-snapshotter\": true}} into daemon.json before any "
                   "Docker is installed, as fresh Docker 29 installs do.")
@click.option("--link", metavar="RATE/DELAY|off", default=None,
              help="Put a slow, far link between this machine and the hosts' SSH ports (a relay paces to RATE "
                   "and delays each way by DELAY; host-to-host traffic stays at LAN speed). " + LINK_HINT
                   + ". Left out: keep the link that is there.")
@click.option("--json", "as_json", is_flag=True, help="Print the hosts as JSON.")
def up(count: int, gpus: int, kill_user_processes: bool, rebuild: bool, release: str | None,
       docker_from: str | None, image_store: str | None, link: str | None, as_json: bool) -> None:
    """Start COUNT sandbox hosts (default 2); reuses the ones already running.

    The hosts of one sandbox share one release, engine source and image store; for another
    combination, give the sandbox another name (MIGRATE_SANDBOX=name) or bring it down first.

    \b
    Examples:
      migrate sandbox up
      migrate sandbox up 3 --gpus 2 --release trixie
      migrate sandbox up 3 --link 100mbit/40ms   # a campus uplink, 80 ms RTT
      migrate sandbox up 3 --link off            # back to loopback speed
    """
    _up(count, gpus=gpus, kill_user_processes=kill_user_processes, rebuild=rebuild, as_json=as_json,
        release=release, docker_from=docker_from, image_store=image_store, link=link)


@group.command("status", context_settings=CONTEXT_SETTINGS)
@click.option("--json", "as_json", is_flag=True, help="Print the hosts as JSON.")
def status(as_json: bool) -> None:
    """List the sandbox hosts, their addresses and state.

    \b
    Examples:
      migrate sandbox status
      migrate sandbox status --json
    """
    _status(as_json=as_json)


@group.command("down", context_settings=CONTEXT_SETTINGS)
@click.option("--purge", is_flag=True, help="Also remove the sandbox image and the cached rootfs.")
@click.option("--json", "as_json", is_flag=True, help="Print {sandbox, removed: [...]} as JSON.")
def down(purge: bool, as_json: bool) -> None:
    """Remove every container, volume, network and file the sandbox created (nothing else).

    \b
    Examples:
      migrate sandbox down
      migrate sandbox down --purge       # the image and caches too
    """
    _down(purge=purge, as_json=as_json)


@group.command("ssh-config", context_settings=CONTEXT_SETTINGS)
def ssh_config() -> None:
    """Print an OpenSSH config block for the sandbox hosts.

    Use it with plain tools: `migrate sandbox ssh-config > sb.conf; ssh -F sb.conf sandbox1`
    or `rsync -e 'ssh -F sb.conf' ...`.

    \b
    Examples:
      migrate sandbox ssh-config > sb.conf && ssh -F sb.conf sandbox1
    """
    _ssh_config()


def _pair(value: str, what: str) -> tuple:
    gpu, sep, n = value.partition("=")
    if not sep or not n.isdigit():
        raise click.BadParameter(f"{value!r}: write GPU={what}, e.g. 0={ {'PCT': '50', 'N': '2'}.get(what, '400')}")
    return gpu, int(n)


def _show_gpus(result: dict) -> None:
    st = result["state"]
    rows = []
    for i, g in enumerate(st["gpus"]):
        devs = [(str(i), g)] + [(f"{i}:{j}", m) for j, m in enumerate(g["migs"])]
        for index, d in devs:
            used = d["memory_used_mib"] + sum(p["used_mib"] for p in d["processes"])
            what = "LOST (off the bus)" if d.get("lost") else ("MIG on" if d.get("mig") else "")
            procs = ", ".join(f"pid {p['pid']} {p['used_mib']} MiB{'' if p['kind'] == 'compute' else ' ' + p['kind']}"
                              for p in d["processes"])
            util = f"{d['utilization']}%" if "utilization" in d else ""
            rows.append((index, d["uuid"], f"{used} / {d['memory_total_mib']} MiB", util, procs, what))
    error = f", every NVML call fails with error {st['error']}" if st["error"] else ""
    ui.table(f"{result['host']}: mock GPUs, driver {st['driver']} ({st['variant']} process calls){error}",
             ["gpu", "uuid", "memory used", "util", "processes", "state"], rows)
    if result.get("started_pid"):
        ui.info(f"started pid {result['started_pid']} as bob: it holds the GPU until it ends "
                f"(`migrate sandbox gpu {result['host']} --release {result['started_pid']}`)")
    if result.get("dropped"):
        ui.info("no longer listed (exited): pid " + ", ".join(str(p) for p in result["dropped"]))


@group.command("gpu", context_settings=CONTEXT_SETTINGS)
@click.argument("host", shell_complete=complete_host)
@click.option("--take", "take", metavar="GPU", help="Put a foreign process on GPU (index, or GPU:INSTANCE with MIG): "
              "a process started as user bob, or --pid.")
@click.option("--mib", "take_mib", type=Size(MIB, "MiB", 0, 10**7), default=1024, show_default=True,
              help="Memory the --take process holds: a size (2G, 512M; a plain number is MiB).")
@click.option("--pid", "take_pid", type=click.IntRange(1, 2**31),
              help="List this PID for --take instead of starting one.")
@click.option("--kind", "take_kind", type=click.Choice(list(mstate.KINDS)), default="compute", show_default=True,
              help="Which process list --take goes into.")
@click.option("--release", multiple=True, type=int, metavar="PID",
              help="Take PID off the GPUs (and end it if --take started it). Exited PIDs leave by themselves.")
@click.option("--util", "utilization", multiple=True, metavar="GPU=PCT", help="Set a GPU's utilisation.")
@click.option("--unlisted-mib", "unlisted", multiple=True, metavar="GPU=MIB",
              help="Memory in use by processes NVML does not list (another container), on GPU or GPU:INSTANCE.")
@click.option("--lose", multiple=True, metavar="GPU", help="The GPU falls off the bus (NVML_ERROR_GPU_IS_LOST).")
@click.option("--restore", multiple=True, metavar="GPU", help="A lost GPU is back.")
@click.option("--mig", multiple=True, metavar="GPU=N", help="MIG on with N instances (GPU:0..N-1), or off with 0.")
@click.option("--driver", type=click.Choice(list(mstate.VARIANTS)),
              help="Driver generation: v3 (every process call), v2 (no _v3 calls, v1 memory), v1 (only the "
                   "unversioned calls). Processes that loaded NVML keep the old one until they restart.")
@click.option("--nvml-error", metavar="CODE|none", help="Make every NVML call fail with an NVML error code "
              "(999 Unknown Error, 9 Driver Not Loaded, 18 version mismatch), or stop failing.")
@click.option("--reset", is_flag=True, help="Back to idle GPUs (ends the processes --take started).")
@click.option("--json", "as_json", is_flag=True, help="Print {host, state, started_pid, dropped} as JSON.")
def gpu(host: str, take: str | None, take_mib: int, take_pid: int | None, take_kind: str, release: tuple,
        utilization: tuple, unlisted: tuple, lose: tuple, restore: tuple, mig: tuple, driver: str | None,
        nvml_error: str | None,
        reset: bool, as_json: bool) -> None:
    """Show or change HOST's mock GPUs (hosts from `migrate sandbox up --gpus N`).

    Every NVML reader on the host sees the change at its next call: the dispatcher, `migrate gpus`,
    doctor, nvidia-smi, a cluster node's Ray. Changes apply in this order: reset, driver,
    nvml-error, util, unlisted-mib, lose, restore, mig, release, take.

    \b
    Examples:
      migrate sandbox gpu sandbox1                  # what the mock GPUs show
      migrate sandbox gpu sandbox1 --take 0 --mib 20000
                                 # bob's process holds 20000 MiB on GPU 0
      migrate sandbox gpu sandbox1 --release 4242   # it goes (or let it end)
      migrate sandbox gpu sandbox1 --util 1=90 --lose 0
                                 # GPU 1 busy, GPU 0 fell off the bus
      migrate sandbox gpu sandbox1 --mig 1=2 --take 1:0
                                 # MIG on GPU 1, a process on instance 0
      migrate sandbox gpu sandbox1 --driver v1
                                 # an old driver: no _v2/_v3 process calls
      migrate sandbox gpu sandbox1 --reset
    """
    from migrate.sandbox.gpu import GpuChanges, SandboxGpus

    if nvml_error is not None and nvml_error != "none" and not nvml_error.isdigit():
        raise click.BadParameter("a number, or none", param_hint="--nvml-error")
    ch = GpuChanges(reset=reset, driver=driver, release=list(release), lose=list(lose), restore=list(restore),
                    nvml_error=None if nvml_error is None else (0 if nvml_error == "none" else int(nvml_error)),
                    utilization=[_pair(u, "PCT") for u in utilization], mig=[_pair(m, "N") for m in mig],
                    unlisted=[_pair(u, "MIB") for u in unlisted],
                    take=take, take_mib=take_mib, take_pid=take_pid, take_kind=take_kind)
    gpus = SandboxGpus(host)
    if ch.empty:
        st, gone = gpus.read()
        result = {"host": host, "state": st.to_dict(), "started_pid": None, "dropped": gone}
    else:
        result = gpus.change(ch)
    if as_json:
        ui.print_json(result)
    else:
        _show_gpus(result)
