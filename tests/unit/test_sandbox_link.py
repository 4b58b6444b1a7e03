import pytest

from migrate.errors import UsageError
from migrate.sandbox.link import Direction, parse_link


def test_parse_link_reads_rate_and_one_way_delay():
    link = parse_link("100mbit/40ms")
    assert link.rate == 12.5e6 and link.delay == pytest.approx(0.04)
    assert parse_link("20M/0").delay == 0 and parse_link("1mbit/0.2s").delay == pytest.approx(0.2)
    assert "40 ms each way" in link.describe()


@pytest.mark.parametrize("text", ["100mbit", "fast/40ms", "100mbit/soon", "100mbit/20s", "0/40ms"])
def test_parse_link_refuses_what_it_cannot_read(text):
    with pytest.raises(UsageError):
        parse_link(text)


def test_direction_serialises_chunks_at_the_rate_in_arrival_order():
    line = Direction(rate=1000.0)
    assert line.reserve(500, now=10.0) == pytest.approx(10.5)
    assert line.reserve(500, now=10.1) == pytest.approx(11.0)   # waits for the first chunk to leave
    assert line.reserve(100, now=20.0) == pytest.approx(20.1)   # an idle line starts at once


def test_sandbox_up_refuses_a_bad_link_before_starting_anything():
    from tests.conftest import run_cli

    res = run_cli("sandbox", "up", "1", "--link", "100mbit", env={"MIGRATE_SANDBOX": "nolinktest"})
    assert res.code == 2 and "Traceback" not in res.output, res.output   # a usage error
    assert [ln for ln in res.stderr.splitlines() if ln.strip()] == [
        "error: --link: '100mbit' is not RATE/DELAY (hint: e.g. --link 100mbit/40ms (rate: 100mbit, 20M, 500K; "
        "one-way delay: 40ms, 0.2s, 0), or --link off)"]
