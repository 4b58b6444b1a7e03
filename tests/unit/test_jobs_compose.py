import subprocess

import pytest

from migrate.errors import UsageError
from migrate.jobs.compose import compose_job_command, plan_compose, project_name

COMPOSE = "services:\n  web:\n    image: lab/x:1\n  db:\n    image: lab/db:1\n"


def test_plan_compose_reads_services_and_names_the_project(tmp_path):
    d = tmp_path / "My Stack"
    d.mkdir()
    (d / "docker-compose.yml").write_text(COMPOSE)
    plan = plan_compose(str(d / "docker-compose.yml"))
    assert plan.project == "my-stack" and plan.services == ["db", "web"]
    assert plan.remote_dir == ".migrate/compose/my-stack" and plan.file_name == "docker-compose.yml"
    assert plan_compose(str(d / "docker-compose.yml"), "Exp 1").project == "exp-1"


@pytest.mark.parametrize("text,needle", [
    ("services: {}\n", "no services"),
    ("just text\n", "no services"),
    ("services:\n  a: [\n", "not valid YAML"),
    ("services:\n  a:\n    build: .\n", "built from source"),
])
def test_plan_compose_rejects_bad_files(tmp_path, text, needle):
    (tmp_path / "c.yml").write_text(text)
    with pytest.raises(UsageError, match=needle):
        plan_compose(str(tmp_path / "c.yml"))
    with pytest.raises(UsageError, match="not found"):
        plan_compose(str(tmp_path / "missing.yml"))


def test_project_name():
    assert project_name("--Odd__Name!!") == "odd__name"
    with pytest.raises(UsageError):
        project_name("!!!")


def _run(command: str, tmp_path, docker_stub: str | None) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the job command in a fake home; `docker` is a recording stub (no real Docker needed) or absent."""
    home = tmp_path / "home"
    (home / ".migrate/compose/p").mkdir(parents=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls"
    if docker_stub is not None:
        stub = bindir / "docker"
        stub.write_text(f'#!/bin/sh\necho "$*" >> {log}\n' + docker_stub)
        stub.chmod(0o755)
    path = f"{bindir}:/usr/bin:/bin" if docker_stub is not None else str(bindir)
    proc = subprocess.run(["/bin/bash", "-c", "cd && " + command], env={"PATH": path, "HOME": str(home)},
                          capture_output=True, text=True)
    return proc, log.read_text().splitlines() if log.exists() else []


def test_job_command_runs_up_then_down_and_keeps_the_exit_code(tmp_path):
    (tmp_path / "c.yml").write_text(COMPOSE)
    command = compose_job_command(plan_compose(str(tmp_path / "c.yml"), "p"))
    proc, calls = _run(command, tmp_path, 'case "$*" in *" up "*) exit 3;; esac\nexit 0\n')
    assert proc.returncode == 3
    assert calls[0] == "compose version"
    assert calls[1].startswith("compose -p p -f c.yml up --abort-on-container-exit")
    assert calls[2].startswith("compose -p p -f c.yml down")


def test_job_command_explains_missing_compose(tmp_path):
    (tmp_path / "c.yml").write_text(COMPOSE)
    command = compose_job_command(plan_compose(str(tmp_path / "c.yml"), "p"))
    proc, calls = _run(command, tmp_path, None)
    assert proc.returncode == 127 and "neither docker compose nor docker-compose" in proc.stderr
    assert calls == []
