"""Shell completion: the script `migrate completion SHELL` prints, and what it completes.

Click's own machinery answers the shell (`_MIGRATE_COMPLETE=bash_complete migrate ...`); the functions
here are the `shell_complete=` callbacks of the arguments that name things this machine knows:
host aliases from the ssh_config (its `Include`d files too) and the sandboxes' configs, cluster and
sandbox names from migrate's state directory, and job ids from the small cache `status` and `run`
keep (migrate/jobs/idcache.py, lastrun.py). They read local files only, never connect, and never fail:
a problem means fewer candidates.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from pathlib import Path

import click
from click.shell_completion import CompletionItem, get_completion_class

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_MIGRATE_COMPLETE"
MAX_INCLUDE_DEPTH = 16  # as OpenSSH's READCONF_MAX_DEPTH
_KEYWORD = re.compile(r"^\s*(\w+)\s*(?:=\s*|\s+)(.*?)\s*$")


def completion_script(shell: str, cli: click.Command, prog_name: str = "migrate") -> str:
    """The script that makes `shell` ask migrate for completions (Click's, for this program)."""
    cls = get_completion_class(shell)
    if cls is None:
        raise click.BadParameter(f"unknown shell {shell!r} (one of {', '.join(SHELLS)})")
    return cls(cli, {}, prog_name, COMPLETE_VAR).source()


# -- what is known here -----------------------------------------------------------------------------
def _words(value: str) -> list[str]:
    """ssh_config arguments: space separated, double quotes group words."""
    return [a or b for a, b in re.findall(r'"([^"]*)"|(\S+)', value)]


def ssh_aliases(path: Path, *, base: Path | None = None, depth: int = 0, seen: set[Path] | None = None) -> list[str]:
    """The concrete `Host` names of an ssh_config file and the files it `Include`s (patterns with `*`, `?`
    or `!` are left out), in file order (pure apart from reading the files)."""
    seen = set() if seen is None else seen
    base = base or Path("~/.ssh").expanduser()
    try:
        real = path.resolve()
        if real in seen or depth > MAX_INCLUDE_DEPTH:
            return []
        seen.add(real)
        text = path.read_text(errors="replace")
    except OSError:
        return []
    out: list[str] = []
    for line in text.splitlines():
        m = _KEYWORD.match(line.split("#", 1)[0] if not line.lstrip().startswith('"') else line)
        if not m:
            continue
        key, value = m.group(1).lower(), m.group(2)
        if key == "host":
            out += [w for w in _words(value) if not any(c in w for c in "*?!")]
        elif key == "include":
            for pattern in _words(value):
                pattern = os.path.expanduser(pattern)
                if not os.path.isabs(pattern):
                    pattern = str(base / pattern)
                for inc in sorted(glob.glob(pattern)):
                    out += ssh_aliases(Path(inc), base=base, depth=depth + 1, seen=seen)
    return out


def host_names() -> list[str]:
    """Host aliases of the user's ssh_config ($MIGRATE_SSH_CONFIG or ~/.ssh/config) and of the sandboxes."""
    from migrate.paths import sandbox_ssh_configs

    user = Path(os.environ.get("MIGRATE_SSH_CONFIG") or "~/.ssh/config").expanduser()
    names = ssh_aliases(user)
    for cfg in sandbox_ssh_configs():
        names += ssh_aliases(cfg, base=cfg.parent)
    return list(dict.fromkeys(names))


def cluster_names() -> list[str]:
    """The clusters `migrate cluster up` recorded on this machine."""
    from migrate.cluster import state

    try:
        return sorted(p.stem for p in state.clusters_dir().glob("*.json") if state.NAME_RE.match(p.stem))
    except OSError:
        return []


def sandbox_names() -> list[str]:
    """The sandboxes with a state directory here."""
    from migrate.paths import sandbox_root

    try:
        return sorted(p.name for p in sandbox_root().iterdir() if p.is_dir())
    except OSError:
        return []


def job_ids(target: str) -> list[tuple[str, str]]:
    """(id, name) of the jobs `status`/`run` last saw on `target` ([] when none)."""
    from migrate.jobs import idcache, lastrun

    jobs = idcache.known(target)
    have = {i for i, _ in jobs}
    return jobs + [(i, "") for i in (lastrun.last_ids(target) or []) if i not in have]


# -- the callbacks ----------------------------------------------------------------------------------
def _items(values: Iterable[str | tuple[str, str]], incomplete: str) -> list[CompletionItem]:
    out = []
    for v in values:
        value, helptext = (v, None) if isinstance(v, str) else (v[0], v[1] or None)
        if value.startswith(incomplete):
            out.append(CompletionItem(value, help=helptext))
    return out


def _safe(fn):  # noqa: ANN001, ANN202 - a decorator of the callbacks below
    def wrapper(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        try:
            return fn(ctx, param, incomplete)
        except Exception:  # completion must never print a traceback into the user's shell
            return []
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@_safe
def complete_host(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """A host: ssh_config aliases and sandbox hosts (a `user@` prefix is kept)."""
    user, at, rest = incomplete.rpartition("@")
    prefix = user + at
    return [CompletionItem(prefix + i.value) for i in _items(host_names(), rest)]


@_safe
def complete_target(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """A job target: a cluster name or a host."""
    return _items(cluster_names(), incomplete) + complete_host(ctx, param, incomplete)


@_safe
def complete_cluster(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _items(cluster_names(), incomplete)


@_safe
def complete_sandbox(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _items(sandbox_names(), incomplete)


@_safe
def complete_job(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """A job of the target named before it (ids, with the job's name as help)."""
    target = next((ctx.params[k] for k in ("host", "target", "first") if isinstance(ctx.params.get(k), str)), None)
    if not target:
        return []
    return _items(job_ids(target), incomplete)
