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


def installer_failure(stderr: str, stdout: str = "", exit_code: int | None = None) -> str:
    """One line saying why uv or pip failed (pure): uv's `error:`/`×` line joined to its innermost
    `Caused by:`/`╰─▶` line, never a trailing `hint:` (uv ends many failures with one, which said
    nothing about the failure when it was all that was shown)."""
    lines = [ln.strip() for ln in (stderr.strip() or stdout.strip()).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.lower().startswith("hint:")]
    if not lines:
        return f"exit {exit_code}" if exit_code is not None else "?"
    head = next((ln for ln in lines if ln.startswith(("error:", "ERROR:", "×"))), "")
    causes = [ln for ln in lines if ln.startswith(("Caused by:", "╰─▶"))]
    if not head:
        return lines[-1][:400]
    head = head.split(":", 1)[1].strip() if head.lower().startswith("error:") else head.lstrip("× ").strip()
    if causes:
        cause = causes[-1].split(":", 1)[1].strip() if causes[-1].startswith("Caused by:") \
            else causes[-1].lstrip("╰─▶ ").strip()
        return f"{head.rstrip(':')}: {cause}"[:400]
    return head[:400]
