"""A recording host for orchestrator tests: it runs nothing, remembers everything.

`FakeHost` is a `migrate.remote.host.Host` (the interface `Remote` and `OpenSshSession` implement;
tests/unit/test_fakehost_is_a_host.py has mypy check it): `run` (with `sudo=`), `put_bytes`/`put_file`,
`read_text`/`read_bytes`, `stream_in`/`stream_out`, `forward`, `home`,
`sudo_mode`/`check_sudo`/`sudo_password`, `openssh_argv`, `target`/`name`, `close` and the context
manager. Every command is recorded with whether it ran as root, every file write with its path and
bytes, every stream with its command (and the bytes sent), every forward with its `-L` spec; bulk
transfers that run as local programs (rsync, tar and cat streams over `ssh`) are recorded as streams
through `RecordingTransfers`, which push-data and pull-data take in place of the real runners in
`migrate.data.transfer`.

Replies come from a table: the first `(pattern, Reply)` whose regular expression is found in the
command answers it; anything else answers exit 0 with no output.

`is_mutating(command)` is the documented classifier behind the dry-run tests: a command changes the
host when any of its simple commands (split outside quotes at `;`, `&&`, `||`, `|`, parentheses,
newlines) starts with one of MUTATING_PROGRAMS (after `sudo [options]`/`env`/`VAR=value` prefixes, and
inside `sh -c`/`sg GROUP -c` scripts), is a
`docker`/`systemctl`/`apt-get` subcommand or a `dpkg`/`sed`/`tar` option that changes state,
redirects output into a file other than /dev/null (`>`, `>>`), or is an rsync without
`--dry-run`/`-n`. Read-only probes (`[ -d ]`, `cat`, `df`, `command -v`, `ls`, `id`,
`docker images`, `apt-cache policy`, `rsync --version`, ...) are not, nor is writing to and
removing a file named by a variable the same command set from `mktemp` (a probe's scratch file).
It is deliberately conservative otherwise: any other write counts as mutating.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable

from migrate.remote.host import Feed, Host, Progress
from migrate.remote.openssh import forward_spec
from migrate.remote.result import RunResult

# programs that change files, packages, users or services whatever their arguments
MUTATING_PROGRAMS = frozenset({
    "mkdir", "rm", "rmdir", "mv", "cp", "tee", "chmod", "chown", "chgrp", "touch", "ln", "install", "dd",
    "truncate", "usermod", "useradd", "groupadd", "gpasswd", "apt", "mkfifo", "kill", "pkill", "reboot",
    "shutdown", "update-alternatives", "nvidia-ctk", "gpg", "curl", "wget",
})
# subcommands that change state, for programs that also have read-only ones
MUTATING_SUBCOMMANDS = {
    "apt-get": {"install", "remove", "purge", "upgrade", "dist-upgrade", "update", "autoremove", "download"},
    "docker": {"load", "tag", "rm", "rmi", "run", "create", "start", "stop", "kill", "import", "pull", "push",
               "exec", "prune", "commit", "cp", "restart", "update"},
    "systemctl": {"restart", "start", "stop", "reload", "enable", "disable", "mask", "unmask", "daemon-reload",
                  "kill", "reset-failed"},
    "ray": {"start", "stop"},        # migrate cluster (issue 14)
    "uv": {"venv", "pip"},
}
_DOCKER_GROUPS = ("image", "container", "volume", "network", "system", "builder")
_SEPARATORS = set(";|&()\n")
_COMMENT_LINE = re.compile(r"(?m)^\s*#.*$")
_MKTEMP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=\$\(mktemp\b")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PREFIXES = {"sudo", "env", "exec", "nohup", "nice", "command", "then", "else", "do", "!", "{", "$", "if", "while"}
_HARMLESS_TARGETS = ("/dev/null", "/dev/stderr", "/dev/stdout")
_DPKG_CHANGES = ("-i", "--install", "-r", "--remove", "-P", "--purge", "--configure", "--unpack", "--set-selections")


def _simple_commands(command: str) -> list[list[str]]:
    """Shell words per simple command: split at `;`, `&&`, `||`, `|`, `(`, `)` and newlines outside
    quotes (comment lines dropped); a redirection stays in its command as `>`/`>>` and its target."""
    command = _COMMENT_LINE.sub("", command)
    lex = shlex.shlex(command, posix=True, punctuation_chars=";|&()<>\n")
    lex.whitespace = " \t\r"
    lex.commenters = ""
    try:
        tokens = list(lex)
    except ValueError:  # unbalanced quotes: judge the raw words
        tokens = command.split()
    out: list[list[str]] = [[]]
    for t in tokens:
        if t and set(t) <= _SEPARATORS:
            out.append([])
        else:
            out[-1].append(t)
    return [c for c in out if c]


_SUDO_OPTION_ARGS = {"-p", "-u", "-g", "-C", "-D", "-h", "-r", "-t", "-U"}  # sudo options that take a value


def _program(words: list[str]) -> list[str]:
    """Drop `sudo -S -k -p ''`, `env`, `VAR=value`, `then`... prefixes: what is left starts with the program."""
    i = 0
    in_sudo = False
    while i < len(words):
        w = words[i]
        if in_sudo and w.startswith("-"):
            i += 2 if w in _SUDO_OPTION_ARGS else 1
            continue
        if w in _PREFIXES or _ASSIGNMENT.match(w):
            in_sudo = w == "sudo"
            i += 1
            continue
        break
    return words[i:]


def _short_flags(args: list[str]) -> str:
    return "".join(a[1:] for a in args if a.startswith("-") and not a.startswith("--"))


def _mutating_words(words: list[str], temps: set[str]) -> bool:
    for i, w in enumerate(words):
        if w.startswith(">") and "&" not in w:
            target = words[i + 1] if i + 1 < len(words) else ""
            if target not in _HARMLESS_TARGETS and not target.startswith("&") and target not in temps:
                return True
    words = _program([w for w in words if not w.startswith(("<", ">"))])
    if not words:
        return False
    prog, args = words[0].rsplit("/", 1)[-1], words[1:]
    if prog == "rsync":
        return "--version" not in args and "--dry-run" not in args and "n" not in _short_flags(args)
    if prog == "tar":  # extracting writes files; creating to stdout (`tar -c`, `tar cf -`) does not
        first = args[0] if args else ""
        return "--extract" in args or "x" in _short_flags(args) or (not first.startswith("-") and "x" in first)
    if prog == "sed":
        return any(a.startswith("-i") or a == "--in-place" for a in args)
    if prog == "dpkg":
        return any(a.startswith(_DPKG_CHANGES) for a in args)
    if prog in ("sh", "bash") and args[:1] == ["-c"] and len(args) > 1:
        return is_mutating(args[1])
    if prog == "sg" and len(args) > 2 and args[1] == "-c":  # `sg docker -c SCRIPT`: the script decides
        return is_mutating(args[2])
    if prog == "rm" and args and all(a.startswith("-") or a in temps for a in args):
        return False
    if prog == "docker" and args[:1] and args[0] in _DOCKER_GROUPS:  # `docker image rm`, not `docker image ls`
        args = args[1:]
    if prog in MUTATING_SUBCOMMANDS:
        return bool(args) and args[0] in MUTATING_SUBCOMMANDS[prog]
    return prog in MUTATING_PROGRAMS


def is_mutating(command: str) -> bool:
    """Whether a shell command line (or a stream's argv, joined) could change the host (see module doc)."""
    temps = {form for var in _MKTEMP.findall(command) for form in (f"${var}", f"${{{var}}}")}
    return any(_mutating_words(words, temps) for words in _simple_commands(command))


@dataclass
class Reply:
    """A canned answer: what the command prints and its exit code."""

    stdout: str = ""
    exit_code: int = 0
    stderr: str = ""


@dataclass
class Recorded:
    """One thing the orchestrator asked of the host."""

    kind: str            # "run" | "held" (a probe held open: changes nothing unless streamed into) | "file" |
    #                      "stream" | "forward"
    command: str         # the command line, the file path, the stream's command (or argv joined), the -L spec
    root: bool = False
    data: bytes = b""

    @property
    def mutating(self) -> bool:
        return self.kind == "file" or (self.kind != "held" and is_mutating(self.command))


@dataclass
class FakeTarget:
    """What `OpenSshSession.target` / `Remote.target` offer."""

    alias: str = "gpu"
    hostname: str = "10.0.0.7"
    port: int = 22
    user: str = "alice"

    @property
    def display(self) -> str:
        return f"{self.user}@{self.alias}"


@dataclass
class FakeHost:
    """A host that answers from `replies` and records every command, file and stream in `log`."""

    replies: list[tuple[str, Reply]] = field(default_factory=list)
    target: FakeTarget = field(default_factory=FakeTarget)
    sudo: str = "nopasswd"       # what sudo_mode() answers
    log: list[Recorded] = field(default_factory=list)
    closed: bool = False
    # how many `forwards_alive()` calls answer True before the connection "dies" (None: never dies)
    forwards_alive_for: int | None = None
    login_rtt: float | None = None  # what the master's login timed (login_round_trip); None: not timed

    def reply(self, pattern: str, stdout: str = "", exit_code: int = 0, stderr: str = "") -> FakeHost:
        """Answer commands matching `pattern` (a regular expression, searched) with this output."""
        self.replies.append((pattern, Reply(stdout, exit_code, stderr)))
        return self

    def _answer(self, command: str) -> Reply:
        return next((r for p, r in self.replies if re.search(p, command)), Reply())

    # -- the host interface ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.target.display

    def run(self, command: str, *, sudo: bool = False, check: bool = True, stdin: str | None = None,
            timeout: float | None = None, what: str | None = None, sudo_mode: str | None = None) -> RunResult:
        """Record the command; answer from the table (raising like the real hosts when `check`)."""
        self.log.append(Recorded("run", command, root=sudo, data=(stdin or "").encode()))
        answer = self._answer(command)
        res = RunResult(command=command, exit_code=answer.exit_code, stdout=answer.stdout, stderr=answer.stderr)
        if check:
            res.raise_for_failure(what, self.name)
        return res

    def put_bytes(self, data: bytes, remote_path: str, *, mode: int = 0o600, sudo: bool = False) -> None:
        self.log.append(Recorded("file", remote_path, root=sudo, data=data))

    def put_file(self, source: bytes | Path, remote_path: str, *, mode: int = 0o600,
                 progress: Progress | None = None) -> None:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        self.log.append(Recorded("file", remote_path, data=data))
        if progress:
            progress(len(data), len(data))

    def read_text(self, remote_path: str, *, sudo: bool = False) -> str | None:
        res = self.run(f"cat {shlex.quote(remote_path)}", sudo=sudo, check=False)
        return res.stdout if res.ok else None

    def read_bytes(self, remote_path: str) -> bytes:
        return self.run(f"cat {shlex.quote(remote_path)}", what=f"read {remote_path}").stdout.encode()

    def stream_in(self, command: str, feed: Feed, *, what: str, hint: str | None = None) -> None:
        """Record the stream and the bytes it would send; a non-zero canned exit fails like the real one."""
        if isinstance(feed, bytes):
            data = feed
        else:
            buf = io.BytesIO()
            feed(buf)
            data = buf.getvalue()
        self.log.append(Recorded("stream", command, data=data))
        answer = self._answer(command)
        if answer.exit_code:
            from migrate.errors import MigrateError
            raise MigrateError(f"{what} to {self.name} failed: {answer.stderr or answer.exit_code}", hint=hint)

    def stream_out(self, command: str, sink: IO[bytes], *, what: str) -> None:
        self.log.append(Recorded("stream", command))
        answer = self._answer(command)
        sink.write(answer.stdout.encode())
        if answer.exit_code:
            from migrate.errors import MigrateError
            raise MigrateError(f"{what} from {self.name} failed: {answer.stderr or answer.exit_code}")

    def follow(self, command: str, sink: IO[bytes], on_stderr: Callable[[str], None], *, what: str) -> int:
        self.log.append(Recorded("stream", command))
        answer = self._answer(command)
        sink.write(answer.stdout.encode())
        for line in answer.stderr.splitlines(keepends=True):
            on_stderr(line)
        return answer.exit_code

    @contextlib.contextmanager
    def forward(self, local_port: int, remote: int | str, *, bind: str = "127.0.0.1",
                remote_host: str = "127.0.0.1") -> Iterator[None]:
        self.log.append(Recorded("forward", forward_spec(local_port, remote, bind=bind, remote_host=remote_host)))
        yield

    def login_round_trip(self) -> float | None:
        return self.login_rtt

    def forwards_alive(self) -> bool:
        """True until `forwards_alive_for` calls have answered it (then the master has "died")."""
        if self.forwards_alive_for is None:
            return True
        self.forwards_alive_for -= 1
        return self.forwards_alive_for >= 0

    def home(self) -> str:
        return self.run('printf %s "$HOME"', what="read $HOME").stdout or f"/home/{self.target.user}"

    def sudo_mode(self) -> str:
        return self.sudo

    def set_sudo_mode(self, mode: str) -> None:
        self.sudo = mode

    def check_sudo(self) -> str:
        return self.sudo

    def sudo_password(self) -> str:
        return "fake-password"

    def open(self) -> FakeHost:
        return self

    def reconnect(self) -> None:
        pass

    def openssh_argv(self, *, extra: list[str] | None = None) -> list[str]:
        return ["ssh", "-o", "BatchMode=yes", *(extra or []), self.target.alias]

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what tests read -------------------------------------------------------------------------
    def commands(self, *, root: bool | None = None) -> list[str]:
        """Commands run on the host, in order (only those as root / not as root when `root` is given)."""
        return [r.command for r in self.log if r.kind in ("run", "held") and (root is None or r.root == root)]

    def streams(self) -> list[str]:
        return [r.command for r in self.log if r.kind == "stream"]

    def forwards(self) -> list[str]:
        """The `-L` specs of the forwards opened, in order."""
        return [r.command for r in self.log if r.kind == "forward"]

    def mutations(self) -> list[Recorded]:
        """Every recorded command, file or stream that could change the host."""
        return [r for r in self.log if r.mutating]

    def record_stream(self, argv: list[str], remote_command: str = "") -> None:
        """A local program's stream: an rsync argv, or the command an `ssh` stream runs on the host."""
        self.log.append(Recorded("stream", remote_command or shlex.join(argv)))

    @functools.cached_property
    def transfers(self) -> RecordingTransfers:
        """The recording stand-in for the local transfer runners (one per host, so tests can set its answers)."""
        return RecordingTransfers(self)


def guard_admits(facts, want: str, need_kib: int, oldest: tuple, tools: str = "-") -> bool:
    """What data/remote.py's DEST_GUARD decides for these facts (tests/unit/test_dest_guard.py checks
    the two agree), for the recording host's guarded rsyncs."""
    shape = {"resync": facts.kind == "dir" and not facts.empty,
             "fresh": facts.kind == "none" or (facts.kind == "dir" and facts.empty),
             "any": facts.kind in ("none", "dir")}[want]
    room = facts.free_bytes is None or facts.free_bytes // 1024 >= need_kib
    as_planned = all(not getattr(facts, t[1:]) if t.startswith("!") else getattr(facts, t)
                     for t in tools.split(",") if t != "-")
    return shape and facts.writable and room and facts.has_rsync and facts.rsync_version >= oldest and as_planned


@dataclass
class RecordingTransfers:
    """Stands in for `migrate.data.transfer`'s runners: records each rsync/tar/cat stream on `host`.

    `dry_run_stats` answers `rsync_dry_run` (a `Stats`, or a function of the argv returning one);
    real transfers answer an empty outcome unless `outcome` is set."""

    host: FakeHost
    dry_run_stats: object = None
    outcome: object = None
    local_version: tuple[int, int, int] = (3, 2, 7)
    local_xxh128: bool = True     # this machine's rsync lists xxh128
    round_trip: float = 0.0005    # what `link_round_trip` measures (seconds): a LAN by default
    round_trip_checks: int = 0
    streamed: list = field(default_factory=list)  # each file stream's (name, kind) records
    held_reaped: int = 0

    def _stats(self, argv: list[str]):
        from migrate.data.rsync import Stats

        s = self.dry_run_stats
        return s(argv) if callable(s) else (s or Stats())

    def _outcome(self):
        from migrate.data.rsync import Stats
        from migrate.data.transfer import RunOutcome

        return self.outcome or RunOutcome(stats=Stats(), seconds=0.0)

    def rsync_version(self) -> tuple[int, int, int]:
        return self.local_version

    def rsync_xxh128(self) -> bool:
        return self.local_xxh128

    def rsync_dry_run(self, argv_builder: Callable, opts) -> object:
        from migrate.data.rsync import RsyncOptions

        argv = argv_builder(RsyncOptions(**{**opts.__dict__, "dry_run": True, "itemize": True}))
        self.host.record_stream(argv)
        return self._stats(argv)

    def run_rsync(self, argv: list[str], **_: object) -> object:
        from migrate.data.remote import GuardRefused

        self.host.record_stream(argv)
        refused = self._guard_refusal(argv)
        if refused is not None:
            raise GuardRefused(refused)
        return self._outcome()

    def _guard_refusal(self, argv: list[str]):
        """A guarded rsync (data/remote.py DEST_GUARD in its --rsync-path) checks the facts this host's
        probe answers, as the sh guard would: the facts when it refuses, else None."""
        from migrate.data.remote import GUARD_REFUSED, dest_probe_command, parse_dest_probe

        path = next((a[len("--rsync-path="):] for a in argv if a.startswith("--rsync-path=")), "")
        if GUARD_REFUSED not in path:
            return None
        dest, want, need_kib, oldest, tools = shlex.split(path)[4:9]  # sh -c SCRIPT sh DEST WANT KIB X.Y.Z TOOLS rsync
        facts = parse_dest_probe(self.host._answer(dest_probe_command(dest)).stdout)
        version = tuple(int(x) for x in oldest.split("."))
        return None if guard_admits(facts, want, int(need_kib), version, tools) else facts

    def run_parallel_rsync(self, src_dir: str, dest: str, rsh: str, opts, entries, streams: int,
                           **_: object) -> object:
        from migrate.data.rsync import rsync_argv

        self.host.record_stream(rsync_argv([src_dir.rstrip("/") + "/"], dest, rsh, opts) + [f"({streams} streams)"])
        return self._outcome()

    def run_tar_streams(self, src_dir: str, entries, ssh_argv: list[str], remote_command: str, streams: int,
                        files_command: str | None = None, **_: object) -> object:
        self.host.record_stream(ssh_argv, files_command or remote_command)
        return self._outcome()

    def link_round_trip(self, ssh_argv: list[str]) -> float:
        self.round_trip_checks += 1
        return self.round_trip

    def stream_file(self, path: str, ssh_argv: list[str], remote_command: str, **_: object) -> object:
        self.host.record_stream(ssh_argv, remote_command)
        return self._outcome()

    def hold_probe(self, ssh_argv: list[str], command: str) -> object:
        """The probe's exec, held open (`transfer.HeldProbe`): answered by the host's replies; a stream
        into it is recorded as `held stream into DIR`."""
        transfers = self

        self.host.log.append(Recorded("held", command))

        class Held:
            used = False
            text = self.host._answer(command).stdout

            def round_trip(self) -> float:
                return transfers.link_round_trip([])

            def stream(self, into: str, items: list, *, python: bool = False, **_: object) -> object:
                self.used = True
                transfers.host.record_stream([], f"held {'python3 ' if python else ''}stream into {into}")
                transfers.streamed.append([(i.name, i.kind) for i in items])
                return transfers._outcome()

            def close(self) -> None:
                self.used = True

            def reap(self) -> None:
                transfers.held_reaped += 1

        return Held()

    def run_file_stream(self, items: list, ssh_argv: list[str], remote_command: str, **_: object) -> object:
        self.host.record_stream(ssh_argv, remote_command)
        self.streamed.append([(i.name, i.kind) for i in items])
        return self._outcome()


if TYPE_CHECKING:  # mypy (scripts/test) proves the recording host is a Host
    def _is_a_host(fake: FakeHost) -> Host:
        return fake
