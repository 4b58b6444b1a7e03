"""`sandbox up --link RATE/DELAY`: a slow, far link between this machine and the sandbox hosts.

This kernel has no netem, so the link is a small relay process of our own: one listening socket
per host on 127.0.0.1 (an ephemeral port, which the sandbox's ssh_config then names), forwarding
to the host's SSH port on the sandbox network. Every chunk it reads waits its turn on a shared
link (one uplink, one downlink, for all hosts and connections, as a laptop's line is shared): it
is serialised at RATE, then delivered DELAY later, so a round trip costs 2 x DELAY and a bulk
transfer runs at RATE. What the relay holds is bounded (about two bandwidth-delay products per
direction), so TCP's own backpressure reaches the sender. Host-to-host traffic stays on the
Docker network, at LAN speed.

The relay runs detached (`python -m migrate.sandbox.link`); `link.json` in the sandbox's state
directory records its pid, ports and settings; `sandbox down` (or `up --link off`) stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from migrate.errors import MigrateError, UsageError
from migrate.units import format_rate, parse_rate

STATE_FILE = "link.json"
LINK_HINT = "e.g. --link 100mbit/40ms (rate: 100mbit, 20M, 500K; one-way delay: 40ms, 0.2s, 0), or --link off"
_DELAY = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|us)?", re.IGNORECASE)
CHUNK = 1 << 16


@dataclass(frozen=True)
class Link:
    """A link: `rate` in bytes/s, `delay` one-way in seconds, `text` as typed."""

    rate: float
    delay: float
    text: str

    def describe(self) -> str:
        return f"{self.text} ({format_rate(self.rate)}, {self.delay * 1000:g} ms each way)"


def parse_link(text: str) -> Link:
    """`100mbit/40ms` -> Link(12.5e6, 0.04); a UsageError otherwise (pure)."""
    rate_text, sep, delay_text = text.strip().partition("/")
    if not sep:
        raise UsageError(f"--link: {text!r} is not RATE/DELAY", hint=LINK_HINT)
    rate = parse_rate(rate_text, what="--link rate")
    m = _DELAY.fullmatch(delay_text.strip())
    if not m:
        raise UsageError(f"--link: bad delay {delay_text!r}", hint=LINK_HINT)
    factor = {"ms": 1e-3, "us": 1e-6, "s": 1.0, None: 1e-3}[m.group(2).lower() if m.group(2) else None]
    delay = float(m.group(1)) * factor
    if delay > 10:
        raise UsageError(f"--link: a one-way delay of {delay:g} s is more than any real link", hint=LINK_HINT)
    return Link(rate=rate, delay=delay, text=text.strip())


# -- the relay (runs in its own process) ------------------------------------------------------------
class Direction:
    """One direction of the shared line: chunks are serialised at `rate` in arrival order."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.free_at = 0.0
        self.lock = threading.Lock()

    def reserve(self, size: int, now: float) -> float:
        """When a chunk of `size` bytes read at `now` has left the line (before the delay)."""
        with self.lock:
            start = max(now, self.free_at)
            self.free_at = start + size / self.rate
            return self.free_at


class Pipe:
    """Bytes from `src` to `dst` through a `Direction` and a fixed delay, bounded in flight."""

    def __init__(self, src: socket.socket, dst: socket.socket, line: Direction, delay: float) -> None:
        self.src, self.dst, self.line, self.delay = src, dst, line, delay
        self.queue: deque[tuple[float, bytes]] = deque()
        self.held = 0
        self.limit = max(1 << 18, int(2 * line.rate * max(delay, 0.01)))
        self.cond = threading.Condition()

    def reader(self) -> None:
        while True:
            try:
                data = self.src.recv(CHUNK)
            except OSError:
                data = b""
            with self.cond:
                while data and self.held >= self.limit:
                    self.cond.wait()
                due = (self.line.reserve(len(data), time.monotonic()) if data else time.monotonic()) + self.delay
                self.queue.append((due, data))
                self.held += len(data)
                self.cond.notify_all()
            if not data:
                return

    def writer(self) -> None:
        while True:
            with self.cond:
                while not self.queue:
                    self.cond.wait()
                due, data = self.queue.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self.cond:
                self.held -= len(data)
                self.cond.notify_all()
            if not data:
                try:
                    self.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            try:
                self.dst.sendall(data)
            except OSError:
                try:
                    self.src.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                # keep draining the reader so it ends too
                with self.cond:
                    self.queue.clear()
                    self.held = 0
                    self.cond.notify_all()
                return


def _serve(listener: socket.socket, target: tuple[str, int], up: Direction, down: Direction, delay: float) -> None:
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_connection, args=(client, target, up, down, delay), daemon=True).start()


def _connection(client: socket.socket, target: tuple[str, int], up: Direction, down: Direction,
                delay: float) -> None:
    try:
        server = socket.create_connection(target, timeout=10)
        server.settimeout(None)
    except OSError:
        client.close()
        return
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pipes = [Pipe(client, server, up, delay), Pipe(server, client, down, delay)]
    threads = [threading.Thread(target=f, daemon=True) for p in pipes for f in (p.reader, p.writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    server.close()


def relay_main(argv: list[str] | None = None) -> int:
    """`python -m migrate.sandbox.link --rate B --delay S FD=IP:PORT...` (listening sockets inherited)."""
    ap = argparse.ArgumentParser(prog="migrate.sandbox.link")
    ap.add_argument("--rate", type=float, required=True, help="bytes per second, each direction")
    ap.add_argument("--delay", type=float, required=True, help="one-way delay in seconds")
    ap.add_argument("routes", nargs="+", help="FD=IP:PORT: accept on inherited socket FD, forward to IP:PORT")
    args = ap.parse_args(argv)
    up, down = Direction(args.rate), Direction(args.rate)
    threads = []
    for route in args.routes:
        fd, _, target = route.partition("=")
        ip, _, port = target.rpartition(":")
        listener = socket.socket(fileno=int(fd))
        threads.append(threading.Thread(target=_serve, args=(listener, (ip, int(port)), up, down, args.delay),
                                        daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


# -- starting, describing and stopping it (the sandbox manager's hooks) ------------------------------
def _state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def recorded(state_dir: Path) -> dict | None:
    """The link's record ({pid, link, rate, delay, ports: {index: port}}), running or not, or None."""
    try:
        return json.loads(_state_path(state_dir).read_text())
    except (OSError, ValueError):
        return None


def read_state(state_dir: Path) -> dict | None:
    """The running link's record, or None (none asked for, or its relay is gone: a reboot, a kill)."""
    data = recorded(state_dir)
    return data if data and relay_alive(data.get("pid", 0)) else None


def relay_alive(pid: int) -> bool:
    """Whether `pid` is a live link relay (not just any process that got the number again)."""
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"migrate.sandbox.link" in cmdline


def start(state_dir: Path, link: Link, targets: dict[int, str], bind: str = "127.0.0.1") -> dict:
    """Start a relay for hosts {index: ip}; return (and record) its state. Stops an older one first."""
    stop(state_dir)
    listeners: dict[int, socket.socket] = {}
    try:
        for i in sorted(targets):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((bind, 0))
            s.listen(64)
            listeners[i] = s
        routes = [f"{s.fileno()}={targets[i]}:22" for i, s in listeners.items()]
        argv = [sys.executable, "-m", "migrate.sandbox.link", "--rate", repr(link.rate), "--delay",
                repr(link.delay), *routes]
        log = open(state_dir / "link.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(argv, pass_fds=[s.fileno() for s in listeners.values()],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                    cwd="/", env={**os.environ, "PYTHONPATH": _package_root()})
        finally:
            log.close()
        state = {"pid": proc.pid, "link": link.text, "rate": link.rate, "delay": link.delay,
                 "ports": {str(i): s.getsockname()[1] for i, s in listeners.items()}}
    finally:
        for s in listeners.values():
            s.close()  # the child holds its own copies
    deadline = time.monotonic() + 10
    while not relay_alive(proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise MigrateError("the sandbox link relay did not start", hint=f"see {state_dir / 'link.log'}")
        time.sleep(0.02)
    path = _state_path(state_dir)
    path.write_text(json.dumps(state) + "\n")
    path.chmod(0o600)
    return state


def _package_root() -> str:
    """Where `migrate` is importable from (the relay runs with the same code as this process)."""
    return str(Path(__file__).resolve().parents[2])


def stop(state_dir: Path) -> bool:
    """Stop the relay (if it runs) and forget it; True when one was stopped."""
    path = _state_path(state_dir)
    data = recorded(state_dir) or {}
    stopped = False
    pid = int(data.get("pid", 0) or 0)
    if pid and relay_alive(pid):
        try:
            os.kill(pid, 15)
            stopped = True
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while relay_alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.02)
    try:
        path.unlink()
    except OSError:
        pass
    return stopped


def _reap(pid: int) -> None:
    """Collect the relay if it is our own child (started by this process), so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


if __name__ == "__main__":
    sys.exit(relay_main())
