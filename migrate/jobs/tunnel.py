"""Port forwarding for TensorBoard, Jupyter & co: `ssh -N -L` with migrate's SSH settings (pure parts)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from migrate.errors import UsageError


@dataclass(frozen=True)
class Forward:
    local: int
    remote: int


def parse_forward(text: str) -> Forward:
    """'6006' -> 6006:6006; '16006:6006' -> local 16006 to remote 6006."""
    local_text, sep, remote_text = text.partition(":")
    if not sep:
        remote_text = local_text
    try:
        local, remote = int(local_text), int(remote_text)
    except ValueError:
        raise UsageError(f"bad port {text!r}", hint="use PORT or LOCAL:REMOTE, e.g. 6006 or 16006:6006") from None
    for p in (local, remote):
        if not 1 <= p <= 65535:
            raise UsageError(f"port {p} out of range", hint="ports are 1-65535")
    return Forward(local, remote)


def parse_forwards(items: tuple[str, ...] | list[str]) -> list[Forward]:
    forwards = [parse_forward(i) for i in items]
    seen: set[int] = set()
    for f in forwards:
        if f.local in seen:
            raise UsageError(f"local port {f.local} is given twice")
        seen.add(f.local)
    return forwards


def ssh_forward_args(forwards: list[Forward], bind: str) -> list[str]:
    """`-N -o ExitOnForwardFailure=yes -L bind:L:localhost:R ...` (pure)."""
    args = ["-N", "-o", "ExitOnForwardFailure=yes"]
    for f in forwards:
        args += ["-L", f"{bind}:{f.local}:localhost:{f.remote}"]
    return args


def check_local_ports(forwards: list[Forward], bind: str) -> None:
    """Fail early, with a hint, when a local port is taken."""
    for f in forwards:
        with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((bind, f.local))
            except OSError as exc:
                raise UsageError(f"local port {f.local} on {bind} is not available: {exc.strerror}",
                                 hint=f"pick another local port, e.g. {f.local + 10000}:{f.remote}") from None
