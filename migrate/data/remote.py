"""What push-data needs to know about the receiving side, in one round trip (pure builders/parsers)."""

from __future__ import annotations

from dataclasses import dataclass

from migrate.data.rsync import PARTIAL_DIR, parse_version
from migrate.remote import shell
from migrate.remote.probe import key_value_lines

# $1 = destination path. Prints key=value lines. Never changes anything.
DEST_PROBE = r"""
d=$1
kv() { printf '%s=%s\n' "$1" "$2"; }
if [ -d "$d" ]; then kv kind dir; elif [ -e "$d" ]; then kv kind file; else kv kind none; fi
p=$d; while [ ! -e "$p" ]; do p=$(dirname "$p"); done
kv existing "$p"
if [ -w "$p" ]; then kv writable yes; else kv writable no; fi
kv free_kib "$(df -Pk "$p" 2>/dev/null | awk 'NR==2 {print $4}')"
if [ -d "$d" ] && [ -n "$(ls -A "$d" 2>/dev/null | head -n 1)" ]; then kv empty no; else kv empty yes; fi
kv rsync "$(rsync --version 2>/dev/null | head -n 1)"
kv zstd "$(command -v zstd 2>/dev/null)"
kv tar "$(tar --version 2>/dev/null | head -n 1)"
kv home "$HOME"
kv cpus "$(nproc 2>/dev/null)"
if [ "$(id -u)" = 0 ]; then kv sudo root
elif sudo -n true >/dev/null 2>&1; then kv sudo nopasswd
elif command -v sudo >/dev/null 2>&1; then kv sudo password
else kv sudo none; fi
"""


@dataclass
class DestFacts:
    """The receiving side of a transfer."""

    kind: str = "none"          # dir | file | none
    existing: str = ""          # nearest existing ancestor (or DEST itself)
    writable: bool = False      # of `existing`
    free_bytes: int | None = None
    empty: bool = True
    rsync_version: tuple[int, int, int] = (0, 0, 0)
    zstd: bool = False
    tar: bool = False
    home: str = ""
    sudo: str = "none"
    cpus: int = 0

    @property
    def has_rsync(self) -> bool:
        return self.rsync_version > (0, 0, 0)


def dest_probe_command(dest: str) -> str:
    """`sh -c SCRIPT sh DEST`: the probe with the path as a positional argument (no interpolation)."""
    return f"{shell.sh_c(DEST_PROBE)} sh {shell.quote(dest)}"


def parse_dest_probe(text: str) -> DestFacts:
    """Parse DEST_PROBE output."""
    f = DestFacts()
    for key, value in key_value_lines(text):
        if key == "kind":
            f.kind = value
        elif key == "existing":
            f.existing = value
        elif key == "writable":
            f.writable = value == "yes"
        elif key == "free_kib":
            f.free_bytes = int(value) * 1024 if value.isdigit() else None
        elif key == "empty":
            f.empty = value == "yes"
        elif key == "rsync":
            f.rsync_version = parse_version(value)
        elif key == "zstd":
            f.zstd = bool(value)
        elif key == "tar":
            f.tar = bool(value)
        elif key == "home":
            f.home = value
        elif key == "cpus" and value.isdigit():
            f.cpus = int(value)
        elif key == "sudo":
            f.sudo = value
    return f


def tar_extract_command(dest_dir: str, *, decompress: str | None, sudo_prefix: str = "") -> str:
    """Remote side of the tar stream: create DEST, then unpack stdin into it (modes, symlinks)."""
    unpack = f"{sudo_prefix}tar -C {shell.quote(dest_dir)} -xpf -"
    if decompress == "zstd":
        unpack = f"zstd -dc | {unpack}"
    return f"{sudo_prefix}mkdir -p {shell.quote(dest_dir)} && {unpack}"


# Arguments: `tree:PATH` (every partial dir under PATH) or `dir:PATH` (PATH/.migrate-partial only).
# Prints `KiB<TAB>path` per kept partial dir (rsync --partial-dir keeps unfinished files there).
PARTIAL_PROBE = r"""
n=$1; shift
for a in "$@"; do
  case $a in
    tree:*) p=${a#tree:}; [ -d "$p" ] && find "$p" -type d -name "$n" -prune -exec du -sk {} + 2>/dev/null ;;
    dir:*) p=${a#dir:}/$n; [ -d "$p" ] && du -sk "$p" 2>/dev/null ;;
  esac
done
true
"""


def partial_probe_command(trees: list[str], dirs: list[str]) -> str:
    """Find the kept partial dirs under each of `trees` and directly in each of `dirs` (never changes anything)."""
    args = [f"tree:{t}" for t in trees] + [f"dir:{d}" for d in dirs]
    return f"{shell.sh_c(PARTIAL_PROBE)} sh {shell.quote(PARTIAL_DIR)} " + " ".join(shell.quote(a) for a in args)


def parse_partial_probe(text: str) -> list[tuple[str, int]]:
    """(path, bytes) per kept partial dir, each listed once."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        kib, sep, path = line.partition("\t")
        if sep and kib.strip().isdigit() and path:
            out[path] = int(kib) * 1024
    return list(out.items())


# $1 = source path on the remote side (pull-data). Prints key=value lines.
SOURCE_PROBE = r"""
s=$1
kv() { printf '%s=%s\n' "$1" "$2"; }
if [ -d "$s" ]; then kv kind dir; elif [ -e "$s" ]; then kv kind file; else kv kind none; fi
[ -e "$s" ] && kv size_kib "$(du -sk "$s" 2>/dev/null | awk '{print $1}')"
kv rsync "$(rsync --version 2>/dev/null | head -n 1)"
kv real_name "$(basename "$(cd "$(dirname "$s")" 2>/dev/null && pwd -P)/$(basename "$s")")"
"""


@dataclass
class SourceFacts:
    """The sending side of a pull."""

    kind: str = "none"
    size_bytes: int = 0
    rsync_version: tuple[int, int, int] = (0, 0, 0)
    real_name: str = ""


def source_probe_command(src: str) -> str:
    """`sh -c SCRIPT sh SRC`."""
    return f"{shell.sh_c(SOURCE_PROBE)} sh {shell.quote(src)}"


def parse_source_probe(text: str) -> SourceFacts:
    """Parse SOURCE_PROBE output."""
    f = SourceFacts()
    for key, value in key_value_lines(text):
        if key == "kind":
            f.kind = value
        elif key == "size_kib" and value.isdigit():
            f.size_bytes = int(value) * 1024
        elif key == "rsync":
            f.rsync_version = parse_version(value)
        elif key == "real_name":
            f.real_name = value
    return f
