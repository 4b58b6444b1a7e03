"""The `migrate` process's entry point: for `push-data` and `pull-data` to one host, the SSH login
starts in a thread before the rest of migrate is imported, then the CLI runs (`cli.main`).

Python's start and imports cost about 0.1 s before a verb reaches its host, and the login takes
0.2 s on a LAN and 0.6 s over a 40 ms link: started first, the login hides the imports. Only a
command line plain enough to read without click takes this path (one HOST:PATH, no -H, no
connection option, local sources that exist, no --help); the verb adopts the connection
(`adopt`) where its host and options match, and otherwise makes its own as always. A failed early
login is reported by the verb, in its usual words, without a second attempt. A connection the
verb never adopted is closed when the process exits.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from migrate.remote.hosts import ConnectOptions
    from migrate.remote.openssh import OpenSshSession

VERBS = ("push-data", "pull-data")
# their options that take a value (the next word is not a path), and their flags
VALUE_OPTIONS = {"--exclude", "--exclude-from", "--bwlimit", "--timeout", "--compress", "--method", "--streams"}
FLAGS = {"--into", "--delete", "-y", "--yes", "-n", "--dry-run", "--checksum", "--json", "--sudo",
         "--install-rsync", "--drop-partial", "--no-relay", "--preserve-owner"}


def guess_host(argv: list[str]) -> str | None:
    """The host of `push-data SRC... HOST:DEST [options]` or `pull-data HOST:SRC DEST [options]`, read
    without click; None where the line holds anything else (another verb, -v, whose output starts
    with the login's command line, -H, a connection option, --help, an unknown option, a missing
    source: the CLI then says what is wrong before any connection)."""
    words = list(argv)
    if not words or words[0] not in VERBS:
        return None
    verb, rest = words[0], iter(words[1:])
    positional: list[str] = []
    for word in rest:
        if word == "--":
            positional.extend(rest)
            break
        if word.startswith("-") and word != "-":
            name = word.split("=", 1)[0]
            if name in VALUE_OPTIONS:
                if "=" not in word and next(rest, None) is None:
                    return None
            elif word not in FLAGS:
                return None
            continue
        positional.append(word)
    if len(positional) < 2:
        return None
    spec = positional[-1] if verb == "push-data" else positional[0]
    host, sep, _path = spec.partition(":")
    if not sep or not host or "/" in host or host.startswith("["):
        return None
    if verb == "push-data" and not all(os.path.lexists(s) for s in positional[:-1]):
        return None
    return host


class _Early:
    """The one early login of this process: spawned here (the host resolved, `ssh -M` started), waited
    for in a thread while the CLI imports."""

    def __init__(self, host: str, session: OpenSshSession) -> None:
        self.host = host
        self.lock = threading.Lock()
        self.session: OpenSshSession | None = session
        self.adopted = False
        self.thread = threading.Thread(target=self._wait, name=f"early login to {self.host}", daemon=True)

    def _wait(self) -> None:
        from migrate.data.transfer import local_rsync_version
        from migrate.remote.openssh import MasterFailed

        session = self.session
        assert session is not None
        try:
            local_rsync_version()  # both verbs ask it after the login: asked during it (3 ms)
        except Exception:  # noqa: BLE001 - the verb asks again, and says what is wrong
            pass
        try:
            session.master.wait_ready()
        except MasterFailed as exc:
            session.early_failure = exc  # the verb reports it (no second login attempt)
        except BaseException:  # noqa: BLE001 - stopped at exit (end): nobody is waiting for it
            with self.lock:
                self.session = None

    def adopt(self, host: str, options: ConnectOptions) -> OpenSshSession | None:
        from migrate.remote.hosts import ConnectOptions

        if host != self.host or options != ConnectOptions():
            return None
        self.thread.join()
        with self.lock:
            if self.adopted or self.session is None:
                return None
            self.adopted = True
            return self.session

    def end(self) -> None:
        """At exit: close a connection no verb adopted (a login still running is stopped)."""
        with self.lock:
            session = None if self.adopted else self.session
        if session is not None:
            session.master.close()


_early: _Early | None = None


def start(host: str) -> None:
    """Resolve `host` and spawn its login (about 40 ms: the modules that reach hosts, `ssh -G`); a host
    that cannot be resolved is left to the verb, which says why."""
    global _early
    try:
        from migrate.remote.hosts import ConnectOptions
        from migrate.remote.openssh import OpenSshSession

        session = OpenSshSession(host, ConnectOptions())
        session.master.spawn()
    except Exception:  # noqa: BLE001 - the verb resolves and connects again, and reports it
        return
    _early = _Early(host, session)
    atexit.register(_early.end)
    _early.thread.start()


def adopt(host: str, options: ConnectOptions) -> OpenSshSession | None:
    """The early login's session for `host`, where it was made with the same (default) options."""
    return _early.adopt(host, options) if _early is not None else None


def exit_now(code: str | int | None) -> NoReturn:
    """End the process as `sys.exit(code)` would, without the interpreter's teardown (about 17 ms of
    freeing modules after a push-data): the atexit handlers run and stdout/stderr are flushed first.
    Where another (non-daemon) thread still runs, it exits the usual way, which waits for it."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code & 0xFF
    else:  # sys.exit("message"): printed, exit 1
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: the usual exit would not print it either
            pass
    os._exit(status)


def main(argv: list[str] | None = None) -> Any:
    """`migrate`: the early login where the command line allows it, then the CLI (for those lines,
    with a quick exit: they hold no files or threads open at their end)."""
    host = guess_host(sys.argv[1:] if argv is None else argv)
    if host is not None:
        start(host)
    from migrate.cli import main as cli_main

    if host is None:
        return cli_main(argv)
    try:
        cli_main(argv)
    except SystemExit as done:
        exit_now(done.code)
    exit_now(0)
