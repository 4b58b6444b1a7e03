"""push-image resumes inside a big layer (image/staged.py): the plan, the host's receiver (run here
under /bin/sh with coreutils, as on a host), and the Pusher's staged steps against a local "host"
whose connection is cut at a known byte."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from migrate.errors import MigrateError
from migrate.image import remote as R
from migrate.image import staged as S
from migrate.image.archive import LoadStep, Member, plan_load_steps, tar_size, tar_stream
from migrate.image.compress import Codec
from migrate.image.local import LocalImage
from migrate.image.plan import DiskNeed
from migrate.image.push import Pusher, PushImageOptions
from migrate.image.stream import StreamBroken
from migrate.remote import shell

MIB = 1 << 20


def sh(script: str, data: bytes = b"", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], input=data, capture_output=True, env=env)


# -- the plan --------------------------------------------------------------------------------------
def test_only_steps_with_a_layer_bigger_than_a_checkpoint_are_staged():
    sizes = [10 * MIB, 400 * MIB, 5 * MIB]
    steps = plan_load_steps(b'{"rootfs": {"diff_ids": ["a", "b", "c"]}}', ["a", "b", "c"], ["app:1"], 0, sizes,
                            step_bytes=64 * MIB)
    assert [s.send for s in steps] == [[0, 1], [2]]
    assert [S.needs_staging(s.send, sizes, 64 * MIB) for s in steps] == [True, False]
    assert not S.needs_staging([1], sizes, 1 << 30)  # a bigger --checkpoint streams it straight into docker load
    assert S.chunk_bytes(16 * MIB) == 16 * MIB and S.chunk_bytes(1024) == S.MIN_CHUNK


def test_the_archive_key_names_exactly_one_archive():
    a = [Member.from_bytes("manifest.json", b"[1]"), Member(name="d/layer.tar", size=5)]
    assert S.archive_key(a) == S.archive_key(list(a))
    assert S.archive_key(a) != S.archive_key([a[0], Member(name="d/layer.tar", size=6)])
    assert S.archive_key(a) != S.archive_key([Member.from_bytes("manifest.json", b"[2]"), a[1]])
    assert S.stage_name("sha256:" + "ab" * 32, 3, 4, "k") == "abababababab-3of4-k.tar"


@pytest.mark.parametrize("codec,host_zstd,outer,decompress", [
    (Codec(), True, "none", None),
    (Codec("zstd", 3), True, "zstd", "zstd -dcq"),
    (Codec("zstd", 3), False, "gzip", "gzip -dc"),  # Docker >= 23 loads zstd, but the file must be plain
    (Codec(layer_gzip=6), False, "gzip", "gzip -dc"),  # never gzip inside: the archive must not depend on it
])
def test_the_staged_file_is_always_the_plain_archive(codec, host_zstd, outer, decompress):
    got, cmd = S.staged_codec(codec, host_zstd)
    assert (got.outer, cmd, got.layer_gzip) == (outer, decompress, None)


def test_skip_hashed_sends_the_rest_and_hashes_everything():
    digest = hashlib.sha256()
    out = b"".join(S.skip_hashed(iter([b"abc", b"defg", b"hi"]), 5, digest))
    assert out == b"fghi" and digest.hexdigest() == hashlib.sha256(b"abcdefghi").hexdigest()
    digest = hashlib.sha256()
    assert b"".join(S.skip_hashed(iter([b"abc"]), 3, digest)) == b""


def test_home_room_counts_the_load_on_the_same_filesystem():
    facts = R.parse_facts("home=/home/a\ndisk.home=1048576 /\ninfo=20.10|overlay2|/var/lib/docker|linux|[]\n"
                          "disk.docker_root=1048576 /\ndisk.docker_tmp=same\n")  # 1 GiB free, one filesystem
    need = DiskNeed(layers=400 * MIB, tmp=400 * MIB)
    assert S.home_room(S.StagePlan(write=100 * MIB), need, facts) is None
    why = S.home_room(S.StagePlan(write=400 * MIB), need, facts)
    assert why and "staging needs ~400.0 MiB besides 800.0 MiB of the load itself" in why
    facts.disks["home"] = (1048576, "/home")  # its own filesystem: only the staged file counts
    assert S.home_room(S.StagePlan(write=400 * MIB), need, facts) is None


def test_the_preflight_lists_staged_files():
    f = R.parse_facts("home=/home/a\nstaged=abc-1of1-k.tar 3500000 3145728\nstaged=../x.tar 1 1\n")
    assert f.staged == {"abc-1of1-k.tar": (3500000, 3145728)}
    assert "image-partial" in R.FACTS_SCRIPT and 'kv staged "${f##*/}' in R.FACTS_SCRIPT


def test_the_preflight_script_reports_what_the_receiver_left(tmp_path):
    stage = tmp_path / ".migrate" / "image-partial"
    stage.mkdir(parents=True)
    (stage / "abc-1of1-k.tar").write_bytes(b"x" * 3000)
    (stage / "abc-1of1-k.tar.ok").write_text("2048\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\nexit 1\n")  # no daemon: the script stops after the home facts
    (bin_dir / "docker").chmod(0o755)
    res = sh(R.FACTS_SCRIPT, env=dict(os.environ, HOME=str(tmp_path), PATH=f"{bin_dir}:{os.environ['PATH']}"))
    assert R.parse_facts(res.stdout.decode()).staged == {"abc-1of1-k.tar": (3000, 2048)}


# -- the host's receiver ---------------------------------------------------------------------------
def test_receiver_commits_whole_chunks_and_resumes_from_the_committed_length(tmp_path):
    data = os.urandom(5 * MIB + 123)
    path = str(tmp_path / "stage" / "x-1of1-k.tar")
    res = sh(S.receive_script(path, 0, len(data), MIB, None), data[:3 * MIB + 500])  # the connection dies
    assert res.returncode == 74
    assert Path(path).stat().st_size == 3 * MIB + 500 and Path(path + ".ok").read_text() == f"{3 * MIB}\n"
    assert S.reported(res.stdout.decode(), "committed") == str(3 * MIB)
    assert Path(path).stat().st_mode & 0o777 == 0o600 and (tmp_path / "stage").stat().st_mode & 0o777 == 0o700
    res = sh(S.receive_script(path, 3 * MIB, len(data), MIB, "gzip -dc"), gzip.compress(data[3 * MIB:]))
    assert res.returncode == 0, res.stderr
    assert Path(path).read_bytes() == data  # the uncommitted 500 bytes were cut before appending
    assert S.reported(res.stdout.decode(), "sha256") == hashlib.sha256(data).hexdigest()


def test_receiver_refuses_an_offset_that_is_not_the_committed_one(tmp_path):
    path = str(tmp_path / "x-1of1-k.tar")
    Path(path).write_bytes(b"y" * 100)
    Path(path + ".ok").write_text("64\n")
    res = sh(S.receive_script(path, 0, 200, MIB, None), b"z" * 200)
    assert res.returncode == S.EXIT_MOVED and S.reported(res.stdout.decode(), "committed") == "64"
    assert Path(path).read_bytes() == b"y" * 100  # untouched


def test_a_second_writer_of_the_same_file_is_refused(tmp_path):
    path = str(tmp_path / "x-1of1-k.tar")
    holder = subprocess.Popen(["flock", path + ".lock", "sh", "-c", "read x"], stdin=subprocess.PIPE)
    try:
        from tests.conftest import wait_until
        wait_until(lambda: Path(path + ".lock").exists(), timeout=10)
        res = sh(f"sleep 0.2; {S.receive_script(path, 0, 10, MIB, None)}", b"z" * 10)
        assert res.returncode == S.EXIT_BUSY and not Path(path).exists()
    finally:
        holder.communicate(b"\n", timeout=10)


def test_receiver_removes_other_stale_partials_only(tmp_path):
    old, fresh = tmp_path / "old-1of1-a.tar", tmp_path / "new-1of1-b.tar"
    for p in (old, fresh, tmp_path / "old-1of1-a.tar.ok"):
        p.write_bytes(b"1")
    week_ago = os.stat(old).st_mtime - (S.STALE_DAYS + 1) * 86400
    os.utime(old, (week_ago, week_ago))
    os.utime(tmp_path / "old-1of1-a.tar.ok", (week_ago, week_ago))
    mine = tmp_path / "me-1of1-c.tar"
    mine.write_bytes(b"")
    os.utime(mine, (week_ago, week_ago))
    assert sh(S.receive_script(str(mine), 0, 3, MIB, None), b"abc").returncode == 0
    assert not old.exists() and fresh.exists() and mine.read_bytes() == b"abc"


# -- the Pusher's staged step against a local "host" -----------------------------------------------
class LocalHost:
    """Runs the remote commands here under /bin/sh with HOME set (a recording stand-in for a Remote)."""

    def __init__(self, home: Path, bin_dir: Path) -> None:
        self.env = dict(os.environ, HOME=str(home), PATH=f"{bin_dir}:{os.environ['PATH']}")
        self.commands: list[tuple[str, bool]] = []

    def run(self, command: str, *, sudo: bool = False, check: bool = True, what: str | None = None):
        self.commands.append((command, sudo))
        res = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=self.env)
        return SimpleNamespace(exit_code=res.returncode, stdout=res.stdout, stderr=res.stderr,
                               ok=res.returncode == 0)


class Master:
    """`argv(command)` runs the command here; with `cut_at` the "connection" dies after that many bytes."""

    def __init__(self, host: LocalHost, cut_at: int | None = None) -> None:
        self.host, self.cut_at = host, cut_at

    def argv(self, command: str) -> list[str]:
        self.host.commands.append((command, False))
        env = " ".join(f"{k}={shell.quote(v)}" for k, v in self.host.env.items() if k in ("HOME", "PATH"))
        if self.cut_at is None:
            return ["sh", "-c", f"export {env}; {command}"]
        return ["sh", "-c", f"export {env}; head -c {self.cut_at} | sh -c {shell.quote(command)}; exit 255"]


@pytest.fixture
def staged_push(tmp_path):
    """A one-layer image (6 MiB) to push with --checkpoint 1M to a local host whose fake `docker load -i`
    keeps a copy of what it loaded."""
    layer = os.urandom(6 * MIB)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = b'{"rootfs": {"diff_ids": ["%s"]}}' % diff_id.encode()
    step = LoadStep(config=config, diff_ids=[diff_id], send=[0], tags=["app:1"])
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(
        '#!/bin/sh\n[ "$1 $2" = "load -i" ] || exit 9\ncp "$3" "$HOME/loaded.tar"\n'
        f'echo "Loaded image ID: {step.image_id}"\n')
    (bin_dir / "docker").chmod(0o755)
    host = LocalHost(home, bin_dir)
    facts = R.parse_facts(f"home={home}\ndocker=direct\ndisk.home=100000000 /x\n")
    session = SimpleNamespace(name="alice@gpu", facts=facts, remote=host)
    img = LocalImage(ref="app:1", image_id=step.image_id, diff_ids=[diff_id], tags=["app:1"])

    class Layers:
        def member(self, name, diff_id, gzip_level=None):
            assert gzip_level is None, "a staged archive never gzips a layer inside"
            return Member.from_bytes(name, layer)

    pusher = Pusher([img], Layers(), PushImageOptions(step_bytes=MIB, compress="zstd"), None)  # type: ignore[arg-type]

    def steps() -> list[LoadStep]:
        fresh = LoadStep(config=config, diff_ids=[diff_id], send=[0], tags=["app:1"])
        pusher._plan_staging(session, img, [fresh], [len(layer)], False, DiskNeed(len(layer), len(layer)))
        return [fresh]

    archive = b"".join(tar_stream(pusher._step_members(step, None, False)))
    return SimpleNamespace(pusher=pusher, session=session, img=img, host=host, home=home, steps=steps,
                           archive=archive)


def _host_listing(t) -> dict:
    """What the next preflight would see (the real FACTS_SCRIPT lines, run on the local host)."""
    return R.parse_facts(t.host.run(shell.sh_c(R.FACTS_SCRIPT)).stdout).staged


def test_an_interrupted_big_layer_resumes_inside_it_and_is_checked_before_the_load(staged_push):
    t = staged_push
    [step] = t.steps()
    assert step.stage.endswith(".tar") and step.stage.startswith(t.img.image_id[7:19])
    total = len(t.archive)
    cut = int(total * 0.67)
    with pytest.raises(StreamBroken) as exc:
        t.pusher._stream_steps(t.session, t.img, Master(t.host, cut_at=cut), Codec(), [step], "docker load")
    staged = _host_listing(t)
    assert list(staged) == [step.stage]
    size, committed = staged[step.stage]
    assert size == cut and committed == cut // MIB * MIB  # whole checkpoints only
    msg = exc.value.one_line()
    assert f"{committed / MIB:.1f} MiB of the {total / MIB:.1f} MiB archive of layer 1 of 1 of app:1" in msg
    assert f"~/.migrate/image-partial/{step.stage}" in msg and "rerun the same command" in msg

    t.session.facts.staged = staged  # the rerun's preflight
    [step] = t.steps()
    wire, layers, outputs = t.pusher._stream_steps(t.session, t.img, Master(t.host), Codec(), [step], "docker load")
    assert outputs[-1][1].exit_code == 0 and layers == 1
    assert wire == total - committed <= (total - cut) + MIB  # the rest plus at most one checkpoint
    assert (t.home / "loaded.tar").read_bytes() == t.archive
    assert _host_listing(t) == {} and not list((t.home / ".migrate" / "image-partial").iterdir())
    loads = [c for c, _ in t.host.commands if "docker load -i" in c]
    staged_file = str(t.home / ".migrate" / "image-partial" / step.stage)
    assert len(loads) == 1 and loads[0].startswith(shell.sh_c(S.load_script(staged_file)) + " && rm -f -- ")


def test_a_staged_file_that_differs_from_the_archive_is_removed_not_loaded(staged_push):
    t = staged_push
    [step] = t.steps()
    with pytest.raises(StreamBroken):
        t.pusher._stream_steps(t.session, t.img, Master(t.host, cut_at=3 * MIB), Codec(), [step], "docker load")
    path = t.home / ".migrate" / "image-partial" / step.stage
    with open(path, "r+b") as fh:  # a committed byte rots on the host
        fh.write(b"X")
    t.session.facts.staged = _host_listing(t)
    [step] = t.steps()
    with pytest.raises(MigrateError, match="is not what was sent .* it was removed"):
        t.pusher._stream_steps(t.session, t.img, Master(t.host), Codec(), [step], "docker load")
    assert not (t.home / "loaded.tar").exists() and not path.exists()


def test_no_room_in_home_streams_straight_into_docker_load(staged_push, capsys):
    t = staged_push
    t.session.facts.disks["home"] = (1024, "/x")  # 1 MiB free
    [step] = t.steps()
    assert step.stage == ""
    assert "no room to stage app:1" in capsys.readouterr().err


def test_a_complete_image_removes_its_staged_files(staged_push):
    t = staged_push
    [step] = t.steps()
    with pytest.raises(StreamBroken):
        t.pusher._stream_steps(t.session, t.img, Master(t.host, cut_at=2 * MIB), Codec(), [step], "docker load")
    t.session.facts.staged = _host_listing(t)
    t.pusher._drop_staged(t.session, t.img)
    assert _host_listing(t) == {} and t.session.facts.staged == {}
    assert tar_size(t.pusher._step_members(step, None, False)) == len(t.archive)


def test_dry_run_says_how_much_of_a_big_layer_the_host_keeps():
    from migrate.image.plan import plan_image
    from migrate.image.push import HostSession, dry_run_results

    img = LocalImage(ref="app:1", image_id="sha256:" + "ab" * 32, diff_ids=["sha256:" + "c" * 64], tags=["app:1"])
    facts = R.parse_facts(f"home=/h\ndocker=direct\nstaged=abababababab-1of1-k.tar {300 * MIB} {256 * MIB}\n"
                          f"staged=other0000000-1of1-k.tar {MIB} {MIB}\n")
    session = HostSession(host="gpu", remote=SimpleNamespace(name="alice@gpu"), facts=facts,  # type: ignore[arg-type]
                          plans={img.image_id: plan_image(img, facts)})
    [r] = dry_run_results([img], [session], PushImageOptions(dry_run=True))
    assert r.status == "would send" and "(256.0 MiB of a big layer already staged there)" in r.detail, r.detail


def test_a_connection_lost_during_the_load_keeps_the_checked_archive_and_sends_nothing_again(staged_push):
    t = staged_push

    class DiesAtLoad(Master):
        def argv(self, command: str) -> list[str]:
            return ["sh", "-c", "exit 255"] if "docker load" in command else super().argv(command)

    [step] = t.steps()
    with pytest.raises(StreamBroken) as exc:
        t.pusher._stream_steps(t.session, t.img, DiesAtLoad(t.host), Codec(), [step], "docker load")
    assert "is complete there in ~/.migrate/image-partial/" in exc.value.one_line()
    assert exc.value.wire_bytes == len(t.archive)
    t.session.facts.staged = _host_listing(t)
    assert t.session.facts.staged[step.stage] == (len(t.archive), len(t.archive))
    [step] = t.steps()
    wire, _, outputs = t.pusher._stream_steps(t.session, t.img, Master(t.host), Codec(), [step], "docker load")
    assert wire == 0 and outputs[-1][1].exit_code == 0 and (t.home / "loaded.tar").read_bytes() == t.archive
