"""host-setup's parallel connect: a host whose preparation fails is reported and its connection closed."""

from migrate.remote.hosts import ConnectOptions
from migrate.setup import orchestrator
from tests.fakehost import FakeHost


def test_a_failed_prepare_closes_that_hosts_connection_and_reports_it(monkeypatch):
    made: dict[str, FakeHost] = {}

    def fake_connect(host, conn):
        made[host] = FakeHost()
        return made[host]

    def prepare(session):
        if session.host == "bad":
            raise RuntimeError("probe exploded")

    monkeypatch.setattr(orchestrator, "connect", fake_connect)
    sessions = orchestrator._open_all(["good", "bad"], ConnectOptions(), prepare)
    by_host = {s.host: s for s in sessions}
    assert by_host["good"].report.error is None and not made["good"].closed
    assert "probe exploded" in str(by_host["bad"].report.error)
    assert made["bad"].closed
