"""rsync as data: argv builders, progress/stats parsers and exit codes in plain sentences (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PARTIAL_DIR = ".migrate-partial"
IGNORE_FILE = ".migrateignore"

# rsync(1) EXIT VALUES, said so that a researcher knows what to do next.
EXIT_SENTENCES = {
    1: "rsync rejected its arguments (a migrate bug or an unusual rsync version)",
    2: "the two rsyncs cannot talk to each other (protocol incompatibility)",
    3: "some files or directories could not be selected or created (is DEST writable? try --sudo)",
    5: "rsync could not start on the remote side",
    10: "the network connection failed (socket I/O)",
    11: "a file or directory could not be written on the receiving side",
    12: "the connection broke during the transfer",
    13: "rsync could not write its diagnostics",
    14: "rsync could not start a process (IPC)",
    20: "the transfer was interrupted",
    21: "a child process failed",
    22: "rsync ran out of memory",
    23: "some files were not transferred (errors listed below)",
    24: "some source files vanished during the transfer (listed below); everything else arrived",
    25: "the --max-delete limit stopped deletions",
    30: "the transfer timed out (no data for too long)",
    35: "timed out waiting for the remote side to connect",
    255: "the SSH connection failed or broke",
}
# exit codes after which simply running the same command again finishes the job
RESUMABLE_EXITS = (10, 12, 20, 30, 35, 255)
RESUME_HINT = "rerun the same command: finished files are kept and partial ones resume"
DISK_FULL_HINT = ("free space on the receiving side, then rerun the same command: finished files are kept, and "
                  f"an unfinished one waits in {PARTIAL_DIR}/ next to it (it holds space; delete that folder to "
                  "start the file over)")


def explain_exit(code: int, stderr: str) -> tuple[str, list[str]]:
    """A sentence for rsync's exit code, plus the affected files/lines worth showing."""
    sentence = EXIT_SENTENCES.get(code, f"rsync failed with exit code {code}")
    if "No space left on device" in stderr:
        sentence = "the receiving side ran out of disk space (No space left on device)"
    elif "Read-only file system" in stderr:
        sentence = "the receiving side's file system is read-only"
    elif re.search(r'mkdir .* failed: File exists', stderr):
        sentence = "a directory on the receiving side could not be created: something else created it at the same time"
    details = []
    for line in stderr.splitlines():
        line = line.strip()
        if not line or line.startswith("rsync error:"):
            continue
        m = re.match(r'^file has vanished: "(.*)"', line)
        if m:
            details.append(f"vanished: {m.group(1)}")
            continue
        m = re.match(r'^rsync: \[?\w*\]?\s*(.*)$', line)
        if m:
            details.append(m.group(1))
    return sentence, details[:20]


def failure_hint(code: int, stderr: str) -> str | None:
    """What to do after rsync failed with `code` (None when the sentence already says it)."""
    if "No space left on device" in stderr:
        return DISK_FULL_HINT
    if code in RESUMABLE_EXITS or re.search(r'mkdir .* failed: File exists', stderr):
        return RESUME_HINT
    return None


def rsh_join(argv: list[str]) -> str:
    """Join an ssh argv into rsync's -e string (rsync splits on spaces and honours '' and "" only)."""
    words = []
    for arg in argv:
        if arg and not re.search(r"[\s'\"\\]", arg):
            words.append(arg)
        else:
            words.append("'" + arg.replace("'", "''") + "'")
    return " ".join(words)


def parse_version(text: str) -> tuple[int, int, int]:
    """`rsync  version 3.2.7  protocol version 31` -> (3, 2, 7); (0, 0, 0) when unknown."""
    m = re.search(r"version\s+v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def lists_xxh128(version_text: str) -> bool:
    """Whether `rsync --version`'s checksum list holds xxh128 (rsync >= 3.2 built with xxhash)."""
    return re.search(r"\sxxh128\s", version_text) is not None


@dataclass
class RsyncOptions:
    """The rsync knobs migrate exposes."""

    excludes: list[str] = field(default_factory=list)
    exclude_from: list[str] = field(default_factory=list)
    delete: bool = False
    bwlimit: str | None = None
    checksum: bool = False
    compress: bool = False
    mkpath: bool = True
    rsync_path: str | None = None
    dry_run: bool = False
    itemize: bool = False
    protect_args: bool = False
    files_from: str | None = None
    whole_list: bool = False         # --no-inc-recursive: a small tree's whole list first, a round trip fewer
    inplace: bool = False            # --inplace, not --partial-dir: a first copy of small files skips a rename each
    timeout: int | None = None
    chown: str | None = None         # "UID:GID": the receiver (root) gives every file this owner
    # --checksum-choice, where both sides have it: rsync then skips the exchange that picks one, a round
    # trip fewer (20k x 4 KiB over an 80 ms link: 7.37 -> 7.28 s); xxh128 is what that exchange picks
    checksum_choice: str | None = None


def rsync_argv(sources: list[str], dest: str, rsh: str | None, opts: RsyncOptions, *,
               progress: bool = True, stats: bool = False) -> list[str]:
    """The full rsync command line (archive mode, resumable, filters, progress) for one transfer."""
    # --inplace (a first copy of small files, plan.single_rsync_options) writes each file under its own
    # name, 0600 until whole, instead of a temporary name and a rename: nothing there to replace
    keep = "--inplace" if opts.inplace else f"--partial-dir={PARTIAL_DIR}"
    argv = ["rsync", "-a", keep, f"--exclude={PARTIAL_DIR}/", f"--filter=:- {IGNORE_FILE}"]
    if progress:
        # migrate's bar takes its total from its own size scan, so rsync needs no --no-inc-recursive for
        # it: incremental recursion lets files flow while the sender still lists a big tree
        argv += ["--info=progress2"]
    if opts.whole_list:
        # a small tree: the whole list in one go saves a round trip of incremental recursion's (measured
        # over an 80 ms link: 0.70 -> 0.61 s for one file, 6.48 -> 6.40 s for 68 MiB in 5 files)
        argv += ["--no-inc-recursive"]
    if stats:
        argv += ["--stats"]
    if opts.itemize:
        argv += ["--itemize-changes"]
    if opts.dry_run:
        argv += ["--dry-run"]
    if opts.mkpath:
        argv += ["--mkpath"]
    if opts.protect_args:
        argv += ["--protect-args"]
    for pattern in opts.excludes:
        argv += [f"--exclude={pattern}"]
    for path in opts.exclude_from:
        argv += [f"--exclude-from={path}"]
    if opts.delete:
        argv += ["--delete"]
    if opts.bwlimit:
        argv += [f"--bwlimit={opts.bwlimit}"]
    if opts.checksum:
        argv += ["--checksum"]
    if opts.checksum_choice:
        argv += [f"--checksum-choice={opts.checksum_choice}"]
    if opts.compress:
        argv += ["--compress", "--compress-choice=zstd", "--compress-level=1"]
    if opts.rsync_path:
        argv += [f"--rsync-path={opts.rsync_path}"]
    if opts.timeout:
        argv += [f"--timeout={opts.timeout}"]
    if opts.chown:
        argv += [f"--chown={opts.chown}"]
    if opts.files_from:
        argv += [f"--files-from={opts.files_from}", "--from0"]
    if rsh:
        argv += ["-e", rsh]
    argv += ["--", *sources, dest]
    return argv


_PROGRESS2 = re.compile(
    r"^\s*(?P<bytes>[\d,.]+)\s+(?P<pct>\d+)%\s+(?P<rate>[\d.,]+\s*[kMGT]?B/s)\s+(?P<eta>[\d:]+)"
    r"(?:\s+\(xfr#(?P<xfr>\d+),\s+(?:to|ir)-chk=(?P<left>\d+)/(?P<total>\d+)\))?")


@dataclass
class Progress:
    """One `--info=progress2` update."""

    bytes: int
    percent: int
    rate: str
    eta: str
    transferred_files: int | None = None
    files_left: int | None = None
    files_total: int | None = None


def parse_progress(line: str) -> Progress | None:
    """Parse one progress2 line (`  1,234,567  45%  12.34MB/s  0:00:10 (xfr#3, to-chk=5/9)`)."""
    m = _PROGRESS2.match(line)
    if not m:
        return None
    return Progress(
        bytes=int(re.sub(r"[,.]", "", m.group("bytes"))),
        percent=int(m.group("pct")),
        rate=m.group("rate").replace(" ", ""),
        eta=m.group("eta"),
        transferred_files=int(m.group("xfr")) if m.group("xfr") else None,
        files_left=int(m.group("left")) if m.group("left") else None,
        files_total=int(m.group("total")) if m.group("total") else None,
    )


@dataclass
class Stats:
    """What `--stats` reports."""

    files: int = 0
    regular_files_transferred: int = 0
    total_size: int = 0
    transferred_size: int = 0
    sent_bytes: int = 0
    received_bytes: int = 0
    deleted: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


def _num(text: str) -> int:
    return int(re.sub(r"[,.]", "", text))


def parse_stats(text: str) -> Stats:
    """Parse `--stats` (and `--itemize-changes`) output."""
    s = Stats()
    patterns = {
        "files": r"^Number of files: ([\d,.]+)",
        "regular_files_transferred": r"^Number of regular files transferred: ([\d,.]+)",
        "total_size": r"^Total file size: ([\d,.]+)",
        "transferred_size": r"^Total transferred file size: ([\d,.]+)",
        "sent_bytes": r"^Total bytes sent: ([\d,.]+)",
        "received_bytes": r"^Total bytes received: ([\d,.]+)",
    }
    for line in text.splitlines():
        for attr, pat in patterns.items():
            m = re.match(pat, line)
            if m:
                setattr(s, attr, _num(m.group(1)))
        if line.startswith("*deleting "):
            s.deleted.append(line[len("*deleting "):].strip())
        elif re.match(r"^[<>ch.*][fdLDS][.+cstpoguax?]{9}\s", line):
            s.changed.append(line[12:])
    return s


def unescape_name(name: str) -> str:
    """rsync prints unusual bytes as `\\#ooo`; turn them back into the real (UTF-8) name."""
    if "\\#" not in name:
        return name
    raw = re.sub(rb"\\#([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), name.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape")


@dataclass
class ListedEntry:
    """One line of `rsync --list-only`."""

    path: str
    size: int
    kind: str  # "f" file, "d" dir, "l" symlink, "o" other


def parse_list_only(text: str) -> list[ListedEntry]:
    """Parse `rsync -a --list-only SRC/` output into entries (paths relative to SRC)."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 4)
        if len(parts) < 5:
            continue
        perms, size, _date, _time, name = parts
        kind = {"-": "f", "d": "d", "l": "l"}.get(perms[0], "o")
        if kind == "l" and " -> " in name:
            name = name.split(" -> ", 1)[0]
        name = unescape_name(name)
        if name == ".":
            continue
        out.append(ListedEntry(path=name, size=_num(size), kind=kind))
    return out
