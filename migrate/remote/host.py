"""`Host`: the one typed interface of a borrowed server, as every orchestrator sees it.

Two carriers implement it over the one resolution of a host (`hosts.resolve`):

- `connection.Remote`: Fabric (paramiko) carries commands, sudo (password sudo included, through its
  prompt responder) and file writes (SFTP); bulk bytes and port forwards go through an OpenSSH
  ControlMaster it starts on first use (faster ciphers, Unix-socket forwards).
- `openssh.OpenSshSession`: OpenSSH only (no paramiko import): commands, streams, files and forwards
  all through its ControlMaster; password sudo is refused (push-data, pull-data, cluster job API).

Tests use `tests/fakehost.py: FakeHost`, a recording host with the same interface.

Every command given to a host is an already-quoted command line (`migrate.remote.shell`).
"""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol, Union

from migrate.errors import RemoteCommandError
from migrate.remote import shell
from migrate.remote.result import RunResult

# what `stream_in` sends: all the bytes, or a function that writes them to the command's stdin
Feed = Union[bytes, Callable[[IO[bytes]], None]]
# a file transfer's progress: (bytes done, bytes in all)
Progress = Callable[[int, int], None]


class HostTarget(Protocol):
    """What a host says about where it is (`hosts.SshTarget` has more)."""

    @property
    def alias(self) -> str: ...
    @property
    def hostname(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def user(self) -> str: ...
    @property
    def display(self) -> str: ...


class Host(Protocol):
    """One borrowed server: run, sudo, put/read a file, stream bytes in and out, forward a port."""

    @property
    def name(self) -> str:
        """What to call this host in messages (`user@alias`)."""
        ...

    @property
    def target(self) -> HostTarget: ...

    # -- commands ------------------------------------------------------------------------------
    def run(self, command: str, *, sudo: bool = False, check: bool = True, stdin: str | None = None,
            timeout: float | None = None, what: str | None = None, sudo_mode: str | None = None) -> RunResult:
        """Run a command line (as root with `sudo`); `check` raises RemoteCommandError on failure.

        `sudo_mode` is the mode a probe already found (saves asking the host)."""
        ...

    def sudo_mode(self) -> str:
        """'root', 'nopasswd', 'password' or 'none'."""
        ...

    def set_sudo_mode(self, mode: str) -> None: ...
    def check_sudo(self) -> str: ...

    def sudo_password(self) -> str:
        """The sudo password, for `sudo -S` fed through a stream's stdin; never log it."""
        ...

    def home(self) -> str: ...

    # -- files ---------------------------------------------------------------------------------
    def put_bytes(self, data: bytes, remote_path: str, *, mode: int = 0o600, sudo: bool = False) -> None:
        """Write a file atomically (temp name, then rename; `sudo`: installed as root)."""
        ...

    def put_file(self, source: bytes | Path, remote_path: str, *, mode: int = 0o600,
                 progress: Progress | None = None) -> None:
        """Copy bytes or a local file to `remote_path` as this user (not atomic), with progress."""
        ...

    def read_text(self, remote_path: str, *, sudo: bool = False) -> str | None:
        """A file's text, or None when it does not exist."""
        ...

    def read_bytes(self, remote_path: str) -> bytes: ...

    # -- bulk bytes and forwards (OpenSSH) -----------------------------------------------------
    def openssh_argv(self, *, extra: list[str] | None = None) -> list[str]:
        """`ssh [options] alias` with this host's settings (rsync -e, pipes, interactive sessions)."""
        ...

    def stream_in(self, command: str, feed: Feed, *, what: str, hint: str | None = None) -> None:
        """Run `command` with `feed` as its stdin over OpenSSH; MigrateError with ssh's last line on failure."""
        ...

    def stream_out(self, command: str, sink: IO[bytes], *, what: str) -> None:
        """Run `command` over OpenSSH with its stdout written to `sink`; MigrateError with the command's
        last stderr line on failure."""
        ...

    def follow(self, command: str, sink: IO[bytes], on_stderr: Callable[[str], None], *, what: str) -> int:
        """Run `command` over OpenSSH with its stdout passed straight to `sink` and each stderr line handed
        to `on_stderr` as it comes (`logs -f`); return its exit code (255: ssh itself failed). Ctrl-C
        ends the command and is raised."""
        ...

    def forward(self, local_port: int, remote: int | str, *, bind: str = "127.0.0.1",
                remote_host: str = "127.0.0.1") -> AbstractContextManager[None]:
        """`with host.forward(L, R):` bind:L here reaches remote_host:R (an int) or the Unix socket R (a
        path) on the host, over this host's connection, until the block ends."""
        ...

    def forwards_alive(self) -> bool:
        """Whether the connection holding this host's forwards (its OpenSSH ControlMaster) still runs:
        False once it died (the forwards went with it) or before any was opened; asks the host nothing."""
        ...

    def login_round_trip(self) -> float | None:
        """The link's round trip (seconds) as the OpenSSH master's login timed it; None where no master
        has logged in (or its ssh did not say). Asks the host nothing."""
        ...

    # -- lifecycle -----------------------------------------------------------------------------
    def open(self) -> Host:
        """Connect now (a connection problem is reported before anything runs); returns the host."""
        ...

    def reconnect(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Host: ...
    def __exit__(self, *exc: object) -> None: ...


def put_atomically(host: Host, write_tmp: Callable[[str], None], remote_path: str, *, mode: int,
                   sudo: bool) -> None:
    """`put_bytes` for every carrier: `write_tmp(path)` writes a temp file in ~/.migrate/tmp, which
    becomes `remote_path` by rename (or by `install` as root with `sudo`); the temp file never stays."""
    tmp_dir = posixpath.join(host.home(), ".migrate", "tmp")
    host.run(shell.mkdir_private(tmp_dir), what="create ~/.migrate/tmp")
    tmp = posixpath.join(tmp_dir, f"upload-{uuid.uuid4().hex}")
    renamed = False  # a rename leaves no temp file: no round trip to remove it
    try:
        write_tmp(tmp)
        if sudo:
            host.run(shell.join(["install", "-m", f"{mode:o}", "-o", "root", "-g", "root", tmp, remote_path]),
                     sudo=True, what=f"install {remote_path}")
        else:
            host.run(shell.join(["mv", "-f", tmp, remote_path]), what=f"write {remote_path}")
            renamed = True
    finally:
        if not renamed:
            host.run(shell.join(["rm", "-f", tmp]), check=False)


def read_text_result(host: Host, res: RunResult, remote_path: str) -> str | None:
    """What `read_text` returns for the result of `shell.cat_if_exists(remote_path)`."""
    if res.exit_code == 3 and shell.NO_FILE in res.stderr:
        return None
    if not res.ok:
        raise RemoteCommandError(f"cannot read {remote_path} on {host.name}: {res.stderr.strip()}",
                                 command=res.command, exit_code=res.exit_code, stderr=res.stderr)
    return res.stdout


if TYPE_CHECKING:  # mypy (scripts/test) proves both carriers are Hosts; tests/fakehost.py does the same
    from migrate.remote.connection import Remote
    from migrate.remote.openssh import OpenSshSession

    def _carriers(remote: Remote, session: OpenSshSession) -> tuple[Host, Host]:
        return remote, session
