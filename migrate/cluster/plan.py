"""Pure builders for `migrate cluster`: the on-host layout, ports, preflight probe, ray start/stop.

Nothing here runs anything. Every remote argument goes through `migrate.remote.shell`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from migrate.remote import shell
from migrate.remote.probe import HostFacts, parse_probe
from migrate.remote.probe_fragments import ARCH, DISK, KV

RAY_VERSION = "2.55.1"   # cp310-cp313 manylinux2014 x86_64/aarch64 wheels on PyPI
UV_VERSION = "0.13.9"    # the static `uv` binary inside its wheel creates venvs and installs without pip
MIN_PYTHON = (3, 10)     # the oldest python Ray 2.55 ships wheels for
MAX_PYTHON = (3, 13)
MIN_FREE_MIB = 2048      # venv (~600 MiB) + wheels (~110 MiB) + Ray's session logs
JOB_START_TIMEOUT_S = 7 * 24 * 3600  # RAY_JOB_START_TIMEOUT_SECONDS on the head (default 900 s)

RAY_DIR = ".migrate/ray"                 # everything of ours on a host lives under here


def venv_dir(version: str = RAY_VERSION) -> str:
    """The private venv (relative to $HOME): ~/.migrate/ray/<version>."""
    return f"{RAY_DIR}/{version}"


def ray_bin(version: str = RAY_VERSION) -> str:
    return f"{venv_dir(version)}/bin/ray"


UV_BIN = f"{RAY_DIR}/bin/uv"
WRAPPER = f"{RAY_DIR}/bin/migrate-ray-job.py"
GANG = f"{RAY_DIR}/bin/migrate-ray-gang.py"
LAUNCHER = f"{RAY_DIR}/bin/migrate-ray-launcher.py"
NODE_AGENT = f"{RAY_DIR}/bin/migrate-agent.pyz"   # the agent zipapp the scripts above import (its node side)
AUTH_TOKEN = f"{RAY_DIR}/auth-token"     # Ray's token authentication (RAY_AUTH_MODE=token), 0600
TEMP_DIR = f"{RAY_DIR}/tmp"               # Ray's session dir (default /tmp/ray): kept in the home
HOST_RECORD = f"{RAY_DIR}/cluster.json"  # which cluster this host is a node of (one per user and host)
SOCKET_DIR = f"{RAY_DIR}/sock"           # 0700: the launcher's Unix socket, reachable by us alone
WHEELS_DIR = f"{RAY_DIR}/wheels"


@dataclass(frozen=True)
class Ports:
    """Every port Ray listens on, pinned (Ray's defaults are partly random)."""

    gcs: int = 26379
    dashboard: int = 28265           # bound to 127.0.0.1 on the head, reached through an SSH forward
    node_manager: int = 26380
    object_manager: int = 26381
    runtime_env_agent: int = 26382
    dashboard_agent_grpc: int = 26383
    dashboard_agent_listen: int = 26384
    metrics_export: int = 26385
    client_server: int = 26386
    autoscaler_metrics: int = 26387  # Ray's autoscaler and dashboard Prometheus endpoints (read-only;
    dashboard_metrics: int = 26388   # Ray binds them to 0.0.0.0 and has no option for it): pinned, not random
    min_worker: int = 26400
    max_worker: int = 26499

    def head_ports(self) -> list[int]:
        """Fixed ports that must be free on the head before `up` (the worker range excluded)."""
        return [self.gcs, self.dashboard, *self.node_ports(), self.client_server, self.autoscaler_metrics,
                self.dashboard_metrics]

    def node_ports(self) -> list[int]:
        return [self.node_manager, self.object_manager, self.runtime_env_agent, self.dashboard_agent_grpc,
                self.dashboard_agent_listen, self.metrics_export]

    def to_dict(self) -> dict:
        return asdict(self)


def ports_from(base: int | None) -> Ports:
    """`--port-base N`: the GCS port and every other port at the same offsets as the defaults."""
    if base is None:
        return Ports()
    d = Ports()
    shift = base - d.gcs
    return Ports(**{k: v + shift for k, v in asdict(d).items()})


def ports_from_record(d: dict) -> Ports:
    """A record's ports: keys an older migrate wrote and this one no longer uses (the launcher's TCP
    port) are dropped; ports it did not pin yet take the same offset from the GCS port as the defaults."""
    known = Ports.__dataclass_fields__
    base = ports_from(int(d.get("gcs", Ports().gcs))).to_dict()
    return Ports(**{**base, **{k: int(v) for k, v in d.items() if k in known}})


def launcher_socket(cluster: str) -> str:
    """The launcher's Unix socket (relative to $HOME), in a 0700 directory: no other user can connect
    to it or bind it, so the token sent through it reaches our launcher only."""
    return f"{SOCKET_DIR}/{cluster}.sock"


# -- preflight ----------------------------------------------------------------------------------------
# What only a cluster asks, in python3 (the host's own: Ray needs it anyway): which ports can be bound,
# the address the host has towards us, the Ray in our venv, the cluster whose record it holds, the index
# `migrate mirror` set for the user, and whether the host reaches that index (pypi.org without one).
# It prints `key=value` lines in the host probe's vocabulary (migrate.remote.probe, `node.*`).
PREFLIGHT_PY = r"""
import json, os, socket, sys
ver, ports, rel, check_index, record = sys.argv[1:6]
def kv(k, v):
    print("%s=%s" % (k, v))
kv("python3", "%d.%d.%d" % sys.version_info[:3])
kv("node.python_path", sys.executable)
taken = []
for p in [int(p) for p in ports.split(",") if p]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT left by our test listener is no user
    try:
        s.bind(("0.0.0.0", p))
    except OSError:
        taken.append(str(p))
    finally:
        s.close()
kv("node.ports_taken", ",".join(taken))
ip = ""
peer = os.environ.get("SSH_CONNECTION", "").split()
if len(peer) == 4 and not peer[2].startswith("127.") and ":" not in peer[2]:
    ip = peer[2]
if not ip:
    try:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.connect(("192.0.2.1", 9))
        ip = u.getsockname()[0]
        u.close()
    except OSError:
        ip = "127.0.0.1"
kv("node.ip", ip)
home = os.path.expanduser("~")
installed = ""
try:
    with open(os.path.join(home, rel, "migrate-ray-version")) as f:
        installed = f.read().strip()
except OSError:
    pass
kv("node.ray_installed", installed)
try:
    with open(os.path.join(home, record)) as f:
        kv("node.cluster_here", str(json.load(f).get("name", "")))
except (OSError, ValueError, AttributeError):
    pass
mirror = ""  # the index `migrate mirror` set for this user (~/.migrate/mirror/journal.json): Ray comes from it
try:
    with open(os.path.join(home, ".migrate", "mirror", "journal.json")) as f:
        mirror = str(json.load(f).get("url", ""))
except (OSError, ValueError, AttributeError):
    pass
kv("node.mirror", mirror)
if check_index == "1" and installed != ver:
    import urllib.request
    try:
        urllib.request.urlopen((mirror or "https://pypi.org/simple").rstrip("/") + "/ray/", timeout=4).close()
        kv("node.index", "ok")
    except Exception as e:
        kv("node.index", " ".join(str(e).split())[:200] or type(e).__name__)
"""


def preflight_command(ports: list[int], version: str = RAY_VERSION, *, check_index: bool = False) -> str:
    """One read-only round trip, built from the host probes' fragments (migrate.remote.probe_fragments):
    arch, home, CPUs, free disk of the home, our Ray processes, then python3 (version/path), ports taken,
    node IP, installed Ray, the user's `migrate mirror` index and (with `check_index`) whether the host reaches
    that index (pypi.org without a mirror). Read by `parse_preflight` into the one HostFacts."""
    args = [version, ",".join(str(p) for p in ports), venv_dir(version), "1" if check_index else "0", HOST_RECORD]
    script = (KV + ARCH + DISK + 'kv home "$HOME"\nkv cpus "$(nproc 2>/dev/null)"\ndisk "$HOME" home\n'
              + "n=0; " + _OURS + 'n=$((n + 1)); done; kv node.ray_running "$n"\n'
              + f"command -v python3 >/dev/null 2>&1 && python3 -c {shell.quote(PREFLIGHT_PY)} \"$@\"\nexit 0\n")
    return f"sh -c {shell.quote(script)} sh {shell.join(args)}"


def parse_preflight(stdout: str) -> HostFacts:
    """The preflight's facts (the host probe's HostFacts, its `node` part filled)."""
    return parse_probe(stdout)


def preflight_problems(host: str, facts: HostFacts, *, version: str = RAY_VERSION, head: bool,
                       cluster: str = "") -> list[str]:
    """One line per reason this host cannot join (empty: fine)."""
    out = []
    node = facts.node
    if node.ray_running and node.cluster_here != cluster:
        other = f"cluster {node.cluster_here}" if node.cluster_here else "a Ray not started by `migrate cluster`"
        out.append(f"{host}: already a node of {other} (yours): one cluster per user on a host, since "
                   f"Ray's processes and token there are the user's (`migrate cluster down "
                   f"{node.cluster_here or 'NAME'}` first, or leave {host} out)")
        return out
    if not facts.python3:
        out.append(f"{host}: python3 is not installed (Ray {version} needs python3 "
                   f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}-{MAX_PYTHON[0]}.{MAX_PYTHON[1]})")
        return out
    major, minor = (int(x) for x in facts.python_version.split("."))
    if not MIN_PYTHON <= (major, minor) <= MAX_PYTHON:
        out.append(f"{host}: python3 is {facts.python_version}, Ray {version} needs "
                   f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}-{MAX_PYTHON[0]}.{MAX_PYTHON[1]}")
    if facts.arch not in ("x86_64", "aarch64"):
        out.append(f"{host}: Ray has no wheels for {facts.arch or 'this machine'}")
    if node.ray_installed != version and facts.home_free_mib < MIN_FREE_MIB:
        out.append(f"{host}: {facts.home_free_mib} MiB free in the home, the Ray venv needs {MIN_FREE_MIB} MiB")
    if node.ports_taken:
        role = "head" if head else "node"
        out.append(f"{host}: port(s) {', '.join(map(str, node.ports_taken))} already in use on the {role} "
                   "by another program (pick other ports with --port-base)")
    return out


LISTEN_PY = r"""
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
s.settimeout(1)
end, n = time.time() + float(sys.argv[2]), 0
while time.time() < end and n < int(sys.argv[3]):
    try:
        c, _ = s.accept()
        c.sendall(sys.argv[4].encode())
        c.close()
        n += 1
    except OSError:
        pass
"""


def listener_command(port: int, seconds: int, expect: int, token: str) -> str:
    """A short-lived TCP listener on the head's GCS port (before Ray runs), so workers can test the path.

    It answers each connection with `token` (so a proxy that accepts any connection does not pass for
    the head), writes nothing, and exits after `expect` connections or `seconds`."""
    return (f"nohup python3 -c {shell.quote(LISTEN_PY)} {shell.join([port, seconds, expect, token])} "
            ">/dev/null 2>&1 </dev/null & echo $!; sleep 0.5")


def stop_listener_command(pid: int) -> str:
    """End the test listener `listener_command` started (so a retry finds the port free at once)."""
    return f"kill {int(pid)} 2>/dev/null; true"


REACH_PY = r"""
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3]))
    c.settimeout(float(sys.argv[3]))
    got = c.recv(64).decode(errors="replace")
    print("ok" if got == sys.argv[4] else "something else answered there, not the head")
except OSError as e:
    print(e)
"""


def reach_command(ip: str, port: int, token: str, timeout: float = 5) -> str:
    """From a worker: can it open a TCP connection to head:port and hear the head's test listener?
    prints `ok` or why not."""
    return f"python3 -c {shell.quote(REACH_PY)} {shell.join([ip, port, timeout, token])}"


# -- ray start / stop --------------------------------------------------------------------------------
def _common_start_args(ports: Ports, ip: str, gpus: list[str], cpus: int, object_store_mib: int) -> list[str]:
    return ["--node-ip-address", ip, "--num-gpus", str(len(gpus)), "--num-cpus", str(cpus),
            "--node-manager-port", str(ports.node_manager), "--object-manager-port", str(ports.object_manager),
            "--runtime-env-agent-port", str(ports.runtime_env_agent),
            "--dashboard-agent-grpc-port", str(ports.dashboard_agent_grpc),
            "--dashboard-agent-listen-port", str(ports.dashboard_agent_listen),
            "--metrics-export-port", str(ports.metrics_export),
            "--min-worker-port", str(ports.min_worker), "--max-worker-port", str(ports.max_worker),
            "--object-store-memory", str(object_store_mib * 1024 * 1024),
            "--disable-usage-stats"]


# Ray's dashboard agent posts each new line of the session's event files (logs/events: node deaths,
# jobs, ...) to the dashboard's address, 127.0.0.1:DASHBOARD on the head, with the token in its header
# (ray/dashboard/modules/event/event_agent.py), and never checks who listens there: once the dashboard
# has died, another user holding that port got the token (seen in CI, 2026-12-07). So Ray writes no
# event files (RayConfig event_log_reporter_enabled), and the agent scans its event directory once, at
# its start, when it is empty (its scan interval: a year). The dashboard's event view stays empty.
NO_EVENT_REPORTS = {"RAY_event_log_reporter_enabled": "0", "SCAN_EVENT_DIR_INTERVAL_SECONDS": str(365 * 24 * 3600)}


def start_env(gpus: list[str], *, head: bool, auth_token_path: str = "", ports: Ports | None = None) -> dict[str, str]:
    """The raylet sees only the GPUs we offer; the head's job manager waits a week, not 900 s; with a
    token file, every Ray process (GCS, dashboard, job API, raylets, workers, drivers) requires the
    token (Ray's token authentication, 2.52+), so other users of a borrowed server cannot run code as
    us through Ray's ports. The token itself never appears in a command line: only its file's path."""
    env = {"CUDA_VISIBLE_DEVICES": ",".join(gpus), "RAY_USAGE_STATS_ENABLED": "0", **NO_EVENT_REPORTS}
    if auth_token_path:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN_PATH"] = auth_token_path
    if head:
        env["RAY_JOB_START_TIMEOUT_SECONDS"] = str(JOB_START_TIMEOUT_S)
        if ports is not None:   # else Ray picks 44217 and 44227 on 0.0.0.0, clashing across clusters
            env["AUTOSCALER_METRIC_PORT"] = str(ports.autoscaler_metrics)
            env["DASHBOARD_METRIC_PORT"] = str(ports.dashboard_metrics)
    return env


def head_start_command(ports: Ports, ip: str, gpus: list[str], cpus: int, *, version: str = RAY_VERSION,
                       object_store_mib: int = 128, auth_token_path: str = "") -> str:
    """`ray start --head` with the dashboard/job API on the head's 127.0.0.1 only."""
    argv = ["start", "--head", "--port", str(ports.gcs), "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(ports.dashboard), "--include-dashboard", "true",
            "--ray-client-server-port", str(ports.client_server), "--temp-dir", "__TEMP__",
            *_common_start_args(ports, ip, gpus, cpus, object_store_mib)]
    return _ray_line(version, argv, start_env(gpus, head=True, auth_token_path=auth_token_path, ports=ports))


def worker_start_command(ports: Ports, head_ip: str, ip: str, gpus: list[str], cpus: int, *,
                         version: str = RAY_VERSION, object_store_mib: int = 128, auth_token_path: str = "") -> str:
    argv = ["start", "--address", f"{head_ip}:{ports.gcs}",
            *_common_start_args(ports, ip, gpus, cpus, object_store_mib)]
    return _ray_line(version, argv, start_env(gpus, head=False, auth_token_path=auth_token_path))


def _ray_line(version: str, argv: list[str], env: dict[str, str]) -> str:
    """`cd && env ... ~/.migrate/ray/V/bin/ray ARGS` ("__TEMP__" becomes "$HOME/.migrate/ray/tmp")."""
    words = " ".join(shell.home_path(TEMP_DIR) if a == "__TEMP__" else shell.quote(a) for a in argv)
    ray = shell.home_path(ray_bin(version))
    return f"cd && {shell.mkdir_private(TEMP_DIR)} && {shell.env_prefix(env)}{ray} {words}"


def stop_command(version: str = RAY_VERSION) -> str:
    """`ray stop --force` with our venv's ray when it is there (idempotent: nothing running is fine)."""
    ray = shell.home_path(ray_bin(version))
    return f"if [ -x {ray} ]; then {ray} stop --force >/dev/null 2>&1; fi; true"


# our Ray processes: anything running from our venv or with our temp dir on its command line, and every
# process of a cluster job (they all inherit MIGRATE_CLUSTER in their environment)
_OURS = ('for p in /proc/[0-9]*; do [ -O "$p" ] || continue; [ "${p#/proc/}" = "$$" ] && continue; '
         'c=$({ tr "\\0" " " < "$p/cmdline"; } 2>/dev/null) || continue; '
         'case "$c" in *"$HOME/.migrate/ray/"*) ;; *) { tr "\\0" "\\n" < "$p/environ"; } 2>/dev/null '
         '| grep -q "^MIGRATE_CLUSTER=" || continue;; esac; ')
LEFTOVER_SCRIPT = _OURS + 'echo "${p#/proc/} $c"; done'



def raylet_running_command() -> str:
    """Print `yes` when a raylet of this user runs here, else `no`."""
    return 'pgrep -u "$(id -u)" -x raylet >/dev/null 2>&1 && echo yes || echo no'


def leftover_command() -> str:
    """Print `pid cmdline` of every process of ours that still runs Ray (empty: none)."""
    return shell.sh_c(LEFTOVER_SCRIPT)


def kill_leftovers_command() -> str:
    """SIGKILL what `ray stop` left (only processes of this user that run from ~/.migrate/ray)."""
    return shell.sh_c(_OURS + 'kill -9 "${p#/proc/}" 2>/dev/null; done; true')


def launcher_state_file(cluster: str) -> str:
    """The launcher's job table on the head (relative to $HOME; 0600)."""
    return f"{RAY_DIR}/launcher-{cluster}.json"


def launcher_payload(cluster: str, ports: Ports, version: str = RAY_VERSION, *, stamp: int = 0) -> dict:
    """The Ray job that runs migrate's launcher on the head: no resources asked, so Ray's job manager
    keeps it on the head node (pure)."""
    py = shell.home_path(f"{venv_dir(version)}/bin/python")
    entry = (f"{py} {shell.home_path(LAUNCHER)} --socket {shell.home_path(launcher_socket(cluster))} "
             f"--dashboard {ports.dashboard} --state {shell.home_path(launcher_state_file(cluster))}")
    return {"entrypoint": entry, "submission_id": f"{cluster}-launcher-{stamp}",
            "metadata": {"migrate_cluster": cluster, "migrate_role": "launcher"}}


def head_check_command(cluster: str, ports: Ports) -> str:
    """Before the token crosses a forward: the launcher script (stdlib only here) prints who holds the
    dashboard port, whether our socket is there, and the home; then it waits for EOF on stdin."""
    return (f"python3 -S {shell.home_path(LAUNCHER)} --check --socket {shell.home_path(launcher_socket(cluster))} "
            f"--dashboard {ports.dashboard}")


READ_RECORD_NAME_PY = 'import json, sys; print(json.load(open(sys.argv[1])).get("name", ""))'


def host_record_name_command() -> str:
    """Print the name of the cluster this host is a node of (empty: none, or an unreadable record)."""
    return f"python3 -c {shell.quote(READ_RECORD_NAME_PY)} {shell.home_path(HOST_RECORD)} 2>/dev/null; true"


RUN_DIR = f"{RAY_DIR}/run"   # the job wrapper's records of running commands (cwd, environment), 0600


def cleanup_command(cluster: str) -> str:
    """What `down` removes besides Ray's processes: the host's record, the token, the launcher's job
    table and socket, and the records of this cluster's job commands (they hold jobs' environments)."""
    files = [HOST_RECORD, launcher_state_file(cluster), AUTH_TOKEN, launcher_socket(cluster)]
    return (f"rm -f {' '.join(shell.home_path(f) for f in files)} "
            f"{shell.home_path(RUN_DIR)}/{shell.quote(cluster + '-')}*.json; true")


def purge_command() -> str:
    """Remove everything of ours (venvs, wheels, uv, session logs): `rm -rf ~/.migrate/ray`."""
    return f"rm -rf {shell.home_path(RAY_DIR)}"
