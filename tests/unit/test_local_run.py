"""migrate.local.run: a failing local program's error names what went wrong."""

import sys

import pytest

from migrate import local
from migrate.errors import MigrateError

DOCKER_STDERR = ("docker: Error response from daemon: Conflict. The container name \"/migrate-apply1\" is "
                 "already in use.\nSee 'docker run --help'.\n")


def test_the_docker_clis_help_pointer_is_not_the_error():
    assert local.telling_line(DOCKER_STDERR).startswith("docker: Error response from daemon: Conflict.")
    assert local.telling_line("docker: invalid reference format.\nRun 'docker run --help' for more information\n") \
        == "docker: invalid reference format."


def test_a_plain_last_line_is_kept_and_nothing_is_empty():
    assert local.telling_line("warming up\nno space left on device\n") == "no space left on device"
    assert local.telling_line("Run 'docker run --help' for more information\n") \
        == "Run 'docker run --help' for more information"
    assert local.telling_line("") == ""


def test_run_raises_with_the_telling_line():
    code = ("import sys; sys.stderr.write(\"docker: Error response from daemon: boom\\nSee 'docker run --help'.\\n\"); "
            "sys.exit(125)")
    with pytest.raises(MigrateError) as info:
        local.run([sys.executable, "-c", code], what="create x")
    assert str(info.value).startswith("create x failed: docker: Error response from daemon: boom")
