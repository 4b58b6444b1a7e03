"""Running programs on this machine (docker, debootstrap, rsync, ssh) with errors a user can act on."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence

from migrate import ui
from migrate.errors import LocalCommandError

INSTALL_HINTS = {
    "docker": "install Docker (apt-get install docker.io) and start dockerd",
    "debootstrap": "apt-get install debootstrap",
    "rsync": "apt-get install rsync",
    "ssh": "apt-get install openssh-client",
    "zstd": "apt-get install zstd",
    "ssh-keygen": "apt-get install openssh-client",
}


def require(program: str) -> str:
    """The path of `program`, or a LocalCommandError saying how to install it."""
    path = shutil.which(program)
    if not path:
        raise LocalCommandError(f"{program} is not installed on this machine", argv=[program], exit_code=127,
                                hint=INSTALL_HINTS.get(program, f"install {program}"))
    return path


def telling_line(stderr: str) -> str:
    """The last line of a program's stderr that says what went wrong (pure): the docker CLI ends its
    errors with "Run 'docker run --help' for more information", which says nothing."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    pointers = ("--help' for more information", "--help'.")
    telling = [ln for ln in lines if not (ln.startswith(("Run '", "See '")) and ln.endswith(pointers))]
    return (telling or lines or [""])[-1]


def run(argv: Sequence[str], *, input: bytes | str | None = None, check: bool = True, what: str | None = None,
        env: Mapping[str, str] | None = None, timeout: float | None = None,
        hint: str | None = None) -> subprocess.CompletedProcess:
    """Run a local program, capturing text output; raise LocalCommandError when `check` and it fails."""
    argv = [str(a) for a in argv]
    require(argv[0])
    ui.debug("$ " + " ".join(argv), level=2)
    text = not isinstance(input, bytes)
    try:
        proc = subprocess.run(argv, input=input, capture_output=True, text=text, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise LocalCommandError(f"{what or argv[0]} timed out after {timeout}s", argv=argv, exit_code=124,
                                hint=hint) from exc
    if check and proc.returncode != 0:
        stderr = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
        last = telling_line(stderr) or f"exit code {proc.returncode}"
        raise LocalCommandError(f"{what or ' '.join(argv[:2])} failed: {last}", argv=argv,
                                exit_code=proc.returncode, stderr=stderr, hint=hint)
    return proc
