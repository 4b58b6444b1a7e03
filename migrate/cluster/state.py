"""The cluster records: one JSON file per cluster in migrate's state dir, and a copy on each host.

A record says what `up` started (hosts, head, node IPs, ports, Ray version, GPUs offered per node),
so `status`, `down` and the job verbs need no flags, and `migrate run NAME` knows NAME is a cluster.
"""

from __future__ import annotations

import fcntl
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from migrate import paths
from migrate.agent.layout import write_private
from migrate.cluster.plan import Ports, ports_from_record
from migrate.errors import MigrateError, UsageError

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")


@dataclass
class Node:
    host: str                    # as given on the command line (alias or user@host)
    ip: str                      # the address the other nodes reach it on
    gpus: list[str] = field(default_factory=list)   # GPU indices offered to Ray
    cpus: int = 1
    head: bool = False


@dataclass
class ClusterRecord:
    name: str
    ray_version: str
    ports: Ports
    nodes: list[Node]
    gpu_backend: str | None = None
    created: float = 0.0
    job_seq: int = 0
    agent: str = ""              # ~/.migrate/agent/<zipapp>: the polite wrapper asks it for the GPU view
    auth_token: str = field(default="", repr=False)   # Ray's token: only in the 0600 record file here
    head_home: str = ""          # $HOME on the head: the launcher's socket path is absolute in the forward
    gpu_pool: dict[str, list[str]] = field(default_factory=dict)   # `--gpu-pool` as given at up

    @property
    def head(self) -> Node:
        return next(n for n in self.nodes if n.head)

    @property
    def hosts(self) -> list[str]:
        return [n.host for n in self.nodes]

    def node_by_ip(self, ip: str) -> Node | None:
        return next((n for n in self.nodes if n.ip == ip), None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ports"] = self.ports.to_dict()
        del d["auth_token"]      # never printed (--json), never copied to the hosts' record
        return d

    def to_private_dict(self) -> dict:
        """What the record file here holds: to_dict() and the Ray token."""
        return {**self.to_dict(), "auth_token": self.auth_token}

    @classmethod
    def from_dict(cls, d: dict) -> ClusterRecord:
        return cls(name=d["name"], ray_version=d["ray_version"], ports=ports_from_record(d["ports"]),
                   nodes=[Node(**n) for n in d["nodes"]], gpu_backend=d.get("gpu_backend"),
                   created=d.get("created", 0.0), job_seq=d.get("job_seq", 0), agent=d.get("agent", ""),
                   auth_token=d.get("auth_token", ""), head_home=d.get("head_home", ""),
                   gpu_pool={str(k): [str(g) for g in v] for k, v in (d.get("gpu_pool") or {}).items()})


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(f"bad cluster name {name!r}", hint="a letter, then letters, digits, - or _ (max 40)")
    return name


def clusters_dir() -> Path:
    return paths.state_root() / "clusters"


def record_path(name: str) -> Path:
    return clusters_dir() / f"{name}.json"


def exists(name: str) -> bool:
    """Whether NAME is a cluster this machine brought up (what `migrate run NAME` checks first)."""
    return bool(NAME_RE.match(name)) and record_path(name).is_file()


class CorruptRecord(MigrateError):
    """The local record of a cluster cannot be read (truncated, edited by hand, not JSON)."""


def load(name: str) -> ClusterRecord:
    path = record_path(check_name(name))
    if not path.is_file():
        raise UsageError(f"no cluster named {name!r} here", hint=f"create it: migrate cluster up {name} HOST...")
    try:
        record = ClusterRecord.from_dict(json.loads(path.read_bytes()))
        record.head     # noqa: B018 - a record without a head is as unusable as one that is not JSON
        return record
    except (ValueError, KeyError, TypeError, AttributeError, StopIteration) as exc:
        raise CorruptRecord(f"the record of cluster {name} ({path}) is corrupt: {type(exc).__name__}: "
                            f"{str(exc)[:120]}",
                            hint=f"`migrate cluster down {name} --forget HOST...` stops Ray on its hosts and "
                                 "removes the record") from None


def save(record: ClusterRecord) -> Path:
    paths.private_dir(clusters_dir())
    path = record_path(record.name)
    write_private(str(path), json.dumps(record.to_private_dict(), indent=2) + "\n")  # 0600 from the first byte
    return path


def remove(name: str) -> None:
    for p in (record_path(name), record_path(name).with_suffix(".lock")):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


@contextmanager
def locked(name: str) -> Iterator[ClusterRecord]:
    """Load, let the caller change, save: under a lock, so two `run`s never hand out the same job id."""
    paths.private_dir(clusters_dir())
    with open(record_path(name).with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = load(name)
        yield record
        save(record)


def next_job_ids(name: str, count: int) -> list[str]:
    """`count` fresh job ids for this cluster: "1", "2", ... (Ray's submission ids are `<name>-<id>`)."""
    with locked(name) as record:
        first = record.job_seq + 1
        record.job_seq += count
    return [str(i) for i in range(first, first + count)]
