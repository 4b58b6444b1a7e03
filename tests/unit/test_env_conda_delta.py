"""push-env's conda delta (issue 21): a changed conda env is sent with rsync against the pack kept on
the host from the last push. The path choice and the command builders (pure), then whole pushes to a
local "host": its commands run here under sh with HOME=tmp, and rsync's ssh is a script that runs the
remote rsync here too, so the bytes are the real rsync's."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from migrate.env import plan
from migrate.errors import MigrateError, RemoteCommandError

MIB = 1 << 20


def choose(**kw):
    base = dict(local_rsync=True, host_rsync=True, kept_bytes=-1, pack_bytes=100 * MIB, unpacked_bytes=110 * MIB,
                free_bytes=10_000 * MIB, stale_bytes=0)
    return plan.conda_transfer(**{**base, **kw})


def test_the_path_choice() -> None:
    first = choose()
    assert (first.path, first.keep) == ("stream", True) and "no pack kept" in first.reason
    delta = choose(kept_bytes=90 * MIB)
    assert (delta.path, delta.keep) == ("rsync", True)
    assert delta.need_bytes >= 210 * MIB  # the new pack beside the old one, and NAME.new beside the old env
    for kw, why in (({"host_rsync": False}, "the host has no rsync"), ({"local_rsync": False}, "this machine has")):
        got = choose(kept_bytes=90 * MIB, **kw)
        assert (got.path, got.keep) == ("stream", False) and why in got.reason
    # room for NAME.new but not for a kept pack beside it: whole and not kept (the old kept pack goes first)
    tight = choose(kept_bytes=90 * MIB, free_bytes=60 * MIB)
    assert (tight.path, tight.keep) == ("stream", False) and "no room" in tight.reason
    assert choose(free_bytes=100 * MIB).path == ""  # not even NAME.new fits: refused
    assert choose(free_bytes=100 * MIB, stale_bytes=150 * MIB).keep  # an interrupted push's leftovers are freed
    assert choose(kept_bytes=90 * MIB, free_bytes=None).path == "rsync"  # unknown free space: no refusal


def test_the_rsync_command_line() -> None:
    argv = plan.pack_rsync_argv("/c/p.tar", "gpu:.migrate/envs/.packs/t.tar", "ssh -F x")
    assert argv[0] == "rsync" and argv[-3:] == ["--", "/c/p.tar", "gpu:.migrate/envs/.packs/t.tar"]
    assert {"--stats", "--no-whole-file", "--ignore-times", "--chmod=F600"} <= set(argv)
    assert argv[argv.index("-e") + 1] == "ssh -F x"
    assert not [a for a in argv if a.startswith(("--partial", "--inplace", "--append"))]  # the old pack stays the basis


# -- whole pushes to a local "host" -------------------------------------------------------------------
class LocalRemote:
    """A `Remote` whose commands run here under sh with HOME=home; `openssh_argv` is a fake ssh that
    runs its command here the same way (for rsync -e)."""

    def __init__(self, home: Path, bin_dir: Path) -> None:
        self.home_dir, self.env = home, dict(os.environ, HOME=str(home))
        self.name, self.target = "alice@gpu", SimpleNamespace(alias="gpu")
        self.commands: list[str] = []
        ssh = bin_dir / "fakessh"  # with a file `cut` beside it: the connection breaks after that many bytes
        ssh.write_text(f'#!/bin/sh\nwhile [ "$1" != gpu ]; do shift; done; shift\ncd {home} || exit 255\n'
                       f'if [ -f {bin_dir}/cut ]; then dd bs=65536 count="$(cat {bin_dir}/cut)" iflag=count_bytes '
                       f'2>/dev/null | HOME={home} sh -c "$*"; exit 255; fi\nHOME={home} exec sh -c "$*"\n')
        ssh.chmod(0o755)
        self.ssh = str(ssh)

    def __enter__(self) -> LocalRemote:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run(self, command: str, *, check: bool = True, what: str | None = None, timeout: float | None = None):
        self.commands.append(command)
        res = subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=self.env)
        out = SimpleNamespace(exit_code=res.returncode, stdout=res.stdout, stderr=res.stderr, ok=res.returncode == 0)
        if check and not out.ok:
            raise RemoteCommandError(f"{what}: {res.stderr}", command=command, exit_code=res.returncode)
        return out

    def home(self) -> str:
        return str(self.home_dir)

    def put_bytes(self, data: bytes, remote_path: str, *, mode: int = 0o600) -> None:
        Path(remote_path).write_bytes(data)

    def stream_in(self, command: str, feed, *, what: str, hint: str | None = None) -> None:
        self.commands.append(command)
        proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, env=self.env)
        assert proc.stdin is not None
        feed(proc.stdin)
        proc.stdin.close()
        if proc.wait():
            raise MigrateError(f"{what} failed", hint=hint)

    def openssh_argv(self) -> list[str]:
        return [self.ssh, "-o", "BatchMode=yes", "gpu"]


@pytest.fixture
def host(tmp_path, monkeypatch):
    pytest.importorskip("conda_pack")
    if not shutil.which("rsync"):
        pytest.skip("no rsync here")
    from migrate.env import push

    monkeypatch.setenv("MIGRATE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "home").mkdir()
    (tmp_path / "bin").mkdir()
    remote = LocalRemote(tmp_path / "home", tmp_path / "bin")
    monkeypatch.setattr(push, "connect", lambda host, conn: remote)
    return remote


def push_conda(env: Path, **kw):
    from migrate.env.push import PushEnvOptions, push_conda_host
    from migrate.env.source import read_source
    from migrate.remote.hosts import ConnectOptions

    return push_conda_host("gpu", read_source(str(env)), PushEnvOptions(name="c1", **kw), ConnectOptions())


def test_a_changed_env_sends_its_delta_against_the_kept_pack(host, tmp_path) -> None:
    from tests.env_helpers import make_conda_env

    env = make_conda_env(tmp_path / "build" / "cenv", big_bytes=4 * MIB)
    envs = host.home_dir / ".migrate" / "envs"
    kept = envs / ".packs" / "c1.tar"
    dry = push_conda(env, dry_run=True)
    assert (dry.status, dry.transfer) == ("would-install", "stream") and not envs.exists()  # changed nothing

    first = push_conda(env)
    assert (first.status, first.transfer) == ("installed", "stream") and first.bytes_sent == first.pack_bytes
    assert kept.read_bytes() == (tmp_path / "cache" / "conda-packs").glob("*.tar").__next__().read_bytes()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and stat.S_IMODE(kept.parent.stat().st_mode) == 0o700

    make_conda_env(env, tinypkg_version="1.1", big_bytes=4 * MIB)
    dry = push_conda(env, dry_run=True)
    assert (dry.status, dry.transfer, dry.bytes_sent) == ("would-update", "rsync", 0)
    changed = push_conda(env)
    assert (changed.status, changed.transfer) == ("updated", "rsync")
    assert 0 < changed.bytes_sent < changed.pack_bytes // 10, (changed.bytes_sent, changed.pack_bytes)
    module = envs / "c1" / "lib" / "python3.11" / "site-packages" / "tinypkg" / "__init__.py"
    assert 'VERSION = "1.1"' in module.read_text() and f'PREFIX = "{envs / "c1"}"' in module.read_text()
    from migrate.env import conda

    assert (envs / "c1" / plan.LOCK_FILE).read_text() == conda.identity(env)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and sorted(os.listdir(envs / ".packs")) == ["c1.tar"]
    assert not (envs / "c1.new").exists()
    assert push_conda(env).status == "unchanged"


def test_an_interrupted_push_leaves_the_old_env_and_pack_and_a_rerun_finishes(host, tmp_path) -> None:
    from tests.env_helpers import make_conda_env

    env = make_conda_env(tmp_path / "build" / "cenv", big_bytes=MIB)
    push_conda(env)
    envs = host.home_dir / ".migrate" / "envs"
    old_pack = (envs / ".packs" / "c1.tar").read_bytes()
    # what a killed push leaves: a half NAME.new and rsync's temp file beside the kept pack
    (envs / "c1.new" / "bin").mkdir(parents=True)
    (envs / "c1.new" / "bin" / "half").write_bytes(b"x" * 5000)
    (envs / ".packs" / ".c1.tar.AbC123").write_bytes(b"y" * 7000)
    facts = plan.HostFacts.parse("gpu", host.run(plan.probe_command("c1", "0")).stdout)
    assert (facts.rsync, facts.pack_bytes, facts.stale_bytes) == (True, len(old_pack), 12000)
    assert facts.free_bytes and facts.free_bytes > 0
    make_conda_env(env, tinypkg_version="1.1", big_bytes=MIB)
    # the connection breaks during the rsync: the kept pack and the old environment stay as they were
    (tmp_path / "bin" / "cut").write_text("3000")
    with pytest.raises(MigrateError, match="rsync of the conda pack: the (SSH )?connection") as broke:
        push_conda(env)
    (tmp_path / "bin" / "cut").unlink()
    assert "stay as they were" in (broke.value.hint or "")
    assert (envs / ".packs" / "c1.tar").read_bytes() == old_pack
    assert 'VERSION = "1.0"' in (envs / "c1" / "lib" / "python3.11" / "site-packages" / "tinypkg" /
                                 "__init__.py").read_text()
    assert not (envs / "c1.new").exists() and not (envs / ".packs" / ".c1.tar.AbC123").exists()
    again = push_conda(env)
    assert (again.status, again.transfer) == ("updated", "rsync")
    assert 'VERSION = "1.1"' in (envs / "c1" / "lib" / "python3.11" / "site-packages" / "tinypkg" /
                                 "__init__.py").read_text()


def test_a_pack_is_kept_only_when_it_arrived_whole_and_delete_removes_it(tmp_path, monkeypatch) -> None:
    pytest.importorskip("conda_pack")
    from migrate.env import conda
    from tests.env_helpers import make_conda_env

    monkeypatch.setenv("MIGRATE_CACHE_DIR", str(tmp_path / "cache"))
    env = make_conda_env(tmp_path / "build" / "cenv")
    lock = conda.identity(env)
    packed = conda.pack(env, lock)
    home = tmp_path / "home"
    home.mkdir()
    sh_env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    kept = home / ".migrate" / "envs" / ".packs" / "c1.tar"

    def install(sha: str) -> None:
        subprocess.run(["sh", "-c", plan.conda_prepare_command("c1", drop_kept=False)], env=sh_env, check=True)
        (home / ".migrate" / "envs" / ".c1.lock").write_text(lock)
        res = subprocess.run(["sh", "-c", plan.conda_install_command("c1", keep_sha256=sha)],
                             stdin=packed.open("rb"), env=sh_env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr

    install("0" * 64)  # not the pack's: installed, but nothing kept
    assert (home / ".migrate" / "envs" / "c1" / plan.LOCK_FILE).read_text() == lock and not kept.exists()
    assert not kept.with_suffix(".tar.part").exists()
    install(conda.sha256(packed))
    assert kept.read_bytes() == packed.read_bytes()

    def sh(command: str) -> str:
        return subprocess.run(["sh", "-c", command], env=sh_env, capture_output=True, text=True).stdout.strip()

    subprocess.run(["sh", "-c", plan.conda_prepare_command("c1", drop_kept=True)], env=sh_env, check=True)
    assert not kept.exists() and (home / ".migrate" / "envs" / "c1").is_dir()  # drop_kept: the env stays
    kept.write_bytes(b"p")
    assert sh(plan.exists_command("c1")) == "yes" and sh(plan.delete_command("c1")) == "deleted"
    assert os.listdir(home / ".migrate" / "envs") == [".packs"] and not os.listdir(kept.parent)
    assert sh(plan.exists_command("c1")) == "no" and sh(plan.delete_command("c1")) == "absent"
    kept.write_bytes(b"p")  # a kept pack without its env (deleted by hand): still deleted
    assert sh(plan.delete_command("c1")) == "deleted" and not kept.exists()


def test_the_space_refusal_is_one_line_and_changes_nothing(host, tmp_path, monkeypatch) -> None:
    from migrate.env import push
    from tests.env_helpers import make_conda_env

    real = push.probe
    monkeypatch.setattr(push, "probe", lambda *a: plan.HostFacts(**{**real(*a).__dict__, "free_bytes": 1000}))
    env = make_conda_env(tmp_path / "build" / "cenv", big_bytes=MIB)
    with pytest.raises(MigrateError, match=r"^not enough space on gpu .* nothing was changed$") as exc:
        push_conda(env)
    assert "--delete" in (exc.value.hint or "")
    assert not (host.home_dir / ".migrate" / "envs").exists()
    assert not list((tmp_path / "cache").glob("conda-packs/*.tar"))  # refused before packing


def test_the_json_result_says_the_path(host, tmp_path) -> None:
    from dataclasses import asdict

    from tests.env_helpers import make_conda_env

    r = push_conda(make_conda_env(tmp_path / "build" / "cenv"))
    out = json.loads(json.dumps(asdict(r)))
    assert (out["transfer"], out["bytes_sent"]) == ("stream", out["pack_bytes"])


def test_the_table_says_what_crossed_the_link(capsys, monkeypatch) -> None:
    from migrate import ui
    from migrate.commands.push_env import _report
    from migrate.env.push import EnvResult

    monkeypatch.setattr(ui.out, "width", 200)  # one line per row, whatever COLUMNS says

    rows = [EnvResult(host="gpu", name="c1", status="updated", packages=3, source="conda-pack", transfer="rsync",
                      bytes_sent=33_000, pack_bytes=4_249_600),
            EnvResult(host="gpu2", name="c1", status="would-install", packages=3, source="conda-pack",
                      transfer="stream", pack_bytes=4_249_600)]
    _report(rows, as_json=False)
    out = " ".join(capsys.readouterr().out.split())
    assert "32.2 KiB sent (the pack, 4.1 MiB, as an rsync delta)" in out, out
    assert "would send the pack (4.1 MiB) whole" in out, out
