"""The destination check on rsync's own exec (data/remote.py: DEST_GUARD), run by the real `sh` here
with a stand-in `rsync` (and `df` where the room is the point): it becomes rsync with the server's
arguments intact where DEST is as planned, and otherwise changes nothing and says what it saw."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrate.data.remote import DEST_PROBE, GUARD_WANTS, guard_refusal, guarded_rsync_path, parse_dest_probe
from migrate.remote import shell

FULL_LIST = "xxh128 xxh3 xxh64 (xxhash) md5 md4 sha1 none"  # rsync 3.2.7's, built with xxhash


def tools(tmp_path: Path, *, rsync: str | None = "3.2.7", free_kib: int | None = None,
          checksums: str = FULL_LIST) -> dict[str, str]:
    """PATH with a stand-in rsync (`--version` says `rsync` and lists `checksums`; as a server it prints
    its arguments) and, with `free_kib`, a df that reports that much room."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    bin_dir.chmod(0o755)  # nobody runs from here (another test in this process may have set umask 077)
    (bin_dir / "sudo").write_text(f"#!/bin/sh\ntouch {tmp_path / 'sudo-was-run'}\nexit 1\n")
    if rsync is not None:
        (bin_dir / "rsync").write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = --version ]; then printf "%s\\n" "rsync  version {rsync}  protocol version 31" '
            f'"Checksum list:" "    {checksums}"; exit 0; fi\n'
            'for a in "$@"; do printf "<%s>" "$a"; done; echo\n')
    if free_kib is not None:
        (bin_dir / "df").write_text("#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted'\n"
                                    f"echo '/dev/x 99999999 0 {free_kib} 1% /'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}" if rsync is not None else f"{bin_dir}:/usr/bin:/bin"
    if rsync is None:  # a PATH without any rsync: copy in the tools the guard uses
        path = f"{bin_dir}:{_without_rsync(tmp_path)}"
    return {**os.environ, "PATH": path}


def _without_rsync(tmp_path: Path) -> str:
    d = tmp_path / "sys"
    d.mkdir(exist_ok=True)
    d.chmod(0o755)
    for tool in ("sh", "sed", "head", "ls", "df", "awk", "dirname", "printf", "tr", "id", "nproc", "tar", "cat"):
        real = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        if real.startswith("/") and not (d / tool).exists():
            (d / tool).symlink_to(real)
    return str(d)


def as_user(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ARGV; as root, as nobody (root may write anywhere: a read-only DEST would pass)."""
    nobody = [shutil.which("setpriv") or "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    user = nobody if os.geteuid() == 0 else []
    return subprocess.run([*user, *argv], capture_output=True, text=True, timeout=30, env=env)


def guard(dest: Path, env: dict[str, str], *, need: int = 1 << 20, want: str = "resync",
          relies_on: tuple[str, ...] = ()):
    """Run the guarded rsync server command line as the remote login shell would."""
    line = (guarded_rsync_path(str(dest), want=want, need_bytes=need, min_version=(3, 2, 3), tools=relies_on)
            + " --server -logDtpre.iLsfxCIvu --partial-dir=.migrate-partial . " + shell.quote(str(dest) + "/"))
    return as_user(["sh", "-c", line], env)


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A directory nobody can enter (guard() runs as nobody under root; pytest's own sit in a 0700 one)."""
    base = Path(tempfile.mkdtemp(prefix="migrate-guard-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "my data"  # a space: the arguments must reach rsync whole; nobody's, so writable there
    d.mkdir()
    if os.geteuid() == 0:
        os.chown(d, 65534, 65534)
    (d / "a").write_text("a")
    return d


def test_a_destination_as_planned_becomes_rsync_with_its_arguments_intact(tmp_path, dest):
    res = guard(dest, tools(tmp_path))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == (f"<--server><-logDtpre.iLsfxCIvu><--partial-dir=.migrate-partial><.><{dest}/>")
    assert guard_refusal(res.stderr) is None
    assert not (tmp_path / "sudo-was-run").exists()  # a failed `sudo -n` is an entry in the owner's auth log


@pytest.mark.parametrize("want", GUARD_WANTS)
@pytest.mark.parametrize("state", ["missing", "empty", "with files", "a file"])
def test_the_recording_hosts_guard_decides_as_the_sh_guard(tmp_path, want, state):
    """tests/fakehost.py answers guarded rsyncs with `guard_admits`: it must say what the sh guard does."""
    from tests.fakehost import guard_admits

    if os.geteuid() == 0:
        os.chown(tmp_path, 65534, 65534)
    d = tmp_path / "d"
    if state == "a file":
        d.write_text("x")
    elif state != "missing":
        d.mkdir()
        if state == "with files":
            (d / "a").write_text("a")
    if os.geteuid() == 0 and d.exists():
        os.chown(d, 65534, 65534)
    env = tools(tmp_path)
    facts = parse_dest_probe(as_user(["sh", "-c", DEST_PROBE, "sh", str(d)], env).stdout)
    admitted = guard(d, env, want=want, need=1024).returncode == 0
    assert admitted == guard_admits(facts, want, 1, (3, 2, 3)), (facts, admitted)
    assert admitted == {"resync": state == "with files", "fresh": state in ("missing", "empty"),
                        "any": state != "a file"}[want]


@pytest.mark.parametrize("change", ["removed", "emptied", "a file", "read-only", "old rsync", "no rsync",
                                    "no room", "no xxh128"])
def test_a_destination_not_as_planned_is_refused_unchanged_with_what_the_guard_saw(tmp_path, dest, change):
    env = tools(tmp_path, rsync={"old rsync": "3.1.3", "no rsync": None}.get(change, "3.2.7"),
                free_kib=100 if change == "no room" else None,
                checksums="md5 md4 sha1 none" if change == "no xxh128" else FULL_LIST)
    if change == "removed":
        (dest / "a").unlink()
        dest.rmdir()
    elif change == "emptied":
        (dest / "a").unlink()
    elif change == "a file":
        (dest / "a").unlink()
        dest.rmdir()
        dest.write_text("precious")
    elif change == "read-only":
        dest.chmod(0o555)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = guard(dest, env, relies_on=("xxh128",))
    facts = guard_refusal(res.stderr)
    assert res.returncode == 97 and res.stdout == "" and facts is not None, (res.returncode, res.stdout, res.stderr)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing made, nothing removed
    expected = {"removed": ("kind", "none"), "emptied": ("empty", True), "a file": ("kind", "file"),
                "read-only": ("writable", False), "old rsync": ("rsync_version", (3, 1, 3)),
                "no rsync": ("rsync_version", (0, 0, 0)), "no room": ("free_bytes", 100 * 1024),
                "no xxh128": ("xxh128", False)}[change]
    assert getattr(facts, expected[0]) == expected[1]
    if change == "a file":
        assert dest.read_text() == "precious"


def test_a_checksum_the_plan_names_is_required_only_when_named(tmp_path, dest):
    """The plan names --checksum-choice=xxh128 only where DEST's rsync has it; a plan that names none
    passes an rsync without it."""
    env = tools(tmp_path, checksums="md5 md4 sha1 none")
    assert guard(dest, env).returncode == 0
    assert guard(dest, env, relies_on=("xxh128",)).returncode == 97
    assert guard(dest, tools(tmp_path), relies_on=("xxh128",)).returncode == 0
    facts = parse_dest_probe(as_user(["sh", "-c", DEST_PROBE, "sh", str(dest)], tools(tmp_path)).stdout)
    assert facts.xxh128 and facts.rsync_version == (3, 2, 7)


@pytest.mark.parametrize("relies_on", [("zstd",), ("!zstd",), ("gnu_head",), ("!gnu_head",), ("xxh128", "!zstd")])
def test_the_tools_a_plan_took_from_an_earlier_probe_are_checked_as_the_probe_reads_them(tmp_path, dest, relies_on):
    """auto plans a first copy from the tools a probe saw earlier (data/known.py); a tool installed or
    removed since is refused, and the guard reads each fact as parse_dest_probe does."""
    from tests.fakehost import guard_admits

    for zstd in (True, False):
        env = tools(tmp_path)
        if zstd:
            (tmp_path / "bin" / "zstd").write_text("#!/bin/sh\nexit 0\n")
            (tmp_path / "bin" / "zstd").chmod(0o755)
        else:
            env["PATH"] = f"{tmp_path / 'bin'}:{_without_zstd(tmp_path)}"
        facts = parse_dest_probe(as_user(["sh", "-c", DEST_PROBE, "sh", str(dest)], env).stdout)
        assert facts.zstd == zstd and facts.gnu_head == (shutil.which("head", path=env["PATH"]) is not None)
        admitted = guard(dest, env, relies_on=relies_on).returncode == 0
        assert admitted == guard_admits(facts, "resync", 1, (3, 2, 3), ",".join(relies_on)), (relies_on, zstd)
        (tmp_path / "bin" / "zstd").unlink(missing_ok=True)
    assert guard(dest, tools(tmp_path), relies_on=("gnu_head",)).returncode == 0  # GNU head here


def _without_zstd(tmp_path: Path) -> str:
    """The tools the guard uses and no zstd (the stand-in rsync stays first in PATH)."""
    return _without_rsync(tmp_path)


def test_the_room_asked_for_is_checked_in_kib_rounded_up(tmp_path, dest):
    env = tools(tmp_path, free_kib=10)
    assert guard(dest, env, need=10 * 1024).returncode == 0
    assert guard(dest, env, need=10 * 1024 + 1).returncode == 97


@pytest.mark.parametrize(("said", "has"), [("Python 3.11.2", True), ("Python 3.8.10", True), ("Python 3.7.3", False),
                                           ("Python 3.12.0rc1", True), ("sh: 1: python3: not found", False),
                                           ("", False)])
def test_python3_counts_from_3_8_in_the_probe_and_the_guard_alike(tmp_path, dest, said, has):
    """agent/receive.py needs what the agent needs: an older python3 is no python3 for a file stream."""
    from tests.fakehost import guard_admits

    env = tools(tmp_path)
    (tmp_path / "bin" / "python3").write_text(f"#!/bin/sh\necho '{said}'\n")
    (tmp_path / "bin" / "python3").chmod(0o755)
    facts = parse_dest_probe(as_user(["sh", "-c", DEST_PROBE, "sh", str(dest)], env).stdout)
    assert facts.python3 == has
    for rely in ("python3", "!python3"):
        admitted = guard(dest, env, relies_on=(rely,)).returncode == 0
        assert admitted == (has == (rely == "python3")) == guard_admits(facts, "resync", 1, (3, 2, 3), rely)
