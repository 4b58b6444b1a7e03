"""push-data / pull-data with real rsync and sshd on the sandbox."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from migrate.remote import shell
from migrate.remote.connection import connect
from tests.conftest import assert_one_line_error, run_cli

WEIRD = ["with space", "ünïcödé", "-leading-dash", "quote'name"]


def _tree(local_root: Path) -> None:
    (local_root / "sub dir").mkdir(parents=True)
    (local_root / "a.txt").write_text("alpha\n")
    (local_root / "sub dir" / "b.bin").write_bytes(os.urandom(3000))
    for name in WEIRD:
        (local_root / name).write_text(name)
    (local_root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (local_root / "script.sh").chmod(0o750)
    os.symlink("sub dir/b.bin", local_root / "link")


def _remote_listing(remote, path: str) -> dict[str, str]:
    """relative path -> 'f <sha256> <mode>' | 'd' | 'l <target>' for everything under path."""
    script = ('cd "$1" && find . -mindepth 1 | LC_ALL=C sort | while IFS= read -r p; do '
              'if [ -L "$p" ]; then printf "%s\\tl %s\\n" "$p" "$(readlink "$p")"; '
              'elif [ -d "$p" ]; then printf "%s\\td\\n" "$p"; '
              'else printf "%s\\tf %s %s\\n" "$p" "$(sha256sum < "$p" | cut -c1-16)" "$(stat -c %a "$p")"; fi; done')
    out = remote.run(f"{shell.sh_c(script)} sh {shell.quote(path)}").stdout
    return dict(line.split("\t", 1) for line in out.splitlines() if line)


def _local_listing(path: Path) -> dict[str, str]:
    out = {}
    for p in sorted(path.rglob("*")):
        rel = "./" + str(p.relative_to(path))
        if p.is_symlink():
            out[rel] = f"l {os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "d"
        else:
            out[rel] = f"f {hashlib.sha256(p.read_bytes()).hexdigest()[:16]} {oct(p.stat().st_mode & 0o777)[2:]}"
    return out


@pytest.fixture
def scratch(sandbox_hosts, tmp_path):
    """A local tree and a unique remote base directory on the first shared sandbox host (cleaned up)."""
    host = sandbox_hosts[0]["alias"]
    base = f"/tmp/migrate-pd-{uuid.uuid4().hex[:8]}"
    src = tmp_path / "cifar"
    _tree(src)
    with connect(host) as remote:
        yield host, base, src, remote
        remote.run(shell.join(["rm", "-rf", base]))


MAPPING_CASES = [
    # (source suffix, dest suffix, extra args, where the tree lands relative to base)
    ("", "/dst", [], "/dst"),
    ("/", "/dst", [], "/dst"),
    ("", "/dst/", [], "/dst"),
    ("/", "/dst/", [], "/dst"),
    ("", "/into", ["--into"], "/into/cifar"),
    ("/", "/into/", ["--into"], "/into/cifar"),
]


@pytest.mark.parametrize("src_suffix,dest_suffix,extra,lands", MAPPING_CASES)
def test_directory_lands_where_the_mapping_says(scratch, src_suffix, dest_suffix, extra, lands):
    host, base, src, remote = scratch
    res = run_cli("push-data", str(src) + src_suffix, f"{host}:{base}{dest_suffix}", *extra)
    assert res.code == 0, res.output
    assert f"{base}{lands}" in res.stderr  # the printed mapping names the landing place
    assert _remote_listing(remote, base + lands) == _local_listing(src)
    # and nothing else was created next to it
    parent = os.path.dirname(base + lands)
    assert remote.run(f"ls -A {shell.quote(parent)}").stdout.split("\n")[:-1] == [os.path.basename(base + lands)]


def test_files_with_weird_names_land_exactly(scratch):
    host, base, src, remote = scratch
    for name in WEIRD:
        f = src / name
        # file to a new name; file into an existing dir (with and without trailing slash)
        assert run_cli("push-data", str(f), f"{host}:{base}/renamed/{name}.copy").code == 0
        assert run_cli("push-data", str(f), f"{host}:{base}/dir/").code == 0
    assert run_cli("push-data", str(src / "a.txt"), f"{host}:{base}/dir").code == 0
    listing = _remote_listing(remote, base)
    for name in WEIRD:
        assert listing[f"./renamed/{name}.copy"].startswith("f ")
        assert listing[f"./dir/{name}"].startswith("f ")
    assert listing["./dir/a.txt"].startswith("f ")
    assert remote.run(f"cat {shell.quote(base + '/dir/-leading-dash')}").stdout == "-leading-dash"


def test_several_sources_go_inside_and_dry_run_changes_nothing(scratch):
    host, base, src, remote = scratch
    res = run_cli("push-data", str(src / "a.txt"), str(src / "sub dir"), f"{host}:{base}/multi", "--dry-run")
    assert res.code == 0, res.output
    assert "would transfer" in res.stderr
    assert remote.run(f"test -e {shell.quote(base)}", check=False).exit_code != 0
    res = run_cli("push-data", str(src / "a.txt"), str(src / "sub dir"), f"{host}:{base}/multi")
    assert res.code == 0, res.output
    listing = _remote_listing(remote, base + "/multi")
    assert set(listing) == {"./a.txt", "./sub dir", "./sub dir/b.bin"}
    again = run_cli("push-data", str(src / "a.txt"), str(src / "sub dir"), f"{host}:{base}/multi")
    assert again.code == 0 and "up to date" in again.stdout


def test_excludes_and_migrateignore(scratch):
    host, base, src, remote = scratch
    (src / "junk.tmp").write_text("x")
    (src / "sub dir" / "cache").mkdir()
    (src / "sub dir" / "cache" / "c").write_text("x")
    (src / ".migrateignore").write_text("# comments are fine\n*.tmp\ncache/\n")
    (src / "notes.log").write_text("x")
    res = run_cli("push-data", str(src), f"{host}:{base}/d", "--exclude", "*.log")
    assert res.code == 0, res.output
    listing = _remote_listing(remote, base + "/d")
    assert "./junk.tmp" not in listing and "./sub dir/cache" not in listing and "./notes.log" not in listing
    assert "./a.txt" in listing and "./.migrateignore" in listing


def test_delete_refuses_without_yes_and_lists_files(scratch):
    host, base, src, remote = scratch
    assert run_cli("push-data", str(src), f"{host}:{base}/d").code == 0
    remote.run(f"touch {shell.quote(base + '/d/stale-1')} {shell.quote(base + '/d/stale 2')}")
    res = run_cli("push-data", str(src), f"{host}:{base}/d", "--delete", input="")
    assert res.code == 1, res.output
    assert "stale-1" in res.stderr and "stale 2" in res.stderr and "--yes" in res.stderr
    assert remote.run(f"ls {shell.quote(base + '/d')}").stdout.count("stale") == 2
    res = run_cli("push-data", str(src), f"{host}:{base}/d", "--delete", "--yes")
    assert res.code == 0, res.output
    assert "stale" not in remote.run(f"ls {shell.quote(base + '/d')}").stdout


def test_missing_source_does_no_remote_work(sandbox_hosts, tmp_path):
    res = run_cli("push-data", str(tmp_path / "nope"), "nosuchhost.invalid:/x")
    assert_one_line_error(res, "not found", "nothing was sent")


def test_bad_destination_syntax_is_a_usage_error(tmp_path):
    res = run_cli("push-data", str(tmp_path), "/no/host/here")
    assert res.code == 2 and "HOST:DEST" in res.stderr


def test_full_remote_disk_is_refused_before_sending(scratch, tmp_path):
    host, _base, _src, remote = scratch
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(100 * 1024 * 1024)  # 100 MiB sparse file; /mnt/small is 64 MiB
    res = run_cli("push-data", str(big), f"{host}:/mnt/small/big.bin")
    assert_one_line_error(res, "not enough space", "/mnt/small", "need 100.0 MiB")
    assert remote.run("ls -A /mnt/small").stdout.strip() == ""


def test_unwritable_destination_suggests_sudo_and_sudo_works(scratch):
    host, _base, src, remote = scratch
    target = f"/opt/migrate-pd-{uuid.uuid4().hex[:6]}"
    res = run_cli("push-data", str(src), f"{host}:{target}")
    assert_one_line_error(res, "not writable", "--sudo")
    try:
        res = run_cli("push-data", str(src), f"{host}:{target}", "--sudo")
        assert res.code == 0, res.output
        assert remote.run(f"stat -c %U {shell.quote(target + '/a.txt')}").stdout.strip() == "root"
    finally:
        remote.run(shell.join(["rm", "-rf", target]), sudo=True)


def test_two_hosts_in_parallel_and_pull_back(sandbox_hosts, tmp_path):
    h1, h2 = sandbox_hosts[0]["alias"], sandbox_hosts[1]["alias"]
    src = tmp_path / "ds"
    _tree(src)
    base = f"/tmp/migrate-pd-{uuid.uuid4().hex[:8]}"
    try:
        res = run_cli("push-data", str(src), f"{h1}:{base}", "--hosts", h2)
        assert res.code == 0, res.output
        assert res.stdout.count("changed") == 2
        back = tmp_path / "back"
        res = run_cli("pull-data", f"{h2}:{base}", str(back))
        assert res.code == 0, res.output
        assert _local_listing(back) == _local_listing(src)
        res = run_cli("pull-data", f"{h2}:{base}/nope", str(back))
        assert_one_line_error(res, "not found")
    finally:
        for h in (h1, h2):
            with connect(h) as r:
                r.run(shell.join(["rm", "-rf", base]))


def _descendants(pid: int) -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            comm = stat.split("(", 1)[1].rsplit(")", 1)[0]
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append((int(entry.name), comm))
            out += _descendants(int(entry.name))
    return out


def test_killed_connection_resumes_and_result_is_byte_identical(scratch, tmp_path):
    host, base, _src, remote = scratch
    data = tmp_path / "ds"
    data.mkdir()
    payload = os.urandom(48 * 1024 * 1024)
    (data / "big.bin").write_bytes(payload)
    (data / "small.txt").write_text("small")
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "migrate", "push-data", str(data), f"{host}:{base}/ds",
                             "--bwlimit", "8m"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    # rsync writes into a hidden temp file (.big.bin.XXXXXX) while the transfer runs
    probe = f"find {shell.quote(base)} -name '.big.bin.*' -printf '%s\\n' 2>/dev/null | sort -n | tail -n 1"
    deadline = time.time() + 60
    size = 0
    while time.time() < deadline:
        r = remote.run(probe, check=False)
        size = int(r.stdout.strip() or "0")
        if size > 8 * 1024 * 1024:
            break
        time.sleep(0.3)
    assert size > 0, "transfer never started"
    ssh = [p for p, comm in _descendants(proc.pid) if comm == "ssh"]
    assert ssh, _descendants(proc.pid)
    for p in ssh:
        os.kill(p, signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "rerun" in err.decode()
    res = run_cli("push-data", str(data), f"{host}:{base}/ds", "--json")
    assert res.code == 0, res.output
    [result] = json.loads(res.stdout)
    assert result["wire_bytes"] < 0.9 * len(payload), result  # resumed from the partial file
    digest = remote.run(f"sha256sum {shell.quote(base + '/ds/big.bin')}").stdout.split()[0]
    assert digest == hashlib.sha256(payload).hexdigest()
    assert remote.run(f"ls -A {shell.quote(base + '/ds')}").stdout.split() == ["big.bin", "small.txt"]


def test_remote_without_rsync_uses_tar_then_install_rsync(dedicated_sandbox, tmp_path):
    [h] = dedicated_sandbox("pdata", 1)
    host = h["alias"]
    src = tmp_path / "ds"
    _tree(src)
    with connect(host) as remote:
        remote.run("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q rsync >/dev/null", sudo=True, timeout=300)
        assert remote.run("command -v rsync", check=False).exit_code != 0
        res = run_cli("push-data", str(src), f"{host}:/tmp/tarred", env=h["env"])
        assert res.code == 0, res.output
        assert "tar" in res.stdout and "no rsync" in res.stderr
        assert _remote_listing(remote, "/tmp/tarred") == _local_listing(src)  # modes and symlinks too
        res = run_cli("push-data", str(src / "script.sh"), f"{host}:/tmp/one/run.sh", env=h["env"])
        assert res.code == 0, res.output
        assert remote.run("stat -c %a /tmp/one/run.sh").stdout.strip() == "750"
        res = run_cli("push-data", str(src), f"{host}:/tmp/tarred", "--delete", env=h["env"])
        assert_one_line_error(res, "--delete needs rsync")
        res = run_cli("push-data", str(src), f"{host}:/tmp/synced", "--install-rsync", env=h["env"])
        assert res.code == 0, res.output
        assert remote.run("command -v rsync", check=False).exit_code == 0
        assert _remote_listing(remote, "/tmp/synced") == _local_listing(src)


def test_first_copy_of_many_small_files_streams_tar_then_rsync_keeps_it_in_sync(scratch, tmp_path):
    host, base, _src, remote = scratch
    src = tmp_path / "many"
    for i in range(1500):
        d = src / f"d{i // 100:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.txt").write_text(f"file {i}\n")
    os.symlink("d00/f0000.txt", src / "first")
    (src / "d00" / "f0001.txt").chmod(0o600)
    res = run_cli("push-data", str(src), f"{host}:{base}/many", "--json")
    assert res.code == 0, res.output
    assert json.loads(res.stdout)[0]["method"] == "tar" and "first copy" in res.stderr
    assert _remote_listing(remote, base + "/many") == _local_listing(src)
    (src / "d03" / "f0300.txt").write_text("changed\n")
    res = run_cli("push-data", str(src), f"{host}:{base}/many", "--json")
    [r] = json.loads(res.stdout)
    assert r["method"] == "rsync" and r["files_transferred"] == 1
    assert _remote_listing(remote, base + "/many") == _local_listing(src)
    res = run_cli("push-data", str(src), f"{host}:{base}/parallel", "--method", "parallel", "--streams", "3")
    assert res.code == 0, res.output
    assert _remote_listing(remote, base + "/parallel") == _local_listing(src)


def test_a_first_copy_by_parallel_streams_lands_whole_and_a_rerun_is_one_rsync(scratch, tmp_path):
    host, base, _src, remote = scratch
    src = tmp_path / "shards"
    src.mkdir()
    digests = {}
    for i, size in enumerate((150, 110, 20)):  # MiB (auto takes this road from 1 GiB: plan.PARALLEL_MIN_BYTES)
        data = os.urandom(1 << 20) * size  # cheap to make, and rsync cannot skip any of it
        (src / f"shard-{i}.bin").write_bytes(data)
        digests[f"shard-{i}.bin"] = hashlib.sha256(data).hexdigest()
    (src / "meta").mkdir()
    (src / "meta" / "index.json").write_text("{}")
    res = run_cli("push-data", str(src), f"{host}:{base}/shards", "--json", "--method", "parallel")
    assert res.code == 0, res.output
    [r] = json.loads(res.stdout)
    assert r["method"] == "parallel" and "parallel" in res.stderr, res.output
    out = remote.run(f"cd {shell.quote(base + '/shards')} && sha256sum shard-*.bin").stdout
    assert {line.split()[1]: line.split()[0] for line in out.splitlines()} == digests
    assert _remote_listing(remote, base + "/shards") == _local_listing(src)
    res = run_cli("push-data", str(src), f"{host}:{base}/shards", "--json")  # not a first copy any more
    [r] = json.loads(res.stdout)
    assert r["method"] == "rsync" and r["files_transferred"] == 0, r
    remote.run(f"rm -rf {shell.quote(base + '/shards')}")


def test_a_file_stream_lands_like_rsync_and_an_interrupted_one_resumes_where_it_broke(scratch, tmp_path):
    """Issue 24: `--method stream` (auto's pick for big first copies over a far link) sends the tree in
    one exec. The result is what rsync -a makes (a rerun finds nothing to send), and a stream cut in
    the middle of a file leaves it in .migrate-partial/, never under its name, for the rerun's rsync
    to resume in place."""
    host, base, linked, remote = scratch
    res = run_cli("push-data", str(linked), f"{host}:{base}/s", "--method", "stream")
    assert res.code == 1 and "files and directories only" in res.stderr, res.output  # a symlink: refused
    assert_one_line_error(res)
    assert remote.run(f"test -e {shell.quote(base)}", check=False).exit_code != 0   # and nothing was made
    src = tmp_path / "nolinks"
    _tree(src)
    (src / "link").unlink()
    (src / "ckpt").mkdir()
    payload = os.urandom(12 << 20)
    (src / "ckpt" / "model.pt").write_bytes(payload)
    (src / "ckpt").chmod(0o750)
    res = run_cli("push-data", str(src), f"{host}:{base}/s", "--method", "stream", "--json")
    assert res.code == 0, res.output
    [r] = json.loads(res.stdout)
    assert r["method"] == "stream" and r["status"] == "changed", r
    assert _remote_listing(remote, base + "/s") == _local_listing(src)
    res = run_cli("push-data", str(src), f"{host}:{base}/s", "--json")   # modes and times match to the ns
    assert [(x["status"], x["files_transferred"]) for x in json.loads(res.stdout)] == [("up to date", 0)], res.output

    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.Popen([sys.executable, "-m", "migrate", "push-data", str(src), f"{host}:{base}/cut",
                             "--method", "stream", "--bwlimit", "4m"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    partial = shell.quote(f"{base}/cut/ckpt/.migrate-partial/model.pt")
    deadline = time.time() + 60
    size = 0
    while time.time() < deadline and size < (4 << 20):
        size = int(remote.run(f"stat -c %s {partial} 2>/dev/null || echo 0", check=False).stdout.strip() or 0)
        time.sleep(0.2)
    assert size >= 4 << 20, "the stream never reached the big file"
    for p in [p for p, comm in _descendants(proc.pid) if comm == "ssh"]:
        os.kill(p, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "rerun the same command" in err.decode(), err
    assert remote.run(f"test -e {shell.quote(base + '/cut/ckpt/model.pt')}", check=False).exit_code != 0
    res = run_cli("push-data", str(src), f"{host}:{base}/cut", "--json")
    assert res.code == 0, res.output
    [r] = json.loads(res.stdout)
    assert r["method"] == "rsync" and r["wire_bytes"] < len(payload) - (3 << 20), r  # resumed, not sent again
    assert _remote_listing(remote, base + "/cut") == _local_listing(src)
    assert remote.run(f"sha256sum {shell.quote(base + '/cut/ckpt/model.pt')}").stdout.split()[0] == \
        hashlib.sha256(payload).hexdigest()
    assert "migrate-partial" not in remote.run(f"find {shell.quote(base + '/cut')}").stdout


@pytest.mark.parametrize("method", ["parallel", "tar"])
def test_streams_to_new_nested_destinations_never_race(scratch, tmp_path, method):
    """Several streams used to create a missing DEST each (rsync --mkpath), and one lost the race:
    `mkdir "/tmp/new/a/b/" failed: File exists (17)`, reported as a full disk. Repeated on purpose."""
    host, base, _src, remote = scratch
    src = tmp_path / "four"
    src.mkdir()
    for i in range(8):
        (src / f"part-{i}.bin").write_bytes(os.urandom(256 * 1024) * 4)  # 1 MiB each
    (src / "sub").mkdir()
    (src / "sub" / "x.txt").write_text("x")
    for run in range(12):  # the race was lost in about 1 run of 10 here (3 of 8 on the hostile run's hosts)
        dest = f"{base}/new{run}/a/b/c"
        res = run_cli("-v", "push-data", str(src), f"{host}:{dest}", "--method", method, "--streams", "8", "--json")
        assert res.code == 0, (run, res.output)
        assert "disk full" not in res.stderr
        streams = [ln for ln in res.stderr.splitlines() if ln.startswith("$ rsync") and "--files-from" in ln]
        assert len(streams) == (8 if method == "parallel" else 0)
        assert not [ln for ln in streams if "--mkpath" in ln]  # DEST was made once, before the streams
        [r] = json.loads(res.stdout)
        assert r["method"] == method
        assert _remote_listing(remote, dest) == _local_listing(src)


def test_pull_reports_the_bytes_it_received_as_wire_bytes(scratch, tmp_path):
    host, base, _src, remote = scratch
    src = tmp_path / "up"
    src.mkdir()
    size = 12 * 1024 * 1024
    (src / "ckpt.bin").write_bytes(os.urandom(size))  # incompressible: the wire carries all of it
    res = run_cli("push-data", str(src), f"{host}:{base}/run", "--json")
    assert res.code == 0, res.output
    [pushed] = json.loads(res.stdout)
    assert pushed["wire_bytes"] >= size, pushed
    res = run_cli("pull-data", f"{host}:{base}/run", str(tmp_path / "back"), "--json")
    assert res.code == 0, res.output
    [pulled] = json.loads(res.stdout)
    assert pulled["bytes_sent"] == size
    assert size <= pulled["wire_bytes"] < 1.1 * size, pulled  # what rsync received, not its small requests


def test_a_disk_full_interruption_resumes_in_place_once_space_is_freed(scratch, tmp_path):
    """rsync keeps the unfinished file of a disk-full interruption in DEST/.migrate-partial/. With
    rsync >= 3.2.0 on both sides (the sandbox) a resume grows that partial in place, so the space
    preflight must count it as already there: the rerun used to be refused although it fits."""
    host, _base, _src, remote = scratch
    target = f"/mnt/small/pd-{uuid.uuid4().hex[:6]}"  # /mnt/small is a 64 MiB disk
    filler = f"{target}-filler"
    partial = f"{target}/.migrate-partial"
    data = tmp_path / "ds"
    data.mkdir()
    payload = os.urandom(40 * 1024 * 1024)
    (data / "big.bin").write_bytes(payload)
    env = dict(os.environ, COLUMNS="200")
    try:
        proc = subprocess.Popen([sys.executable, "-m", "migrate", "push-data", str(data), f"{host}:{target}",
                                 "--bwlimit", "8m"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        probe = f"find {shell.quote(target)} -name '.big.bin.*' -printf '%s\\n' 2>/dev/null | sort -n | tail -n 1"
        deadline = time.time() + 60
        size = 0
        while time.time() < deadline and size <= 26 * 1024 * 1024:
            size = int(remote.run(probe, check=False).stdout.strip() or "0")
            time.sleep(0.2)
        assert size > 0, "transfer never started"
        remote.run(f"dd if=/dev/zero of={shell.quote(filler)} bs=1M 2>/dev/null; true")  # the disk is full now
        _out, err = proc.communicate(timeout=120)
        err = err.decode()
        assert proc.returncode == 1, err
        [line] = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        assert "ran out of disk space" in line and "hint: free space" in line, line
        kept = int(remote.run(f"du -sk {shell.quote(partial)}").stdout.split()[0]) * 1024
        assert kept > 24 * 1024 * 1024, kept
        # not enough freed yet: refused, naming the partial (counted as there) and the way out
        remote.run(f"truncate -s -5M {shell.quote(filler)}")
        res = run_cli("push-data", str(data), f"{host}:{target}")
        assert_one_line_error(res, "not enough space", partial, "counted as already there", "--drop-partial")
        remote.run(shell.join(["rm", "-f", filler]))  # the user frees the space: the rest fits beside the partial
        res = run_cli("push-data", str(data), f"{host}:{target}", "--json")
        assert res.code == 0, res.output
        assert "in place" in res.stderr and partial in res.stderr
        [r] = json.loads(res.stdout)
        assert r["wire_bytes"] < len(payload) - kept + 4 * 1024 * 1024, r  # only the rest crossed the wire
        digest = remote.run(f"sha256sum {shell.quote(target + '/big.bin')}").stdout.split()[0]
        assert digest == hashlib.sha256(payload).hexdigest()
        assert remote.run(f"ls -A {shell.quote(target)}").stdout.split() == ["big.bin"]
        # --drop-partial deletes what an interruption left and sends the file whole
        remote.run(f"mkdir {shell.quote(partial)} && head -c 1000000 {shell.quote(target + '/big.bin')} > "
                   f"{shell.quote(partial + '/big.bin')} && rm {shell.quote(target + '/big.bin')}")
        res = run_cli("push-data", str(data), f"{host}:{target}", "--drop-partial", "--json")
        assert res.code == 0, res.output
        assert "--drop-partial: deleting" in res.stderr and partial in res.stderr
        assert json.loads(res.stdout)[0]["wire_bytes"] >= len(payload)
        assert remote.run(f"ls -A {shell.quote(target)}").stdout.split() == ["big.bin"]
    finally:
        remote.run(shell.join(["rm", "-rf", target, filler]))


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership mapping applies to a pull run as root")
def test_pull_as_root_gives_files_to_the_invoking_user_unless_preserve_owner(scratch, tmp_path):
    host, base, src, remote = scratch
    assert run_cli("push-data", str(src), f"{host}:{base}/own").code == 0
    remote_ids = remote.run(f"stat -c %u:%g {shell.quote(base + '/own/a.txt')}").stdout.strip()

    def owners(root: Path) -> set[str]:
        return {f"{p.lstat().st_uid}:{p.lstat().st_gid}" for p in [root, *root.rglob("*")]}

    res = run_cli("pull-data", f"{host}:{base}/own", str(tmp_path / "sudo" / "new" / "own"),
                  env={"SUDO_UID": "4242", "SUDO_GID": "4343"})
    assert res.code == 0, res.output
    assert owners(tmp_path / "sudo") == {"4242:4343"}  # the directories it created too
    res = run_cli("pull-data", f"{host}:{base}/own", str(tmp_path / "root"), env={"SUDO_UID": "", "SUDO_GID": ""})
    assert res.code == 0, res.output
    assert owners(tmp_path / "root") == {"0:0"}
    res = run_cli("pull-data", f"{host}:{base}/own", str(tmp_path / "kept"), "--preserve-owner")
    assert res.code == 0, res.output
    assert owners(tmp_path / "kept" / "sub dir") == {remote_ids} != {"0:0"}


def test_an_interrupted_first_copy_of_small_files_by_rsync_inplace_completes_on_the_rerun(scratch, tmp_path):
    """A first copy of small files goes by `rsync --inplace` (no temporary name and rename per file):
    cut in the middle, the rerun (DEST is no longer empty: --partial-dir) finishes it, with modes and
    times as `rsync -a` gives them."""
    host, base, _src, remote = scratch
    src = tmp_path / "shards"
    for i in range(120):
        d = src / f"d{i // 40}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"s{i:03d}.bin").write_bytes(os.urandom(256 * 1024))
    (src / "d0" / "s000.bin").chmod(0o640)
    dest = f"{base}/shards"
    dry = run_cli("push-data", str(src), f"{host}:{dest}", "--method", "rsync", "--dry-run")
    assert dry.code == 0 and "--inplace" in dry.stderr and "--partial-dir" not in dry.stderr, dry.output
    proc = subprocess.Popen([sys.executable, "-m", "migrate", "push-data", str(src), f"{host}:{dest}",
                             "--method", "rsync", "--bwlimit", "4m"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, COLUMNS="200"))
    count = f"find {shell.quote(dest)} -type f 2>/dev/null | wc -l"
    deadline = time.time() + 60
    landed = 0
    while time.time() < deadline and landed < 20:
        landed = int(remote.run(count, check=False).stdout.strip() or "0")
        time.sleep(0.2)
    assert landed >= 20, "transfer never started"
    assert not remote.run(f"find {shell.quote(dest)} -name '.s*'", check=False).stdout.strip()  # no temp names
    for p in [p for p, comm in _descendants(proc.pid) if comm == "ssh"]:
        os.kill(p, signal.SIGKILL)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "rerun" in err.decode(), err
    assert int(remote.run(count).stdout) < 120  # cut before the end
    res = run_cli("push-data", str(src), f"{host}:{dest}", "--method", "rsync", "--json")
    assert res.code == 0, res.output
    assert _remote_listing(remote, dest) == _local_listing(src)
    mtimes = remote.run(f"stat -c %Y {shell.quote(dest + '/d0/s000.bin')} {shell.quote(dest + '/d2/s119.bin')}")
    assert [int(t) for t in mtimes.stdout.split()] == [int((src / "d0" / "s000.bin").stat().st_mtime),
                                                       int((src / "d2" / "s119.bin").stat().st_mtime)]
    again = run_cli("push-data", str(src), f"{host}:{dest}", "--method", "rsync", "--json")
    assert json.loads(again.stdout)[0]["files_transferred"] == 0


def _execs(path: Path) -> list[str]:
    """What a counted run (MIGRATE_COUNT_ROUND_TRIPS) ran on the host: one line per exec."""
    from migrate.remote.roundtrips import tally

    text = path.read_text() if path.exists() else ""
    assert tally(text)["exec"] == len([ln for ln in text.splitlines() if ln.startswith("exec")])
    return [ln.split("\t")[-1] for ln in text.splitlines() if ln.startswith("exec")]


def test_a_resync_checks_the_destination_on_rsyncs_exec_and_a_changed_one_is_planned_again(scratch, tmp_path):
    """A destination a push from here completed: the re-sync is one exec (rsync, whose exec checks DEST
    first: data/remote.py DEST_GUARD). Where DEST changed since (removed, now a file, read-only), that
    check changes nothing and push-data plans from what it saw: the push completes, or fails as the
    probe's path would, with the host as it was."""
    from migrate.remote.roundtrips import ENV

    host, base, src, remote = scratch
    dest = f"{base}/g"
    counted = iter(tmp_path / f"rt{i}" for i in range(10))

    def push(*extra: str):
        path = next(counted)
        res = run_cli("push-data", str(src), f"{host}:{dest}", "--json", *extra, env={ENV: str(path)})
        return res, _execs(path)

    res, execs = push()  # a first copy: probed, or planned where an earlier test's probe saw this host's tools
    assert res.code == 0 and execs in (["inspect destination", f"rsync to {host}"], [f"rsync to {host}"]), \
        (res.output, execs)
    (src / "a.txt").write_text("changed\n")
    res, execs = push()
    assert res.code == 0 and execs == [f"rsync to {host}"], (res.output, execs)  # no probe first
    assert json.loads(res.stdout)[0]["files_transferred"] == 1
    assert _remote_listing(remote, dest) == _local_listing(src)

    remote.run(shell.join(["rm", "-rf", dest]))  # removed there: refused, then a first copy
    res, execs = push("--method", "rsync")
    assert res.code == 0 and execs == [f"rsync to {host}"] * 2, (res.output, execs)
    assert _remote_listing(remote, dest) == _local_listing(src)

    remote.run(f"rm -rf {shell.quote(dest)} && echo precious > {shell.quote(dest)}")  # now a file
    res, execs = push()
    assert res.code == 1 and "is a file" in res.stderr and execs == [f"rsync to {host}"], (res.output, execs)
    assert remote.run(f"cat {shell.quote(dest)}").stdout == "precious\n"

    remote.run(f"rm -f {shell.quote(dest)}")
    assert push()[0].code == 0  # (forgotten after the refusal: probed again, then remembered)
    (src / "a.txt").write_text("changed again\n")
    remote.run(f"chmod 555 {shell.quote(dest)}")
    try:
        before = _remote_listing(remote, dest)
        res, execs = push()
        assert res.code == 1 and "not writable" in res.stderr and execs == [f"rsync to {host}"], (res.output, execs)
        assert _remote_listing(remote, dest) == before
    finally:
        remote.run(f"chmod 755 {shell.quote(dest)}")

    # --method rsync plans a first copy before any probe too (--inplace for these small files)
    dest = f"{base}/fresh"
    res, execs = push("--method", "rsync")
    assert res.code == 0 and execs == [f"rsync to {host}"], (res.output, execs)
    assert _remote_listing(remote, dest) == _local_listing(src)
