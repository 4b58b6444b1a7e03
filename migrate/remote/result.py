"""`RunResult`, the outcome of one remote command: its own module so that the OpenSSH transport
(push-data, pull-data) does not import paramiko and Fabric (~0.1 s) just to return one."""

from __future__ import annotations

from dataclasses import dataclass

from migrate.errors import RemoteCommandError


@dataclass
class RunResult:
    """The outcome of one remote command."""

    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def raise_for_failure(self, what: str | None, host: str) -> None:
        """A non-zero exit becomes a RemoteCommandError naming the step, the host and the last output line."""
        if self.ok:
            return
        detail = (self.stderr.strip() or self.stdout.strip()).splitlines()
        last = detail[-1] if detail else f"exit code {self.exit_code}"
        raise RemoteCommandError(f"{what or 'remote command'} failed on {host}: {last}",
                                 command=self.command, exit_code=self.exit_code, stderr=self.stderr)


