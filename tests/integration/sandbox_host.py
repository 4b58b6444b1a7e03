"""One sandbox host as the dispatcher and shell tests drive it: raw shell access, the CLI with its env."""

from __future__ import annotations

from migrate.remote.connection import Remote, connect
from tests.conftest import CliResult, run_cli

# Docker from Debian, installed in the background (a fixture starts it; a test waits for /tmp/docker-ready)
DOCKER_INSTALL = (
    "nohup setsid sh -c 'sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq && "
    "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io "
    "&& sudo usermod -aG docker alice && touch /tmp/docker-ready' >/tmp/docker-install.log 2>&1 </dev/null &"
)


class SandboxHost:
    """A host from `dedicated_sandbox()`: its alias, container, the env that selects its sandbox, one connection."""

    cli_input: str | None = None  # what `cli` feeds the command's stdin by default

    def __init__(self, info: dict) -> None:
        self.alias = info["alias"]
        self.container = info["container"]
        self.env = info["env"]
        self._remote: Remote | None = None

    @property
    def remote(self) -> Remote:
        if self._remote is None:
            self._remote = connect(self.alias)
        return self._remote

    def reset_connection(self) -> None:
        if self._remote is not None:
            self._remote.close()
        self._remote = None

    def sh(self, command: str, check: bool = True) -> str:
        return self.remote.run(command, check=check).stdout

    def cli(self, *args: str, input: str | None = None, timeout: float = 180) -> CliResult:
        """`migrate ARGS` with this host's sandbox env; stdin is `input`, else `cli_input`."""
        return run_cli(*args, env=self.env, input=self.cli_input if input is None else input, timeout=timeout)
