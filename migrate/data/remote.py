"""What push-data needs to know about the receiving side, in one round trip (pure builders/parsers)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from migrate.data.rsync import PARTIAL_DIR, parse_version
from migrate.errors import MigrateError
from migrate.remote import shell
from migrate.remote.probe_fragments import FREE_SPACE, KV, SUDO, as_is, assign, yes

# $1 = destination path; $2 = `sudo` to ask whether sudo works (only --sudo and --install-rsync need
# it: `sudo -n true` on a host where it needs a password is a failed attempt in its auth log, and it
# takes the longest of the probe's steps). Prints key=value lines. Never changes anything.
DEST_FACTS = r"""
d=$1
if [ -d "$d" ]; then kv kind dir; elif [ -e "$d" ]; then kv kind file; else kv kind none; fi
p=$(nearest "$d")
kv existing "$p"
if [ -w "$p" ]; then kv writable yes; else kv writable no; fi
kv free_kib "$(free_space "$p" '$4')"
if [ -d "$d" ] && [ -n "$(ls -A "$d" 2>/dev/null | head -n 1)" ]; then kv empty no; else kv empty yes; fi
_rv=$(rsync --version 2>/dev/null)
kv rsync "$(printf '%s\n' "$_rv" | head -n 1)"
case $_rv in *[[:space:]]xxh128[[:space:]]*) kv xxh128 yes ;; *) kv xxh128 no ;; esac
kv zstd "$(command -v zstd 2>/dev/null)"
kv tar "$(tar --version 2>/dev/null | head -n 1)"
kv gnu_head "$(head --version 2>/dev/null | head -n 1)"
kv python3 "$(python3 -V 2>&1 | head -n 1)"
kv home "$HOME"
kv cpus "$(nproc 2>/dev/null)"
if [ "$2" = sudo ]; then kv sudo "$(sudo_mode)"; else kv sudo unasked; fi
"""
DEST_PROBE = KV + SUDO + FREE_SPACE + DEST_FACTS

# The destination probe on rsync's own exec (`--rsync-path`), for a push whose plan needs no facts
# first: $1 DEST; $2 what DEST must be (GUARD_WANTS: resync, a directory with files in it, as a push
# from here left it; fresh, new or an empty directory, for a first copy by --inplace; any, new or a
# directory); $3 the KiB the copy may need at most; $4 the oldest rsync the plan may meet (X.Y.Z); $5 the
# tools the plan relies on, comma-separated (GUARD_TOOLS: `xxh128`, the checksum it names; `!zstd`, it
# chose rsync because the host had no zstd; `-`: none); the rest is rsync's server command line. Where
# DEST is so, writable, with room, a new enough rsync and the tools as the plan took them, the exec
# becomes that rsync; else it changes nothing, prints GUARD_REFUSED and the probe's facts to stderr and
# exits 97, and push-data plans from those facts as from the probe's. One exec instead of two.
GUARD_REFUSED = "migrate-guard: DEST is not as planned"
GUARD_WANTS = ("resync", "fresh", "any")
GUARD_TOOLS = ("xxh128", "zstd", "gnu_head", "python3")  # what `has` in DEST_GUARD knows (each a DestFacts field)
DEST_GUARD = KV + SUDO + FREE_SPACE + "dest_facts() {" + DEST_FACTS + "}\n" + r"""
_gd=$1 _gwant=$2 _gneed=$3 _gmin=$4 _gtools=$5; shift 5
_gfacts=$(dest_facts "$_gd")
fact() { printf '%s\n' "$_gfacts" | sed -n "s/^$1=//p" | head -n 1; }
refuse() { printf '%s\n%s\n' '""" + GUARD_REFUSED + r"""' "$_gfacts" >&2; exit 97; }
version() {  # `rsync  version 3.2.7  protocol version 31` -> 3 2 7
  set -- $(printf '%s\n' "$1" | sed -n 's/^rsync  *version  *v\{0,1\}\([0-9][0-9.]*\).*/\1/p' | tr . ' ')
  [ -n "$1" ] && echo "$1 ${2:-0} ${3:-0}"
}
at_least() {  # at_least A B C X Y Z: A.B.C >= X.Y.Z
  [ "$1" -gt "$4" ] && return 0; [ "$1" -lt "$4" ] && return 1
  [ "$2" -gt "$5" ] && return 0; [ "$2" -lt "$5" ] && return 1
  [ "$3" -ge "$6" ]
}
case $_gwant/$(fact kind)/$(fact empty) in
  resync/dir/no|fresh/none/*|fresh/dir/yes|any/none/*|any/dir/*) ;;
  *) refuse ;;
esac
[ "$(fact writable)" = yes ] || refuse
_gfree=$(fact free_kib)
case $_gfree in ''|*[!0-9]*) ;; *) [ "$_gfree" -ge "$_gneed" ] || refuse ;; esac
_gv=$(version "$(fact rsync)")
[ -n "$_gv" ] || refuse
at_least $_gv $(printf '%s\n' "$_gmin" | tr . ' ') || refuse
has() {  # as parse_dest_probe reads the fact
  case $1 in
    xxh128) [ "$(fact xxh128)" = yes ] ;;
    zstd) [ -n "$(fact zstd)" ] ;;
    python3) case $(fact python3) in "Python 3."[89]*|"Python 3."[1-9][0-9]*) true ;; *) false ;; esac ;;
    gnu_head) case $(fact gnu_head) in *"GNU coreutils"*) true ;; *) false ;; esac ;;
    *) false ;;
  esac
}
for _gt in $(printf '%s\n' "$_gtools" | tr , ' '); do
  case $_gt in -) ;; !*) ! has "${_gt#!}" || refuse ;; *) has "$_gt" || refuse ;; esac
done
exec "$@"
"""


def guarded_rsync_path(dest: str, *, want: str, need_bytes: int, min_version: tuple[int, int, int],
                       tools: tuple[str, ...] = ()) -> str:
    """rsync's `--rsync-path` that runs DEST_GUARD first (`want`: what DEST must be; `need_bytes`: the
    room the copy may need, margin included; `tools`: what the plan relies on the host having, or
    (`!NAME`) not having, of GUARD_TOOLS)."""
    need_kib = -(-need_bytes // 1024)
    assert all(t.lstrip("!") in GUARD_TOOLS for t in tools), tools
    return (f"{shell.sh_c(DEST_GUARD)} sh {shell.quote(dest)} {shell.quote(want)} {need_kib} "
            f"{'.'.join(map(str, min_version))} {shell.quote(','.join(tools) or '-')} rsync")


class GuardRefused(MigrateError):
    """DEST_GUARD found DEST other than planned and changed nothing: `facts` is what it saw."""

    def __init__(self, facts: DestFacts) -> None:
        super().__init__("the destination was not as planned (checked on rsync's exec; nothing changed)")
        self.facts = facts


def guard_refusal(stderr: str) -> DestFacts | None:
    """The facts DEST_GUARD printed when it refused (None: it did not refuse)."""
    _, sep, rest = stderr.partition(GUARD_REFUSED + "\n")
    return parse_dest_probe(rest) if sep else None


@dataclass
class DestFacts:
    """The receiving side of a transfer."""

    kind: str = "none"          # dir | file | none
    existing: str = ""          # nearest existing ancestor (or DEST itself)
    writable: bool = False      # of `existing`
    free_bytes: int | None = None
    empty: bool = True
    rsync_version: tuple[int, int, int] = (0, 0, 0)
    xxh128: bool = False        # its rsync lists the xxh128 checksum (so it can be named: no negotiation)
    zstd: bool = False
    tar: bool = False
    gnu_head: bool = False      # GNU coreutils' head: `head -c` reads no further (file streams)
    python3: bool = False       # python3 >= 3.8 (as the agent): it writes small files' streams (agent/receive.py)
    home: str = ""
    sudo: str = "unasked"       # root | nopasswd | password | none; unasked: the probe was not asked
    cpus: int = 0

    @property
    def has_rsync(self) -> bool:
        return self.rsync_version > (0, 0, 0)


def _probe_args(dest: str, sudo: bool) -> str:
    return shell.quote(dest) + (" sudo" if sudo else "")


def dest_probe_command(dest: str, *, sudo: bool = False) -> str:
    """`sh -c SCRIPT sh DEST [sudo]`: the probe with the path as a positional argument (no
    interpolation); `sudo`: also ask whether sudo works there."""
    return f"{shell.sh_c(DEST_PROBE)} sh {_probe_args(dest, sudo)}"


def _kib_to_bytes(value: str) -> int | None:
    return int(value) * 1024 if value.isdigit() else None


def _python38(value: str) -> bool:
    """`python3 -V`'s `Python 3.11.2`: at least 3.8 (agent/receive.py's, as the agent's)."""
    m = re.match(r"Python 3\.(\d+)", value)
    return m is not None and int(m.group(1)) >= 8


def _digits(value: str) -> int:
    if not value.isdigit():
        raise ValueError(value)
    return int(value)


DEST_KEYS = {"kind": ("kind", as_is), "existing": ("existing", as_is), "writable": ("writable", yes),
             "free_kib": ("free_bytes", _kib_to_bytes), "empty": ("empty", yes),
             "rsync": ("rsync_version", parse_version), "xxh128": ("xxh128", yes), "zstd": ("zstd", bool),
             "tar": ("tar", bool),
             "gnu_head": ("gnu_head", lambda v: "GNU coreutils" in v), "python3": ("python3", _python38),
             "home": ("home", as_is), "cpus": ("cpus", _digits), "sudo": ("sudo", as_is)}


def parse_dest_probe(text: str) -> DestFacts:
    """Parse DEST_PROBE output."""
    f = DestFacts()
    assign(f, text, DEST_KEYS)
    return f


# `sh -c COMMAND` gets the command as one argument, and Linux caps one argument at 128 KiB
MAKE_DIRS_MAX_BYTES = 64 << 10


def make_dirs_words(dest_dir: str, dirs: list[str]) -> list[str] | None:
    """DEST/DIR for each of `dirs` (relative), for `mkdir -p` in a tar stream's own command; None when
    they would make the command too long (then they travel in a stream of their own)."""
    base = dest_dir.rstrip("/") or "/"
    words = [f"{base}/{d}" for d in dirs if d not in ("", ".")]
    return words if sum(len(shell.quote(w)) + 1 for w in words) <= MAKE_DIRS_MAX_BYTES else None


def tar_extract_command(dest_dir: str, *, decompress: str | None, sudo_prefix: str = "",
                        make_dirs: list[str] | None = None) -> str:
    """Remote side of the tar stream: create DEST (and `make_dirs`, from `make_dirs_words`), then unpack
    stdin into it (modes, symlinks); `decompress="zstd"`: stdin is a zstd stream."""
    unpack = f"{sudo_prefix}tar -C {shell.quote(dest_dir)} -xpf -"
    if decompress == "zstd":
        unpack = f"zstd -dc | {unpack}"
    made = " ".join(shell.quote(d) for d in [dest_dir, *(make_dirs or [])])
    return f"{sudo_prefix}mkdir -p {made} && {unpack}"


# receive DEST: DEST is the directory the records land in; stdin = records, each a header line
# `KIND SIZE MODE MTIME NAMELEN`, then NAMELEN bytes of the name (relative to DEST, any bytes but NUL),
# then (KIND f) SIZE bytes of the file: written to DIR/.migrate-partial/NAME (0700, the file 0600:
# where an interrupted rsync --partial-dir keeps a file, so a rerun's rsync resumes it in place),
# then given its mode and time and renamed into place. KIND d: a directory's mode and time (they
# come after its files). The last record, `e COUNT`, says how many files were sent: a stream cut
# between two files fails too.
# GNU head -c reads exactly SIZE bytes from a pipe, and `read` one byte at a time: nothing is over-read.
FILE_RECEIVER = r"""
fail() { printf 'migrate stream: %s\n' "$*" >&2; exit 3; }
take() { head -c "$1"; printf x; }  # LEN bytes, kept whole by the x (strip it: ${v%x})
receive() {
  d=$1; n=0; u=$(umask)
  while IFS=' ' read -r k size mode mtime len; do
    case $k in
      e) [ "$size" = "$n" ] || fail "the stream ended after $n of $size files"; exit 0 ;;
      f|d) ;;
      *) fail "not a record: ${k%"${k#?}"}..." ;;
    esac
    name=$(take "$len"); name=${name%x}
    case /$name/ in */../*) fail "refusing the name $name" ;; esac
    p=$d/$name
    if [ "$k" = d ]; then
      mkdir -p -- "$p" && chmod "$mode" -- "$p" && touch -d "@$mtime" -- "$p" || exit 3
      continue
    fi
    part=${p%/*}/.migrate-partial; t=$part/${p##*/}
    mkdir -p -- "${p%/*}" || exit 3
    umask 077  # like rsync's temporary files: nobody else reads a file before it has its own mode
    mkdir -p -- "$part" && head -c "$size" > "$t" || exit 3
    umask "$u"
    got=$(wc -c < "$t")
    [ "$got" -eq "$size" ] || fail "the stream broke after $got of $size bytes of $name (kept in $t)"
    chmod "$mode" -- "$t" && touch -d "@$mtime" -- "$t" && mv -f -- "$t" "$p" || exit 3
    rmdir -- "$part" 2>/dev/null
    n=$((n + 1))
  done
  fail "the stream ended after $n files"
}
"""
FILE_STREAM = FILE_RECEIVER + 'receive "$1"\n'

# DEST_PROBE, then the session waits for lines: `ping` is answered `pong` (one round trip, timed by
# push-data: no exec, no session to set up); `stream LEN` and LEN bytes of a directory make it a
# file stream into that directory (push-data decides after reading the facts, and saves the
# stream's own exec: two round trips on a far link); `pystream LEN CODELEN`, then the receiver's
# Python source (agent/receive.py) and the directory, the same with python3 writing the files (it
# reads both itself: no `head` needed); anything else, or EOF, ends it.
PY_BOOT = ("import sys;b=sys.stdin.buffer;c=b.read(int(sys.argv[2]));d=b.read(int(sys.argv[1]));"
           "g={'__name__':'receive'};exec(compile(c,'receive','exec'),g);sys.exit(g['main'](d))")
DEST_PROBE_HELD = DEST_PROBE + FILE_RECEIVER + f"PY_BOOT={shell.quote(PY_BOOT)}\n" + r"""
kv probed .
while IFS=' ' read -r w len clen; do
  case $w in
    ping) echo pong ;;
    stream) into=$(take "$len"); receive "${into%x}" ;;
    pystream) exec python3 -I -S -c "$PY_BOOT" "$len" "$clen" ;;
    *) exit 0 ;;
  esac
done
"""


def file_stream_command(dest_dir: str, *, sudo_prefix: str = "", python: bool = False) -> str:
    """The receiving side of a file stream (FILE_STREAM) into `dest_dir`; `python`: python3 writes the
    files (agent/receive.py: no process per file)."""
    if python:
        return f"{sudo_prefix}python3 -I -S -c {shell.quote(python_receiver())} {shell.quote(dest_dir)}"
    return f"{sudo_prefix}{shell.sh_c(FILE_STREAM)} sh {shell.quote(dest_dir)}"


@functools.lru_cache(maxsize=1)
def python_receiver() -> str:
    """agent/receive.py's source: what `python3 -c` runs on the host."""
    from migrate.agent import receive
    with open(receive.__file__, encoding="utf-8") as fh:
        return fh.read()


def held_probe_command(dest: str, *, sudo: bool = False) -> str:
    """DEST_PROBE_HELD for DEST: the probe, then maybe a file stream on the same exec."""
    return f"{shell.sh_c(DEST_PROBE_HELD)} sh {_probe_args(dest, sudo)}"


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
SOURCE_PROBE = KV + r"""
s=$1
if [ -d "$s" ]; then kv kind dir; elif [ -e "$s" ]; then kv kind file; else kv kind none; fi
[ -e "$s" ] && kv size_kib "$(du -sk "$s" 2>/dev/null | awk '{print $1}')"
_rv=$(rsync --version 2>/dev/null)
kv rsync "$(printf '%s\n' "$_rv" | head -n 1)"
case $_rv in *[[:space:]]xxh128[[:space:]]*) kv xxh128 yes ;; *) kv xxh128 no ;; esac
kv real_name "$(basename "$(cd "$(dirname "$s")" 2>/dev/null && pwd -P)/$(basename "$s")")"
"""


@dataclass
class SourceFacts:
    """The sending side of a pull."""

    kind: str = "none"
    size_bytes: int = 0
    rsync_version: tuple[int, int, int] = (0, 0, 0)
    xxh128: bool = False
    real_name: str = ""


def source_probe_command(src: str) -> str:
    """`sh -c SCRIPT sh SRC`."""
    return f"{shell.sh_c(SOURCE_PROBE)} sh {shell.quote(src)}"


SOURCE_KEYS = {"kind": ("kind", as_is), "size_kib": ("size_bytes", lambda v: _digits(v) * 1024),
               "rsync": ("rsync_version", parse_version), "xxh128": ("xxh128", yes),
               "real_name": ("real_name", as_is)}


def parse_source_probe(text: str) -> SourceFacts:
    """Parse SOURCE_PROBE output."""
    f = SourceFacts()
    assign(f, text, SOURCE_KEYS)
    return f
