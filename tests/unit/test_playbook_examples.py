from pathlib import Path

import pytest

from migrate.playbook.loader import load_playbook

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "playbooks").glob("*.yml"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_playbook_is_valid(path):
    pb = load_playbook(path)
    assert pb.hosts and pb.stages()
    # datasets are the user's (the integration test makes stand-ins); what the example ships must exist
    assert [m for m in pb.missing_local_paths() if ".src:" not in m] == []
    for img in pb.images:
        if img.build:
            assert (Path(img.build) / img.dockerfile).is_file(), img.build
