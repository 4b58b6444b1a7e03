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
@pytest.fixture(params=[True, False], ids=["python3", "sh"])
def rs(request):
    """receive_script with the host's python3, and the POSIX sh + coreutils one a host without it runs."""
    return lambda *a, **kw: S.receive_script(*a, python=request.param, **kw)


def receive(script: str, data: bytes, out: Path) -> subprocess.CompletedProcess:
    """Run a receiver as staged_command does: reports on stdout (fd 3), what `docker load` would read in `out`."""
    return sh(f"{shell.sh_c(script)} 3>&1 > {shell.quote(str(out))}", data)


def test_receiver_commits_whole_chunks_and_passes_the_archive_on_as_it_arrives(tmp_path, rs):
    data = os.urandom(5 * MIB + 123)
    cut, out = len(data) - 700, tmp_path / "load"
    path = str(tmp_path / "stage" / "x-1of1-k.tar")
    res = receive(rs(path, 0, len(data), MIB, None, cut), data[:3 * MIB + 500], out)  # dies
    assert res.returncode == 74
    assert Path(path).stat().st_size == 3 * MIB + 500 and Path(path + ".ok").read_text() == f"{3 * MIB}\n"
    assert S.reported(res.stdout.decode(), "committed") == str(3 * MIB)
    assert out.read_bytes() == data[:3 * MIB + 500]  # the load had it as it came (and fails, truncated)
    Path(path + ".hash.1").write_bytes(b"")  # what a receiver killed by a signal leaves
    assert Path(path).stat().st_mode & 0o777 == 0o600 and (tmp_path / "stage").stat().st_mode & 0o777 == 0o700
    digest = hashlib.sha256(data).hexdigest()
    res = receive(rs(path, 3 * MIB, len(data), MIB, "gzip -dc", cut),
                  gzip.compress(data[3 * MIB:] + digest.encode() + b"\n"), out)
    assert res.returncode == 0, res.stderr
    assert Path(path).read_bytes() == data  # the uncommitted 500 bytes were cut before appending
    assert out.read_bytes() == data  # the committed prefix replayed from the file, then the rest
    assert S.reported(res.stdout.decode(), "sha256") == digest
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["x-1of1-k.tar", "x-1of1-k.tar.lock",
                                                                       "x-1of1-k.tar.ok"]  # no fifo left


def test_receiver_holds_the_tail_back_when_the_digest_differs(tmp_path, rs):
    data, out = os.urandom(3 * MIB), tmp_path / "load"
    path = str(tmp_path / "x-1of1-k.tar")
    for offset, cut in ((0, 2 * MIB + 7), (3 * MIB, 2 * MIB + 7), (3 * MIB, 3 * MIB - 1)):
        if offset:  # a rerun after all was committed: the prefix is replayed, nothing more sent
            Path(path).write_bytes(data)
            Path(path + ".ok").write_text(f"{offset}\n")
        res = receive(rs(path, offset, len(data), MIB, None, cut), data[offset:] + b"0" * 64 + b"\n", out)
        assert res.returncode == S.EXIT_WRONG
        assert S.reported(res.stdout.decode(), "sha256") == hashlib.sha256(data).hexdigest()
        assert out.read_bytes() == data[:cut]


def test_receiver_passes_the_sudo_password_line_first(tmp_path, rs):
    data, out = b"a" * 5000, tmp_path / "load"
    digest = hashlib.sha256(data).hexdigest().encode()
    res = receive(rs(str(tmp_path / "x.tar"), 0, len(data), MIB, None, 4000, password_line=True),
                  b"s3cret\n" + data + digest + b"\n", out)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes() == b"s3cret\n" + data


def test_receiver_refuses_an_offset_that_is_not_the_committed_one(tmp_path, rs):
    path = str(tmp_path / "x-1of1-k.tar")
    Path(path).write_bytes(b"y" * 100)
    Path(path + ".ok").write_text("64\n")
    res = receive(rs(path, 0, 200, MIB, None, 150), b"z" * 200, tmp_path / "load")
    assert res.returncode == S.EXIT_MOVED and S.reported(res.stdout.decode(), "committed") == "64"
    assert Path(path).read_bytes() == b"y" * 100  # untouched


def test_a_second_writer_of_the_same_file_is_refused(tmp_path, rs):
    path = str(tmp_path / "x-1of1-k.tar")
    holder = subprocess.Popen(["flock", path + ".lock", "sh", "-c", "read x"], stdin=subprocess.PIPE)
    try:
        from tests.conftest import wait_until
        wait_until(lambda: Path(path + ".lock").exists(), timeout=10)
        res = receive(rs(path, 0, 10, MIB, None, 5), b"z" * 10, tmp_path / "load")
        assert res.returncode == S.EXIT_BUSY and not Path(path).exists()
    finally:
        holder.communicate(b"\n", timeout=10)


def test_a_truncated_staged_archive_ends_mid_block():
    members = S.tags_last([Member.from_bytes("manifest.json", b"[]"), Member.from_bytes("c.json", b"{}"),
                           Member.from_bytes("l/layer.tar", b"x" * 1024)])
    assert [m.name for m in members] == ["c.json", "l/layer.tar", "manifest.json"]
    cut = S.hold_back(members)
    assert cut % 512 == 511 and b"".join(tar_stream(members))[cut + 1:cut + 14] == b"manifest.json"


def test_receiver_removes_other_stale_partials_only(tmp_path, rs):
    old, fresh = tmp_path / "old-1of1-a.tar", tmp_path / "new-1of1-b.tar"
    for p in (old, fresh, tmp_path / "old-1of1-a.tar.ok"):
        p.write_bytes(b"1")
    week_ago = os.stat(old).st_mtime - (S.STALE_DAYS + 1) * 86400
    os.utime(old, (week_ago, week_ago))
    os.utime(tmp_path / "old-1of1-a.tar.ok", (week_ago, week_ago))
    mine = tmp_path / "me-1of1-c.tar"
    mine.write_bytes(b"")
    os.utime(mine, (week_ago, week_ago))
    abc = b"abc" + hashlib.sha256(b"abc").hexdigest().encode() + b"\n"
    assert receive(rs(str(mine), 0, 3, MIB, None, 2), abc, tmp_path / "load").returncode == 0
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
    (bin_dir / "docker").write_text(  # a truncated archive fails, as with docker
        '#!/bin/sh\n[ "$1" = load ] || exit 9\ncat > "$HOME/load.part"\n'
        'tar -tf "$HOME/load.part" >/dev/null 2>&1 || { echo "unexpected EOF" >&2; exit 1; }\n'
        f'mv "$HOME/load.part" "$HOME/loaded.tar"; echo "Loaded image ID: {step.image_id}"\n')
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

    archive = b"".join(tar_stream(S.tags_last(pusher._step_members(step, None, False))))
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
    assert not (t.home / "loaded.tar").exists()  # the load saw a truncated archive
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
    # the rest plus at most one checkpoint (and the 65-byte digest line the receiver checks the file with)
    assert wire - 65 == total - committed <= (total - cut) + MIB
    assert (t.home / "loaded.tar").read_bytes() == t.archive
    assert t.session.facts.staged == {}  # loaded: the file went at once (a later step may need the room)
    assert _host_listing(t) == {} and not list((t.home / ".migrate" / "image-partial").iterdir())


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
    with pytest.raises(MigrateError, match="is not what was sent .* it was removed and not loaded"):
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
    (t.home / ".migrate" / "image-partial" / (step.stage + ".hash.7.sum")).write_bytes(b"")  # a killed receiver's
    t.pusher._drop_staged(t.session, t.img)
    assert _host_listing(t) == {} and t.session.facts.staged == {}
    assert not list((t.home / ".migrate" / "image-partial").iterdir())
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


def test_a_connection_lost_after_the_whole_archive_keeps_it_and_sends_nothing_again(staged_push):
    t = staged_push
    [step] = t.steps()
    with pytest.raises(StreamBroken) as exc:  # cut before the digest line: the load never gets the tail
        t.pusher._stream_steps(t.session, t.img, Master(t.host, cut_at=len(t.archive)), Codec(), [step],
                               "docker load")
    assert "the whole archive of layer 1 of 1 of app:1 is there in ~/.migrate/image-partial/" in exc.value.one_line()
    assert not (t.home / "loaded.tar").exists()
    t.session.facts.staged = _host_listing(t)
    assert t.session.facts.staged[step.stage] == (len(t.archive), len(t.archive))
    [step] = t.steps()
    wire, _, outputs = t.pusher._stream_steps(t.session, t.img, Master(t.host), Codec(), [step], "docker load")
    assert wire == 65 and outputs[-1][1].exit_code == 0  # the digest line only
    assert (t.home / "loaded.tar").read_bytes() == t.archive
