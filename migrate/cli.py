"""The `migrate` command line: the root group, lazy verb loading, and error -> exit code mapping.

Exit codes: 0 success, 1 the operation failed (message on one line, no traceback), 2 usage error,
130 interrupted. Each verb's click command lives in `migrate.commands.<verb>` (its logic in the
domain packages); this module only knows where to find them, so `migrate --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import click

from migrate import __version__, ui
from migrate.cli_common import CONTEXT_SETTINGS
from migrate.errors import EXIT_FAILED, EXIT_USAGE, MigrateError

# verb -> "module:attribute" of its click command; loaded only when used (or for --help).
VERBS = {
    "apply": "migrate.commands.apply:command",
    "cancel": "migrate.commands.cancel:command",
    "cluster": "migrate.commands.cluster:group",
    "completion": "migrate.commands.completion:command",
    "doctor": "migrate.commands.doctor:command",
    "exec": "migrate.commands.shell:exec_command",
    "gpus": "migrate.commands.gpus:command",
    "host-setup": "migrate.commands.host_setup:command",
    "init": "migrate.commands.init:command",
    "logs": "migrate.commands.logs:command",
    "mirror": "migrate.commands.mirror:command",
    "notebook": "migrate.commands.notebook:command",
    "pull-data": "migrate.commands.push_data:pull_command",
    "push-data": "migrate.commands.push_data:push_command",
    "push-env": "migrate.commands.push_env:command",
    "push-image": "migrate.commands.push_image:command",
    "resume": "migrate.commands.resume:command",
    "retry": "migrate.commands.retry:command",
    "run": "migrate.commands.run:command",
    "sandbox": "migrate.commands.sandbox:group",
    "shell": "migrate.commands.shell:command",
    "status": "migrate.commands.status:command",
    "sync": "migrate.commands.sync:command",
    "tunnel": "migrate.commands.tunnel:command",
    "wait": "migrate.commands.wait:command",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *VERBS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in VERBS:
            module, _, attr = VERBS[name].partition(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="migrate")
@click.option("-v", "--verbose", count=True, help="Show what runs where (-vv: every remote command).")
def cli(verbose: int) -> None:
    """Move a deep-learning experiment onto a borrowed GPU server over SSH, fast and politely.

    HOST is [user@]host or an alias from ~/.ssh/config; `migrate sandbox up` adds local
    rehearsal hosts named sandbox1, sandbox2, ... Start with `migrate doctor HOST`.

    \b
    Examples:
      migrate doctor gpu1                  # what the host has and lacks
      migrate push-data ./data gpu1:data   # then push-image, run, status...
      migrate run gpu1 -- python train.py
      migrate sandbox up                   # rehearse on local hosts first
    """
    ui.set_verbosity(verbose)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning MigrateError into a one-line message and an exit code."""
    try:
        code = cli.main(args=argv, prog_name="migrate", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        ui.error("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except MigrateError as exc:
        ui.error(exc.one_line())
        if ui.verbosity() >= 2:
            traceback.print_exc()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        ui.error("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(EXIT_FAILED)
    except Exception:  # a bug: say so, show the traceback, keep the exit code consistent
        ui.error("internal error in migrate (this is a bug; please report it with the traceback below)")
        traceback.print_exc()
        sys.exit(EXIT_FAILED)
