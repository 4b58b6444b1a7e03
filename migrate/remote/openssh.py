"""The OpenSSH side of the one transport: one ControlMaster manager, and `OpenSshSession` on top of it.

Bulk bytes travel through `ssh` processes (rsync `-e`, tar pipes, image streams): about twice
paramiko's throughput. `ControlMaster` is the one manager of the multiplexed connection they share:
one socket directory (`control_dir()`), one lifecycle (our own `ssh -M -N` child, started once,
stopped when the verb ends). push-data/pull-data reach it through `OpenSshSession`, push-image
directly (`ControlMaster(remote.openssh_argv(), ...)`).

Settings and checks are the one resolution every verb uses (`hosts.resolve`: `ssh -G` on the same
ssh_config text, sandbox blocks first, passed with `-F`), so host, port, user, keys, known_hosts
files and the host-key policy (`StrictHostKeyChecking=yes`, or `accept-new` when asked on the command
line or in ssh_config) are the Fabric connection's. When the master cannot connect, the same host is
tried once with the paramiko-based connection layer, whose errors say exactly what is wrong (unknown
host key with its fingerprint, changed key, refused port, authentication) instead of OpenSSH's terse
exit 255.

Cipher: where this CPU has AES-NI and no ssh_config in play names `Ciphers`, AES-GCM is offered
first (OpenSSH's default is chacha20-poly1305, ~20 % slower per byte with AES-NI; measured on the
sandbox: 1 GiB in 5.05 s vs 5.99 s). The server still picks from what it allows.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from io import BytesIO
from pathlib import Path
from typing import IO

from migrate.errors import ConnectError, MigrateError, RemoteCommandError, SudoError
from migrate.paths import cache_root, private_dir, sandbox_ssh_configs
from migrate.remote import log, probe_fragments, roundtrips, shell
from migrate.remote.host import Feed, Progress, put_atomically, read_text_result
from migrate.remote.hosts import (
    ConnectOptions,
    HostSpec,
    SshConfigSet,
    SshTarget,
    openssh_options,
    resolve,
    user_ssh_config_path,
)
from migrate.remote.reap import reap_masters_once
from migrate.remote.result import RunResult

AES_GCM_FIRST = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr"
_CIPHERS_LINE = re.compile(r"^\s*ciphers[\s=]", re.IGNORECASE | re.MULTILINE)


def local_has_aes() -> bool:
    """True when this CPU advertises AES instructions (x86 `aes` flag, arm64 `aes` feature)."""
    try:
        return re.search(r"\baes\b", Path("/proc/cpuinfo").read_text()) is not None
    except OSError:
        return False


def preferred_ciphers(config_text: str, has_aes: bool) -> str | None:
    """The `Ciphers` value to offer, or None to leave OpenSSH's choice (or the user's) alone (pure)."""
    if not has_aes or _CIPHERS_LINE.search(config_text):
        return None
    return AES_GCM_FIRST


def _user_default_config_text() -> str:
    """/etc/ssh/ssh_config (and its drop-ins): a system-wide `Ciphers` is respected too."""
    parts = []
    for path in [Path("/etc/ssh/ssh_config"), *sorted(Path("/etc/ssh/ssh_config.d").glob("*.conf"))]:
        try:
            parts.append(path.read_text(errors="surrogateescape"))  # only the ASCII `Ciphers` keyword matters
        except OSError:
            continue
    return "\n".join(parts)


def stream_ciphers(configs: SshConfigSet, *, remote_has_aes: bool = True) -> str | None:
    """The `Ciphers` to offer on a bulk connection to a host reached with `configs` (None: OpenSSH's)."""
    return preferred_ciphers(configs.text + "\n" + _user_default_config_text(), local_has_aes() and remote_has_aes)


SOCKET_PATH_MAX = 104  # a Unix socket's path: 108 bytes on Linux, 104 on macOS
SOCKET_NAME_ROOM = 40  # "/PID-XXXXXXXX" and the ".XXXXXXXXXXXXXXXX" ssh appends while it binds


def control_dir() -> Path:
    """The one directory of ControlMaster sockets (private; short path: sockets have a length limit).

    It is `<cache>/cm` unless that path is too long for a socket (a deep home or MIGRATE_CACHE_DIR:
    ssh would fail with "unix_listener: path ... too long"); then `/tmp/migrate-UID/cm`, which must be
    a real directory of ours (never one another user of this machine created for us)."""
    preferred = cache_root() / "cm"
    if len(str(preferred)) + SOCKET_NAME_ROOM <= SOCKET_PATH_MAX:
        return private_dir(preferred)
    return private_dir(owned_private_dir(Path(tempfile.gettempdir()) / f"migrate-{os.getuid()}") / "cm")


def owned_private_dir(path: Path) -> Path:
    """mkdir PATH 0700, or accept it only if it is already a real directory of ours (not a link)."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ConnectError(f"{path} is not a directory of yours: it cannot hold ssh's control sockets",
                           hint="remove it, or set MIGRATE_CACHE_DIR to a shorter path of yours")
    path.chmod(0o700)
    return path


def forward_spec(local_port: int, remote: int | str, *, bind: str = "127.0.0.1",
                 remote_host: str = "127.0.0.1") -> str:
    """ssh's `-L` value: `bind:L:remote_host:R`, or `bind:L:/socket` for a Unix socket path (pure)."""
    if isinstance(remote, int):
        return f"{bind}:{local_port}:{remote_host}:{remote}"
    if not remote.startswith("/"):
        raise ValueError(f"a forwarded Unix socket needs an absolute path, not {remote!r}")
    return f"{bind}:{local_port}:{remote}"


def last_line(stderr: bytes | str, default: str) -> str:
    """The last line ssh printed (its reason), or `default` (pure)."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    lines = text.strip().splitlines()
    return lines[-1] if lines else default


def feed_stdin(proc: subprocess.Popen, feed: Feed) -> None:
    """Write `feed` to a process's stdin and close it; a reader that went away is the exit code's story."""
    assert proc.stdin is not None
    try:
        if isinstance(feed, bytes):
            proc.stdin.write(feed)
        else:
            feed(proc.stdin)
        proc.stdin.close()
    except BrokenPipeError:
        pass


def stream_in(argv: list[str], feed: Feed, *, what: str, display: str, hint: str | None = None) -> None:
    """Run `argv` (an `ssh ... -- COMMAND`) with `feed` as stdin; MigrateError with ssh's last line on failure."""
    log.debug("$ " + " ".join(argv), level=2)
    roundtrips.note("exec", display, what)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except FileNotFoundError as exc:
        raise MigrateError("the OpenSSH client (ssh) is not installed here",
                           hint="apt-get install openssh-client") from exc
    err = _drain(proc)
    feed_stdin(proc, feed)
    code = proc.wait()
    if code != 0:
        raise MigrateError(f"{what} to {display} failed: {last_line(err(), str(code))}", hint=hint)
    err()


def follow(argv: list[str], sink: IO[bytes], on_stderr: Callable[[str], None], *, what: str, display: str) -> int:
    """Run `argv` (an `ssh ... -- COMMAND`) with its stdout passed to `sink` and its stderr lines to
    `on_stderr` as they come; return the exit code. Ctrl-C terminates it and is raised."""
    log.debug("$ " + " ".join(argv), level=2)
    roundtrips.note("exec", display, what)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.PIPE)
    except FileNotFoundError as exc:
        raise MigrateError("the OpenSSH client (ssh) is not installed here",
                           hint="apt-get install openssh-client") from exc
    stderr = proc.stderr
    assert stderr is not None  # PIPE above

    def pump() -> None:
        for raw in stderr:
            on_stderr(raw.decode("utf-8", "replace"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise
    reader.join(timeout=10)
    return proc.returncode


def stream_out(argv: list[str], sink: IO[bytes], *, what: str, display: str) -> None:
    """Run `argv` (an `ssh ... -- COMMAND`) with its stdout written to `sink`; MigrateError with the
    last line of its stderr when it fails."""
    log.debug("$ " + " ".join(argv), level=2)
    roundtrips.note("exec", display, what)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = _drain(proc)
    stdout = proc.stdout
    assert stdout is not None
    for block in iter(lambda: stdout.read(65536), b""):
        sink.write(block)
    stdout.close()
    code = proc.wait()
    if code != 0:
        raise MigrateError(f"{what} from {display} failed: {last_line(err(), 'exit ' + str(code))}")
    err()


def _drain(proc: subprocess.Popen) -> Callable[[], bytes]:
    """Read a process's stderr in a thread (so a chatty one never blocks); call the result for it."""
    stderr = proc.stderr
    assert stderr is not None
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(stderr.read()), daemon=True)
    reader.start()

    def collected() -> bytes:
        reader.join()
        stderr.close()
        return b"".join(chunks)
    return collected


# Pairs of the master's `-v` lines with one network round trip between them and nothing slow on either
# side: the client sends SERVICE_REQUEST with its NEWKEYS; the server answers the "none" method with
# the list at once; a public key offered without a signature is accepted or not at once
LOGIN_ROUND_TRIPS = (("SSH2_MSG_NEWKEYS received", "SSH2_MSG_SERVICE_ACCEPT received"),
                     ("SSH2_MSG_SERVICE_ACCEPT received", "Authentications that can continue"),
                     ("Offering public key", "Server accepts key"))
_LOGIN_MARKS = tuple({m for pair in LOGIN_ROUND_TRIPS for m in pair})


def login_round_trip(events: list[tuple[float, str]]) -> float | None:
    """The link's round trip (seconds), read from the login's `ssh -v` lines and when each arrived: the
    median of the LOGIN_ROUND_TRIPS intervals (the target's login: a ProxyJump's comes first, so each
    pair is taken at its last end); None with fewer than two intervals (another ssh's words)."""
    samples = []
    for start, end in LOGIN_ROUND_TRIPS:
        ends = [i for i, (_, line) in enumerate(events) if end in line]
        if not ends:
            continue
        starts = [i for i, (_, line) in enumerate(events[:ends[-1]]) if start in line]
        if starts:
            samples.append(events[ends[-1]][0] - events[starts[-1]][0])
    if len(samples) < 2:
        return None
    samples.sort()
    mid = len(samples) // 2
    return max(0.0, samples[mid] if len(samples) % 2 else (samples[mid - 1] + samples[mid]) / 2)


class _MasterStderr:
    """The master's stderr, read as it comes (a `-v` master writes a few lines per session, and a pipe
    nobody reads would stop it): the login's timing lines with when each arrived, and ssh's own words
    (not its debug lines) for an error."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.events: list[tuple[float, str]] = []
        self.words: list[str] = []
        self.logged_in = False
        self._thread = threading.Thread(target=self._read, args=(stream,), name="ssh master stderr", daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        try:
            for raw in iter(stream.readline, b""):
                now = time.monotonic()
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith("Authenticated to "):
                    self.logged_in = True  # the rest is the sessions' chatter
                elif not line.startswith("debug"):
                    self.words = [*self.words[-49:], line]
                elif not self.logged_in and any(m in line for m in _LOGIN_MARKS):
                    self.events.append((now, line))
        except (OSError, ValueError):  # closed here (the master is being stopped)
            pass
        finally:
            stream.close()  # at the master's exit: its pipe's end goes now, not when collected

    def text(self, wait: float = 1.0) -> str:
        """ssh's own words so far (after its exit: all of them, within `wait` seconds)."""
        self._thread.join(wait)
        return "\n".join(self.words)


class MasterFailed(ConnectError):
    """The master connection could not be opened; `stderr` is what ssh said."""

    def __init__(self, message: str, hint: str | None = None, *, stderr: str = "") -> None:
        super().__init__(message, hint)
        self.stderr = stderr


class ControlMaster:
    """One OpenSSH master connection to one host, shared by every `ssh` of a verb (`with ControlMaster(...)`).

    `base_argv` is `ssh [options] alias` (`Remote.openssh_argv()` or `OpenSshSession`'s); the master
    is our own child (`ssh -M -N`, ControlPersist=no), so it ends with the verb. Clients use
    `ControlMaster=no`: if the master has gone, they still connect on their own.
    """

    def __init__(self, base_argv: list[str], *, alias: str, display: str, cipher: str | None = None,
                 connect_timeout: float = 10, before_spawn: Callable[[], object] | None = None) -> None:
        self.base = base_argv[:-1]
        self.before_spawn = before_spawn
        self.alias = alias
        self.display = display
        self.cipher = cipher
        self.connect_timeout = connect_timeout
        self.socket = str(control_dir() / f"{os.getpid()}-{os.urandom(4).hex()}")  # (not uuid: 3 ms to import)
        self.proc: subprocess.Popen | None = None
        self.deadline = 0.0  # when a spawned login has taken too long
        self.stderr: _MasterStderr | None = None

    def __enter__(self) -> ControlMaster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn_check(self) -> None:
        if self.before_spawn is not None:
            self.before_spawn()  # e.g. rewrite the `ssh -F` file if a `sandbox down` removed it

    def start(self) -> None:
        """Open the master connection; MasterFailed (with ssh's words) when it cannot."""
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        """Start the master's login and return (`wait_ready` waits for it; migrate/early.py lets Python
        import the rest meanwhile)."""
        reap_masters_once(control_dir())  # masters a killed run left (remote/reap.py)
        self._spawn_check()
        # -v: the login's lines time the link's round trip (`round_trip`) without a round trip of its own
        extra = ["-M", "-S", self.socket, "-o", "ControlPersist=no", "-N", "-v"]
        if self.cipher:
            extra += ["-c", self.cipher]
        argv = [*self.base, *extra, self.alias]
        log.debug("$ " + " ".join(argv), level=2)
        roundtrips.note("connect", self.alias, "ssh ControlMaster")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        self.stderr = _MasterStderr(self.proc.stderr)
        self.deadline = time.monotonic() + self.connect_timeout + 10

    def wait_ready(self) -> None:
        """Wait for the spawned master's login: MasterFailed (with ssh's words) when it fails."""
        assert self.proc is not None, "spawn() first"
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None:
                err = self.stderr.text().strip() if self.stderr else ""
                code = self.proc.returncode
                self.close()
                raise MasterFailed(f"ssh stream connection to {self.display} failed: "
                                   f"{err.splitlines()[-1] if err else 'exit ' + str(code)}",
                                   hint="check that `ssh` (OpenSSH client) reaches the host with the same settings",
                                   stderr=err)
            if time.monotonic() > self.deadline:
                self.close()
                raise MasterFailed(f"timed out opening the ssh stream connection to {self.display}")
            time.sleep(0.005)  # the socket appears when the login is done: every command waits for it

    def round_trip(self) -> float | None:
        """The link's round trip as the login timed it (seconds; None: not timed, e.g. not logged in)."""
        if self.stderr is None or not os.path.exists(self.socket):
            return None
        return login_round_trip(self.stderr.events)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def client_argv(self) -> list[str]:
        """`ssh [options] alias` through the master (no command: rsync `-e`, tar pipes)."""
        self._spawn_check()
        return [*self.base, "-S", self.socket, "-o", "ControlMaster=no", self.alias]

    def argv(self, command: str) -> list[str]:
        """`ssh ... -T alias COMMAND` through the master (one exec channel: counted here, where every
        caller builds the one process it runs)."""
        roundtrips.note("exec", self.alias, command)
        return [*self.client_argv()[:-1], "-T", self.alias, command]

    def argv_words(self, words: list[str]) -> list[str]:
        """`ssh ... alias WORDS...` through the master (e.g. `--`, COMMAND)."""
        return [*self.client_argv(), *words]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def control_argv(self, operation: str, spec: str) -> list[str]:
        """`ssh -S SOCKET -O forward|cancel -L SPEC alias`: add or remove a forward on the master (pure)."""
        return [*self.base, "-S", self.socket, "-O", operation, "-L", spec, self.alias]

    @contextmanager
    def forward(self, spec: str) -> Iterator[None]:
        """`with master.forward(spec):` a local forward (ssh's `-L` value) held by the master; the
        master binds the port before this returns, so the forward works as soon as the block starts."""
        self._spawn_check()
        argv = self.control_argv("forward", spec)
        log.debug("$ " + " ".join(argv), level=2)
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if res.returncode != 0:
            raise ConnectError(f"cannot forward {spec} to {self.display}: "
                               f"{last_line(res.stderr, 'ssh exit ' + str(res.returncode))}",
                               hint="is the local port free, and does the host allow forwarding "
                                    "(AllowTcpForwarding, AllowStreamLocalForwarding)?")
        try:
            yield
        finally:
            if self.alive():
                subprocess.run(self.control_argv("cancel", spec), stdin=subprocess.DEVNULL, capture_output=True)

    def close(self) -> None:
        """Stop the master (idempotent) and remove its socket."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
            self.stderr = None  # its reader ends at EOF (the master has exited)
        try:
            os.unlink(self.socket)
        except OSError:
            pass


class OpenSshSession:
    """One host reached with `ssh` over a `ControlMaster`, no paramiko: a `Host` (remote/host.py) whose
    commands, files, streams and forwards all go through that master. Password sudo is refused (it
    needs the paramiko connection's prompt: `connection.Remote`).

    Used by push-data/pull-data and the cluster's job API; new code can also take `target` (the one
    resolution), `master` (the one ControlMaster manager) and `openssh_argv()` from here.
    """

    def __init__(self, host: str, options: ConnectOptions) -> None:
        self.spec = HostSpec.parse(host)
        self.options = options
        self.configs = SshConfigSet(user_ssh_config_path(options), sandbox_ssh_configs())
        self.target: SshTarget = resolve(self.spec, options, self.configs)
        self._ciphers = stream_ciphers(self.configs)
        self._sudo_mode: str | None = None
        self._home: str | None = None  # $HOME, read once per session
        self.early_failure: MasterFailed | None = None  # set by migrate/early.py's login
        self.master = ControlMaster([*self._base(), self.spec.host], alias=self.spec.host, display=self.name,
                                    connect_timeout=self.target.connect_timeout,
                                    before_spawn=self.configs.openssh_file)

    # -- argv ---------------------------------------------------------------------------------
    def _base(self) -> list[str]:
        argv = ["ssh", *openssh_options(self.target, config_file=self.configs.openssh_file())]
        if self._ciphers:
            argv += ["-o", f"Ciphers={self._ciphers}"]
        return argv

    def openssh_argv(self, *, extra: list[str] | None = None) -> list[str]:
        """`ssh [options] alias` sharing this session's connection (for rsync -e, tar pipes)."""
        argv = self.master.client_argv()
        return [*argv[:-1], *(extra or []), argv[-1]]

    @property
    def name(self) -> str:
        return f"{self.target.user}@{self.target.alias}"

    # -- commands -----------------------------------------------------------------------------
    def open(self) -> OpenSshSession:
        """Connect now (the master), so a connection problem is reported before anything runs."""
        self._ensure_master()
        return self

    def _ensure_master(self) -> None:
        if self.master.alive():
            return
        if self.early_failure is not None:  # the early login (migrate/early.py) failed: no second attempt
            failure, self.early_failure = self.early_failure, None
            self._diagnose(failure.stderr)
        try:
            self.master.start()
        except MasterFailed as exc:
            self._diagnose(exc.stderr)

    def run(self, command: str, *, sudo: bool = False, check: bool = True, stdin: str | None = None,
            timeout: float | None = None, what: str | None = None, sudo_mode: str | None = None) -> RunResult:
        """Run an already-quoted command line; `sudo` needs root or passwordless sudo (`sudo_mode`: the
        mode a probe found; without it, the one set or found before, else passwordless is assumed)."""
        mode = sudo_mode or self._sudo_mode or "nopasswd"
        if sudo and mode == "password":
            raise SudoError("this step needs sudo with a password", hint="run it through the paramiko connection")
        full = shell.sudo_nopasswd(command) if sudo and mode != "root" else command
        self._ensure_master()
        log.debug(f"[{self.spec.host}] $ {full}", level=2)
        roundtrips.note("exec", self.spec.host, what or command)
        try:
            # no stdin given: /dev/null, never ours (a command must not eat what the user pipes to migrate)
            feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
            proc = subprocess.run([*self.openssh_argv(), full], capture_output=True, text=True, timeout=timeout,
                                  **feed)
        except subprocess.TimeoutExpired as exc:
            raise RemoteCommandError(f"{what or 'remote command'} timed out after {timeout}s on {self.name}",
                                     command=command, exit_code=124) from exc
        res = RunResult(command=command, exit_code=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
        if proc.returncode == 255:
            raise ConnectError(f"connection to {self.name} lost: {last_line(proc.stderr, 'connection failed')}",
                               hint="rerun the command")
        if check:
            res.raise_for_failure(what, self.name)
        return res

    # -- sudo ---------------------------------------------------------------------------------
    def sudo_mode(self) -> str:
        """'root', 'nopasswd', 'password' or 'none' (asked once, unless a probe said)."""
        if self._sudo_mode is None:
            out = self.run(shell.sh_c(probe_fragments.SUDO + "sudo_mode"), what="sudo check").stdout.strip()
            self._sudo_mode = out if out in ("root", "nopasswd", "password", "none") else "none"
        return self._sudo_mode

    def set_sudo_mode(self, mode: str) -> None:
        self._sudo_mode = mode

    def check_sudo(self) -> str:
        """The sudo mode, when root commands work over OpenSSH (root or passwordless sudo)."""
        mode = self.sudo_mode()
        if mode in ("none", "password"):
            raise SudoError(f"{self.name} has {'no sudo' if mode == 'none' else 'only password sudo'}"
                            " (this step runs root commands over OpenSSH)",
                            hint="passwordless sudo, or a verb that asks for the password")
        return mode

    def sudo_password(self) -> str:
        raise SudoError("a sudo password is only asked through the paramiko connection",
                        hint="run it through the paramiko connection")

    # -- files --------------------------------------------------------------------------------
    def home(self) -> str:
        """The remote user's home directory (read once per session)."""
        if self._home is None:
            self._home = self.run('printf %s "$HOME"', what="read $HOME").stdout
        return self._home

    def put_bytes(self, data: bytes, remote_path: str, *, mode: int = 0o600, sudo: bool = False) -> None:
        """Write a file atomically (temp name over the stream, then rename or sudo install)."""
        put_atomically(self, lambda tmp: self.put_file(data, tmp, mode=mode), remote_path, mode=mode, sudo=sudo)

    def put_file(self, source: bytes | Path, remote_path: str, *, mode: int = 0o600,
                 progress: Progress | None = None) -> None:
        """Copy bytes or a local file to `remote_path` through `cat` over the master."""
        def feed(stdin: IO[bytes]) -> None:
            data = source if isinstance(source, bytes) else None
            total = len(data) if data is not None else os.path.getsize(source)
            done = 0
            with open(source, "rb") if data is None else BytesIO(data) as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    stdin.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
        self.stream_in(shell.write_stdin_to(remote_path, mode), feed, what=f"writing {remote_path}")

    def read_text(self, remote_path: str, *, sudo: bool = False) -> str | None:
        return read_text_result(self, self.run(shell.cat_if_exists(remote_path), sudo=sudo, check=False), remote_path)

    def read_bytes(self, remote_path: str) -> bytes:
        sink = BytesIO()
        self.stream_out(f"cat {shell.quote(remote_path)}", sink, what=f"reading {remote_path}")
        return sink.getvalue()

    # -- streams and forwards -----------------------------------------------------------------
    def stream_in(self, command: str, feed: Feed, *, what: str, hint: str | None = None) -> None:
        self._ensure_master()
        stream_in(self.master.argv_words(["--", command]), feed, what=what, display=self.name, hint=hint)

    def stream_out(self, command: str, sink: IO[bytes], *, what: str) -> None:
        self._ensure_master()
        stream_out(self.master.argv_words(["--", command]), sink, what=what, display=self.name)

    def follow(self, command: str, sink: IO[bytes], on_stderr: Callable[[str], None], *, what: str) -> int:
        self._ensure_master()
        return follow(self.master.argv_words(["--", command]), sink, on_stderr, what=what, display=self.name)

    def forward(self, local_port: int, remote: int | str, *, bind: str = "127.0.0.1",
                remote_host: str = "127.0.0.1") -> AbstractContextManager[None]:
        self._ensure_master()
        return self.master.forward(forward_spec(local_port, remote, bind=bind, remote_host=remote_host))

    def forwards_alive(self) -> bool:
        return self.master.alive()

    def login_round_trip(self) -> float | None:
        return self.master.round_trip()

    def _diagnose(self, stderr: str) -> None:
        """OpenSSH failed to connect: let the paramiko layer say why, in the same words as every verb."""
        from migrate.remote.connection import connect

        with connect(str(self.spec), self.options):
            pass
        raise ConnectError(f"ssh to {self.spec.host} failed: {last_line(stderr, 'exit code 255')}",
                           hint="try `ssh -v` with the same host")

    def reconnect(self) -> None:
        """A fresh master (e.g. so new group memberships take effect)."""
        self.master.close()
        self._ensure_master()

    def close(self) -> None:
        """Stop the ControlMaster (idempotent)."""
        self.master.close()

    def __enter__(self) -> OpenSshSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SessionPool:
    """One `OpenSshSession` per host for a command that reaches each host in several steps (apply's data
    and run stages): one handshake per host, not one per step. `borrow(host)` is a `with` block that
    leaves the session open; `close()` (or the pool's own `with`) ends them all."""

    def __init__(self, options: ConnectOptions) -> None:
        self.options = options
        self.sessions: dict[str, OpenSshSession] = {}
        self.lock = threading.Lock()

    def get(self, host: str) -> OpenSshSession:
        """The host's session (made on first use; it connects on its first command)."""
        with self.lock:
            if host not in self.sessions:
                self.sessions[host] = OpenSshSession(host, self.options)
            return self.sessions[host]

    @contextmanager
    def borrow(self, host: str) -> Iterator[OpenSshSession]:
        yield self.get(host)

    def close(self) -> None:
        with self.lock:
            sessions, self.sessions = list(self.sessions.values()), {}
        for s in sessions:
            s.close()

    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
