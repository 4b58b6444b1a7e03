"""Pure builders of remote command lines. Quoting lives here and only here.

Every argument that reaches a remote shell goes through `quote` (shlex.quote), so a path with
spaces, quotes or `$(...)` arrives as one literal argument. Functions return strings; nothing
here runs anything, so all of it is unit-tested.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping

SUDO_PROMPT = "[sudo] password for migrate: "


def quote(arg: object) -> str:
    """Quote one argument for a POSIX shell."""
    return shlex.quote(str(arg))


def join(argv: Iterable[object]) -> str:
    """Quote each argument and join them into one command line."""
    return " ".join(quote(a) for a in argv)


def sh_c(script: str) -> str:
    """Run `script` under /bin/sh whatever the login shell is: `sh -c '<script>'`."""
    return "sh -c " + quote(script)


def env_prefix(env: Mapping[str, str]) -> str:
    """`env A=1 B='x y' ` prefix for a command (empty when env is empty)."""
    if not env:
        return ""
    for key in env:
        if not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise ValueError(f"invalid environment variable name: {key!r}")
    return "env " + " ".join(f"{k}={quote(v)}" for k, v in env.items()) + " "


def and_then(*commands: str) -> str:
    """`a && b && c` for already-built command strings (empty ones are skipped)."""
    return " && ".join(c for c in commands if c)


# The two ways to become root, one per path (docs/connection.md):
# - the Fabric path answers sudo's prompt with a responder (`sudo_with_password`);
# - an OpenSSH stream has no prompt to answer: passwordless sudo (`sudo_nopasswd`, `SUDO_NOPASSWD_PREFIX`
#   for a program rsync starts), or the password as the stream's first stdin line (`sudo_first_line`).
SUDO_NOPASSWD_PREFIX = "sudo -n "


def sudo_nopasswd(command: str) -> str:
    """Run an already-built command as root with passwordless sudo (fails instead of prompting)."""
    return SUDO_NOPASSWD_PREFIX + "-H " + sh_c(command)


def sudo_first_line(command: str) -> str:
    """Run a command as root over a byte stream whose first stdin line is the sudo password.

    `sudo -S -k` always reads that line (even with cached credentials, so it never reaches the
    command) and passes the rest of stdin on; `-p ''` keeps the prompt out of the output.
    """
    return "sudo -S -k -p '' -H " + sh_c(command)


def sudo_with_password(command: str) -> str:
    """Run a command as root with sudo reading the password from stdin after our known prompt.

    Only used together with a responder that answers `SUDO_PROMPT` (never echo the password into a
    pipe: once sudo has cached credentials, the piped password would reach the command's stdin).
    """
    return f"sudo -S -H -p {quote(SUDO_PROMPT)} " + sh_c(command)


def mkdir_private(path: str) -> str:
    """`mkdir -p PATH && chmod 700 PATH`: a directory only the user can read."""
    return f"mkdir -p {quote(path)} && chmod 700 {quote(path)}"


def home_path(relative: str) -> str:
    """A path under the remote $HOME, as a shell word: "$HOME"/'.migrate/x y'."""
    return '"$HOME"/' + quote(relative.lstrip("/"))


NO_FILE = "__MIGRATE_NO_FILE__"   # what `cat_if_exists` prints on stderr (exit 3) for a missing file


def cat_if_exists(path: str) -> str:
    """Print a file; a missing one exits 3 with NO_FILE on stderr (so it differs from an unreadable one)."""
    return f"if [ -e {quote(path)} ]; then cat {quote(path)}; else echo {NO_FILE} >&2; exit 3; fi"


def write_stdin_to(path: str, mode: int) -> str:
    """Write stdin to `path` (created private), then give it `mode`."""
    return f"(umask 077 && cat > {quote(path)}) && chmod {mode:o} {quote(path)}"
