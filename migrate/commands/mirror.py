"""`migrate mirror HOST... NAME|URL` and `--undo`: package-index mirrors for your user, no root.

The click adapter; the on-host script and the mirror table live in `migrate.env.mirror`.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options, host_option, hosts_from
from migrate.env import mirror
from migrate.errors import MigrateError, UsageError
from migrate.remote.connection import connect
from migrate.remote.hosts import ConnectOptions
from migrate.remote.parallel import for_each_host


@click.command("mirror", context_settings=CONTEXT_SETTINGS)
@click.argument("args", nargs=-1, metavar="HOST... [NAME|URL]")
@host_option("Set it on this host too (repeatable, in parallel).")
@click.option("--undo", is_flag=True, help="Put back every file this changed (or remove those it created).")
@click.option("-n", "--dry-run", is_flag=True, help="Show which files would be written or merged; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@connection_options
def command(args: tuple[str, ...], host: tuple[str, ...], undo: bool, dry_run: bool, as_json: bool,
            conn: ConnectOptions) -> None:
    """Point pip, uv and conda at a package-index mirror for your user on hosts (no root).

    \b
    Examples:
      migrate mirror gpu tuna               # pip, uv, conda: Tsinghua's mirror
      migrate mirror gpu1 gpu2 https://pypi.example/simple
      migrate mirror gpu --undo             # everything back as it was
      migrate push-env gpu requirements.txt # now installs from the mirror

    NAME is tuna, ustc or aliyun; a URL sets pip and uv only. pip.conf is merged (only [global]
    index-url changes; an http:// URL's host joins trusted-host, or pip ignores it), uv.toml gets a
    marked [[index]] block, ~/.condarc is written only when you have none. The first original of each
    file is kept in ~/.migrate/mirror/ (journal.json); --undo restores them. push-env reads the
    journal and installs from the mirror.
    """
    words = list(args)
    if undo:
        hosts, url, conda = hosts_from("mirror", words, host), "", ""
    else:
        if not words:
            raise UsageError("give HOST... and a mirror",
                             hint=f"e.g. migrate mirror gpu tuna ({', '.join(mirror.MIRRORS)}, or a URL)")
        url, conda = mirror.resolve(words.pop())
        hosts = hosts_from("mirror", words, host)
    if not hosts:
        raise UsageError("give at least one HOST", hint="migrate mirror gpu-box tuna")

    def one(h: str) -> mirror.MirrorResult:
        with connect(h, conn) as remote:
            res = remote.run(mirror.command("undo" if undo else "set", url, conda, dry_run=dry_run), check=False,
                             what="write the mirror settings")
            if not res.ok:
                raise MigrateError(f"mirror on {h} failed: {(res.stderr.strip() or '?').splitlines()[-1]}")
            return mirror.MirrorResult.parse(h, res.stdout)

    results = [o.value if o.value is not None else mirror.MirrorResult(host=o.host, error=o.error or "?")
               for o in for_each_host(hosts, one)]
    if as_json:
        ui.print_json([asdict(r) for r in results])
    else:
        rows = [(r.host, c["tool"] or "-", c["path"], ("would " if dry_run else "") + c["change"], c.get("why", ""))
                for r in results for c in r.changes]
        ui.table(("dry run: " if dry_run else "") + ("undo" if undo else f"mirror {url}"),
                 ["host", "tool", "file", "change", "why"], rows)
    for r in results:
        if r.error:
            ui.error(f"{r.host}: {r.error}")
    if any(r.error for r in results):
        sys.exit(1)
