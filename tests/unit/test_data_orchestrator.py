"""push-data / pull-data orchestration on a recording host: what they would run, and that a dry run
changes nothing (issue 13)."""

from __future__ import annotations

import re
import shlex

import pytest

from migrate.data import pull, push
from migrate.data.plan import PushDataOptions
from migrate.data.rsync import Stats
from migrate.errors import MigrateError
from migrate.remote.hosts import ConnectOptions
from tests.fakehost import FakeHost

RSYNC_327 = "rsync  version 3.2.7  protocol version 31"


def dest_host(*, kind: str = "none", existing: str = "/srv", writable: bool = True, free_kib: int = 10 << 20,
              empty: bool = True, rsync: str = RSYNC_327, sudo: str = "nopasswd", cpus: int = 4,
              partials: str = "", zstd: str = "/usr/bin/zstd", gnu_head: str = "", xxh128: str = "yes",
              python3: str = "") -> FakeHost:
    """A host whose destination probe answers these facts."""
    facts = (f"kind={kind}\nexisting={existing}\nwritable={'yes' if writable else 'no'}\nfree_kib={free_kib}\n"
             f"empty={'yes' if empty else 'no'}\nrsync={rsync}\nzstd={zstd}\ntar=tar (GNU tar) 1.34\n"
             f"gnu_head={gnu_head}\nxxh128={xxh128}\npython3={python3}\n"
             f"home=/home/alice\ncpus={cpus}\nsudo={sudo}\n")
    host = FakeHost().reply(r"kv kind", facts)
    if partials:
        host.reply(r"tree:\*\)", partials)
    return host


def run_push(host: FakeHost, sources: list[str], dest: str, local_version=(3, 2, 7), **options):
    transfers = host.transfers
    transfers.local_version = local_version
    reach = push.Reach(session=lambda h: host, root=lambda h: host, transfers=transfers)
    return push.push_data(sources, ["gpu"], dest, ConnectOptions(), PushDataOptions(**options), reach=reach)


def rsync_streams(host: FakeHost) -> list[str]:
    return [s for s in host.streams() if s.startswith("rsync ")]


@pytest.fixture
def cifar(tmp_path):
    d = tmp_path / "cifar"
    d.mkdir()
    for i in range(3):
        (d / f"batch{i}.bin").write_bytes(b"x" * 1000)
    (tmp_path / "a.txt").write_text("a")
    return tmp_path


# -- what push-data runs -------------------------------------------------------------------------
@pytest.mark.parametrize(("source", "dest", "kind", "into", "src_arg", "dest_arg", "landing"), [
    ("cifar", "/srv/cifar", "none", False, "cifar/", "gpu:/srv/cifar/", "/srv/cifar"),   # contents become DEST
    ("cifar/", "/srv/cifar/", "none", False, "cifar/", "gpu:/srv/cifar/", "/srv/cifar"),  # slashes change nothing
    ("cifar", "/srv", "dir", True, "cifar/", "gpu:/srv/cifar/", "/srv/cifar"),            # --into: lands inside
    ("a.txt", "/srv/b.txt", "none", False, "a.txt", "gpu:/srv/b.txt", "/srv/b.txt"),      # a file becomes the file
    ("a.txt", "/srv", "dir", False, "a.txt", "gpu:/srv/", "/srv/a.txt"),                  # into an existing dir
])
def test_push_runs_one_rsync_with_the_resolved_mapping(cifar, monkeypatch, source, dest, kind, into, src_arg,
                                                       dest_arg, landing):
    monkeypatch.chdir(cifar)
    host = dest_host(kind=kind)
    [r] = run_push(host, [source], dest, into=into, method="rsync")
    assert r.status != "failed", r.error
    [stream] = rsync_streams(host)
    assert stream.split()[-2:] == [src_arg, dest_arg] and r.dest.rstrip("/") == landing


def test_push_probes_the_destination_first_and_creates_parents_without_mkpath(cifar):
    host = dest_host(rsync="rsync  version 3.1.3  protocol version 31")
    [r] = run_push(host, [str(cifar / "cifar")], "/srv/new/cifar")
    assert r.status != "failed", r.error
    cmds = host.commands()
    assert "kv kind" in cmds[0]
    assert cmds[1] == "mkdir -p /srv/new/cifar/"      # rsync 3.1 has no --mkpath: migrate makes the parents
    assert host.commands(root=True) == []
    assert "--mkpath" not in rsync_streams(host)[0]


def test_a_planned_first_copy_whose_guard_finds_an_old_rsync_is_planned_again_without_mkpath(cifar):
    """--method rsync plans a first copy before any probe (--mkpath, for rsync >= 3.2.3 there); rsync
    3.1 there: its exec refuses, having changed nothing, and the new plan makes the parents itself."""
    host = dest_host(rsync="rsync  version 3.1.3  protocol version 31")
    [r] = run_push(host, [str(cifar / "cifar")], "/srv/new/cifar", method="rsync")
    assert r.status != "failed", r.error
    planned, sent = rsync_streams(host)
    assert guarded(planned) and "--mkpath" in planned
    assert not guarded(sent) and "--mkpath" not in sent
    assert host.commands() == ["mkdir -p /srv/new/cifar/"]  # the guard's facts stand in for the probe's


def test_push_with_sudo_creates_the_destination_as_root_and_runs_rsync_through_sudo(cifar):
    host = dest_host(writable=False, rsync="rsync  version 3.1.3  protocol version 31")
    [r] = run_push(host, [str(cifar / "cifar")], "/opt/data", method="rsync", sudo=True)
    assert r.status != "failed", r.error
    assert host.commands(root=True) == ["mkdir -p /opt/data/"]
    assert "'--rsync-path=sudo -n rsync'" in rsync_streams(host)[0]


@pytest.mark.parametrize(("facts", "options", "message"), [
    ({"writable": False}, {}, "is not writable by alice"),
    ({"sudo": "password"}, {"sudo": True}, "--sudo needs passwordless sudo"),
    ({"sudo": "none"}, {"sudo": True}, "has no sudo"),
    ({"kind": "file"}, {}, "is a file; a directory cannot become it"),
])
def test_preflight_refusals_change_nothing(cifar, facts, options, message):
    host = dest_host(**facts)
    [r] = run_push(host, [str(cifar / "cifar")], "/srv/cifar", **options)
    assert r.status == "failed" and message in r.error
    assert host.mutations() == [] and host.streams() == []


def test_method_auto_picks_a_tar_stream_for_a_first_copy_of_many_small_files(tmp_path):
    src = tmp_path / "small"
    src.mkdir()
    for i in range(1000):
        (src / f"f{i}").write_bytes(b"y")
    host = dest_host(cpus=1)
    [r] = run_push(host, [str(src)], "/srv/small")
    assert r.method == "tar"
    [stream] = host.streams()
    assert stream == "mkdir -p /srv/small && tar -C /srv/small -xpf -"


def _small_files(tmp_path, n=1000):
    src = tmp_path / "small"
    src.mkdir()
    for i in range(n):
        (src / f"f{i}").write_bytes(b"y")
    return src


@pytest.mark.parametrize(("round_trip", "zstd", "options", "method", "stream"), [
    (0.0005, True, {}, "tar", "mkdir -p /srv/small && tar -C /srv/small -xpf -"),      # near: plain tar
    (0.08, True, {}, "tar", "mkdir -p /srv/small && zstd -dc | tar -C /srv/small -xpf -"),  # far: through zstd
    (0.08, False, {}, "rsync", None),                                                  # far, no zstd there
    (0.08, True, {"compress": "none"}, "rsync", None),                                 # far, zstd refused
    (0.0005, True, {"compress": "zstd"}, "tar", "mkdir -p /srv/small && zstd -dc | tar -C /srv/small -xpf -"),
])
def test_auto_measures_how_far_the_host_is_before_a_first_copy(tmp_path, monkeypatch, round_trip, zstd, options,
                                                                method, stream):
    monkeypatch.setattr(push, "local_has_zstd", lambda: True)
    host = dest_host(cpus=1, zstd="/usr/bin/zstd" if zstd else "")
    host.transfers.round_trip = round_trip
    [r] = run_push(host, [str(_small_files(tmp_path))], "/srv/small", **options)
    assert r.status != "failed", r.error
    assert r.method == method
    # one sample is enough when it is clearly near or clearly far
    assert host.transfers.round_trip_checks == 1
    if stream:
        assert host.streams() == [stream]
    else:
        [rsync] = rsync_streams(host)
        assert rsync.split()[-2:] == [str(tmp_path / "small") + "/", "gpu:/srv/small/"]


@pytest.mark.parametrize(("round_trip", "zstd", "python3", "method", "stream"), [
    (0.08, "", "Python 3.11.2", "stream", "held python3 stream into /srv/small"),  # far, no zstd: python3 writes
    (0.08, "/usr/bin/zstd", "Python 3.11.2", "tar", None),  # zstd there: tar through it (it compresses)
    (0.0005, "", "Python 3.11.2", "tar", None),             # near: tar (the CPU is the limit, and tar is C)
    (0.08, "", "", "rsync", None),                             # no python3 there: rsync
])
def test_a_far_first_copy_of_small_files_goes_as_a_python3_file_stream_where_tar_cannot_compress(
        tmp_path, monkeypatch, round_trip, zstd, python3, method, stream):
    monkeypatch.setattr(push, "local_has_zstd", lambda: True)
    host = dest_host(cpus=1, zstd=zstd, python3=python3, gnu_head="head (GNU coreutils) 9.1")
    host.transfers.round_trip = round_trip
    [r] = run_push(host, [str(_small_files(tmp_path))], "/srv/small")
    assert r.status != "failed", r.error
    assert r.method == method
    if stream:
        assert host.streams() == [stream]  # on the probe's own exec


def test_a_round_trip_just_over_the_line_is_measured_again_and_the_smaller_counts(tmp_path, monkeypatch):
    """A busy machine here can slow one sample down, never speed one up."""
    monkeypatch.setattr(push, "local_has_zstd", lambda: True)
    host = dest_host(cpus=1)
    samples = iter([0.04, 0.002])
    monkeypatch.setattr(host.transfers, "link_round_trip", lambda argv: next(samples))
    [r] = run_push(host, [str(_small_files(tmp_path))], "/srv/small")
    assert r.method == "tar" and host.streams() == ["mkdir -p /srv/small && tar -C /srv/small -xpf -"]
    assert next(samples, None) is None  # both taken


@pytest.mark.parametrize(("timed", "pings", "method"), [
    (0.0004, 0, "tar"),   # clearly near: the login's timing stands
    (0.08, 0, "rsync"),   # clearly far (no zstd there): it stands
    (0.04, 1, "tar"),     # just over the line: measured, the smaller counts (the sample: 0.5 ms)
    (None, 1, "tar"),     # not timed (another ssh's words): measured
])
def test_the_logins_own_timing_of_the_link_spares_a_round_trip_where_it_is_clear(tmp_path, timed, pings,
                                                                                method):
    host = dest_host(cpus=1, zstd="")
    host.login_rtt = timed
    [r] = run_push(host, [str(_small_files(tmp_path))], "/srv/small")
    assert r.status != "failed", r.error
    assert (r.method, host.transfers.round_trip_checks) == (method, pings)


@pytest.mark.parametrize(("seen", "timed", "zstd", "planned"), [
    (True, 0.08, "", True),                # far, no zstd there: rsync whatever DEST is, planned first
    (True, 0.0004, "", False),             # near: tar streams, which need the facts (and no guard)
    (True, 0.08, "/usr/bin/zstd", False),  # far with zstd: tar through it
    (True, 0.04, "", False),               # the login's timing not clear: it probes (and pings)
    (True, None, "", False),
    (False, 0.08, "", False),              # a host never probed: its tools are not known
])
def test_auto_plans_a_first_copy_before_any_probe_where_the_hosts_tools_and_link_make_it_rsync(
        tmp_path, monkeypatch, seen, timed, zstd, planned):
    from migrate.data import known

    monkeypatch.setattr(push, "local_has_zstd", lambda: True)
    src = _small_files(tmp_path)
    host = dest_host(cpus=1, zstd=zstd)
    host.login_rtt = timed
    if seen:  # a probe of another push to this host saw its tools
        run_push(host, [str(src)], "/srv/other")
        host.log.clear()
    assert (known.host_tools(known.host_key("alice", "10.0.0.7", 22)) is not None) == seen
    [r] = run_push(host, [str(src)], "/srv/small")
    assert r.status != "failed", r.error
    probed = any("kv kind" in c for c in host.commands())
    assert probed == (not planned)
    if planned:
        [stream] = rsync_streams(host)
        assert guarded(stream) and " fresh " in stream and "--inplace" in stream
        # rsync as the host had neither zstd (tar through it) nor python3 (a file stream): the guard checks
        assert guard_tools(stream) == "xxh128,!python3,!zstd"
        assert host.transfers.round_trip_checks == 0


def test_a_tool_installed_since_the_hosts_last_probe_makes_the_guard_refuse_and_the_plan_follow_it(tmp_path,
                                                                                                  monkeypatch):
    monkeypatch.setattr(push, "local_has_zstd", lambda: True)
    src = _small_files(tmp_path)
    host = dest_host(cpus=1, zstd="")
    host.login_rtt = 0.08
    run_push(host, [str(src)], "/srv/other")  # probed: no zstd there
    zstd_now = dest_host(cpus=1, zstd="/usr/bin/zstd")
    zstd_now.login_rtt = 0.08
    [r] = run_push(zstd_now, [str(src)], "/srv/small")  # planned as rsync; the guard sees zstd
    assert r.status != "failed", r.error
    assert r.method == "tar" and [guarded(s) for s in rsync_streams(zstd_now)] == [True]
    assert zstd_now.streams()[-1] == "mkdir -p /srv/small && zstd -dc | tar -C /srv/small -xpf -"


def test_a_planned_auto_first_copy_to_a_destination_with_files_is_planned_again_from_what_the_guard_saw(
        tmp_path):
    src = _small_files(tmp_path)
    host = dest_host(cpus=1, zstd="", kind="dir", empty=False)
    host.login_rtt = 0.08
    run_push(host, [str(src)], "/srv/other")
    host.log.clear()
    [r] = run_push(host, [str(src)], "/srv/small")  # "fresh" expected; the guard sees files there
    assert r.status != "failed", r.error
    first, second = rsync_streams(host)
    assert guarded(first) and not guarded(second) and "--inplace" not in second  # a re-sync keeps partials aside


def test_no_round_trip_is_measured_when_the_method_is_not_autos_or_nothing_depends_on_it(tmp_path, cifar):
    host = dest_host(cpus=1)
    run_push(host, [str(_small_files(tmp_path))], "/srv/small", method="tar")
    run_push(host, [str(cifar / "cifar")], "/srv/cifar")  # 3 files: rsync whatever the link
    assert host.transfers.round_trip_checks == 0


def test_a_host_without_rsync_gets_a_tar_stream_and_a_file_gets_a_cat_stream(cifar):
    host = dest_host(rsync="")
    results = run_push(host, [str(cifar / "cifar"), str(cifar / "a.txt")], "/srv/")
    assert [r.method for r in results] == ["tar", "tar"]
    tar, cat = host.streams()
    assert "tar -C /srv/cifar -xpf -" in tar
    assert "sh -c 'cat > \"$1\"' sh /srv/.migrate-partial-a.txt" in cat
    assert cat.endswith("mv -f /srv/.migrate-partial-a.txt /srv/a.txt")


def test_the_space_check_refuses_before_anything_moves(cifar):
    host = dest_host(free_kib=1)
    [r] = run_push(host, [str(cifar / "cifar")], "/srv/cifar")
    assert r.status == "failed" and "not enough space on gpu:/srv" in r.error and "nothing was sent" in r.error
    assert host.mutations() == [] and host.streams() == []


def test_delete_lists_and_refuses_without_a_terminal_or_yes(cifar, monkeypatch):
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    host = dest_host(kind="dir", empty=False)
    host.transfers.dry_run_stats = Stats(files=3, deleted=["old.bin"])
    transfers = host.transfers
    reach = push.Reach(session=lambda h: host, root=lambda h: host, transfers=transfers)
    [r] = push.push_data([str(cifar / "cifar")], ["gpu"], "/srv/cifar", ConnectOptions(),
                         PushDataOptions(delete=True), reach=reach)
    assert r.status == "failed" and "refusing to delete 1 file(s) on gpu without confirmation" in r.error
    [dry] = host.streams()
    assert "--dry-run" in dry and "--delete" in dry and host.mutations() == []


def test_delete_with_yes_runs_the_real_rsync_after_the_listing(cifar):
    host = dest_host(kind="dir", empty=False)
    transfers = host.transfers
    transfers.dry_run_stats = Stats(files=3, deleted=["old.bin"])
    reach = push.Reach(session=lambda h: host, root=lambda h: host, transfers=transfers)
    [r] = push.push_data([str(cifar / "cifar")], ["gpu"], "/srv/cifar", ConnectOptions(),
                         PushDataOptions(delete=True, yes=True), reach=reach)
    assert r.status != "failed", r.error
    dry, real = host.streams()
    assert "--dry-run" in dry and "--dry-run" not in real and "--delete" in real


# -- dry runs change nothing ---------------------------------------------------------------------
def test_push_dry_run_issues_no_mutating_command_and_prints_the_plan(cifar, capsys):
    host = dest_host(rsync="rsync  version 3.1.3  protocol version 31")   # would need a mkdir
    [r] = run_push(host, [str(cifar / "cifar")], "/srv/new/cifar", dry_run=True, sudo=True)
    assert r.status == "dry run"
    assert host.mutations() == []
    err = capsys.readouterr().err
    assert "would run as root: mkdir -p /srv/new/cifar/" in err and "via rsync" in err


def test_push_dry_run_with_install_rsync_does_not_install_it(cifar, capsys):
    host = dest_host(rsync="")
    [r] = run_push(host, [str(cifar / "cifar")], "/srv/cifar", dry_run=True, install_rsync=True)
    assert r.status == "dry run"
    assert host.mutations() == [] and not any("apt-get" in c for c in host.commands())
    assert "would run as root: DEBIAN_FRONTEND=noninteractive apt-get install" in capsys.readouterr().err


def test_push_dry_run_with_drop_partial_lists_the_deletion_without_doing_it(cifar, capsys):
    host = dest_host(kind="dir", empty=False, partials="2048\t/srv/cifar/.migrate-partial\n")
    [r] = run_push(host, [str(cifar / "cifar")], "/srv/cifar", dry_run=True, drop_partial=True)
    assert r.status == "dry run" and host.mutations() == []
    assert "would run: rm -rf -- /srv/cifar/.migrate-partial" in capsys.readouterr().err


def test_dry_run_prints_the_command_a_tar_stream_runs_with_its_directories(tmp_path, capsys):
    """The plan shows what each tar stream of files runs there: `mkdir -p` of DEST and every
    directory in it, then the unpacking (it left the directories out before)."""
    src = _small_files(tmp_path)
    (src / "sub" / "deeper").mkdir(parents=True)
    host = dest_host(cpus=1)
    [r] = run_push(host, [str(src)], "/srv/small", dry_run=True)
    assert r.status == "dry run" and r.method == "tar" and host.mutations() == []
    assert "'mkdir -p /srv/small /srv/small/sub /srv/small/sub/deeper && tar -C /srv/small -xpf -'" in \
        capsys.readouterr().err


def test_dry_run_of_a_file_stream_says_it_rides_the_probes_exec(tmp_path, capsys):
    host = gnu_host()
    [r] = run_push(host, [str(_big_files(tmp_path))], "/srv/big", dry_run=True, method="stream")
    assert r.status == "dry run" and host.mutations() == [] and host.transfers.held_reaped == 0
    err = capsys.readouterr().err
    assert "via stream: --method stream (run on the destination probe's own exec, held open)" in err


def test_install_rsync_without_dry_run_installs_as_root_then_probes_again(cifar):
    host = dest_host(rsync="")
    run_push(host, [str(cifar / "cifar")], "/srv/cifar", install_rsync=True)
    root = host.commands(root=True)
    assert len(root) == 1 and "apt-get install -y -q -o DPkg::Lock::Timeout=120 rsync" in root[0]
    assert sum("kv kind" in c for c in host.commands()) == 2


# -- pull-data -----------------------------------------------------------------------------------
def source_host(kind: str = "dir", size_kib: int = 4) -> FakeHost:
    return FakeHost().reply(r"kv kind", f"kind={kind}\nsize_kib={size_kib}\nrsync={RSYNC_327}\nreal_name=exp1\n")


def run_pull(host: FakeHost, src: str, dest: str, local_version=(3, 2, 7), **options):
    transfers = host.transfers
    transfers.local_version = local_version
    reach = push.Reach(session=lambda h: host, root=lambda h: host, transfers=transfers)
    return pull.pull_data("gpu", src, dest, ConnectOptions(), PushDataOptions(**options), reach=reach)


def test_pull_fetches_the_contents_of_src_into_dest(tmp_path):
    host = source_host()
    r = run_pull(host, "/runs/exp1", str(tmp_path / "res"))
    [stream] = host.streams()
    assert stream.split()[-2:] == ["gpu:/runs/exp1/", f"{tmp_path}/res/"] and r.dest == f"{tmp_path}/res"


def test_pull_dry_run_creates_nothing_locally_and_runs_nothing_that_changes_the_host(tmp_path, capsys):
    host = source_host()
    dest = tmp_path / "new" / "deep"
    r = run_pull(host, "/runs/exp1", str(dest), local_version=(3, 1, 0), dry_run=True)  # no --mkpath
    assert r.status == "dry run"
    assert not (tmp_path / "new").exists()
    assert host.mutations() == [] and all("--dry-run" in s for s in host.streams())
    assert "gpu:/runs/exp1/ -> " in capsys.readouterr().err


def test_pull_refuses_to_delete_local_files_without_yes(tmp_path):
    (tmp_path / "res").mkdir()
    host = source_host()
    host.transfers.dry_run_stats = Stats(deleted=["stale.log"])
    transfers = host.transfers
    reach = push.Reach(session=lambda h: host, root=lambda h: host, transfers=transfers)
    with pytest.raises(MigrateError, match="refusing to delete 1 local file"):
        pull.pull_data("gpu", "/runs/exp1", str(tmp_path / "res"), ConnectOptions(), PushDataOptions(delete=True),
                       reach=reach)
    assert [s for s in host.streams() if "--dry-run" not in s] == []


def test_pull_of_a_missing_source_says_so():
    with pytest.raises(MigrateError, match="gpu:/nope not found"):
        run_pull(FakeHost().reply(r"kv kind", "kind=none\n"), "/nope", "/tmp/x")


@pytest.mark.parametrize("dest,into,message", [
    ("taken", False, "{t}/taken is a file; a directory cannot become it"),
    ("taken", True, "{t}/taken is a file, so {t}/taken/exp1 cannot be created"),
    ("taken/sub", False, "{t}/taken is a file, so {t}/taken/sub cannot be created"),
])
@pytest.mark.parametrize("local_version", [(3, 2, 7), (3, 1, 0)])  # with rsync --mkpath, and making dirs itself
@pytest.mark.parametrize("dry_run", [False, True])
def test_pull_of_a_directory_onto_a_local_file_is_one_line(tmp_path, dest, into, message, local_version, dry_run):
    """Issue 20.6: `pull-data HOST:dir /tmp/existing-file` was a FileExistsError traceback."""
    (tmp_path / "taken").write_text("mine\n")
    host = source_host()
    with pytest.raises(MigrateError, match=re.escape(message.format(t=tmp_path))):
        run_pull(host, "/runs/exp1", str(tmp_path / dest), local_version=local_version, into=into, dry_run=dry_run)
    assert host.streams() == [] and (tmp_path / "taken").read_text() == "mine\n"


# -- file streams: big first copies over a far link (issue 24) -----------------------------------
def _big_files(tmp_path, n=4, size=64 << 20, link=False):
    """`n` sparse files of `size` bytes (no disk used), and a symlink when `link`."""
    src = tmp_path / "big"
    (src / "sub").mkdir(parents=True)
    for i in range(n):
        with open(src / ("sub" if i == 0 else "") / f"shard{i}.bin", "wb") as fh:
            fh.truncate(size)
    if link:
        (src / "latest").symlink_to("shard1.bin")
    return src


def gnu_host(**kw) -> FakeHost:
    return dest_host(gnu_head="head (GNU coreutils) 9.1", **kw)


@pytest.mark.parametrize(("round_trip", "gnu", "method"), [
    (0.08, True, "stream"),    # far, GNU head there: one file stream
    (0.08, False, "rsync"),    # far, no GNU head: one rsync
    (0.0005, True, "parallel"),  # near: the CPU is the limit
])
def test_a_far_first_copy_of_big_files_goes_as_one_file_stream(tmp_path, round_trip, gnu, method):
    host = gnu_host() if gnu else dest_host()
    host.transfers.round_trip = round_trip
    [r] = run_push(host, [str(_big_files(tmp_path, size=256 << 20))], "/srv/big")  # 1 GiB (sparse)
    assert r.status != "failed", r.error
    assert r.method == method
    assert host.transfers.round_trip_checks == 1
    assert host.transfers.held_reaped == 1  # the probe's exec, held open, is always reaped
    if method == "stream":
        # the probe's exec becomes the stream: no exec of its own, no mkdir (it makes its directories)
        assert host.streams() == ["held stream into /srv/big"]
        assert len(host.commands()) == 1 and "kv probed ." in host.commands()[0]
        [records] = host.transfers.streamed
        assert sorted(records[:4]) == [("shard1.bin", "f"), ("shard2.bin", "f"), ("shard3.bin", "f"),
                                       ("sub/shard0.bin", "f")]
        assert records[4:] == [("sub", "d"), (".", "d")]  # directories after their files, DEST last


def test_a_far_single_file_streams_only_as_a_first_copy(tmp_path):
    src = tmp_path / "shard1.bin"
    src.write_bytes(b"x" * 1000)  # any size: a stream saves rsync's round trips
    host = gnu_host(kind="dir", existing="/srv/ckpt")
    host.transfers.round_trip = 0.08
    [r] = run_push(host, [str(src)], "/srv/ckpt")
    assert r.method == "stream" and host.streams() == ["held stream into /srv/ckpt"]
    assert host.transfers.streamed == [[("shard1.bin", "f")]]
    again = gnu_host(kind="file", existing="/srv/ckpt/shard1.bin", empty=True)  # a file already there
    again.transfers.round_trip = 0.08
    [r] = run_push(again, [str(src)], "/srv/ckpt/shard1.bin")
    assert r.method == "rsync" and again.transfers.round_trip_checks == 0


@pytest.mark.parametrize(("size", "method"), [(2 << 20, "stream"), (200 << 10, "rsync")])
def test_a_far_first_copy_of_a_few_files_streams_when_they_are_big_on_average(tmp_path, size, method):
    src = _big_files(tmp_path, n=3, size=size)
    host = gnu_host()
    host.transfers.round_trip = 0.08
    [r] = run_push(host, [str(src)], "/srv/few")
    assert r.method == method and host.transfers.round_trip_checks == (method == "stream")  # measured if it matters


def test_a_tree_with_links_goes_by_rsync_and_method_stream_refuses_it(tmp_path):
    src = _big_files(tmp_path, link=True)
    host = gnu_host()
    host.transfers.round_trip = 0.08
    [r] = run_push(host, [str(src)], "/srv/big")
    assert r.method == "rsync" and r.status != "failed", r.error
    assert host.transfers.streamed == []
    refused = gnu_host()
    [r] = run_push(refused, [str(src)], "/srv/big", method="stream")
    assert r.status == "failed" and "files and directories only" in r.error and "'latest'" in r.error
    assert refused.mutations() == [] and refused.transfers.held_reaped == 1


def test_a_second_stream_gets_an_exec_of_its_own_and_sudo_never_holds_the_probe(tmp_path):
    big, other = _big_files(tmp_path), tmp_path / "other"
    other.mkdir()
    (other / "x.bin").write_bytes(b"x")
    host = gnu_host()
    [a, b] = run_push(host, [str(big), str(other)], "/srv/", method="stream")
    assert (a.method, b.method) == ("stream", "stream")
    first, second = host.streams()
    assert first == "held stream into /srv/big"
    assert second.startswith("sh -c ") and second.endswith(" sh /srv/other")
    root = gnu_host()
    run_push(root, [str(big)], "/srv/big", method="stream", sudo=True)
    [stream] = root.streams()
    assert stream.startswith("sudo -n sh -c ") and root.transfers.held_reaped == 0


def test_method_stream_cannot_delete(tmp_path):
    host = gnu_host()
    with pytest.raises(MigrateError, match="--method stream cannot --delete"):
        run_push(host, [str(_big_files(tmp_path))], "/srv/big", method="stream", delete=True)
    assert host.log == []  # refused before the host was asked anything


@pytest.mark.parametrize(("n", "whole"), [(3, True), (1001, False)])
def test_rsync_sends_a_small_trees_whole_list_first_and_a_big_tree_incrementally(tmp_path, n, whole):
    """--no-inc-recursive saves a round trip on a small tree (0.09 s over an 80 ms link); a big one keeps
    incremental recursion, so its files flow while the list is still being built."""
    host = dest_host(kind="dir", existing="/srv/small", empty=False)  # not a first copy: rsync
    [r] = run_push(host, [str(_small_files(tmp_path, n))], "/srv/small")
    [rsync] = rsync_streams(host)
    assert r.method == "rsync" and ("--no-inc-recursive" in rsync.split()) == whole


@pytest.mark.parametrize(("kind", "empty", "size", "inplace"), [
    ("none", True, 4096, True),        # a first copy of small files: no temporary name and rename per file
    ("dir", True, 4096, True),         # into an empty directory: still a first copy
    ("dir", False, 4096, False),       # a re-sync: an unfinished file waits in .migrate-partial/
    ("none", True, 2 << 20, False),    # big files: never under their own name until whole
])
def test_a_first_copy_of_small_files_goes_by_rsync_inplace(tmp_path, capsys, kind, empty, size, inplace):
    src = tmp_path / "data"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(b"z" * size)
    host = dest_host(kind=kind, existing="/srv/data" if kind == "dir" else "/srv", empty=empty)
    [r] = run_push(host, [str(src)], "/srv/data", method="rsync")
    *refused, rsync = rsync_streams(host)  # planned as a first copy: a re-sync's DEST refuses it, then rsync
    assert len(refused) == (0 if inplace or size > 4096 else 1) and all(map(guarded, refused))
    assert guarded(rsync) == (not refused)
    words = rsync.split()
    assert r.method == "rsync"
    assert ("--inplace" in words, "--partial-dir=.migrate-partial" in words) == (inplace, not inplace)
    # the dry run's plan prints the very command line the run uses
    dry = dest_host(kind=kind, existing="/srv/data" if kind == "dir" else "/srv", empty=empty)
    run_push(dry, [str(src)], "/srv/data", method="rsync", dry_run=True)
    planned = [line for line in capsys.readouterr().err.splitlines() if "$ rsync " in line]
    assert len(planned) == 1 and ("--inplace" in planned[0]) == inplace
    assert "--no-inc-recursive" in planned[0] and "--no-inc-recursive" in words  # 3 files: the whole list


@pytest.mark.parametrize(("options", "asked"), [
    ({}, False), ({"method": "tar"}, False), ({"sudo": True}, True), ({"install_rsync": True}, True),
])
def test_the_destination_probe_asks_about_sudo_only_when_something_may_run_as_root(cifar, options, asked):
    host = dest_host()
    run_push(host, [str(cifar / "cifar")], "/srv/cifar", **options)
    [probe] = [c for c in host.commands() if "kv kind" in c]
    assert probe.endswith(" sudo") == asked


# -- a re-sync of a destination pushed before: the checks ride rsync's exec (data/known.py) --------
def guarded(stream: str) -> bool:
    return "--rsync-path=sh -c" in stream and "migrate-guard" in stream


def guard_tools(stream: str) -> str:
    """What a guarded rsync's plan relies on (data/remote.py DEST_GUARD's $5)."""
    path = next(a for a in shlex.split(stream) if a.startswith("--rsync-path="))
    return shlex.split(path)[8]


def test_a_resync_of_a_destination_pushed_before_runs_no_probe_and_guards_its_rsync(cifar):
    host = dest_host(kind="dir", existing="/srv/cifar", empty=False)
    [first] = run_push(host, [str(cifar / "cifar")], "/srv/cifar")
    assert first.status != "failed", first.error
    assert "kv kind" in host.commands()[0] and not any(guarded(s) for s in rsync_streams(host))
    host.log.clear()
    [again] = run_push(host, [str(cifar / "cifar")], "/srv/cifar")
    assert again.status != "failed", again.error
    assert host.commands() == []  # no probe, nothing made first: the rsync's exec checks DEST
    [stream] = rsync_streams(host)
    assert guarded(stream) and " resync " in stream and guard_tools(stream) == "xxh128"
    assert "--mkpath" in stream and "--inplace" not in stream  # a re-sync keeps unfinished files aside


@pytest.mark.parametrize(("there", "here"), [("yes", True), ("no", True), ("yes", False)])
def test_rsync_names_xxh128_only_where_both_sides_have_it_and_the_guard_requires_it(cifar, there, here):
    """Named, rsync skips the exchange that picks a checksum (a round trip); an rsync without it would
    fail, so both sides must list it: the probe's facts and this machine's, and a guarded exec checks."""
    from migrate.data import known

    host = dest_host(kind="dir", existing="/srv/cifar", empty=False, xxh128=there)
    host.transfers.local_xxh128 = here
    named = there == "yes" and here
    [first] = run_push(host, [str(cifar / "cifar")], "/srv/cifar")  # probed
    assert first.status != "failed", first.error
    [stream] = rsync_streams(host)
    assert ("--checksum-choice=xxh128" in stream) == named
    host.log.clear()
    [again] = run_push(host, [str(cifar / "cifar")], "/srv/cifar")  # a re-sync: planned, the guard checks
    assert again.status != "failed", again.error
    [stream] = rsync_streams(host)  # the probe saw the host's rsync: the plan names what both have
    assert guarded(stream) and ("--checksum-choice=xxh128" in stream) == named
    assert guard_tools(stream) == ("xxh128" if named else "-")
    known.hosts_path().unlink()  # the host's tools unknown: this machine's rsync is the guess
    host.log.clear()
    [third] = run_push(host, [str(cifar / "cifar")], "/srv/cifar")
    assert third.status != "failed", third.error
    streams = rsync_streams(host)
    assert guarded(streams[0]) and ("--checksum-choice=xxh128" in streams[0]) == here
    refused = here and there == "no"  # then planned again from what the guard saw: no checksum named
    assert len(streams) == (2 if refused else 1)
    assert not refused or "--checksum-choice" not in streams[1]


def test_only_the_first_rsync_of_a_guarded_push_carries_the_check(cifar):
    (cifar / "more").mkdir()
    (cifar / "more" / "x").write_text("x")
    host = dest_host(kind="dir", empty=False)
    sources = [str(cifar / "cifar"), str(cifar / "more")]
    run_push(host, sources, "/srv", into=True, method="rsync")
    host.log.clear()
    results = run_push(host, sources, "/srv", into=True, method="rsync")
    assert [r.status for r in results] != ["failed", "failed"]
    assert [guarded(s) for s in rsync_streams(host)] == [True, False]


def test_a_refused_guard_plans_again_from_what_it_saw_and_forgets_the_destination(cifar, monkeypatch):
    from migrate.data import known
    from migrate.data.remote import GuardRefused, parse_dest_probe

    host = dest_host()
    run_push(host, [str(cifar / "cifar")], "/srv/cifar", method="rsync")
    host.log.clear()
    recorded = host.transfers.run_rsync

    def refuse_guarded(argv, **kw):
        recorded(argv, **kw)
        if guarded(" ".join(argv)):  # DEST was removed there since
            raise GuardRefused(parse_dest_probe("kind=none\nexisting=/srv\nwritable=yes\nfree_kib=99999\n"
                                                f"empty=yes\nrsync={RSYNC_327}\n"))
        return host.transfers._outcome()

    monkeypatch.setattr(host.transfers, "run_rsync", refuse_guarded)
    [r] = run_push(host, [str(cifar / "cifar")], "/srv/cifar", method="rsync")
    assert r.status != "failed", r.error
    assert host.commands() == []  # the guard's facts stand in for the probe's
    first, second = rsync_streams(host)
    assert guarded(first) and not guarded(second) and "--inplace" in second  # now a first copy
    assert known.pushed_before(known.key("alice", "10.0.0.7", 22, "/srv/cifar"))  # remembered again: it completed


def test_a_refused_guard_that_finds_a_file_fails_as_the_probe_would_and_sends_nothing_more(cifar, monkeypatch):
    from migrate.data import known
    from migrate.data.remote import GuardRefused, parse_dest_probe

    host = dest_host()
    run_push(host, [str(cifar / "cifar")], "/srv/cifar")
    host.log.clear()

    def refuse(argv, **kw):
        host.record_stream(argv)
        raise GuardRefused(parse_dest_probe(f"kind=file\nexisting=/srv/cifar\nwritable=yes\nrsync={RSYNC_327}\n"))

    monkeypatch.setattr(host.transfers, "run_rsync", refuse)
    [r] = run_push(host, [str(cifar / "cifar")], "/srv/cifar")
    assert r.status == "failed" and "is a file; a directory cannot become it" in r.error
    [stream] = rsync_streams(host)  # the refused one only: no second rsync, no mkdir
    assert guarded(stream) and [m.command for m in host.mutations()] == [stream]
    assert not known.pushed_before(known.key("alice", "10.0.0.7", 22, "/srv/cifar"))


@pytest.mark.parametrize("options", [
    {"dry_run": True}, {"delete": True, "yes": True}, {"sudo": True}, {"drop_partial": True}, {"method": "tar"},
])
def test_options_that_need_the_facts_first_still_probe_a_destination_pushed_before(cifar, options):
    host = dest_host(kind="dir", empty=False)
    run_push(host, [str(cifar / "cifar")], "/srv/cifar", method="rsync")
    host.log.clear()
    run_push(host, [str(cifar / "cifar")], "/srv/cifar", **{"method": "rsync", **options})
    assert "kv kind" in host.commands()[0]
    assert not any(guarded(s) for s in host.streams())


def test_a_file_source_an_old_local_rsync_or_a_failed_push_keep_the_probe(cifar, monkeypatch):
    from migrate.data import known

    host = dest_host(kind="dir", empty=False)
    for _ in range(2):  # a single file: its landing depends on what DEST is
        run_push(host, [str(cifar / "a.txt")], "/srv", method="rsync")
    assert sum("kv kind" in c for c in host.commands()) == 2 and not any(guarded(s) for s in host.streams())
    host = dest_host(kind="dir", empty=False)
    for _ in range(2):  # rsync 3.2.2 here: no --mkpath for a plan made before the facts
        run_push(host, [str(cifar / "cifar")], "/srv/c", local_version=(3, 2, 2), method="rsync")
    assert not any(guarded(s) for s in host.streams())
    host = dest_host(kind="dir", empty=False, writable=False)
    for _ in range(2):  # the first push failed: nothing is remembered (each plans a first copy, refused there)
        [r] = run_push(host, [str(cifar / "cifar")], "/srv/d", method="rsync")
    assert r.status == "failed" and "not writable" in r.error and len(host.streams()) == 2
    assert all(map(guarded, host.streams()))
    assert not known.pushed_before(known.key("alice", "10.0.0.7", 22, "/srv/d"))
