import re
from pathlib import Path

from migrate.commands.init import starter_playbook
from migrate.playbook.loader import parse_playbook
from migrate.playbook.schema import reference_markdown
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_playbook_reference_is_generated_from_the_schema():
    assert (ROOT / "docs" / "playbook.md").read_text().strip() == reference_markdown().strip(), \
        "regenerate: python -m migrate.playbook.schema > docs/playbook.md"


def test_starter_playbook_is_valid():
    pb = parse_playbook(starter_playbook("migrate.yml", "bob@lab"), Path("migrate.yml"))
    assert pb.hosts == ["bob@lab"] and pb.stages() == ["setup", "run"]


def test_init_writes_once_and_refuses_to_overwrite(tmp_path):
    res = run_cli("init", "p.yml", "--host", "sandbox1", cwd=str(tmp_path))
    assert res.code == 0, res.output
    assert "hosts: [sandbox1]" in (tmp_path / "p.yml").read_text()
    res = run_cli("init", "p.yml", cwd=str(tmp_path))
    assert res.code == 1 and "already exists" in res.stderr


def test_init_names_the_sandbox_that_sandbox_up_brings_up_here(tmp_path):
    """Issue 20: init said `-H sandbox1` whatever $MIGRATE_SANDBOX named the sandbox."""
    res = run_cli("init", "my plan.yml", env={"MIGRATE_SANDBOX": "lab"}, cwd=str(tmp_path))
    assert res.code == 0, res.output
    assert "`migrate apply 'my plan.yml' -H lab1 --dry-run`" in res.stderr and "sandbox1" not in res.stderr
    assert "-H lab1" in (tmp_path / "my plan.yml").read_text()
    res = run_cli("init", "p.yml", env={"MIGRATE_SANDBOX": "sandbox"}, cwd=str(tmp_path))
    assert "-H sandbox1 --dry-run" in res.stderr


def test_every_relative_link_in_the_docs_resolves():
    """Docs render as plain Markdown: every relative link points at an existing file (and anchor)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "playbooks").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve()
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
            elif anchor and dest.suffix == ".md":
                slugs = {_slug(h) for h in re.findall(r"^#+\s+(.*)$", dest.read_text(), re.M)}
                if anchor not in slugs:
                    broken.append(f"{page.relative_to(ROOT)} -> {target} (no such heading)")
    assert not broken, broken


def _slug(heading: str) -> str:
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")
