import click
import pytest

from migrate.cli import VERBS, cli
from tests.conftest import run_cli


def _all_verbs() -> list[list[str]]:
    """Every command path in the CLI tree, e.g. ['sandbox', 'up']."""
    paths = []
    ctx = click.Context(cli)
    for name in VERBS:
        cmd = cli.get_command(ctx, name)
        paths.append([name])
        if isinstance(cmd, click.Group):
            paths += [[name, sub] for sub in cmd.list_commands(ctx)]
    return paths


def test_verb_table_loads_every_command():
    assert {"doctor", "sandbox"} <= set(VERBS)
    assert len(_all_verbs()) > len(VERBS)


@pytest.mark.parametrize("verb", _all_verbs())
def test_every_verb_has_help(verb):
    res = run_cli(*verb, "--help")
    assert res.code == 0, res.output
    assert "Usage: migrate" in res.stdout and len(res.stdout.splitlines()) > 4


def test_version():
    res = run_cli("--version")
    assert res.code == 0 and "migrate, version" in res.stdout


def test_unknown_verb_is_usage_error():
    res = run_cli("frobnicate")
    assert res.code == 2 and "No such command" in res.stderr


def test_missing_argument_is_usage_error():
    res = run_cli("doctor")
    assert res.code == 2 and "Missing argument" in res.stderr


def test_malformed_host_is_usage_error_without_traceback():
    res = run_cli("doctor", "alice@")
    assert res.code == 2 and res.stderr.startswith("error: malformed host") and "Traceback" not in res.output


def test_port_option_is_validated():
    res = run_cli("doctor", "h", "--port", "70000")
    assert res.code == 2


def test_no_verb_shows_help_and_is_not_success():
    res = run_cli()
    assert res.code == 2 and "Usage: migrate" in res.output
