"""The byte stream to a host: compressed, rate-limited, counted, over the host's ControlMaster.

OpenSSH is used for bulk bytes (about 2x paramiko's throughput, and AES-GCM where both ends have
AES-NI); every stream of a run shares the host's master connection (`remote.openssh.ControlMaster`,
the one manager push-data uses too), so a checkpointed load costs no new handshake.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from migrate import ui
from migrate.errors import ConnectError
from migrate.image.compress import Codec, StreamCompressor
from migrate.remote.openssh import ControlMaster


class RateLimiter:
    """Sleep so that no more than `rate` bytes per second pass (None: unlimited)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.total = 0

    def consume(self, n: int) -> None:
        if not self.rate:
            return
        self.total += n
        ahead = self.total / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


class StreamBroken(ConnectError):
    """The SSH stream died before the remote command finished.

    `wire_bytes` is what this one stream had written; a caller that ran several streams for one
    push (checkpoint steps) restates the message with the whole count (`lost_after`).
    """

    def __init__(self, message: str, hint: str | None = None, *, wire_bytes: int = 0, detail: str = "",
                 display: str = "") -> None:
        super().__init__(message, hint)
        self.wire_bytes = wire_bytes
        self.detail = detail
        self.display = display

    @classmethod
    def lost_after(cls, display: str, wire_bytes: int, detail: str = "") -> StreamBroken:
        """`connection to HOST lost after N MiB[: ssh's last words]`, resumable."""
        message = f"connection to {display} lost after {ui.human_bytes(wire_bytes)}" + (f": {detail}" if detail else "")
        return cls(message, hint="rerun the same command: it resumes", wire_bytes=wire_bytes, detail=detail,
                   display=display)


@dataclass
class StreamResult:
    """What one stream did."""

    exit_code: int
    stdout: str
    stderr: str
    input_bytes: int
    wire_bytes: int
    seconds: float


def measure_link(master: ControlMaster, nbytes: int = 16 << 20) -> float:
    """MB/s of a short probe through `master`: `nbytes` of random data to `cat >/dev/null`, minus a tiny
    send's session overhead (so a fast link is not mistaken for a slow one)."""
    def timed(data: bytes) -> float:
        t0 = time.monotonic()
        res = stream(master.argv("cat >/dev/null"), [data], StreamCompressor(Codec()), display=master.display)
        if res.exit_code != 0:
            raise StreamBroken(f"link probe to {master.display} failed: {res.stderr.strip() or res.exit_code}")
        return time.monotonic() - t0

    overhead = timed(b"x")
    seconds = max(timed(os.urandom(nbytes)) - overhead, 1e-3)
    return nbytes / seconds / 1e6


def _drain(pipe, sink: list[bytes]) -> None:
    for block in iter(lambda: pipe.read(65536), b""):
        sink.append(block)
    pipe.close()


def stream(argv: list[str], chunks: Iterable[bytes], compressor: StreamCompressor, *, display: str,
           first_line: bytes | None = None, limiter: RateLimiter | None = None,
           on_input: Callable[[int], None] | None = None, stdout_sink: list[bytes] | None = None) -> StreamResult:
    """Run `argv` (an ssh command) and feed it `chunks` through `compressor`; never raises on exit codes.

    Raises StreamBroken when the connection dies while we are still writing. `stdout_sink` receives
    the remote command's output as it comes (still readable when the stream breaks or is interrupted).
    """
    ui.debug("$ " + " ".join(argv), level=2)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            bufsize=1 << 20)
    assert proc.stdin and proc.stdout and proc.stderr
    out: list[bytes] = [] if stdout_sink is None else stdout_sink
    err: list[bytes] = []
    readers = [threading.Thread(target=_drain, args=(proc.stdout, out), daemon=True),
               threading.Thread(target=_drain, args=(proc.stderr, err), daemon=True)]
    for r in readers:
        r.start()
    input_bytes = wire = 0
    broken = False
    try:
        if first_line is not None:
            proc.stdin.write(first_line)
        for chunk in chunks:
            input_bytes += len(chunk)
            data = compressor.compress(chunk)
            for i in range(0, len(data), 1 << 20):  # compressors emit in bursts; pace them evenly
                if limiter:
                    limiter.consume(len(data[i:i + (1 << 20)]))
                proc.stdin.write(data[i:i + (1 << 20)])
            wire += len(data)
            if on_input:
                on_input(len(chunk))
        tail = compressor.flush()
        for i in range(0, len(tail), 1 << 20):
            if limiter:
                limiter.consume(len(tail[i:i + (1 << 20)]))
            proc.stdin.write(tail[i:i + (1 << 20)])
        wire += len(tail)
        proc.stdin.close()
    except (BrokenPipeError, ConnectionResetError, ValueError):
        broken = True
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        try:
            proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            broken = True
    rc = proc.wait()
    for r in readers:
        r.join()
    stdout = b"".join(out).decode(errors="replace")
    stderr = b"".join(err).decode(errors="replace")
    result = StreamResult(rc, stdout, stderr, input_bytes, wire, time.monotonic() - t0)
    # ssh exits 255 on its own errors and dies by signal when killed; a remote command that stops
    # reading early (docker load failing) also breaks our pipe, but then its exit code is its own.
    if rc == 255 or rc < 0 or (broken and rc == 0):
        last = [ln for ln in stderr.splitlines() if ln.strip()]
        raise StreamBroken.lost_after(display, wire, last[-1] if last else "")
    return result
