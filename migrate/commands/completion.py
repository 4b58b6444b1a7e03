"""`migrate completion bash|zsh|fish`: print the shell completion script."""

from __future__ import annotations

import sys

import click

from migrate.cli_common import CONTEXT_SETTINGS
from migrate.completion import SHELLS, completion_script


@click.command("completion", context_settings=CONTEXT_SETTINGS)
@click.argument("shell", type=click.Choice(SHELLS))
def command(shell: str) -> None:
    """Print the completion script for SHELL; the shell then completes verbs, options, host aliases
    (~/.ssh/config and the files it Includes, sandbox hosts), cluster and sandbox names, and the job
    ids `migrate status` and `migrate run` last saw (a small cache in migrate's state directory).

    \b
    Examples:
      migrate completion bash > ~/.local/share/bash-completion/completions/migrate
      migrate completion zsh > "${fpath[1]}/_migrate"       # or in ~/.zshrc:
      eval "$(migrate completion zsh)"
      migrate completion fish > ~/.config/fish/completions/migrate.fish

    The script asks `migrate` itself for candidates (it reads local files only and never connects).
    """
    from migrate.cli import cli

    sys.stdout.write(completion_script(shell, cli) + "\n")
