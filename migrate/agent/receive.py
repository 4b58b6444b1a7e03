"""push-data's file-stream receiver in Python: `python3 -I -S -c SOURCE DEST` on the host.

It reads the records data/remote.py's FILE_RECEIVER reads (the same format, the same rules, the same
words on failure) and writes them with no process per file: the shell receiver spends about seven
(`head`, `wc`, `chmod`, `touch`, `mv`, ...) on each, which is nothing for a few big files and far too
much for thousands of small ones. A far first copy of many small files goes this way where the host
has python3 (a file stream: no rsync handshake and goodbyes, and a few bytes of header per file where
tar spends 512).

Records (stdin): a header line `KIND SIZE MODE MTIME NAMELEN` (MODE octal, MTIME `SEC.NSEC`), then
NAMELEN bytes of the name (relative to DEST, any bytes but NUL), then for KIND f SIZE bytes of the
file: written 0600 to DIR/.migrate-partial/NAME (where an interrupted rsync --partial-dir keeps a
file, so the rerun's rsync resumes it), then given its mode and time and renamed into place. KIND d
gives a directory its mode and time (after its files). The last record, `e COUNT`, says how many
files came: a stream cut between two files fails too.

Standard library only, Python 3.8 and later (as the rest of the agent); this file is
sent as the source of `python3 -c`, so it imports nothing of migrate's.
"""

from __future__ import annotations

import os
import sys

PARTIAL = b".migrate-partial"
CHUNK = 1 << 20


class Refused(Exception):
    """What the receiver says before it exits 3 (`migrate stream: ...`)."""


def _mtime_ns(text):
    sec, _, frac = text.partition(b".")
    return int(sec) * 1000000000 + int((frac + b"000000000")[:9] or b"0")


def _settle(path, mode, mtime):
    os.chmod(path, int(mode, 8))
    ns = _mtime_ns(mtime)
    os.utime(path, ns=(ns, ns))


def receive(dest, stream):
    """Write the records from `stream` (binary) under `dest` (bytes); Refused when they do not hold."""
    count = 0
    made = set()       # directories known to exist
    part_dir = None    # the .migrate-partial/ of the files now arriving (removed once they are in)
    while True:
        line = stream.readline()
        if not line.endswith(b"\n"):
            raise Refused(f"the stream ended after {count} files")
        words = line.split()
        if words[:1] == [b"e"] and len(words) == 2:
            if words[1] != str(count).encode():
                raise Refused(f"the stream ended after {count} of {words[1].decode('ascii', 'replace')} files")
            break
        try:
            if len(words) != 5 or words[0] not in (b"f", b"d"):
                raise ValueError(line)
            kind, size, mode, mtime, length = words[0], int(words[1]), words[2], words[3], int(words[4])
            int(mode, 8), _mtime_ns(mtime)
        except ValueError:
            raise Refused(f"not a record: {line[:1].decode('ascii', 'replace')}...") from None
        name = stream.read(length)
        if len(name) != length:
            raise Refused(f"the stream ended after {count} files")
        if b"/../" in b"/" + name + b"/":
            raise Refused(f"refusing the name {name.decode('utf-8', 'replace')}")
        path = dest + b"/" + name
        if kind == b"d":  # after the files: the last one's partial dir goes first (its removal is a change)
            _drop(part_dir)
            part_dir = None
            os.makedirs(path, exist_ok=True)
            made.add(path)
            _settle(path, mode, mtime)
            continue
        parent = path.rsplit(b"/", 1)[0]
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        part = parent + b"/" + PARTIAL
        if part != part_dir:
            _drop(part_dir)
            old = os.umask(0o077)  # like rsync's temporary files: nobody else reads one before it has its mode
            try:
                os.makedirs(part, exist_ok=True)
            finally:
                os.umask(old)
            part_dir = part
        temp = part + b"/" + path.rsplit(b"/", 1)[1]
        # never through a link another user may have put there (a world-writable DEST)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        got = 0
        try:
            while got < size:
                chunk = stream.read(min(CHUNK, size - got))
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
                got += len(chunk)
        finally:
            os.close(fd)
        if got != size:
            raise Refused(f"the stream broke after {got} of {size} bytes of {name.decode('utf-8', 'replace')} "
                          f"(kept in {temp.decode('utf-8', 'replace')})")
        _settle(temp, mode, mtime)
        os.rename(temp, path)
        count += 1
    _drop(part_dir)


def _drop(part_dir):
    if part_dir is not None:
        try:
            os.rmdir(part_dir)
        except OSError:  # not empty (another run's file waits there), or gone
            pass


def main(dest):
    """Receive into `dest` (bytes) from stdin: 0, or 3 with what went wrong on stderr."""
    try:
        receive(dest, sys.stdin.buffer)
    except Refused as said:
        sys.stderr.write(f"migrate stream: {said}\n")
        return 3
    except OSError as exc:
        where = exc.filename.decode("utf-8", "replace") if isinstance(exc.filename, bytes) else exc.filename
        sys.stderr.write(f"migrate stream: {exc.strerror or exc}{': ' + str(where) if where else ''}\n")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(os.fsencode(sys.argv[1])))
