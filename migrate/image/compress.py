"""Choosing the codec from measured facts, and the compressors themselves.

Measured (docs/performance.md, research on a 2-vCPU VM): `docker save` and `docker load` run at
about 110-120 MB/s, so on a fast link no codec can win; single-threaded gzip (28-36 MB/s) is never
right; zstd -3 beats gzip -6 on both ratio and speed. Docker < 23 cannot load zstd, so either the
remote decompresses with its own `zstd`, or each layer is gzip'd *inside* the archive (every engine
loads that, and it also shrinks the daemon's temp copy). Our gzip is parallel: independent gzip
members, concatenated (a valid gzip stream that docker/unpigz read as one).
"""

from __future__ import annotations

import os
import re
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from migrate.errors import MigrateError, UsageError
from migrate.units import format_rate

MIB = 1 << 20
GZIP_BLOCK = 4 * MIB


@dataclass(frozen=True)
class CompressSpec:
    """What the user asked for: auto, none, gzip[:L] or zstd[:L]."""

    name: str
    level: int | None = None

    def __str__(self) -> str:
        return self.name + (f":{self.level}" if self.level is not None else "")


def parse_compress(text: str) -> CompressSpec:
    """Parse `--compress`; a UsageError explains the accepted forms."""
    m = re.fullmatch(r"(auto|none|gzip|zstd)(?::(-?\d+))?", text.strip().lower())
    if not m:
        raise UsageError(f"unknown compression {text!r}", hint="use auto, none, gzip[:1-9] or zstd[:1-19]")
    name, level = m.group(1), m.group(2)
    if level is not None:
        lv = int(level)
        if name in ("auto", "none"):
            raise UsageError(f"--compress {name} takes no level")
        if name == "gzip" and not 1 <= lv <= 9:
            raise UsageError(f"gzip level {lv} out of range", hint="gzip levels are 1-9")
        if name == "zstd" and not 1 <= lv <= 19:
            raise UsageError(f"zstd level {lv} out of range", hint="zstd levels are 1-19")
        return CompressSpec(name, lv)
    return CompressSpec(name)


@dataclass(frozen=True)
class Codec:
    """The chosen pipeline: outer stream codec, optional per-layer gzip, and remote decompression."""

    outer: str = "none"  # none | zstd | gzip (gzip only for --to-file)
    level: int = 0
    layer_gzip: int | None = None  # gzip level for each layer inside the archive
    remote_decompress: str | None = None  # 'zstd' when the remote `zstd` must decompress before docker
    reason: str = ""

    @property
    def label(self) -> str:
        if self.layer_gzip is not None:
            return f"gzip:{self.layer_gzip} per layer"
        if self.outer == "zstd":
            return f"zstd:{self.level}" + (" (zstd -d on host)" if self.remote_decompress else "")
        if self.outer == "gzip":
            return f"gzip:{self.level}"
        return "none"


def choose_codec(spec: CompressSpec, *, engine_loads_zstd: bool, remote_zstd: bool,
                 link_mb_s: float | None, payload: int) -> Codec:
    """The codec for one host (pure).

    `link_mb_s` is the measured (and rate-limited) link speed in MB/s, None when not measured
    (small payloads). `engine_loads_zstd` is True for Docker >= 23.
    """
    can_zstd = engine_loads_zstd or remote_zstd
    decompress = None if engine_loads_zstd else "zstd"

    def zstd(level: int, reason: str) -> Codec:
        return Codec("zstd", level, None, decompress, reason)

    if spec.name == "none":
        return Codec(reason="asked for none")
    if spec.name == "gzip":
        return Codec(layer_gzip=spec.level or 1, reason="asked for gzip (per layer, parallel)")
    if spec.name == "zstd":
        if not can_zstd:
            raise MigrateError("this Docker cannot load zstd (needs Engine >= 23) and the host has no zstd to "
                               "decompress it", hint="use --compress auto, gzip or none, or install zstd on the host")
        return zstd(spec.level or 3, "asked for zstd")
    # auto
    if payload < 4 * MIB:
        return zstd(3, "small payload") if can_zstd else Codec(reason="small payload")
    # the probe is short (16 MiB), so it reads fast links low: 60 MB/s measured is a LAN-class link
    if link_mb_s is None or link_mb_s >= 60:
        return Codec(reason="fast link: save/load are the bottleneck")
    link = format_rate(link_mb_s * 1e6)  # said in binary units, as every table and progress bar
    if link_mb_s >= 25:
        return zstd(1, f"link {link}") if can_zstd else Codec(reason=f"link {link}")
    if link_mb_s >= 3:
        if can_zstd:
            return zstd(3, f"link {link}")
        return Codec(layer_gzip=1, reason=f"link {link}, no zstd on host")
    if can_zstd:
        return zstd(9, f"slow link {link}")
    return Codec(layer_gzip=6, reason=f"slow link {link}, no zstd on host")


class ParallelGzip:
    """A gzip stream made of independent members compressed on every core."""

    def __init__(self, level: int) -> None:
        self.level = level
        self.threads = max(1, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=self.threads)
        self.pending: deque = deque()
        self.buf = bytearray()

    def compress(self, data: bytes) -> bytes:
        self.buf += data
        while len(self.buf) >= GZIP_BLOCK:
            self.pending.append(self.pool.submit(_gzip_member, bytes(self.buf[:GZIP_BLOCK]), self.level))
            del self.buf[:GZIP_BLOCK]
        out = []
        while len(self.pending) > self.threads * 2 or (self.pending and self.pending[0].done()):
            out.append(self.pending.popleft().result())
        return b"".join(out)

    def flush(self) -> bytes:
        if self.buf:
            self.pending.append(self.pool.submit(_gzip_member, bytes(self.buf), self.level))
            self.buf = bytearray()
        out = b"".join(f.result() for f in self.pending)
        self.pending.clear()
        self.pool.shutdown()
        return out


class StreamCompressor:
    """The outer codec of the byte stream: `compress(chunk)` then `flush()`."""

    def __init__(self, codec: Codec) -> None:
        self._z = None
        self._gz: ParallelGzip | None = None
        if codec.outer == "zstd":
            import zstandard

            threads = -1 if (os.cpu_count() or 1) > 1 else 0
            self._z = zstandard.ZstdCompressor(level=codec.level, threads=threads).compressobj()
        elif codec.outer == "gzip":
            self._gz = ParallelGzip(codec.level or 1)

    def compress(self, data: bytes) -> bytes:
        if self._gz is not None:
            return self._gz.compress(data)
        return self._z.compress(data) if self._z is not None else data

    def flush(self) -> bytes:
        if self._gz is not None:
            return self._gz.flush()
        if self._z is None:
            return b""
        import zstandard

        return self._z.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


def _gzip_member(block: bytes, level: int) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(block) + c.flush()


def gzip_blocks(src: BinaryIO, level: int, *, threads: int | None = None) -> Iterator[bytes]:
    """`src` as concatenated gzip members compressed in parallel (zlib releases the GIL)."""
    threads = threads or max(1, os.cpu_count() or 1)
    window = threads * 2
    with src as fh, ThreadPoolExecutor(max_workers=threads) as pool:
        pending = []
        while True:
            block = fh.read(GZIP_BLOCK)
            if block:
                pending.append(pool.submit(_gzip_member, block, level))
            if pending and (len(pending) >= window or not block):
                yield pending.pop(0).result()
            if not block and not pending:
                break


def gzip_file(src: BinaryIO, dst: Path, level: int) -> int:
    """Write the readable `src` gzip'd (parallel members) to `dst`; return the compressed size."""
    tmp = dst.with_name(dst.name + ".part")
    size = 0
    with open(tmp, "wb") as out:
        for part in gzip_blocks(src, level):
            out.write(part)
            size += len(part)
    tmp.replace(dst)
    return size
