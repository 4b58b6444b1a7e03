"""The host's registry pull and the SSH stream of the user's layers, at the same time.

Without overlap a `--via auto` push costs pull time + stream time. The layers above the registry's
base cannot be loaded before the base is there (`docker load` needs their parent chain), but they
can be received: while the host pulls (a background thread, image/via.py: pull_on_host), the
archive of the top layers streams into a private spool file on the host (`~/.migrate/tmp`, written
as the login user, its size checked against what was sent, removed on every path); once the pull is
done, one `docker load -i` of that file. The cost becomes max(pull, stream) + a local load.

A failed pull falls back (auto: push everything, with the reason; pull: the image fails), and so
does an image that needs no spooling or a home directory without room for the spool.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from migrate import ui
from migrate.errors import MigrateError
from migrate.image import remote as rdocker
from migrate.image.archive import plan_load_steps, short_id, tar_size
from migrate.image.plan import SEND, plan_image
from migrate.image.via import pull_credential, pull_on_host
from migrate.remote import shell

if TYPE_CHECKING:  # only for the mixin's annotations: push.py imports this module
    from migrate.image.archive import LoadStep, Member
    from migrate.image.compress import Codec
    from migrate.image.local import LocalImage
    from migrate.image.push import HostSession, ImagePushResult, LayerCache
    from migrate.remote.openssh import ControlMaster

SPOOL_MARGIN = 64 << 20  # keep this much free in the home directory beyond the spool file


class PullJob:
    """One host's registry pulls, in order, in a background thread; `wait(image_id)` -> error or None."""

    def __init__(self, session, images, registries, via_mode: str) -> None:
        self.session = session
        self.images = [i for i in images if (d := session.via.get(i.image_id)) is not None and d.pulls]
        self.registries = registries
        self.via_mode = via_mode
        self.errors: dict[str, str] = {}
        self.done = {i.image_id: threading.Event() for i in self.images}
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"pull {session.name}")
        if self.images:
            self._thread.start()

    def pulls(self, image_id: str) -> bool:
        return image_id in self.done

    def _run(self) -> None:
        s = self.session
        for img in self.images:
            decision = s.via[img.image_id]
            ui.step(f"{s.name}: docker pull {decision.ref} (on the host, while SSH carries the rest)")
            try:
                pull_on_host(s.remote, s.facts, decision,
                             pull_credential(self.registries, decision.registry, decision.mirror), img,
                             s.remote.sudo_password)
            except MigrateError as exc:
                self.errors[img.image_id] = exc.one_line()
            except Exception as exc:  # never leave a waiter hanging
                self.errors[img.image_id] = f"the pull on {s.name} failed: {exc}"
            finally:
                self.done[img.image_id].set()

    def wait(self, image_id: str) -> str | None:
        """Block until that image's pull is over; its error (None when it worked). A failure under --via
        auto turns the decision into push (with the reason) and returns None: the caller sends everything."""
        self.done[image_id].wait()
        error = self.errors.get(image_id)
        if error and self.via_mode != "pull":
            decision = self.session.via[image_id]
            ui.warn(f"{self.session.name}: {error}; pushing over SSH instead")
            decision.via, decision.reason = "push", f"the pull failed: {error}"
            return None
        return error


def spool_script(path: str, decompress: str | None) -> str:
    """Receive an archive into `path` (private dir, as the login user) and say its size (`spooled=N`);
    a failure removes it. The caller compares N with what it sent (spool_ok)."""
    q = shell.quote(path)
    receive = f"zstd -dcq > {q}" if decompress == "zstd" else f"cat > {q}"
    # a spool left by a connection that died with both its carriers: gone after a day
    stale = f"find \"$(dirname {q})\" -maxdepth 1 -name 'load-*.tar' -mmin +1440 -exec rm -f {{}} + 2>/dev/null; "
    return (f"umask 077 && mkdir -p \"$(dirname {q})\" && {{ {stale}{receive}; }} && "
            f"echo \"spooled=$(wc -c < {q})\" || {{ rm -f {q}; exit 1; }}")


def spool_ok(stdout: str, expected: int) -> bool:
    """True when the host says it holds exactly `expected` bytes."""
    sizes = [line.split("=", 1)[1].strip() for line in stdout.splitlines() if line.startswith("spooled=")]
    return bool(sizes) and sizes[-1] == str(expected)


class OverlapMixin:
    """`Pusher._push_overlapped`: the top layers stream while the host pulls the base (module doc)."""

    if TYPE_CHECKING:  # what the Pusher that mixes this in (image/push.py, staged.py) provides
        layers: LayerCache | None

        def _blobs_for_steps(self, session: HostSession, img: LocalImage, steps: Sequence[LoadStep]) -> int: ...
        def _step_members(self, step: LoadStep, codec: Codec | None, oci: bool) -> list[Member]: ...
        def _stream_steps(self, session: HostSession, img: LocalImage, master: ControlMaster, codec: Codec,
                          steps: list[LoadStep], script: str, oci: bool = False,
                          as_user: bool = False) -> tuple[int, int, list]: ...
        def _push_docker(self, session: HostSession, img: LocalImage, master: ControlMaster | None,
                         codec: Codec | None, t0: float) -> ImagePushResult: ...
        def _load_failed(self, session: HostSession, res) -> MigrateError: ...
        def _after_load(self, session: HostSession, step: LoadStep, res) -> None: ...
        def _verify(self, session: HostSession, img: LocalImage) -> None: ...
        def _drop_partials(self, session: HostSession, tags: Sequence[str]) -> None: ...
        def _drop_staged(self, session, img) -> None: ...
        def _result(self, img: LocalImage, session: HostSession, status: str, t0: float, **kw) -> ImagePushResult: ...

    def _push_overlapped(self, session, img, master, codec, t0, job: PullJob):
        # a pull is decided only for an image this host needs sent, so the layer source exists
        assert self.layers is not None
        decision = session.via[img.image_id]
        plan = session.plans[img.image_id]
        first = max(plan.first_missing, decision.layers)
        sizes = [self.layers.size(d) if i >= first else 0 for i, d in enumerate(img.diff_ids)]
        oci = plan.archive_format == "oci-layout"
        home_free = session.facts.free_kib("home")
        spool_bytes = sum(sizes)
        if plan.action != SEND or first >= len(img.diff_ids) or not session.facts.home or \
                (home_free is not None and spool_bytes + SPOOL_MARGIN > home_free * 1024):
            return self._after_pull(session, img, master, codec, t0, job)  # nothing to overlap: in turn
        [step] = plan_load_steps(self.layers.config(img.archive_id), img.diff_ids, img.tags, first, sizes,
                                 step_bytes=1 << 62)
        step.registry_layers = decision.registry_layers
        if oci:
            self._blobs_for_steps(session, img, [step])
        size = tar_size(self._step_members(step, codec, oci))
        path = f"{session.facts.home}/.migrate/tmp/load-{short_id(img.archive_id)}-{uuid.uuid4().hex[:8]}.tar"
        q = shell.quote(path)
        try:
            wire, _, outputs = self._stream_steps(session, img, master, codec, [step],
                                                  spool_script(path, codec.remote_decompress), oci=oci, as_user=True)
            res = outputs[-1][1]
            # what lands in the file: the archive itself, or the stream as sent (an engine that loads zstd)
            expected = size if codec.outer == "none" or codec.remote_decompress else res.wire_bytes
            if res.exit_code != 0 or not spool_ok(res.stdout, expected):
                text = (res.stderr.strip() or "the archive arrived incomplete").splitlines()
                raise MigrateError(f"receiving the layers of {img.display} on {session.name} failed: {text[-1]}")
            error = job.wait(img.image_id)
            if error:
                raise MigrateError(error)
            if not session.via[img.image_id].pulls or plan_image(img, session.facts).first_missing != first:
                session.remote.run(f"rm -f {q}", check=False)
                return self._push_docker(session, img, master, codec, t0)  # the pull fell through: send it all
            cmd, sudo = rdocker.script_command(session.facts.access, f"docker load -i {q}; rc=$?; rm -f {q}; exit $rc")
            res = session.remote.run(cmd, sudo=sudo, check=False, what=f"docker load {img.display}")
        finally:
            try:
                session.remote.run(f"rm -f {q}", check=False)
            except MigrateError:  # the connection is gone too: the error that got us here matters more
                pass
        if res.exit_code != 0:
            raise self._load_failed(session, res)
        self._after_load(session, step, res)
        self._verify(session, img)
        self._drop_partials(session, plan.partials)
        self._drop_staged(session, img)
        detail = f"{len(img.diff_ids) - first}/{len(img.diff_ids)} layers, {codec.label}, while the host pulled"
        return self._result(img, session, "sent", t0, bytes_sent=wire, layers_sent=len(step.send), detail=detail)

    def _after_pull(self, session, img, master, codec, t0, job: PullJob):
        """No overlap: wait for the pull, then the ordinary push of what is still missing."""
        error = job.wait(img.image_id)
        if error:
            raise MigrateError(error)
        return self._push_docker(session, img, master, codec, t0)
