"""Sweep size limits: counted from the grid before any job is built; above 1000 jobs ask (or --yes)."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import pytest

from migrate.errors import MigrateError, UsageError
from migrate.jobs import limits
from migrate.jobs.spec import JobSpec, expand, load_jobs_file
from migrate.playbook.loader import PlaybookError, parse_playbook
from tests.conftest import run_cli


def values(n: int) -> list[str]:
    return [str(i) for i in range(n)]


def test_sweep_size_is_the_product_without_expanding():
    assert limits.sweep_size({}) == 1 and limits.sweep_size(None) == 1
    assert limits.sweep_size({"a": values(100), "b": values(100), "c": values(100)}) == 1_000_000
    assert limits.sweep_size({"a": values(3)}, experiments=2) == 6
    assert limits.sweep_size({"a": []}) == 0


def test_a_million_job_playbook_is_refused_at_validation_with_its_line():
    text = ("hosts: [h]\nrun:\n  command: 'x {a} {b} {c}'\n"
            f"  sweep: {{a: {values(100)}, b: {values(100)}, c: {values(100)}}}\n")
    with pytest.raises(PlaybookError, match=r"exp.yml:4: run.sweep is 1000000 jobs; the limit is 10000"):
        parse_playbook(text, Path("/p/exp.yml"))


def test_a_huge_grid_is_refused_before_any_job_is_built():
    # 300 x 300 = 90 000 combinations: building them first costs megabytes; counting costs nothing
    sweep = {"a": values(300), "b": values(300)}
    tracemalloc.start()
    try:
        with pytest.raises(UsageError, match="90000 jobs; the limit is 10000"):
            expand(JobSpec(command="x {a} {b}"), sweep)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak


def test_a_jobs_file_is_counted_before_each_entry_is_expanded(tmp_path):
    entry = f"  - command: 'x {{a}} {{b}}'\n    sweep: {{a: {values(80)}, b: {values(80)}}}\n"  # 6400 each
    (tmp_path / "jobs.yml").write_text("jobs:\n" + entry * 2)
    with pytest.raises(UsageError, match="12800 jobs; the limit is 10000"):
        load_jobs_file(tmp_path / "jobs.yml")


def test_more_than_1000_jobs_needs_a_terminal_or_yes(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    limits.confirm_many_jobs(1000, where="h", yes=False)  # at the threshold: no question
    limits.confirm_many_jobs(1001, where="h", yes=True)
    with pytest.raises(MigrateError, match="refusing to queue 1001 jobs on h without confirmation") as exc:
        limits.confirm_many_jobs(1001, where="h", yes=False)
    assert "--yes" in (exc.value.hint or "")


@pytest.mark.parametrize("answer,ok", [(True, True), (False, False)])
def test_on_a_terminal_it_asks(monkeypatch, answer, ok):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    asked = []
    monkeypatch.setattr("sys.stdin", Tty(""))
    monkeypatch.setattr("click.confirm", lambda text, **kw: asked.append(text) or answer)
    if ok:
        limits.confirm_many_jobs(5000, where="h", yes=False)
    else:
        with pytest.raises(MigrateError, match="not confirmed; nothing was queued"):
            limits.confirm_many_jobs(5000, where="h", yes=False)
    assert asked == ["Queue 5000 jobs on h?"]


def _big_playbook(tmp_path: Path) -> Path:
    play = tmp_path / "big.yml"
    play.write_text(f"hosts: [nosuchhost.invalid]\nrun:\n  command: 'x {{a}} {{b}}'\n"
                    f"  sweep: {{a: {values(50)}, b: {values(21)}}}\n")  # 1050 jobs
    return play


def test_apply_refuses_a_big_sweep_without_a_terminal_before_remote_work(tmp_path):
    res = run_cli("apply", str(_big_playbook(tmp_path)), input="")
    assert res.code == 1, res.output
    assert "refusing to queue 1050 jobs on nosuchhost.invalid" in res.stderr and "--yes" in res.stderr
    assert "cannot resolve" not in res.output and "Traceback" not in res.output


def test_run_refuses_a_big_sweep_without_a_terminal_before_connecting():
    res = run_cli("run", "nosuchhost.invalid", "--sweep", "a=" + ",".join(values(50)),
                  "--sweep", "b=" + ",".join(values(21)), "--", "x {a} {b}", input="")
    assert res.code == 1, res.output
    assert "refusing to queue 1050 jobs on nosuchhost.invalid" in res.stderr
    assert "cannot resolve" not in res.output and "Traceback" not in res.output


def test_yes_goes_past_the_question(tmp_path):
    res = run_cli("run", "nosuchhost.invalid", "--yes", "--sweep", "a=" + ",".join(values(50)),
                  "--sweep", "b=" + ",".join(values(21)), "--", "x {a} {b}", input="")
    assert "refusing" not in res.output and "cannot resolve" in res.stderr
