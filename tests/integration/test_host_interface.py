"""The one host interface (`migrate.remote.host.Host`) on a real sshd, for both carriers: `Remote`
(Fabric, with an OpenSSH master for streams and forwards) and `OpenSshSession` (OpenSSH only)."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator

import pytest

from migrate.errors import MigrateError
from migrate.remote import shell
from migrate.remote.connection import connect
from migrate.remote.host import Host
from migrate.remote.hosts import ConnectOptions
from migrate.remote.openssh import OpenSshSession
from tests.conftest import wait_until

WEIRD = "we ird 'q' $(touch PWNED) ;&|*? ünï"
# a one-connection server on the host: says HELLO to whoever connects (TCP port 0: the port is
# written to PORTFILE; or a Unix socket at PATH)
SERVE_PY = """
import os, socket, sys
kind, where, portfile = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_UNIX if kind == "unix" else socket.AF_INET)
s.bind(where if kind == "unix" else ("127.0.0.1", 0))
s.listen(1)
if kind == "tcp":
    open(portfile + ".tmp", "w").write(str(s.getsockname()[1])); os.rename(portfile + ".tmp", portfile)
c, _ = s.accept()
c.sendall(b"HELLO-" + kind.encode())
c.close()
"""


@pytest.fixture(params=["Remote", "OpenSshSession"])
def host(request, sandbox_hosts) -> Iterator[Host]:
    alias = sandbox_hosts[0]["alias"]
    carrier: Host = connect(alias) if request.param == "Remote" else OpenSshSession(alias, ConnectOptions()).open()
    with carrier:
        yield carrier


@pytest.fixture
def scratch(host: Host) -> Iterator[str]:
    base = host.run("mktemp -d", what="scratch dir").stdout.strip()
    yield base
    host.run(shell.join(["rm", "-rf", base]), check=False)


def test_files_go_and_come_back_byte_for_byte_with_their_mode(host, scratch, tmp_path):
    path = f"{scratch}/{WEIRD}"
    data = bytes(range(256)) * 4096 + "ünï\n".encode()
    host.put_bytes(data, path, mode=0o640)
    assert host.read_bytes(path) == data
    assert host.run(shell.join(["stat", "-c", "%a", path])).stdout.strip() == "640"
    host.put_bytes(b"text\n", path)
    assert host.read_text(path) == "text\n"
    assert host.read_text(f"{scratch}/missing") is None
    assert host.run(f"ls -A {shell.quote(scratch)}").stdout.splitlines() == [WEIRD]   # no temp file left
    local = tmp_path / "big.bin"
    local.write_bytes(b"x" * (3 << 20))
    seen: list[tuple[int, int]] = []
    host.put_file(local, f"{scratch}/big", progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (3 << 20, 3 << 20)
    assert host.run(f"wc -c < {shell.quote(scratch + '/big')}").stdout.strip() == str(3 << 20)
    host.put_file(b"abc", f"{scratch}/small", mode=0o600)
    assert host.read_bytes(f"{scratch}/small") == b"abc"


def test_streams_carry_bytes_both_ways_and_failures_say_why(host, scratch):
    target = f"{scratch}/in"
    host.stream_in(f"cat > {shell.quote(target)}", b"\x00\x01" * 100000, what="send")
    out = io.BytesIO()
    host.stream_out(f"cat {shell.quote(target)}", out, what="read")
    assert out.getvalue() == b"\x00\x01" * 100000

    def feed(stdin) -> None:
        for i in range(3):
            stdin.write(f"line {i}\n".encode())
    host.stream_in(f"cat > {shell.quote(target)}", feed, what="send lines")
    assert host.read_text(target) == "line 0\nline 1\nline 2\n"
    with pytest.raises(MigrateError, match=rf"send to {host.name} failed: .*no-such-dir"):
        host.stream_in("cat > /no-such-dir/x", b"data", what="send")
    with pytest.raises(MigrateError, match=rf"read from {host.name} failed: .*no-such-file"):
        host.stream_out("cat /no-such-file", io.BytesIO(), what="read")
    with pytest.raises(MigrateError, match=rf"reading /no-such-file from {host.name} failed"):
        host.read_bytes("/no-such-file")

def _serve(host: Host, scratch: str, kind: str) -> str:
    """Start a one-connection server on the host; its port (tcp) or socket path (unix)."""
    where, portfile = f"{scratch}/hello.sock", f"{scratch}/port"
    host.put_bytes(SERVE_PY.encode(), f"{scratch}/serve.py")
    host.run(f"(cd {shell.quote(scratch)} && exec python3 serve.py {kind} {shell.quote(where)} "
             f"{shell.quote(portfile)}) </dev/null >/dev/null 2>&1 &")
    ready = f"[ -S {shell.quote(where)} ]" if kind == "unix" else f"[ -s {shell.quote(portfile)} ]"
    wait_until(lambda: host.run(ready, check=False).ok, timeout=20, what=f"the {kind} server on the host")
    return where if kind == "unix" else host.read_text(portfile) or ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_a_forward_reaches_a_port_or_a_unix_socket_on_the_host_until_the_block_ends(host, scratch, kind):
    where = _serve(host, scratch, kind)
    local = _free_port()
    with host.forward(local, int(where) if kind == "tcp" else where), \
            socket.create_connection(("127.0.0.1", local), timeout=10) as c:
        assert c.recv(64) == f"HELLO-{kind}".encode()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", local), timeout=5):
        pass


def test_a_taken_local_port_is_a_connect_error_naming_the_forward(host):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(MigrateError, match=f"cannot forward 127.0.0.1:{port}:127.0.0.1:22"), \
                host.forward(port, 22):
            pass



def test_forwards_alive_follows_the_master_that_holds_the_forwards(host, scratch):
    where = _serve(host, scratch, "tcp")
    local = _free_port()
    with host.forward(local, int(where)):
        assert host.forwards_alive()
    host.close()  # the master goes, and the forwards with it (what `notebook` watches for)
    assert not host.forwards_alive()
