"""`sandbox up --link RATE/DELAY`: round trips cost 2 x DELAY and bulk bytes move at RATE; down removes it."""

import json
import subprocess
import time

from migrate.sandbox.link import relay_alive
from tests.conftest import run_cli
from tests.integration.conftest import sandbox_env

ENV = sandbox_env("sbtest")  # test_sandbox.py brings the same sandbox down before this file runs
HOST = ENV["MIGRATE_SANDBOX"] + "1"
DELAY = 0.03                 # one way
RATE = 40e6 / 8              # 40mbit in bytes/s


def _read_line(proc: subprocess.Popen, deadline: float) -> bytes:
    line = proc.stdout.readline()
    assert line, f"ssh ended: {proc.stderr.read().decode(errors='replace')}"
    assert time.monotonic() < deadline
    return line


def test_link_sandbox_has_the_round_trip_and_rate_asked_for(tmp_path):
    pid = 0
    try:
        res = run_cli("sandbox", "up", "1", "--link", "40mbit/30ms", "--json", env=ENV, timeout=600)
        assert res.code == 0, res.output
        host = json.loads(res.stdout)[0]
        assert host["link"] == "40mbit/30ms" and host["port"] != host["published_port"]
        res = run_cli("sandbox", "status", env=ENV)
        assert "link: 40mbit/30ms" in res.output, res.output
        pid = int(res.output.split("relay pid ")[1].split(";")[0])
        cfg = tmp_path / "ssh_config"
        cfg.write_text(run_cli("sandbox", "ssh-config", env=ENV).stdout)
        script = "echo ready; while read -r line; do [ \"$line\" = bulk ] && break; echo \"$line\"; done; " \
                 f"head -c {int(RATE)} >/dev/null; echo done"
        proc = subprocess.Popen(["ssh", "-F", str(cfg), HOST, script], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        try:
            assert _read_line(proc, deadline) == b"ready\n"
            rtts = []
            for i in range(5):
                t0 = time.monotonic()
                proc.stdin.write(f"ping{i}\n".encode())
                proc.stdin.flush()
                assert _read_line(proc, deadline) == f"ping{i}\n".encode()
                rtts.append(time.monotonic() - t0)
            proc.stdin.write(b"bulk\n")
            t0 = time.monotonic()
            proc.stdin.write(b"\0" * int(RATE))  # one second's worth
            proc.stdin.flush()
            assert _read_line(proc, deadline) == b"done\n"
            seconds = time.monotonic() - t0
        finally:
            proc.kill()
            proc.wait()
        print(f"round trips {[round(r * 1000) for r in rtts]} ms; {RATE:.0f} bytes in {seconds:.2f} s")
        assert 2 * DELAY <= min(rtts) < 2 * DELAY + 0.1, rtts
        rate = RATE / max(seconds - 2 * DELAY, 1e-3)
        assert 0.6 * RATE <= rate <= 1.15 * RATE, (rate, seconds)
    finally:
        res = run_cli("sandbox", "down", env=ENV)
    assert res.code == 0 and "link relay" in res.output, res.output
    assert not relay_alive(pid)
