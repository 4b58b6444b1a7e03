"""The one size/rate grammar (migrate.units) and the flags that use it (docs/cli.md)."""

from __future__ import annotations

import pytest

from migrate.errors import UsageError
from migrate.units import GIB, KIB, MIB, TIB, format_rate, parse_rate, parse_size, rate_kib


@pytest.mark.parametrize("text,plain,expected", [
    ("64M", 1, 64 * MIB), ("64m", 1, 64 * MIB), ("64MiB", 1, 64 * MIB), ("64MB", 1, 64 * MIB), ("64 mib", 1, 64 * MIB),
    ("512K", 1, 512 * KIB), ("512KiB", 1, 512 * KIB), ("1.5G", 1, int(1.5 * GIB)), ("1GiB", 1, GIB), ("2T", 1, 2 * TIB),
    ("4096", 1, 4096), ("4096B", 1, 4096), ("4096b", 1, 4096), ("0", 1, 0), (" 8M ", 1, 8 * MIB), ("16Gi", 1, 16 * GIB),
    ("2048", MIB, 2048 * MIB), ("16g", MIB, 16 * GIB), (300, MIB, 300 * MIB), (7, 1, 7),
])
def test_sizes(text, plain, expected):
    assert parse_size(text, plain=plain) == expected


@pytest.mark.parametrize("bad", ["", "lots", "-1g", "1x", "64 MB/s", "100mbit", "1e6", "M", "1.2.3", "64MiBs"])
def test_bad_sizes(bad):
    with pytest.raises(UsageError, match="cannot read size|cannot be negative"):
        parse_size(bad, what="--checkpoint")


@pytest.mark.parametrize("text,expected", [
    ("20M", 20 * MIB), ("20m", 20 * MIB), ("20MiB/s", 20 * MIB), ("20MB/s", 20 * MIB), ("20 M/s", 20 * MIB),
    ("500K", 500 * KIB), ("500k/s", 500 * KIB), ("1G", GIB), ("1.5k", 1.5 * KIB),
    ("500", 500 * KIB), ("500/s", 500 * KIB), ("1", KIB), ("2048B/s", 2048), ("2048b", 2048),
    ("100mbit", 12.5e6), ("100Mbit/s", 12.5e6), ("1gbit", 125e6), ("64kbit", 8000), ("80000bit", 10000),
    ("1Gbits/sec", 125e6),
])
def test_rates(text, expected):
    assert parse_rate(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad,needle", [
    ("fast", "bad rate"), ("", "bad rate"), ("10 MB per s", "bad rate"), ("-5M", "bad rate"), ("1tbit", "bad rate"),
    ("100mbps", "bad rate"), ("0", "is zero"), ("0M", "is zero"), ("1000B", "too low"), ("8kbit", "too low"),
])
def test_bad_rates(bad, needle):
    with pytest.raises(UsageError, match=needle):
        parse_rate(bad)


def test_rate_helpers():
    assert rate_kib(parse_rate("10M")) == 10240 and rate_kib(parse_rate("500")) == 500
    assert rate_kib(parse_rate("100mbit")) == 12207 and rate_kib(1500) == 1
    assert format_rate(20 * MIB) == "20 MiB/s" and format_rate(12.5e6) == "11.9 MiB/s"
    assert format_rate(500 * KIB) == "500 KiB/s" and format_rate(GIB) == "1 GiB/s" and format_rate(100) == "100 B/s"


# -- the flags that take a size or a rate ---------------------------------------------------------
def _push_image_options(monkeypatch, *flags: str):
    """Run `push-image app:1 -H h FLAGS` in-process up to the push; the options it would push with."""
    from migrate.commands import push_image as cmd

    seen = []
    monkeypatch.setattr(cmd, "push_images", lambda images, hosts, conn, options: seen.append(options) or [])
    with pytest.raises(SystemExit) as exc:
        cmd.command.main(["app:1", "-H", "h", *flags], standalone_mode=False)
    assert exc.value.code == 0
    return seen[0]


@pytest.mark.parametrize("flags,bwlimit,step", [
    ((), None, 64 * MIB),
    (("--checkpoint", "64M"), None, 64 * MIB),              # the same as the default (was 64,000,000)
    (("--checkpoint", "1G"), None, GIB),
    (("--checkpoint", "2000000"), None, 2_000_000),          # a plain number is bytes, as before
    (("--bwlimit", "10m"), 10 * MIB, 64 * MIB),              # as push-data reads it (was 10 MB/s)
    (("--bwlimit", "500"), 500 * KIB, 64 * MIB),             # KiB/s, as push-data and rsync (was refused)
    (("--bwlimit", "100mbit"), 12.5e6, 64 * MIB),            # bits: unchanged
    (("--bwlimit", "20MiB/s"), 20 * MIB, 64 * MIB),
])
def test_push_image_sizes_and_rates(monkeypatch, capsys, flags, bwlimit, step):
    options = _push_image_options(monkeypatch, *flags)
    assert options.bwlimit == (pytest.approx(bwlimit) if bwlimit else None) and options.step_bytes == step


@pytest.mark.parametrize("flags,line", [
    (("--bwlimit", "10m"), "deprecated: --bwlimit 10m now means 10 MiB/s (binary units, as in every verb); push-image "
                           "used to read it as 10,000,000 B/s: write 80mbit for that (see docs/cli.md)"),
    (("--checkpoint", "64M"), "deprecated: --checkpoint 64M now means 64 MiB (binary units, as in every verb); "
                              "push-image used to read it as 64,000,000 B: write 64000000 for that (see docs/cli.md)"),
    (("--bwlimit", "2048"), "--bwlimit 2048 now means 2 MiB/s"),
    (("--bwlimit", "20mbps"), "deprecated: --bwlimit 20mbps is read as 20,000,000 B/s (decimal units) for this "
                              "release only; write 160mbit (see docs/cli.md)"),
])
def test_push_image_old_meaning_gets_one_deprecation_line(monkeypatch, capsys, flags, line):
    options = _push_image_options(monkeypatch, *flags)
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and line in err, err
    if "mbps" in flags[1]:
        assert options.bwlimit == 20e6  # the old meaning, for one release


@pytest.mark.parametrize("flags", [(), ("--bwlimit", "100mbit"), ("--bwlimit", "500"), ("--checkpoint", "4096")])
def test_push_image_values_that_keep_their_meaning_print_nothing(monkeypatch, capsys, flags):
    _push_image_options(monkeypatch, *flags)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("flags,needle", [
    (("--bwlimit", "fast"), "bad rate"), (("--bwlimit", "0"), "is zero"), (("--checkpoint", "100"), "too small"),
    (("--checkpoint", "lots"), "cannot read size"),
])
def test_push_image_bad_sizes_and_rates_are_usage_errors(monkeypatch, flags, needle):
    with pytest.raises(UsageError, match=needle):
        _push_image_options(monkeypatch, *flags)


def test_min_free_mem_uses_the_shared_grammar():
    from migrate.jobs.spec import parse_size_mib

    assert parse_size_mib("20g") == 20480 and parse_size_mib("20GiB") == 20480 and parse_size_mib("2048") == 2048
    assert parse_size_mib("512K") == 0 and parse_size_mib(" 1.5 G ") == 1536
