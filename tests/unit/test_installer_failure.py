"""The one line a failed uv or pip install is reported with (`cluster up`, `push-env`)."""

from __future__ import annotations

from migrate.errors import installer_failure

UV_TLS = """error: Request failed after 3 retries
  Caused by: Failed to fetch: `https://pypi.org/simple/ray/`
  Caused by: error sending request for url (https://pypi.org/simple/ray/)
  Caused by: invalid peer certificate: UnknownIssuer
  hint: Consider enabling use of system TLS certificates with the `--system-certs` command-line flag
"""

UV_RESOLVE = """  × No solution found when resolving dependencies:
  ╰─▶ Because there is no version of ray[default]==2.55.1 and you require ray[default]==2.55.1, we can
      conclude that your requirements are unsatisfiable.
"""


def test_uv_network_failure_names_the_root_cause_not_the_hint():
    line = installer_failure(UV_TLS)
    assert line == "Request failed after 3 retries: invalid peer certificate: UnknownIssuer"


def test_uv_resolution_failure_names_what_has_no_version():
    line = installer_failure(UV_RESOLVE)
    assert line.startswith("No solution found when resolving dependencies: Because there is no version of ray")


def test_other_output_falls_back_to_its_last_line_or_the_exit_code():
    assert installer_failure("Collecting x\nERROR: No matching distribution found for x\n") == \
        "No matching distribution found for x"
    assert installer_failure("", "something broke\n") == "something broke"
    assert installer_failure("", "", 7) == "exit 7"
    assert installer_failure("hint: only a hint\n", "", 2) == "exit 2"
