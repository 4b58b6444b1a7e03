"""Click pieces shared by every verb: context settings and the connection options."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import click

from migrate import ui
from migrate.remote.hosts import ConnectOptions, user_ssh_config_path

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add --port/--identity/--accept-new-host-key/--connect-timeout/--ssh-config; pass `conn`."""

    @click.option("-p", "--port", type=click.IntRange(1, 65535), default=None,
                  help="SSH port (default: from ~/.ssh/config, else 22).")
    @click.option("-i", "--identity", "identity", multiple=True, type=click.Path(dir_okay=False),
                  help="Private key file (repeatable); ssh-agent and ~/.ssh/config keys are tried too.")
    @click.option("--accept-new-host-key", is_flag=True,
                  help="Trust and record a host key seen for the first time (like OpenSSH "
                       "StrictHostKeyChecking=accept-new). A changed key is always refused.")
    @click.option("--connect-timeout", type=click.IntRange(1, 600), default=None, metavar="SECONDS",
                  help="Give up connecting after this long (default 10).")
    @click.option("--ssh-config", type=click.Path(dir_okay=False), default=None,
                  help="ssh_config file to read instead of ~/.ssh/config (also $MIGRATE_SSH_CONFIG).")
    @functools.wraps(func)
    def wrapper(*args: Any, port: int | None, identity: tuple[str, ...], accept_new_host_key: bool,
                connect_timeout: int | None, ssh_config: str | None, **kwargs: Any) -> Any:
        kwargs["conn"] = ConnectOptions(port=port, identity_files=list(identity),
                                        accept_new_host_key=accept_new_host_key,
                                        connect_timeout=connect_timeout, ssh_config_path=ssh_config)
        user_ssh_config_path(kwargs["conn"])  # a missing --ssh-config file: one usage line before anything runs
        return func(*args, **kwargs)

    return wrapper


def old_spelling(old: str, new: str, why: str = "") -> None:
    """One deprecation line on stderr: `old` still works for this release; `new` is the spelling (docs/cli.md)."""
    ui.deprecated(f"{old} still works for this release only; write {new}" + (f" ({why})" if why else ""))


SHORT_N = "-n means --dry-run or nothing in every verb"


def host_option(help_text: str = "A target host (repeatable): [user@]host or an ssh_config alias.", *,
                clusters: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Repeatable `-H/--host HOST`, the one way every verb that takes several hosts names them; passes `host`.
    The shell completes ssh_config aliases (and cluster names where `clusters`)."""
    from migrate.completion import complete_host, complete_target

    return click.option("-H", "--host", "host", multiple=True, metavar="HOST", help=help_text,
                        shell_complete=complete_target if clusters else complete_host)


def hosts_from(verb: str, *groups: Iterable[str], old_lists: Iterable[str] = ()) -> list[str]:
    """Hosts in the order given: `groups` (positional HOST..., -H) as they are, then `old_lists` (the old
    `--hosts H1,H2`), where a comma list is split with one deprecation line."""
    hosts = [h for group in groups for h in group]
    for value in old_lists:
        parts = [h.strip() for h in value.split(",") if h.strip()]
        if "," in value:
            old_spelling(f"{verb} --hosts {value}", f"{verb} " + " ".join(f"-H {p}" for p in parts),
                         "hosts are named one per -H")
        hosts += parts
    return hosts


def given_options(ctx: click.Context, names: Iterable[str]) -> list[str]:
    """The options among `names` that the user set on the command line (their long spelling)."""
    params = {p.name: p for p in ctx.command.params}
    return [max(params[n].opts, key=len) for n in names
            if ctx.get_parameter_source(n) not in (None, click.core.ParameterSource.DEFAULT)]


class Size(click.ParamType):
    """A size flag in the one size grammar (migrate/units.py: `1G`, `512MiB`, `64k`); a plain number is in
    the flag's unit. The value handed to the verb is a whole number of that unit, within [minimum, maximum]."""

    name = "size"

    def __init__(self, unit: int, unit_name: str, minimum: int = 0, maximum: int | None = None) -> None:
        self.unit, self.unit_name, self.minimum, self.maximum = unit, unit_name, minimum, maximum

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from migrate.errors import UsageError
        from migrate.units import SIZE_HINT, parse_size

        if isinstance(value, int):
            n = value
        else:
            try:
                n = parse_size(str(value), what=param.name if param and param.name else "size",
                               plain=self.unit) // self.unit
            except UsageError:
                self.fail(f"cannot read size {value!r} ({SIZE_HINT}; a plain number is {self.unit_name})",
                          param, ctx)
        if n < self.minimum or (self.maximum is not None and n > self.maximum):
            top = f" to {self.maximum} {self.unit_name}" if self.maximum is not None else ""
            self.fail(f"{value} is out of range ({self.minimum}{top})", param, ctx)
        return n
