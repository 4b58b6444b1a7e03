"""Resume inside a layer: a load step with a layer bigger than `--checkpoint` is staged in a file on the host.

A checkpoint image (archive.plan_load_steps) commits whole layers only, so a broken connection in the
middle of one big layer (NGC images have layers of several GB) used to send that layer again from its
first byte. Such a step's archive (a plain tar: layers never gzip'd inside, so its bytes do not depend on
the codec) now streams into `~/.migrate/image-partial/<image>-<k>of<n>-<key>.tar` on the host, written
as the login user (0600, dir 0700). The host's receiver (`receive_script`, POSIX sh + coreutils) appends
`--checkpoint` bytes at a time (`head -c`), fsyncs them, and only then writes the committed length to
`NAME.tar.ok` (fsynced, renamed into place). The preflight lists these files (remote.FACTS_SCRIPT); a
rerun truncates the file to its committed length and sends the archive from that uncompressed offset
(a compressed stream simply starts again there), so it resends at most the rest plus one checkpoint.

The file is checked before it is loaded: the host's `sha256sum` of the whole file must equal the
digest of the archive computed here (the prefix a rerun does not send is read and hashed locally).
Then `docker load -i` with docker rights (through the same ssh master as the stream), and the file
goes. `<key>` is a digest of the archive's
member list (names, sizes, in-memory bytes), so a different archive for the same step never appends
to it. Partial files of other images untouched for STALE_DAYS are removed by the next receiver.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from migrate import ui
from migrate.errors import MigrateError
from migrate.image import remote as rdocker
from migrate.image.archive import Member, short_id, tar_size, tar_stream
from migrate.image.compress import Codec, StreamCompressor
from migrate.image.plan import DiskNeed
from migrate.image.remote import STAGE_DIR, RemoteDocker
from migrate.image.stream import StreamBroken, StreamResult, stream
from migrate.remote import shell

MIN_CHUNK = 1 << 20  # never commit more often than every MiB (a tiny --checkpoint would fsync per KiB)
STALE_DAYS = 7
STAGE_MARGIN = 64 << 20  # keep this much free in the home directory beyond the staged file
EXIT_BUSY = 75  # another push is writing the same file (flock)
EXIT_MOVED = 76  # the committed length is not the one the preflight saw


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


# The receiver; @NAME@ are filled in by receive_script (each a quoted shell word or an integer).
_RECEIVE = r"""umask 077; f=@FILE@; off=@OFFSET@; n=@TOTAL@; c=@CHUNK@
mkdir -p @DIR@ && chmod 700 @DIR@ && cd @DIR@ || exit 1
find . -maxdepth 1 -type f -name '*.tar*' -mtime +@STALE@ ! -name @MINE@ -exec rm -f {} + 2>/dev/null
if command -v flock >/dev/null 2>&1; then exec 9>>"$f.lock"; flock -n 9 || exit @BUSY@; fi
have=$(cat "$f.ok" 2>/dev/null || echo 0)
[ "$have" = "$off" ] || { echo "staged.committed=$have"; exit @MOVED@; }
: >> "$f" && truncate -s "$off" "$f" || exit 1
@PIPE@{
  while [ "$off" -lt "$n" ]; do
    k=$((n - off)); [ "$k" -le "$c" ] || k=$c
    head -c "$k" >> "$f"
    s=$(wc -c < "$f"); [ $s -eq $((off + k)) ] || exit 74
    sync "$f" || exit 1
    off=$((off + k))
    printf '%s\n' "$off" > "$f.ok.tmp" && sync "$f.ok.tmp" && mv -f "$f.ok.tmp" "$f.ok" || exit 1
    echo "staged.committed=$off"
  done
  echo "staged.sha256=$(sha256sum < "$f" | cut -d ' ' -f 1)"
}
"""


def receive_script(path: str, offset: int, total: int, chunk: int, decompress: str | None) -> str:
    """Receive the archive's bytes `offset..total` into `path` (run as the login user).

    Every `chunk` bytes: append exactly that much (`head -c` reads no further), fsync, then record the
    new committed length in `path.ok` (fsynced, renamed) and print `staged.committed=N`. At the end
    `staged.sha256=HEX` of the whole file. The file is first truncated to `offset`, which must be the
    committed length (exit EXIT_MOVED otherwise); a second writer of the same file exits EXIT_BUSY.
    Files of other pushes untouched for STALE_DAYS go."""
    d, f = posixpath.split(path)
    fill = {"FILE": shell.quote(f), "OFFSET": str(int(offset)), "TOTAL": str(int(total)), "CHUNK": str(int(chunk)),
            "DIR": shell.quote(d), "STALE": str(STALE_DAYS), "MINE": shell.quote(f + "*"), "BUSY": str(EXIT_BUSY),
            "MOVED": str(EXIT_MOVED), "PIPE": f"{decompress} | " if decompress else ""}
    return re.sub(r"@([A-Z]+)@", lambda m: fill[m.group(1)], _RECEIVE)


def load_script(path: str) -> str:
    """`docker load -i` of a staged archive (run with docker rights)."""
    return f"docker load -i {shell.quote(path)}"


def remove_command(paths: Iterable[str]) -> str:
    """Remove staged files with their marker and lock (run as the login user)."""
    words = [p + suffix for p in paths for suffix in ("", ".ok", ".ok.tmp", ".lock")]
    return f"rm -f -- {shell.join(words)}"


def reported(stdout: str, key: str) -> str:
    """The last `staged.<key>=VALUE` the receiver printed ('' when none)."""
    found = re.findall(rf"^staged\.{re.escape(key)}=(\S*)\s*$", stdout, re.M)
    return found[-1] if found else ""


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
            members = self._step_members(step, None, oci)
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
                       task) -> StreamResult:
        """Stream one staged step from the host's committed offset, check the whole file's sha256 on the
        host, `docker load -i` it; the load's result (as a StreamResult of the bytes this run sent)."""
        facts = session.facts
        path = stage_path(facts.home, step.stage)
        total = tar_size(members)
        offset = min(facts.staged.get(step.stage, (0, 0))[1], total)
        if offset:
            ui.debug(f"{session.name}: {display_path(step.stage)} holds {offset} of {total} bytes: resuming there")
            if task is not None:
                self.progress.advance(task, offset)
        outer, decompress = staged_codec(codec, bool(facts.zstd))
        digest = hashlib.sha256()
        sink: list[bytes] = []
        script = receive_script(path, offset, total, chunk_bytes(self.options.step_bytes), decompress)
        layer = f"layer {len(step.diff_ids)} of {len(img.diff_ids)} of {img.display}"

        def kept() -> str:
            done = reported(b"".join(sink).decode(errors="replace"), "committed") or str(offset)
            return (f"{ui.human_bytes(int(done))} of the {ui.human_bytes(total)} archive of {layer} "
                    f"is kept there in {display_path(step.stage)}")

        try:
            res = stream(master.argv(shell.sh_c(script)), skip_hashed(tar_stream(members), offset, digest),
                         StreamCompressor(outer), display=session.name, limiter=limiter, stdout_sink=sink,
                         on_input=(lambda n: self.progress.advance(task, n)) if task is not None else None)
        except StreamBroken as exc:
            exc.note = f"; {kept()}"  # type: ignore[attr-defined]
            raise
        except KeyboardInterrupt:
            ui.warn(f"{session.name}: {kept()}; rerun the same command to resume")
            raise
        facts.staged[step.stage] = (total, int(reported(res.stdout, "committed") or offset))
        if res.exit_code == EXIT_BUSY:
            raise MigrateError(f"another push-image is writing {display_path(step.stage)} on {session.name}",
                               hint="let it finish (or stop it), then rerun")
        if res.exit_code != 0:
            text = (res.stderr.strip() or f"exit code {res.exit_code}").splitlines()
            raise MigrateError(f"staging {layer} in {display_path(step.stage)} on {session.name} failed: {text[-1]}",
                               hint="rerun the same command" if res.exit_code == EXIT_MOVED else None)
        got = reported(res.stdout, "sha256")
        if got != digest.hexdigest():
            self._remove_staged(session, [step.stage])
            raise MigrateError(f"the staged archive of {layer} on {session.name} is not what was sent "
                               f"(sha256 {got[:12] or 'missing'}, expected {digest.hexdigest()[:12]}); it was removed",
                               hint="rerun the same command: it sends that archive again")
        # the load goes through the same master as every stream (a broken connection is StreamBroken there
        # too); the file goes as the login user once it is loaded
        first = (session.remote.sudo_password() + "\n").encode() if facts.access == "sudo-password" else None
        command = f"{rdocker.stream_command(facts.access, load_script(path))} && {remove_command([path])}"
        try:
            load = stream(master.argv(command), [], StreamCompressor(Codec()), display=session.name, first_line=first)
        except StreamBroken as exc:
            exc.wire_bytes += res.wire_bytes
            exc.note = (f"; the checked archive of {layer} is complete there in "  # type: ignore[attr-defined]
                        f"{display_path(step.stage)} (a rerun loads it without sending it again)")
            raise
        if load.exit_code == 0:
            facts.staged.pop(step.stage, None)
        elif "no space left" not in (load.stdout + load.stderr).lower():
            self._remove_staged(session, [step.stage])  # a load that would fail again
        return StreamResult(load.exit_code, load.stdout, load.stderr, res.input_bytes, res.wire_bytes,
                            res.seconds + load.seconds)
