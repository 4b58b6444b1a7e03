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
        """The message and hint on a single line, as the CLI prints them.

        A message that ends with another error's one line (`could not push X to h: <inner> (hint: A)`)
        gets one hint: `(hint: A; B)`, or `(hint: A)` when B says the same.
        """
        text = self.message.rstrip(".")
        if not self.hint:
            return text
        start = text.rfind(HINT_OPEN)
        inner = text[start + len(HINT_OPEN):-1] if start >= 0 and text.endswith(")") else ""
        if inner and _balanced(inner):  # that hint is what closes the message
            hints = [inner] if self.hint in inner else [inner, self.hint]
            return text[:start] + HINT_OPEN + "; ".join(hints) + ")"
        return text + HINT_OPEN + self.hint + ")"


HINT_OPEN = " (hint: "


def _balanced(text: str) -> bool:
    """Every ')' in `text` closes a '(' opened in it, and all are closed (pure)."""
    depth = 0
    for c in text:
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth < 0:
            return False
    return depth == 0


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
