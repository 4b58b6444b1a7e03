import pytest

from migrate.data.mapping import normalize_local_path, normalize_remote_path, resolve_mapping
from migrate.errors import UsageError

# (sources as (typed, is_dir, real_name), dest, into, dest_is_dir) -> [(source_arg, dest_arg, landing, mode)]
CASES = [
    # a directory: contents become DEST, whatever the slashes
    ([("./cifar", True, "cifar")], "/srv/cifar", False, False, [("./cifar/", "/srv/cifar/", "/srv/cifar", "contents")]),
    ([("./cifar/", True, "cifar")], "/srv/cifar", False, False, [("./cifar/", "/srv/cifar/", "/srv/cifar", "contents")]),
    ([("./cifar", True, "cifar")], "/srv/cifar/", False, False, [("./cifar/", "/srv/cifar/", "/srv/cifar", "contents")]),
    ([("./cifar/", True, "cifar")], "/srv/cifar/", False, True, [("./cifar/", "/srv/cifar/", "/srv/cifar", "contents")]),
    # --into: inside DEST
    ([("./cifar", True, "cifar")], "/srv", True, True, [("./cifar/", "/srv/cifar/", "/srv/cifar", "into")]),
    ([("./cifar/", True, "cifar")], "/srv/", True, True, [("./cifar/", "/srv/cifar/", "/srv/cifar", "into")]),
    ([(".", True, "proj")], "/srv", True, False, [("./", "/srv/proj/", "/srv/proj", "into")]),
    # a file: becomes DEST, or goes inside a dir DEST
    ([("a.txt", False, "a.txt")], "/srv/b.txt", False, False, [("a.txt", "/srv/b.txt", "/srv/b.txt", "file")]),
    ([("a.txt", False, "a.txt")], "/srv/", False, False, [("a.txt", "/srv/", "/srv/a.txt", "file")]),
    ([("a.txt", False, "a.txt")], "/srv", False, True, [("a.txt", "/srv/", "/srv/a.txt", "file")]),
    ([("a.txt", False, "a.txt")], "/srv", True, False, [("a.txt", "/srv/", "/srv/a.txt", "into")]),
    # several sources: always inside
    ([("a.txt", False, "a.txt"), ("data", True, "data")], "/srv", False, False,
     [("a.txt", "/srv/", "/srv/a.txt", "into"), ("data/", "/srv/data/", "/srv/data", "into")]),
    # home-relative destinations
    ([("d", True, "d")], "./", False, True, [("d/", "./", ".", "contents")]),
    ([("d", True, "d")], "./", True, True, [("d/", "d/", "d", "into")]),
]


@pytest.mark.parametrize("sources,dest,into,dest_is_dir,expected", CASES)
def test_mapping_table(sources, dest, into, dest_is_dir, expected):
    got = [(m.source_arg, m.dest_arg, m.landing, m.mode)
           for m in resolve_mapping(sources, dest, into=into, dest_is_dir=dest_is_dir)]
    assert got == expected


def test_describe_says_where_things_land():
    [m] = resolve_mapping([("./cifar", True, "cifar")], "/srv/cifar", into=False, dest_is_dir=False)
    assert m.describe("gpu:") == "./cifar/ -> gpu:/srv/cifar/ (contents of ./cifar become /srv/cifar)"
    [m] = resolve_mapping([("./cifar", True, "cifar")], "/srv", into=True, dest_is_dir=True)
    assert m.describe("gpu:") == "./cifar -> gpu:/srv/cifar (inside /srv/)"


def test_collisions_and_bad_sources_are_usage_errors():
    with pytest.raises(UsageError, match="both land"):
        resolve_mapping([("a/x", True, "x"), ("b/x", True, "x")], "/srv", into=True, dest_is_dir=True)
    with pytest.raises(UsageError, match="is a file"):
        resolve_mapping([("a.txt/", False, "a.txt")], "/srv", into=False, dest_is_dir=False)
    with pytest.raises(UsageError):
        resolve_mapping([], "/srv", into=False, dest_is_dir=False)


@pytest.mark.parametrize("typed,expected", [
    ("/abs/path", "/abs/path"), ("rel/path", "rel/path"), ("~/data", "data"), ("~", "./"), ("~/", "./"),
    ("-weird", "./-weird"), ("with space/ünï", "with space/ünï"),
])
def test_normalize_remote_path(typed, expected):
    assert normalize_remote_path(typed) == expected


@pytest.mark.parametrize("bad", ["", "~bob/x", "a\nb"])
def test_normalize_remote_path_rejects(bad):
    with pytest.raises(UsageError):
        normalize_remote_path(bad)


def test_normalize_local_path_protects_leading_dash():
    assert normalize_local_path("-x") == "./-x" and normalize_local_path("x") == "x"
