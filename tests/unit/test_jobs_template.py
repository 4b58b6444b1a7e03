"""--from-template: what is copied, what is ignored, and the remote commands."""

from __future__ import annotations

import io
import tarfile

import pytest

from migrate.errors import UsageError
from migrate.jobs import template as tpl


@pytest.fixture
def project(tmp_path):
    (tmp_path / "train.py").write_text("print('hi')\n")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "a.yaml").write_text("lr: 1\n")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "big.pt").write_bytes(b"x" * 100)
    (tmp_path / "notes.tmp").write_text("x")
    (tmp_path / ".migrateignore").write_text("# comment\ncheckpoints/\n")
    return tmp_path


def test_plan_ignores_clutter_ignore_file_and_patterns(project):
    plan = tpl.plan_template(str(project), ["a", "b"], None, ["*.tmp"])
    assert plan.files == [".migrateignore", "train.py", "configs/a.yaml"]
    assert {".git", "__pycache__", "checkpoints", "notes.tmp"} <= set(plan.ignored)
    assert plan.dest == f"~/.migrate/runs/{project.name}" and plan.experiment_dir("a").endswith("/a")


def test_pack_contains_exactly_the_planned_files(project):
    plan = tpl.plan_template(str(project), ["a"], "/srv/x", [])
    with tarfile.open(fileobj=io.BytesIO(tpl.pack(plan)), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == sorted(plan.files)


def test_remote_commands_quote_and_never_overwrite():
    plan = tpl.TemplatePlan(source=None, dest="~/runs/my proj", experiments=["a", "b"], files=["f"],  # type: ignore
                            total_bytes=1, ignored=[])
    check = tpl.existing_check_command(plan)
    assert "\"$HOME\"/'runs/my proj/a'" in check and "[ -e \"$d\" ]" in check
    unpack = tpl.unpack_command(plan, "/home/u/.migrate/tmp/t.tar.gz")
    assert unpack.count("tar -xzf") == 2 and unpack.endswith("rm -f /home/u/.migrate/tmp/t.tar.gz; exit $rc")


@pytest.mark.parametrize("text", ["", "a,a", "../x", "a b"])
def test_bad_experiment_names(text):
    with pytest.raises(UsageError):
        tpl.parse_experiments(text)


def test_ignore_matching():
    pats = ["*.pyc", "data/raw", "logs/"]
    assert tpl.is_ignored("pkg/mod.pyc", pats)
    assert tpl.is_ignored("data/raw/x.bin", pats) and not tpl.is_ignored("data/clean", pats)
    assert tpl.is_ignored("logs", pats) and tpl.is_ignored("a/logs/b", pats)
