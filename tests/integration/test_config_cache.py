"""The cached `ssh -F` files on real hosts: written safely by parallel threads (issue 20.11), left alone by
another sandbox's `down` while a command uses them (issue 20.10)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import run_cli
from tests.integration.conftest import sandbox_env

OTHER = sandbox_env("sbtest")

# a long-running command on the shared sandbox, the way push-data's rsync `-e` and push-image's tar pipes
# use the cached file: the `ssh` command line is built once, then started again later
HOLDER = """
import subprocess, sys
from migrate.remote.connection import connect
with connect(sys.argv[1]) as remote:
    argv = remote.openssh_argv()
    print(subprocess.run([*argv, "echo first"], capture_output=True, text=True).stdout.strip(), flush=True)
    sys.stdin.readline()
    later = subprocess.run([*argv, "echo later"], capture_output=True, text=True)
    print(later.stdout.strip() or later.stderr.strip(), flush=True)
"""


def test_another_sandboxs_down_leaves_the_config_a_running_command_uses(sandbox_hosts, tmp_path):
    res = run_cli("sandbox", "up", "1", env=OTHER)
    assert res.code == 0, res.output
    holder = None
    try:
        # written while both sandboxes are up: the cached text names both, as in the issue
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, sandbox_hosts[0]["alias"]], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "first"
        # a finished command's copy (another text: its own ssh_config)
        (tmp_path / "config").write_text("Host *\n  ServerAliveInterval 31\n")
        res = run_cli("doctor", f"{OTHER['MIGRATE_SANDBOX']}1", "--ssh-config", str(tmp_path / "config"), env=OTHER)
        assert res.code == 0, res.output
    finally:
        down = run_cli("sandbox", "down", "--json", env=OTHER)
    assert down.code == 0, down.output
    out, err = holder.communicate("\n", timeout=60)
    assert out.splitlines()[-1] == "later", out + err  # was: Can't open user config file .../ssh_config-...
    assert holder.returncode == 0
    assert "1 cached ssh_config file(s)" in down.stdout  # the finished command's copy did go


def test_a_verb_reaching_hosts_in_parallel_writes_a_new_cached_config_safely(sandbox_hosts, tmp_path):
    """Each round starts with an empty cache, so both host threads write the same new `ssh -F` file at once
    (before the fix, about 2 rounds in 5 of this `--dry-run` failed one host with FileNotFoundError)."""
    src = tmp_path / "payload.txt"
    src.write_text("x\n")
    a, b = (h["alias"] for h in sandbox_hosts[:2])
    for round_ in range(10):
        cache = tmp_path / f"cache{round_}"
        res = run_cli("push-data", str(src), f"{a}:/tmp/cfgcache-p.txt", "-H", b, "--dry-run",
                      env={"MIGRATE_CACHE_DIR": str(cache)})
        assert res.code == 0 and "internal error" not in res.output, res.output
        cached = [p.name for p in cache.glob("ssh_config-*")]
        assert len(cached) == 1 and not cached[0].endswith(".tmp"), cached
