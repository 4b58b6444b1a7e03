"""The recording host: what it records, how it answers, and which commands it calls mutating."""

from __future__ import annotations

import pytest

from migrate.data.remote import dest_probe_command, partial_probe_command, source_probe_command
from migrate.errors import RemoteCommandError
from migrate.remote.probe import PROBE_SCRIPT
from migrate.setup.facts import SETUP_PROBE
from tests.fakehost import FakeHost, is_mutating

READ_ONLY = [
    dest_probe_command("/data/x y"), source_probe_command("/runs/exp1"), partial_probe_command(["/a"], ["/b"]),
    PROBE_SCRIPT, SETUP_PROBE, "sudo -n true >/dev/null 2>&1", "rsync --version", "rsync -an --stats ./a/ gpu:/b/",
    "rsync --dry-run -a a b", "tar -cf - .", "cat /etc/os-release", "docker images --format '{{.ID}}'",
    "docker info", "docker image inspect --format '{{.Id}}' x", "docker image ls -aq",
    "t=$(mktemp); docker image ls -q > \"$t\"; cat \"$t\"; rm -f \"$t\"",
    "apt-cache policy rsync", "command -v rsync", "[ -d /x ]", 'printf %s "$HOME"',
    "systemctl is-active docker", "df -Pk /data | awk 'NR==2 {print $4}'", "ls -A /srv 2>/dev/null | head -n 1",
]
MUTATING = [
    "mkdir -p /a", "rm -rf -- /a", "mv -f /tmp/x /y", "cp a b", "chmod 600 f", "chown root:root f",
    "sudo -n sh -c 'apt-get install -y rsync'", "apt-get remove -y docker.io",
    "DEBIAN_FRONTEND=noninteractive apt-get install -y rsync || (apt-get update -q && apt-get install -y rsync)",
    "rsync -a --stats ./a/ gpu:/b/", "echo x > /etc/y", "echo x >> ~/.bashrc", "tar -C /d -xpf -",
    "docker load", "docker tag a b", "docker image rm x",
    "docker image prune -f", "docker rm -f c", "docker run --rm x", "systemctl restart docker",
    "usermod -aG docker bob", "sed -i s/a/b/ f", "cd /x && tee f", "sh -c 'cat > \"$1\"' sh /tmp/x",
    "# a comment line\nrm -rf /x", "t=$(mktemp); ls > \"$t\"; rm -f \"$t\" /etc/x",
]


@pytest.mark.parametrize("command", READ_ONLY)
def test_read_only_probes_are_not_mutating(command):
    assert not is_mutating(command)


@pytest.mark.parametrize("command", MUTATING)
def test_commands_that_change_the_host_are_mutating(command):
    assert is_mutating(command)


def test_the_host_records_commands_files_and_streams_and_answers_from_its_table():
    host = FakeHost().reply(r"^uname", "Linux\n").reply(r"false", exit_code=3, stderr="no")
    assert host.run("uname -s").stdout == "Linux\n"
    assert host.run("echo hi").stdout == "" and host.run("echo hi").exit_code == 0
    assert host.run("false", check=False).exit_code == 3
    with pytest.raises(RemoteCommandError):
        host.run("false", what="fail on purpose")
    host.run("mkdir -p /x", sudo=True)
    host.put_bytes(b"{}", "/etc/docker/daemon.json", sudo=True)
    host.transfers.run_rsync(["rsync", "-a", "a/", "gpu:/b/"], total_bytes=1)
    assert host.commands(root=True) == ["mkdir -p /x"]
    assert host.streams() == ["rsync -a a/ gpu:/b/"]
    assert [(r.kind, r.command) for r in host.mutations()] == [
        ("run", "mkdir -p /x"), ("file", "/etc/docker/daemon.json"), ("stream", "rsync -a a/ gpu:/b/")]
    with host as h:
        assert h is host
    assert host.closed
