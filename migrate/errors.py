"""Errors that end a command with a clear one-line message, an optional hint and an exit code.

Anything raised as a `MigrateError` is a user-facing failure (bad input, unreachable host, refused
host key...): the CLI prints it on one line without a traceback. Any other exception is a bug.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class MigrateError(Exception):
    """A failure the user can act on: message, hint, exit code."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and hint on a single line, as the CLI prints them."""
        text = self.message.rstrip(".")
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


class UsageError(MigrateError):
    """The command line itself is wrong (exit 2)."""

    exit_code = EXIT_USAGE


class ConnectError(MigrateError):
    """The host could not be reached or logged into."""


class HostKeyError(MigrateError):
    """The host key is unknown (and not accepted) or has changed."""


class SudoError(MigrateError):
    """sudo is missing, needs a password we do not have, or the password is wrong."""


class RemoteCommandError(MigrateError):
    """A remote command exited non-zero where success was required."""

    def __init__(self, message: str, *, command: str, exit_code: int, stderr: str = "",
                 hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.command = command
        self.remote_exit_code = exit_code
        self.stderr = stderr


class LocalCommandError(MigrateError):
    """A local helper program (docker, rsync, ssh...) failed."""

    def __init__(self, message: str, *, argv: list[str], exit_code: int, stderr: str = "",
                 hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.argv = argv
        self.local_exit_code = exit_code
        self.stderr = stderr
