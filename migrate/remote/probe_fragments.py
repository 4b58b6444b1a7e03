"""POSIX-sh fragments the host probes share, and the one reader of their `key=value` output.

Each probe (`remote/probe.py`, `setup/facts.py`, `image/remote.py`, `data/remote.py`) is a script
built from these fragments plus its own lines; each prints `key=value` lines read by
`key_value_lines`, and `assign` fills a dataclass from them through a table (key -> attribute,
conversion). The fragments define shell functions only: they print nothing until called, change
nothing, and need no root. Their variables start with `_` so they never clobber the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

# kv KEY VALUE: one output line.
KV = "kv() { printf '%s=%s\\n' \"$1\" \"$2\"; }\n"

# arch: the machine name (x86_64, aarch64...), as `kv arch` (see probe.normalize_arch).
ARCH = 'kv arch "$(uname -m)"\n'

# sudo_mode: root | none (no sudo command) | nopasswd | password. Never prompts (`sudo -n`).
SUDO = ('sudo_mode() { if [ "$(id -u)" = 0 ]; then echo root; '
        'elif ! command -v sudo >/dev/null 2>&1; then echo none; '
        'elif sudo -n true >/dev/null 2>&1; then echo nopasswd; else echo password; fi; }\n')

# dockerd_path: where the Docker daemon binary is, found even when the `docker` CLI is missing.
DOCKERD = ("dockerd_path() { command -v dockerd 2>/dev/null "
           "|| ls /usr/sbin/dockerd /usr/bin/dockerd 2>/dev/null | head -n 1; }\n")

# nearest PATH: PATH or its nearest existing ancestor (what a new file there would land on).
NEAREST = 'nearest() { _n=$1; while [ ! -e "$_n" ]; do _n=$(dirname "$_n"); done; printf \'%s\\n\' "$_n"; }\n'

# free_space PATH COLUMNS: columns of `df -Pk` for the filesystem holding PATH (or its nearest
# existing ancestor), e.g. '$4' (free KiB) or '$4 " " $2 " " $6' (free KiB, total KiB, mount point).
FREE_SPACE = NEAREST + ('free_space() { df -Pk "$(nearest "$1")" 2>/dev/null | awk "NR==2 {print $2}"; }\n')

# disk PATH NAME: `kv disk.NAME "FREE_KIB TOTAL_KIB MOUNT"` for the filesystem holding PATH (probe.Disk).
DISK = FREE_SPACE + 'disk() { kv "disk.$2" "$(free_space "$1" \'$4 " " $2 " " $6\')"; }\n'

# docker_denied_mode: after `docker` said "permission denied", how we may reach it instead:
# group (member of the docker group, through `sg`) | sudo | sudo-password | denied.
DOCKER_ACCESS = SUDO + (
    "docker_denied_mode() {\n"
    "  if id -nG \"$(id -un)\" 2>/dev/null | tr ' ' '\\n' | grep -qx docker && command -v sg >/dev/null 2>&1 \\\n"
    "     && sg docker -c 'docker version' >/dev/null 2>&1; then echo group; return; fi\n"
    "  case $(sudo_mode) in\n"
    "    nopasswd) echo sudo ;;\n"
    "    password) echo sudo-password ;;\n"
    "    root) if command -v sudo >/dev/null 2>&1; then echo sudo; else echo denied; fi ;;\n"
    "    *) echo denied ;;\n"
    "  esac\n"
    "}\n")


def key_value_lines(text: str) -> Iterator[tuple[str, str]]:
    """(key, value) for each `key=value` line of a probe's output, in order; other lines are skipped."""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            yield key, value


def assign(target: Any, text: str, table: dict[str, tuple[str, Callable[[str], Any]]], *,
           strip: bool = False) -> list[tuple[str, str]]:
    """Set `target.<attr> = convert(value)` for each line whose key is in `table` (key -> (attr,
    convert); a dotted attr such as `docker.path` reaches into a member); return the other (key,
    value) pairs, in order, for the caller's special cases. A conversion that raises ValueError
    leaves the attribute as it was."""
    rest = []
    for key, value in key_value_lines(text):
        if strip:
            value = value.strip()
        if key not in table:
            rest.append((key, value))
            continue
        attr, convert = table[key]
        *path, last = attr.split(".")
        obj = target
        for name in path:
            obj = getattr(obj, name)
        try:
            setattr(obj, last, convert(value))
        except ValueError:
            pass
    return rest


def as_is(value: str) -> str:
    """The value as it is."""
    return value


def yes(value: str) -> bool:
    """`yes` -> True, anything else False."""
    return value == "yes"
