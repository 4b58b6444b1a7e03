"""Resume inside a layer: a load step with a layer bigger than `--checkpoint` is staged in a file on the host.

A checkpoint image (archive.plan_load_steps) commits whole layers only, so a broken connection in the
middle of one big layer (NGC images have layers of several GB) used to send that layer again from its
first byte. Such a step's archive (a plain tar: layers never gzip'd inside, so its bytes do not depend on
the codec) now streams into `~/.migrate/image-partial/<image>-<k>of<n>-<key>.tar` on the host, written
as the login user (0600, dir 0700). The host's receiver (`receive_script`: one python3 process where the
host has python3, else POSIX sh + coreutils) appends
`--checkpoint` bytes at a time (`head -c`), fsyncs them, and only then writes the committed length to
`NAME.tar.ok` (fsynced, renamed into place). The preflight lists these files (remote.FACTS_SCRIPT); a
rerun truncates the file to its committed length and sends the archive from that uncompressed offset
(a compressed stream simply starts again there), so it resends at most the rest plus one checkpoint.

The same stream loads it (staged_command): the receiver's stdout is `docker load`'s stdin (with docker
rights), and it `tee`s the replayed committed prefix and then every new checkpoint into the file, a
`sha256sum` behind a fifo and that stdout, so the write, the hash and the load overlap the transfer as
an unstaged load does. Nothing is tagged before the file is checked: a staged archive has its tagging
member last (`tags_last`; `docker load` reads the whole archive before that member matters) and the
receiver holds back the bytes from one byte before it (`hold_back`) until the host's sha256 of the
whole file equals the digest sent after the archive (the prefix a rerun does not send is read and
hashed locally). A mismatch or a break leaves the load an archive cut mid-block: it fails, unexpected
EOF, no image. The file goes once it is loaded (one more command as the login user).
`<key>` is a digest of the archive's
member list (names, sizes, in-memory bytes), so a different archive for the same step never appends
to it. Partial files of other images untouched for STALE_DAYS are removed by the next receiver.
"""

from __future__ import annotations

import hashlib
import posixpath
import queue
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from migrate import ui
from migrate.errors import MigrateError
from migrate.image import remote as rdocker
from migrate.image.archive import LoadStep, Member, short_id, tar_size, tar_stream
from migrate.image.compress import Codec, StreamCompressor
from migrate.image.plan import DiskNeed
from migrate.image.remote import STAGE_DIR, RemoteDocker
from migrate.image.stream import StreamBroken, StreamResult, stream
from migrate.remote import shell

if TYPE_CHECKING:
    from migrate.image.push import PushImageOptions  # only for the mixin's annotations: push.py imports this module

MIN_CHUNK = 1 << 20  # never commit more often than every MiB (a tiny --checkpoint would fsync per KiB)
STALE_DAYS = 7
STAGE_MARGIN = 64 << 20  # keep this much free in the home directory beyond the staged file
EXIT_BUSY = 75  # another push is writing the same file (flock)
EXIT_MOVED = 76  # the committed length is not the one the preflight saw
EXIT_WRONG = 77  # the file's sha256 is not the sender's: the load never gets the archive's tail


def needs_staging(send: Sequence[int], sizes: Sequence[int], step_bytes: int) -> bool:
    """Whether a step carries a layer bigger than one checkpoint (its loss on a break would exceed one)."""
    return any(sizes[i] > step_bytes for i in send)


def chunk_bytes(step_bytes: int) -> int:
    """The commit interval inside a staged archive: the checkpoint, at least MIN_CHUNK."""
    return max(step_bytes, MIN_CHUNK)


def archive_key(members: Sequence[Member]) -> str:
    """12 hex digits naming one exact archive: its members' names, sizes and in-memory bytes (layer
    contents are named by their digests)."""
    h = hashlib.sha256()
    for m in members:
        h.update(f"{m.name}\0{m.size}\0".encode())
        if m.data is not None:
            h.update(hashlib.sha256(m.data).digest())
    return h.hexdigest()[:12]


def stage_name(image_id: str, upto: int, total: int, key: str) -> str:
    """`<short id>-<k>of<n>-<key>.tar`: the staged archive of the step that ends at layer k of n."""
    return f"{short_id(image_id)}-{upto}of{total}-{key}.tar"


def stage_path(home: str, name: str) -> str:
    return posixpath.join(home, STAGE_DIR, name)


def display_path(name: str) -> str:
    """How messages name a staged file: `~/.migrate/image-partial/NAME`."""
    return f"~/{STAGE_DIR}/{name}"


def of_image(staged: dict[str, tuple[int, int]], image_id: str) -> list[str]:
    """The staged files of one image on the host."""
    prefix = short_id(image_id) + "-"
    return sorted(n for n in staged if n.startswith(prefix))


def staged_codec(codec: Codec, host_zstd: bool) -> tuple[Codec, str | None]:
    """The outer codec of a staged stream and the host's decompressor: the file must hold the plain
    archive, so the host always decompresses (zstd with its own zstd, else gzip, which every host has)."""
    if codec.outer == "zstd" and host_zstd:
        return Codec("zstd", codec.level, reason=codec.reason), "zstd -dcq"
    if codec.outer == "zstd" or codec.layer_gzip is not None:
        level = codec.layer_gzip if codec.layer_gzip is not None else 1
        return Codec("gzip", level, reason=codec.reason + "; staged: gzip stream, gzip -dc on the host"), "gzip -dc"
    return Codec(reason=codec.reason), None


# The receiver; @NAME@ are filled in by receive_script (each a quoted shell word or an integer). Its
# reports go to fd 3 (the ssh stdout); its stdout is `docker load`'s stdin.
_RECEIVE = r"""umask 077; f=@FILE@; off=@OFFSET@; n=@TOTAL@; c=@CHUNK@; cut=@CUT@
@PASS@mkdir -p @DIR@ && chmod 700 @DIR@ && cd @DIR@ || exit 1
find . -maxdepth 1 -type f -name '*.tar*' -mtime +@STALE@ ! -name @MINE@ -exec rm -f {} + 2>/dev/null
if command -v flock >/dev/null 2>&1; then exec 9>>"$f.lock"; flock -n 9 || exit @BUSY@; fi
have=$(cat "$f.ok" 2>/dev/null || echo 0)
[ "$have" = "$off" ] || { echo "staged.committed=$have" >&3; exit @MOVED@; }
: >> "$f" && truncate -s "$off" "$f" || exit 1
@PIPE@{
  rm -f "$f".hash.*  # a killed receiver's (the lock is ours)
  @PYTHON@p="$f.hash.$$"; trap 'rm -f "$p" "$p.sum"' EXIT; trap 'exit 129' HUP INT PIPE TERM
  mkfifo -m 600 "$p" || exit 1
  sha256sum < "$p" > "$p.sum" &
  exec 4> "$p"
  r=$off; [ "$r" -le "$cut" ] || r=$cut
  head -c "$r" "$f" | tee "$p" || exit 1
  [ "$off" -le "$cut" ] || tail -c +$((cut + 1)) "$f" > "$p" || exit 1
  while [ "$off" -lt "$n" ]; do
    k=$((n - off)); [ "$k" -le "$c" ] || k=$c
    [ "$off" -ge "$cut" ] || [ $((off + k)) -le "$cut" ] || k=$((cut - off))
    if [ "$off" -lt "$cut" ]; then head -c "$k" | tee -a "$f" "$p"; else head -c "$k" | tee -a "$f" "$p" >/dev/null; fi
    s=$(wc -c < "$f"); [ $s -eq $((off + k)) ] || exit 74
    sync "$f" || exit 1
    off=$((off + k))
    printf '%s\n' "$off" > "$f.ok.tmp" && sync "$f.ok.tmp" && mv -f "$f.ok.tmp" "$f.ok" || exit 1
    echo "staged.committed=$off" >&3
  done
  IFS= read -r want || exit 74
  exec 4>&-; wait
  sum=$(cut -d ' ' -f 1 < "$p.sum")
  echo "staged.sha256=$sum" >&3
  [ "$sum" = "$want" ] || exit @WRONG@
  tail -c +$((cut + 1)) "$f"
}
"""


# The same receiver in one python3 process where the host has one (1 MiB blocks, hashlib; the sh loop
# moves 8 KiB at a time through head, tee and a fifo: about 3x the CPU, which a busy host feels).
_RECEIVE_PY = r"""
import hashlib, os, queue, sys, threading
f, off, n, c, cut = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
inp, out, rep, h, B = sys.stdin.buffer, sys.stdout.buffer, os.fdopen(3, "w"), hashlib.sha256(), 1 << 20
hq = queue.Queue(32)  # the sha256 runs in a thread beside the copy
def hasher():
    for b in iter(hq.get, None):
        h.update(b)
hashing = threading.Thread(target=hasher, daemon=True)
hashing.start()
def emit(pos, b):
    if pos < cut:
        out.write(b[:cut - pos])
def put(fd, b):
    while b:
        b = b[os.write(fd, b):]
def commit(fd, upto):  # fsync, then the committed length (in a thread: the stream goes on meanwhile)
    os.fsync(fd)
    with open(f + ".ok.tmp", "w") as ok:
        ok.write("%d\n" % upto); ok.flush(); os.fsync(ok.fileno())
    os.rename(f + ".ok.tmp", f + ".ok")
    try:
        rep.write("staged.committed=%d\n" % upto); rep.flush()
    except BrokenPipeError:
        pass
syncing = threading.Thread()
def committed():
    if syncing.ident:
        syncing.join()
try:
    with open(f, "rb") as fh:
        pos = 0
        while pos < off:
            b = fh.read(min(B, off - pos))
            if not b:
                sys.exit(74)
            hq.put(b); emit(pos, b); pos += len(b)
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    while off < n:
        k, got = min(c, n - off), 0
        while got < k:
            b = inp.read(min(B, k - got))
            if not b:
                committed()
                sys.exit(74)
            put(fd, b); hq.put(b); emit(off + got, b); got += len(b)
        committed()
        off += k
        syncing = threading.Thread(target=commit, args=(fd, off))
        syncing.start()
    committed()
    want = inp.readline().strip().decode()
    hq.put(None)
    hashing.join()
    rep.write("staged.sha256=%s\n" % h.hexdigest()); rep.flush()
    if h.hexdigest() != want:
        sys.exit(@WRONG@)
    with open(f, "rb") as fh:
        fh.seek(cut)
        for b in iter(lambda: fh.read(B), b""):
            out.write(b)
    out.flush()
except BrokenPipeError:
    sys.exit(141)
"""


def receive_script(path: str, offset: int, total: int, chunk: int, decompress: str | None, cut: int,
                   password_line: bool = False, python: bool = True) -> str:
    """Receive the archive's bytes `offset..total` into `path` (run as the login user) and pass the
    whole archive on to its stdout (`docker load`'s stdin) as it arrives; reports go to fd 3.

    The committed prefix is replayed from the file first. Every `chunk` bytes: append exactly that much
    (`head -c` reads no further) while `tee` hands the same bytes to stdout and to a `sha256sum` behind
    a fifo, fsync, then record the new committed length in `path.ok` (fsynced, renamed) and report
    `staged.committed=N`. The bytes from `cut` on (the member that names the tags, see `tags_last`) are
    held back: after the archive the sender's digest line follows, and only when the file's sha256
    (`staged.sha256=HEX`) equals it does the tail go out; otherwise the load sees a truncated archive
    (exit EXIT_WRONG). The file is first truncated to `offset`, which must be the committed length (exit
    EXIT_MOVED otherwise); a second writer of the same file exits EXIT_BUSY. Files of other pushes
    untouched for STALE_DAYS go. `password_line`: the first stdin line (sudo's password) is passed on.
    With `python` the host's python3, where there is one, does the same in one process (_RECEIVE_PY)."""
    d, f = posixpath.split(path)
    fill = {"FILE": shell.quote(f), "OFFSET": str(int(offset)), "TOTAL": str(int(total)), "CHUNK": str(int(chunk)),
            "CUT": str(int(cut)), "DIR": shell.quote(d), "STALE": str(STALE_DAYS), "MINE": shell.quote(f + "*"),
            "BUSY": str(EXIT_BUSY), "MOVED": str(EXIT_MOVED), "WRONG": str(EXIT_WRONG),
            "PIPE": f"{decompress} | " if decompress else "",
            "PASS": "IFS= read -r pw || exit 74; printf '%s\\n' \"$pw\"; pw=\n" if password_line else ""}
    py = _RECEIVE_PY.replace("@WRONG@", str(EXIT_WRONG))
    fill["PYTHON"] = ("! command -v python3 >/dev/null 2>&1 || exec python3 -c "
                      f'{shell.quote(py)} "$f" "$off" "$n" "$c" "$cut"\n  ') if python else ""
    return re.sub(r"@([A-Z]+)@", lambda m: fill[m.group(1)], _RECEIVE)


def staged_command(receiver: str, load: str) -> str:
    """One stream: the receiver (login user) piped into `load` (with docker rights); the receiver's
    exit status is reported as `staged.rc=N` (POSIX sh has no pipefail)."""
    return shell.sh_c(f"exec 3>&1; {{ {shell.sh_c(receiver)}; echo \"staged.rc=$?\" >&3; }} | {load}")


def tags_last(members: Sequence[Member]) -> list[Member]:
    """A staged archive's members with the one that names the tags (docker-save's manifest.json; an OCI
    layout's index.json is last already) at the end, where the receiver holds it back until the file's
    digest is checked; `docker load` reads the whole archive before it looks at either."""
    return [m for m in members if m.name != "manifest.json"] + [m for m in members if m.name == "manifest.json"]


def hold_back(members: Sequence[Member]) -> int:
    """Where the receiver stops passing bytes on until the digest is checked: one byte before the last
    member's header, so the archive `docker load` sees without it is truncated mid-block (a tar reader
    fails with an unexpected EOF there; cut on a block boundary it would end cleanly)."""
    return tar_size(members[:-1]) - 1024 - 1


def remove_command(paths: Iterable[str]) -> str:
    """Remove staged files with their marker, lock and a killed receiver's hash fifo (run as the login user)."""
    paths = list(paths)
    words = [p + suffix for p in paths for suffix in ("", ".ok", ".ok.tmp", ".lock")]
    return f"rm -f -- {shell.join(words)} " + " ".join(shell.quote(p) + ".hash.*" for p in paths)


def reported(stdout: str, key: str) -> str:
    """The last `staged.<key>=VALUE` the receiver printed ('' when none)."""
    found = re.findall(rf"^staged\.{re.escape(key)}=(\S*)\s*$", stdout, re.M)
    return found[-1] if found else ""


class BackgroundSha256:
    """sha256 in a thread (hashlib lets go of the GIL on big buffers): the stream does not wait for it."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=32)
        self._hex = ""
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        for block in iter(self._q.get, None):
            self._h.update(block)

    def update(self, block: bytes) -> None:
        self._q.put(block)

    def hexdigest(self) -> str:
        if not self._hex:
            self._q.put(None)
            self._t.join()
            self._hex = self._h.hexdigest()
        return self._hex


def skip_hashed(chunks: Iterable[bytes], offset: int, digest) -> Iterator[bytes]:
    """`chunks` from byte `offset` on; every byte (the skipped prefix too) goes into `digest`."""
    pos = 0
    for chunk in chunks:
        digest.update(chunk)
        end = pos + len(chunk)
        if end > offset:
            yield chunk[offset - pos:] if pos < offset else chunk
        pos = end


@dataclass
class StagePlan:
    """What staging needs on the host for one image: bytes still to write into the home directory (the
    largest staged step: one file at a time), and the files of this image no step of the plan uses."""

    write: int = 0
    obsolete: tuple[str, ...] = ()


def home_room(plan: StagePlan, need: DiskNeed, facts: RemoteDocker) -> str | None:
    """Why the home directory cannot hold the staged file next to what the load itself writes there
    (same filesystem as Docker's data-root, tmp or containerd's root); None when it can."""
    free = facts.free_kib("home")
    if free is None or not plan.write:
        return None
    mount = facts.disks["home"][1]
    parts = [(need.layers, "docker_root"), (need.tmp, "docker_tmp" if not facts.tmp_same_fs else "docker_root")]
    if facts.containerd_store:
        parts = [(need.blobs, "c8d_content"), (need.layers, "c8d_snapshots")]
    beside = sum(n for n, key in parts if facts.disks.get(key, (0, ""))[1] == mount)
    want = plan.write + beside + STAGE_MARGIN
    if want <= free * 1024:
        return None
    return (f"the home directory ({mount}) has {ui.human_bytes(free * 1024)} free, staging needs "
            f"~{ui.human_bytes(plan.write)}" + (f" besides {ui.human_bytes(beside)} of the load itself" if beside
                                                  else ""))


class StagedMixin:
    """The Pusher's staged steps (module doc): which steps, their stream, check and load."""

    if TYPE_CHECKING:  # what the Pusher that mixes this in (image/push.py) provides
        options: PushImageOptions
        progress: Any

        def _step_members(self, step: LoadStep, codec: Codec | None, oci: bool) -> list[Member]: ...

    def _plan_staging(self, session, img, steps, sizes: Sequence[int], oci: bool, need: DiskNeed) -> None:
        """Name the staged file of each step that carries a layer bigger than --checkpoint (`step.stage`),
        when the home directory has room for it; remove this image's files no step uses any more."""
        facts = session.facts
        if self.options.format != "docker" or not facts.home:
            return
        names: dict[int, str] = {}
        plan = StagePlan()
        for n, step in enumerate(steps):
            if not needs_staging(step.send, sizes, self.options.step_bytes):
                continue
            members = tags_last(self._step_members(step, None, oci))
            names[n] = stage_name(img.archive_id, len(step.diff_ids), len(img.diff_ids), archive_key(members))
            size = tar_size(members)
            plan.write = max(plan.write, size - min(facts.staged.get(names[n], (0, 0))[1], size))
        plan.obsolete = tuple(x for x in of_image(facts.staged, img.archive_id) if x not in names.values())
        self._remove_staged(session, plan.obsolete)
        why = home_room(plan, need, facts) if names else None
        if why:
            ui.warn(f"{session.name}: no room to stage {img.display} ({why}): its big layers stream straight into "
                    "docker load, and a broken connection sends such a layer again from its start")
            return
        for n, name in names.items():
            steps[n].stage = name

    def _remove_staged(self, session, names: Iterable[str]) -> None:
        names = [n for n in names if n in session.facts.staged]
        if names:
            session.remote.run(remove_command(stage_path(session.facts.home, n) for n in names), check=False,
                               what="remove staged layers")
            for n in names:
                session.facts.staged.pop(n, None)

    def _drop_staged(self, session, img) -> None:
        """The image is complete on the host: its staged files go."""
        self._remove_staged(session, of_image(session.facts.staged, img.archive_id))

    def _stream_staged(self, session, img, master, codec: Codec, step, members: Sequence[Member], limiter,
                       task, riders: list | None = None) -> StreamResult:
        """Stream one staged step from the host's committed offset into the file and, in the same pass,
        into `docker load` (module doc); the load's result, as a StreamResult of the bytes this run sent.
        `riders`: receivers whose loads get the same archive through a tee there (image/fanout.py)."""
        facts = session.facts
        path = stage_path(facts.home, step.stage)
        total = tar_size(members)
        offset = min(facts.staged.get(step.stage, (0, 0))[1], total)
        if offset:
            ui.debug(f"{session.name}: {display_path(step.stage)} holds {offset} of {total} bytes: resuming there")
            if task is not None:
                self.progress.advance(task, offset)
        outer, decompress = staged_codec(codec, bool(facts.zstd))
        digest = BackgroundSha256()
        sink: list[bytes] = []
        password = facts.access == "sudo-password"
        receiver = receive_script(path, offset, total, chunk_bytes(self.options.step_bytes), decompress,
                                  hold_back(members), password_line=password)
        load = rdocker.stream_command(facts.access, "docker load")
        convoy = session.convoy if riders else None
        command = staged_command(receiver, convoy.command(load, riders) if convoy else load)
        first = (session.remote.sudo_password() + "\n").encode() if password else None
        layer = f"layer {len(step.diff_ids)} of {len(img.diff_ids)} of {img.display}"

        def chunks() -> Iterator[bytes]:
            yield from skip_hashed(tar_stream(members), offset, digest)
            yield digest.hexdigest().encode() + b"\n"  # the receiver checks the file against it

        def kept() -> str:
            done = int(reported(b"".join(sink).decode(errors="replace"), "committed") or offset)
            if done >= total:
                return (f"the whole archive of {layer} is there in {display_path(step.stage)} "
                        "(a rerun loads it without sending it again)")
            return (f"{ui.human_bytes(done)} of the {ui.human_bytes(total)} archive of {layer} "
                    f"is kept there in {display_path(step.stage)}")

        try:
            res = stream(master.argv(command), chunks(), StreamCompressor(outer), display=session.name,
                         first_line=first, limiter=limiter, stdout_sink=sink,
                         on_input=(lambda n: self.progress.advance(task, n)) if task is not None else None)
        except StreamBroken as exc:
            exc.note = f"; {kept()}"  # type: ignore[attr-defined]
            raise
        except KeyboardInterrupt:
            ui.warn(f"{session.name}: {kept()}; rerun the same command to resume")
            raise
        if convoy:  # the whole archive went through the tee (the committed prefix replayed from the file)
            res = convoy.settle(self, step, riders, res, total)
        committed = int(reported(res.stdout, "committed") or offset)
        facts.staged[step.stage] = (total, committed)
        rc = int(reported(res.stdout, "rc") or 0)
        got = reported(res.stdout, "sha256")
        if rc == EXIT_BUSY:
            raise MigrateError(f"another push-image is writing {display_path(step.stage)} on {session.name}",
                               hint="let it finish (or stop it), then rerun")
        if got and got != digest.hexdigest():
            self._remove_staged(session, [step.stage])
            raise MigrateError(f"the staged archive of {layer} on {session.name} is not what was sent "
                               f"(sha256 {got[:12]}, expected {digest.hexdigest()[:12]}); it was removed "
                               "and not loaded", hint="rerun the same command: it sends that archive again")
        if rc != 0 and (rc == EXIT_MOVED or "no space left" not in (res.stdout + res.stderr).lower()):
            # (a load that ran out of space stops the receiver too: the caller names the load's error)
            text = (res.stderr.strip() or f"exit code {rc}").splitlines()
            raise MigrateError(f"staging {layer} in {display_path(step.stage)} on {session.name} failed: {text[-1]}",
                               hint="rerun the same command" if rc == EXIT_MOVED else None)
        if res.exit_code == 0 or (committed >= total and got and "no space left" not in
                                  (res.stdout + res.stderr).lower()):
            # loaded (the next steps' files need the room), or a checked archive whose load would fail again
            self._remove_staged(session, [step.stage])
        return res
