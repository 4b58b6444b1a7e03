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


@pytest.mark.parametrize("verb", [[]] + _all_verbs(), ids=lambda v: " ".join(v) or "migrate")
def test_every_help_fits_80_columns_and_shows_examples(verb):
    """Issue 23.6: help lines ran to 96-104 columns and only some verbs printed examples."""
    res = run_cli(*verb, "--help", env={"COLUMNS": "80"})
    assert res.code == 0, res.output
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    at = next((i for i, line in enumerate(lines) if line.strip() == "Examples:"), None)
    assert at is not None, "no Examples block"
    assert lines[at + 1].strip().startswith("migrate ")


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


@pytest.mark.parametrize("base,ok", [("65000", False), ("1023", False), ("1024", True)])
def test_cluster_port_base_keeps_every_ray_port_a_port(base, ok):
    """Issue 20.6: `--port-base 65000` was accepted and died in bind() with an OverflowError traceback."""
    from migrate.cluster.plan import ports_from
    from migrate.commands.cluster import MAX_PORT_BASE

    assert max(vars(ports_from(MAX_PORT_BASE)).values()) == 65535
    res = run_cli("cluster", "up", "lab", "nosuch.invalid", "--port-base", base, "--dry-run")
    if ok:
        assert "out of range" not in res.output
        return
    assert res.code == 2 and "Traceback" not in res.output, res.output
    assert res.stderr == f"error: --port-base {base} is out of range (Ray's ports would be {base} to " \
                         f"{int(base) + 65535 - MAX_PORT_BASE}) (hint: give 1024 to {MAX_PORT_BASE})\n"


def test_no_verb_shows_help_and_is_not_success():
    res = run_cli()
    assert res.code == 2 and "Usage: migrate" in res.output


def test_an_error_wrapping_another_prints_one_hint():
    """Issue 20: a cluster push failure printed `(hint: ...) (hint: ...)`: an error's one line (hint
    included) inside another error that has its own hint."""
    from migrate.errors import MigrateError

    inner = MigrateError("no space left on gpu2", hint="free some space").one_line()
    outer = MigrateError(f"could not push app:1 to gpu2: {inner}", hint="nothing was submitted")
    assert outer.one_line() == "could not push app:1 to gpu2: no space left on gpu2 (hint: free some space; " \
                               "nothing was submitted)"
    assert outer.one_line().count("(hint:") == 1
    same = MigrateError(f"a: {inner}", hint="free some space")
    assert same.one_line() == "a: no space left on gpu2 (hint: free some space)"
    # hints inside a list of failures stay with their host; only the last one is merged with the outer one
    both = MigrateError(f"h1: {inner}; h2: down", hint="rerun").one_line()
    assert both == "h1: no space left on gpu2 (hint: free some space); h2: down (hint: rerun)"
    assert MigrateError("x (hint: a) then y (z)", hint="h").one_line() == "x (hint: a) then y (z) (hint: h)"
    assert MigrateError("plain", hint="h").one_line() == "plain (hint: h)"
    assert MigrateError("plain.").one_line() == "plain"
