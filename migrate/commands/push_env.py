"""`migrate push-env HOST... SOURCE`: a Python environment on hosts, no root; the click adapter.

The orchestration lives in `migrate.env.push`; this module parses HOST... SOURCE, asks before
`--delete`, and prints the table (or `--json`).
"""

from __future__ import annotations

import sys
from dataclasses import asdict

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options, host_option, hosts_from
from migrate.cluster import state as cluster_state
from migrate.env import known, plan
from migrate.env.push import EnvResult, PushEnvOptions, delete_env, push_env
from migrate.env.source import check_name, current_source, default_name, read_source
from migrate.errors import UsageError
from migrate.remote.hosts import ConnectOptions


@click.command("push-env", context_settings=CONTEXT_SETTINGS)
@click.argument("args", nargs=-1, metavar="HOST... [SOURCE]")
@host_option("Push to this host too (repeatable, in parallel).")
@click.option("--name", help="The environment's name on the host: ~/.migrate/envs/NAME "
                             "(default: the source's directory name).")
@click.option("--from-current", is_flag=True, help="Push the environment active here: a venv ($VIRTUAL_ENV, its "
                                                     "packages re-resolved for the host) or a conda env "
                                                     "($CONDA_PREFIX, packed with conda-pack).")
@click.option("--python", "python", default="python3", show_default=True, metavar="PYTHON",
              help="The python on the host the venv is made from (a name on its PATH or a path).")
@click.option("--offline/--online", default=None,
              help="--offline: always push the wheels from here; --online: always install from the index "
                   "(default: push wheels only to hosts that reach no index).")
@click.option("--delete", is_flag=True, help="Delete the environment NAME on the hosts, with a conda env's kept pack "
                                             "(asks first; --yes to skip).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before --delete (for scripts).")
@click.option("-n", "--dry-run", is_flag=True, help="Resolve and show what would be installed and which wheels "
                                                    "would be sent (a conda env: whether by rsync delta or "
                                                    "whole); change nothing on the hosts.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@connection_options
def command(args: tuple[str, ...], host: tuple[str, ...], name: str | None, from_current: bool, python: str,
            offline: bool | None, delete: bool, yes: bool, dry_run: bool, as_json: bool,
            conn: ConnectOptions) -> None:
    """Put a Python environment on hosts under ~/.migrate/envs/NAME, without root or Docker.

    \b
    Examples:
      migrate push-env gpu requirements.txt --name torch   # uv here, uv there
      migrate push-env gpu ./myproject          # pyproject.toml (+ uv.lock)
      migrate push-env gpu1 gpu2 --from-current # the venv/conda env active here
      migrate push-env mycluster requirements.txt --name torch  # every node
      migrate push-env gpu ~/miniconda3/envs/torch   # conda-pack, conda-unpack
      migrate push-env gpu requirements.txt --python python3.12
      migrate push-env gpu requirements.txt -n  # what would be sent
      migrate push-env gpu --name torch --delete
      migrate run gpu --env torch -- python train.py # a job in the env

    The lock is resolved here by uv for the host's python and platform. A host that reaches the
    package index installs from it; one that does not gets exactly the wheels it lacks, downloaded
    here once per platform and sent over SSH into ~/.migrate/wheels/ (kept: a later push sends only
    new wheels). An environment already at the same lock is left alone. The venv is made from the
    host's python3 (or --python); nothing is installed outside ~/.migrate. A conda environment
    (a directory with conda-meta/, or an environment.yml created here once) carries its own
    python: it is packed with conda-pack and relocated on the host with conda-unpack; the
    host keeps the last pack (~/.migrate/envs/.packs/NAME.tar), so a changed env sends only an
    rsync delta against it (whole where either side has no rsync).
    A cluster name (`migrate cluster up`) stands for all its hosts; `migrate run CLUSTER --env
    NAME` pushes the SOURCE last pushed as NAME from here to every node again before submitting.
    """
    words = list(args)
    if delete or from_current:
        hosts, source_text = hosts_from("push-env", words, host), None
    else:
        if not words:
            raise UsageError("give HOST... and SOURCE", hint="migrate push-env gpu-box requirements.txt")
        source_text = words.pop()
        hosts = hosts_from("push-env", words, host)
    if not hosts:
        raise UsageError("give at least one HOST", hint="migrate push-env gpu-box requirements.txt")
    hosts = expand_clusters(hosts)
    if delete:
        if not name:
            raise UsageError("--delete needs --name NAME", hint="migrate push-env HOST --name torch --delete")
        check_name(name)
        if not dry_run and not yes:
            if not sys.stdin.isatty():
                raise UsageError(f"--delete removes ~/{plan.env_dir(name)} on {len(hosts)} host(s)",
                                 hint="confirm with --yes")
            click.confirm(f"delete ~/{plan.env_dir(name)} on {', '.join(hosts)}?", abort=True)
        _report(delete_env(hosts, name, conn, dry_run=dry_run), as_json)
        return
    src = current_source() if from_current else read_source(source_text or "")
    opts = PushEnvOptions(name=check_name(name or default_name(src)), python=python, offline=offline,
                          dry_run=dry_run)
    if not as_json:
        ui.info(f"{src.describe()} -> ~/{plan.env_dir(opts.name)} on {', '.join(hosts)}")
    results = push_env(hosts, src, opts, conn)
    if not dry_run and any(not r.error for r in results):  # `run CLUSTER --env NAME` pushes this SOURCE again
        known.remember(opts.name, src, python)
    _report(results, as_json)


def expand_clusters(hosts: list[str]) -> list[str]:
    """A cluster name (`migrate cluster up NAME ...`) stands for every host of that cluster."""
    out: list[str] = []
    for h in hosts:
        for one in (cluster_state.load(h).hosts if cluster_state.exists(h) else [h]):
            if one not in out:
                out.append(one)
    return out


def _report(results: list[EnvResult], as_json: bool) -> None:
    if as_json:
        ui.print_json([asdict(r) for r in results])
    else:
        rows = []
        for r in results:
            if r.error:
                detail = r.error
            elif r.transfer:  # conda: the pack, as an rsync delta or whole
                how = "as an rsync delta" if r.transfer == "rsync" else "whole"
                detail = (f"{r.packages} packages, " + (f"would send the pack ({ui.human_bytes(r.pack_bytes)}) {how}"
                                                         if r.status.startswith("would-") else
                                                         f"{ui.human_bytes(r.bytes_sent)} sent (the pack, "
                                                         f"{ui.human_bytes(r.pack_bytes)}, {how})")
                          + (f" in {r.seconds:.1f}s" if r.seconds else ""))
            elif r.status.startswith("would-") and r.wheels_missing:
                detail = f"would send {len(r.wheels_missing)} wheel(s): {', '.join(r.wheels_missing[:6])}" + \
                         (" ..." if len(r.wheels_missing) > 6 else "")
            else:
                detail = (f"{r.packages} packages" + (f", {r.wheels_sent} wheel(s) sent "
                                                      f"({ui.human_bytes(r.bytes_sent)})" if r.wheels_sent else
                                                      ", nothing sent" if r.packages else "")
                          + (f", from {r.source}" if r.source and r.status != "unchanged" else "")
                          + (f" in {r.seconds:.1f}s" if r.seconds else ""))
            rows.append((r.host, r.name, r.python or "-", r.status, detail))
        ui.table(None, ["host", "env", "python", "result", "detail"], rows)
    for r in results:
        if r.error:
            ui.error(f"{r.host}: {r.error}")
    if any(r.error for r in results):
        sys.exit(1)
