"""Fan-out (issue 24): who feeds whom, the transfer key's line, its add/remove commands (run by a real
sh on a scratch HOME), stale-marker rules, the sender's command and the transfer's bookkeeping."""

from __future__ import annotations

import os
import stat
import subprocess
from types import SimpleNamespace

import pytest

from migrate.image import fanout
from migrate.image.plan import SEND, UP_TO_DATE
from migrate.relay import plan
from migrate.relay import session as rsession
from migrate.relay.keys import new_key_pair
from migrate.remote import shell
from tests.fakehost import FakeHost

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB0K2iJ0xJvW9v2cN3t9P2yqY3w0h9k8b2r2s7vT1x2y"
MARK = plan.Marker("laptop", 4242, "0123456789abcdef", 2_000_000_000)


def sh(script: str, home) -> subprocess.CompletedProcess:
    return subprocess.run(script, shell=True, env={"HOME": str(home), "PATH": os.environ["PATH"]},
                          capture_output=True, text=True)


# -- who feeds whom --------------------------------------------------------------------------------
def test_a_star_from_the_first_host_that_needs_bytes():
    asked = []
    feeds = plan.plan_feeds(["a", "b", "c", "d"], {"a": False, "b": True, "c": True, "d": True}, {},
                            lambda s, h: asked.append((s, h)) or "ok")
    assert feeds["a"] == plan.Feed("a", "-", "nothing to send")
    assert feeds["b"].source == plan.LAPTOP and not feeds["b"].relayed
    assert [(h, feeds[h].source) for h in "cd"] == [("c", "b"), ("d", "b")]
    assert feeds["c"].relayed and asked == [("b", "c"), ("b", "d")]


def test_refused_and_unreachable_hosts_are_fed_from_here_with_the_reason():
    feeds = plan.plan_feeds(["a", "b", "c"], dict.fromkeys("abc", True), {"a": "its Docker needs a sudo password"},
                            lambda s, h: "ok" if h == "b" else "[Errno 113] No route to host")
    assert feeds["a"] == plan.Feed("a", plan.LAPTOP, "its Docker needs a sudo password")
    assert feeds["b"].source == plan.LAPTOP  # the seed: the first host that may send
    assert feeds["c"] == plan.Feed("c", plan.LAPTOP, "b cannot reach it: [Errno 113] No route to host")


def test_a_failing_reach_check_feeds_that_host_from_here():
    from migrate.errors import ConnectError

    def reach(seed, host):
        raise ConnectError("connection to b lost")

    feeds = plan.plan_feeds(["a", "b"], {"a": True, "b": True}, {}, reach)
    assert feeds["b"] == plan.Feed("b", plan.LAPTOP, "a cannot reach it: connection to b lost")


@pytest.mark.parametrize(("needs", "off", "why"), [
    ({"a": True, "b": True}, "--no-relay", "--no-relay"),
    ({"a": True, "b": False}, "", "one host needs the bytes"),
])
def test_no_relay_or_a_single_taker_feeds_everyone_from_here(needs, off, why):
    feeds = plan.plan_feeds(["a", "b"], needs, {}, lambda s, h: pytest.fail("no reach check"), off=off)
    assert feeds["a"] == plan.Feed("a", plan.LAPTOP, why)


# -- the authorized_keys line and its commands -----------------------------------------------------
def test_the_line_allows_only_the_forced_command_and_names_the_transfer():
    line = plan.authorized_line(KEY, "sg docker -c 'docker load' \"x\"", MARK)
    assert line == (f'restrict,command="sg docker -c \'docker load\' \\"x\\"" {KEY} '
                    "migrate-relay:laptop:4242:0123456789abcdef:2000000000")
    with pytest.raises(ValueError):
        plan.authorized_line("ssh-rsa AAAA", "docker load", MARK)
    with pytest.raises(ValueError):
        plan.authorized_line(KEY, "docker load\nssh-ed25519 evil", MARK)


def test_add_keeps_the_file_and_its_mode_and_remove_takes_only_our_line(tmp_path):
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    auth = ssh / "authorized_keys"
    auth.write_text("ssh-ed25519 AAAAuser1 me@laptop\nssh-rsa AAAAuser2 no-newline-at-end")
    auth.chmod(0o640)
    other = plan.Marker("laptop", 1, "fedcba9876543210", 2_000_000_000)
    for m in (MARK, other):
        res = sh(plan.add_line_command(plan.authorized_line(KEY, "docker load", m)), tmp_path)
        assert res.returncode == 0, res.stderr
    lines = auth.read_text().splitlines()
    assert lines[:2] == ["ssh-ed25519 AAAAuser1 me@laptop", "ssh-rsa AAAAuser2 no-newline-at-end"]
    assert lines[2].endswith(MARK.text()) and lines[3].endswith(other.text())
    assert stat.S_IMODE(auth.stat().st_mode) == 0o640
    assert sh(plan.remove_lines_command([MARK]), tmp_path).returncode == 0
    assert auth.read_text().splitlines() == lines[:2] + lines[3:]
    assert stat.S_IMODE(auth.stat().st_mode) == 0o640
    inode = auth.stat().st_ino
    assert sh(plan.remove_lines_command([MARK]), tmp_path).returncode == 0  # nothing of ours: not rewritten
    assert auth.stat().st_ino == inode
    assert sh(plan.remove_lines_command([other]), tmp_path).returncode == 0
    assert auth.read_text().splitlines() == lines[:2]
    assert sorted(p.name for p in ssh.iterdir()) == ["authorized_keys"]  # no temp file left


def test_add_creates_a_private_file_and_refuses_a_symlink(tmp_path):
    res = sh(plan.add_line_command(plan.authorized_line(KEY, "docker load", MARK)), tmp_path)
    assert res.returncode == 0, res.stderr
    auth = tmp_path / ".ssh" / "authorized_keys"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600 and len(auth.read_text().splitlines()) == 1
    real = tmp_path / "keys"
    auth.rename(real)
    auth.symlink_to(real)
    res = sh(plan.add_line_command(plan.authorized_line(KEY, "docker load", MARK)), tmp_path)
    assert res.returncode == 3 and "symlink" in res.stderr and auth.is_symlink()


def test_list_finds_markers_in_lines_and_key_directories(tmp_path):
    sh(plan.add_line_command(plan.authorized_line(KEY, "docker load", MARK)), tmp_path)
    other = plan.Marker("laptop", 7, "aaaaaaaabbbbbbbb", 1)
    (tmp_path / other.key_dir).mkdir(parents=True)
    found = plan.parse_markers(sh(plan.list_markers_command(), tmp_path).stdout)
    assert found == [MARK, other]
    assert sh(plan.remove_dirs_command([other]), tmp_path).returncode == 0
    assert not (tmp_path / other.key_dir).exists() and (tmp_path / plan.RELAY_DIR).is_dir()


def test_stale_markers_are_dead_runs_of_this_machine_or_past_their_deadline():
    def stale(m):
        return plan.is_stale(m, now=1_000, machine="laptop", pid=10, alive=lambda pid: pid == 11)

    assert stale(plan.Marker("laptop", 12, "a" * 16, 5_000))          # its process is gone
    assert not stale(plan.Marker("laptop", 11, "a" * 16, 5_000))      # still running
    assert not stale(plan.Marker("laptop", 10, "a" * 16, 5_000))      # ours
    assert not stale(plan.Marker("other", 12, "a" * 16, 5_000))       # another machine's, before its deadline
    assert stale(plan.Marker("other", 12, "a" * 16, 999))             # past its deadline


# -- the sender ------------------------------------------------------------------------------------
def test_the_sender_verifies_the_host_key_and_uses_only_the_transfer_key():
    cmd = plan.send_command("docker save app:1", MARK, "migrate-relay-host-0", "alice", plan.Address("10.0.0.2", 22))
    for opt in ("StrictHostKeyChecking=yes", "HostKeyAlias=migrate-relay-host-0", "IdentitiesOnly=yes",
                "GlobalKnownHostsFile=/dev/null", "BatchMode=yes", f"~/{MARK.key_dir}/key"):
        assert opt in cmd
    assert "-F /dev/null" in cmd and "-p 22 -l alice 10.0.0.2" in cmd
    assert subprocess.run(["sh", "-n", "-c", cmd]).returncode == 0
    assert plan.parse_relayed("Loaded image: app:1\nrelayed=123\n") == ("Loaded image: app:1", 123)
    # the seed feeds every receiver at once: each send counts its bytes in a file of its own
    other = plan.send_command("docker save app:1", MARK, "migrate-relay-host-1", "alice", plan.Address("10.0.0.3", 22))
    assert f"{MARK.key_dir}/count-migrate-relay-host-0" in cmd and f"{MARK.key_dir}/count-migrate-relay-host-1" in other


@pytest.mark.parametrize(("text", "want"), [
    ("10.0.0.1 50000 172.29.1.12 22", plan.Address("172.29.1.12", 22)),
    ("10.0.0.1 50000 10.1.2.3 2222", plan.Address("10.1.2.3", 2222)),
    ("127.0.0.1 50000 127.0.0.1 22", None),
    ("", None),
])
def test_the_address_other_hosts_use_is_where_sshd_answered(text, want):
    assert plan.parse_address(text) == want


def test_reach_output_is_read_per_address():
    assert plan.parse_reach("ssh=ok\ntee=ok\n10.0.0.2:22=ok\n10.0.0.3:22=timed out\n") == \
        {"ssh": "ok", "tee": "ok", "10.0.0.2:22": "ok", "10.0.0.3:22": "timed out"}


def test_the_reach_check_runs_and_finds_this_machines_tee():
    out = subprocess.run(plan.reach_command([]), shell=True, capture_output=True, text=True, check=True).stdout
    assert plan.parse_reach(out)["tee"] == "ok"  # Debian's coreutils


# -- riders: the seed's stream tee'd to them as it arrives (a real sh, fifos and tee; ssh faked) ------
FAKE_SSH = """#!/bin/sh
# the fake ssh: its address argument (the one before the remote command) names the rider
for a in "$@"; do prev=$ip; ip=$a; done
case "$prev" in
  10.0.0.9) head -c 10 > /dev/null; echo "lost after 10 bytes" >&2; exit 255 ;;
  *) cat > "$OUT/rider-$prev"; echo "Loaded image: app:1"; echo "a warning" >&2 ;;
esac
"""


def tee_env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    (tmp_path / "home" / MARK.key_dir).mkdir(parents=True)
    return {"HOME": str(tmp_path / "home"), "OUT": str(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def riders(*ips: str) -> list[plan.Rider]:
    return [plan.Rider(plan.host_alias(n), "alice", plan.Address(ip, 22)) for n, ip in enumerate(ips)]


def test_riders_get_the_seeds_bytes_and_a_failing_rider_stops_no_one(tmp_path):
    env = tee_env(tmp_path)
    data = os.urandom(3 << 20)  # past any pipe buffer: the tee must keep feeding after rider 2 is gone
    cmd = plan.tee_load_command('cat > "$OUT/seed"; echo "Loaded image: app:1"', MARK,
                                riders("10.0.0.2", "10.0.0.9", "10.0.0.3"))
    res = subprocess.run(cmd, shell=True, input=data, env=env, capture_output=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "seed").read_bytes() == data
    assert (tmp_path / "rider-10.0.0.2").read_bytes() == data == (tmp_path / "rider-10.0.0.3").read_bytes()
    own, reports = plan.parse_reports(res.stdout.decode())
    assert own == "Loaded image: app:1\n"
    assert reports["migrate-relay-host-0"] == plan.RiderReport("Loaded image: app:1", "a warning", 0)
    assert reports["migrate-relay-host-1"] == plan.RiderReport("", "lost after 10 bytes", 255)
    assert reports["migrate-relay-host-2"].exit_code == 0
    assert sorted(os.listdir(tmp_path / "home" / MARK.key_dir)) == []  # fifos and reports removed


def test_the_seeds_exit_status_is_its_loads_and_a_decompressor_runs_before_the_tee(tmp_path):
    import gzip

    env = tee_env(tmp_path)
    res = subprocess.run(plan.tee_load_command('cat > "$OUT/seed"; exit 4', MARK, riders("10.0.0.2"), "gzip -dc"),
                         shell=True, input=gzip.compress(b"archive"), env=env, capture_output=True)
    assert res.returncode == 4
    assert (tmp_path / "seed").read_bytes() == b"archive" == (tmp_path / "rider-10.0.0.2").read_bytes()


def test_without_room_for_the_fifos_the_seed_still_loads(tmp_path):
    env = tee_env(tmp_path)
    (tmp_path / "home" / MARK.key_dir).rmdir()  # the transfer's directory is gone: mkfifo fails
    res = subprocess.run(plan.tee_load_command('cat > "$OUT/seed"', MARK, riders("10.0.0.2")), shell=True,
                         input=b"x" * 1000, env=env, capture_output=True)
    assert res.returncode == 0 and (tmp_path / "seed").read_bytes() == b"x" * 1000
    assert plan.parse_reports(res.stdout.decode())[1] == {} and not (tmp_path / "rider-10.0.0.2").exists()


def test_no_riders_is_the_plain_load():
    assert plan.tee_load_command("docker load", MARK, []) == "sh -c 'docker load'"
    assert plan.tee_load_command("docker load", MARK, [], "zstd -dcq") == "sh -c 'zstd -dcq | docker load'"


# -- the transfer on (recording) hosts -------------------------------------------------------------
def test_a_transfer_authorises_one_line_reaps_dead_runs_and_removes_everything(monkeypatch):
    monkeypatch.setattr(rsession, "host_key", lambda remote: ("ssh-ed25519", "AAAAhostkey"))
    dead = plan.Marker(rsession.machine(), 999_999_999, "deaddeaddeaddead", 2_000_000_000)
    sender, receiver = FakeHost(), FakeHost()
    receiver.reply("grep -o", f"{dead.text()}\n")
    with rsession.Transfer(sender) as transfer:
        transfer.start([receiver])
        transfer.admit(receiver, "docker load")
        runs = [c for c in receiver.commands() if "authorized_keys" in c]
        assert dead.text() in runs[1] and "grep -v -F" in runs[1]  # the dead run's line goes first
        assert transfer.marker.text() in runs[2] and "restrict,command=" in runs[2]
        files = {f.command: f.data for f in sender.log if f.kind == "file"}
        assert files[f"{transfer.marker.key_dir}/key"].startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        assert files[f"{transfer.marker.key_dir}/known_hosts"] == b"migrate-relay-host-0 ssh-ed25519 AAAAhostkey\n"
        assert transfer.alias(receiver) == "migrate-relay-host-0"
    assert transfer.marker.text() in receiver.commands()[-1] and "grep -v -F" in receiver.commands()[-1]
    assert sender.commands()[-1] == "cd && rm -rf -- " + shell.quote(transfer.marker.key_dir)


def test_the_key_pair_is_ed25519_and_never_printed():
    pair = new_key_pair()
    assert pair.public.startswith("ssh-ed25519 ") and b"PRIVATE KEY" in pair.private_openssh
    assert "PRIVATE" not in repr(pair)


# -- push-image's plan -----------------------------------------------------------------------------
def _session(name: str, action: str, access: str = "direct", first: int = 0, ssh_conn: str = ""):
    host = FakeHost().reply("SSH_CONNECTION", ssh_conn or f"10.0.0.1 5000 10.0.0.{len(name)} 22")
    host.reply("python3 -c", "ssh=ok\n" + "".join(f"10.0.0.{n}:22=ok\n" for n in range(1, 9)))
    p = SimpleNamespace(action=action, first_missing=first, total_layers=4)
    return SimpleNamespace(host=name, name=name, remote=host, plans={"img": p}, relay_address=None,
                           facts=SimpleNamespace(access=access), sif_present={})


def test_push_image_plan_probes_only_and_explains_each_host():
    img = SimpleNamespace(image_id="img", display="app:1")
    s = [_session("a", SEND), _session("bb", SEND), _session("ccc", UP_TO_DATE),
         _session("dddd", SEND, "sudo-password"), _session("eeeee", SEND, first=3),
         _session("ffffff", SEND, ssh_conn="127.0.0.1 5 127.0.0.1 22")]
    feeds = fanout.plan(s, [img], relay=True, sif=False)
    assert {h: f.source for h, f in feeds.items()} == {"a": plan.LAPTOP, "bb": "a", "ccc": "-", "dddd": plan.LAPTOP,
                                                      "eeeee": plan.LAPTOP, "ffffff": plan.LAPTOP}
    assert "sudo password" in feeds["dddd"].why and "3 of 4 layers" in feeds["eeeee"].why
    assert "tunnel" in feeds["ffffff"].why
    assert all(x.remote.mutations() == [] for x in s)
    assert fanout.plan(s, [img], relay=False, sif=False)["bb"] == plan.Feed("bb", plan.LAPTOP, "--no-relay")


def test_dry_run_says_how_a_relayed_host_would_be_fed():
    from migrate.image.push import ImagePushResult

    feed = plan.Feed("b", "a", "host to host")
    r = fanout.annotate([ImagePushResult("app:1", "b", "would send", detail="2/2 layers")], feed, dry_run=True)[0]
    assert (r.fed_via, r.fed_why) == ("a", "host to host")
    assert r.detail.startswith("from a over the hosts' network: the archive a loads, as it arrives (tee there)")
    direct = fanout.annotate([ImagePushResult("app:1", "a", "would send", detail="2/2 layers")],
                             plan.Feed("a", plan.LAPTOP, "x"), dry_run=True)[0]
    assert direct.detail == "2/2 layers"


@pytest.mark.parametrize(("kw", "why"), [
    ({"relay": False}, "--no-relay"), ({"sudo": True}, "--sudo is sent from here"),
    ({"delete": True}, "--delete is sent from here"), ({}, ""),
])
def test_push_data_relays_only_what_the_first_host_can_feed(kw, why):
    from migrate.data.fanout import refusal
    from migrate.data.plan import PushDataOptions

    assert refusal(PushDataOptions(**kw)) == why


def test_push_data_seed_tars_exactly_the_listed_files():
    from migrate.data.fanout import send_tar_source

    cmd = send_tar_source("data/my set", ".migrate/relay/m/list-1")
    assert cmd == "cd 'data/my set' && tar -cf - --null --no-recursion -T \"$HOME\"/.migrate/relay/m/list-1"


# -- the convoy: who rides the seed's stream, what a step's reports do -------------------------------
def _docker_session(name: str, *, first_layers: int = 0, containerd: bool = False, zstd: str = "",
                    engine: str = "27.3.1"):
    from migrate.image.remote import RemoteDocker

    facts = RemoteDocker(access="direct", engine=engine, zstd=zstd, inventoried=True, inventory_scope="done")
    if containerd:
        facts.driver_status = [["driver-type", "io.containerd.snapshotter.v1"]]
    if first_layers:
        facts.add_image("sha256:base", [], ["sha256:aaa", "sha256:bbb"][:first_layers])
    return SimpleNamespace(host=name, name=name, facts=facts, remote=SimpleNamespace(name=name),
                           relay_address=plan.Address("10.0.0.5", 22))


def _convoy(seed, receivers):
    transfer = SimpleNamespace(marker=MARK, alias=lambda remote: f"alias-{remote.name}")
    return fanout.Convoy(seed, transfer, receivers)


def test_only_receivers_that_lack_what_the_seed_lacks_ride_its_stream():
    from migrate.image.compress import Codec
    from migrate.image.local import LocalImage
    from migrate.image.plan import DiskNeed, plan_image

    img = LocalImage("app:2", "sha256:222", ["sha256:aaa", "sha256:bbb"], size=10 << 20, tags=["app:2"])
    seed, fresh, half = _docker_session("seed"), _docker_session("fresh"), _docker_session("half", first_layers=1)
    old = _docker_session("old", engine="20.10.24")
    convoy = _convoy(seed, [fresh, half, old])
    need = DiskNeed(layers=1, tmp=1)
    seed_plan = plan_image(img, seed.facts)
    assert convoy.board(img, seed_plan, need, Codec(), registry=False) == [fresh, old]
    assert "lacks layers from 2 on" in fanout.differs(seed_plan, plan_image(img, half.facts), seed.facts,
                                                     half.facts, img)
    # a zstd stream the seed's engine reads: riders need an engine that reads it too, unless the seed's
    # zstd decompresses it before the tee
    zstd = Codec("zstd", 3)
    assert convoy.decompress(zstd) is None and convoy.board(img, seed_plan, need, zstd, registry=False) == [fresh]
    seed.facts.zstd = "/usr/bin/zstd"
    assert convoy.decompress(zstd) == "zstd -dcq" and convoy.board(img, seed_plan, need, zstd, registry=False) == \
        [fresh, old]
    assert convoy.board(img, seed_plan, need, Codec(), registry=True) == []  # the seed pulls layers: its own archive


def test_a_rider_whose_load_failed_leaves_and_the_seed_keeps_its_own_output():
    from migrate.image.stream import StreamResult

    seed, a, b = _docker_session("seed"), _docker_session("a"), _docker_session("b")
    convoy = _convoy(seed, [a, b])
    convoy.sent = {"a": 0, "b": 0}
    loaded = []
    pusher = SimpleNamespace(_after_load=lambda s, step, rep: loaded.append((s.name, rep.stdout)))
    out = ("Loaded image: app:2\n"
           f"{plan.REPORT} alias-a out Loaded image: app:2\n{plan.REPORT} alias-a rc 0\n"
           f"{plan.REPORT} alias-b err no space left on device\n{plan.REPORT} alias-b rc 1\n")
    riders = [a, b]
    res = convoy.settle(pusher, "step", riders, StreamResult(0, out, "", 5, 5, 1.0), 1234)
    assert res.stdout == "Loaded image: app:2\n" and res.exit_code == 0
    assert loaded == [("a", "Loaded image: app:2")] and convoy.sent["a"] == 1234
    assert riders == [a] and convoy.riding == [a]  # b is fed after the seed, by docker save there


# -- one file, host to host (a cluster's template archive) -------------------------------------------
def test_a_file_goes_host_to_host_checked_by_digest_and_unreachable_hosts_are_left_to_the_caller(monkeypatch):
    from migrate.relay import files
    from tests.fakehost import FakeTarget

    monkeypatch.setattr(rsession, "host_key", lambda remote: ("ssh-ed25519", "AAAAhostkey"))
    seed = FakeHost(target=FakeTarget(alias="h1"))
    seed.reply("python3 -c", "ssh=ok\ntee=ok\n10.0.0.2:22=ok\n10.0.0.3:22=timed out\n10.0.0.4:22=ok\n")
    seed.reply("relayed=", "relayed=100\n")
    good = FakeHost(target=FakeTarget(alias="h2")).reply("SSH_CONNECTION", "10.0.0.1 5000 10.0.0.2 22\n")
    good.reply("sha256sum", "abc123  /home/alice/t.tar.gz\n")
    far = FakeHost(target=FakeTarget(alias="h3")).reply("SSH_CONNECTION", "10.0.0.1 5000 10.0.0.3 22\n")
    tunnel = FakeHost(target=FakeTarget(alias="h4")).reply("SSH_CONNECTION", "127.0.0.1 5000 127.0.0.1 2222\n")
    bad = FakeHost(target=FakeTarget(alias="h5")).reply("SSH_CONNECTION", "10.0.0.1 5000 10.0.0.4 22\n")
    bad.reply("sha256sum", "fff  /home/alice/t.tar.gz\n")
    why = files.feed_file(seed, "/home/alice/s.tar.gz", [(good, "/home/alice/t.tar.gz"), (far, "/x"),
                                                          (tunnel, "/y"), (bad, "/home/alice/t.tar.gz")], "abc123")
    assert why == {"alice@h2": "", "alice@h3": "alice@h1 cannot reach it: timed out",
                   "alice@h4": "no address the hosts share (reached through a tunnel or a forward)",
                   "alice@h5": "the copy there is not the file sent"}
    line = next(c for c in good.commands() if "restrict,command=" in c)
    assert "cat > /home/alice/t.tar.gz" in line  # the key may write that one file, nothing else
    assert not any("restrict" in c for c in far.commands() + tunnel.commands())
    sends = [c for c in seed.commands() if "ssh -F /dev/null" in c]
    assert len(sends) == 2 and all("cat /home/alice/s.tar.gz" in c for c in sends)
    assert seed.commands()[-1].startswith("cd && rm -rf -- ")  # the key directory goes at the end
    assert "grep -v -F" in good.commands()[-1] and "grep -v -F" in bad.commands()[-1]  # and the receivers' lines
