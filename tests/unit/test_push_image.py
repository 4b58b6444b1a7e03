"""Pure pieces of push-image: archives, chain IDs, checkpoints, plans, codecs, remote facts, refs."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import time

import pytest

from migrate.errors import MigrateError, UsageError
from migrate.image import archive as A
from migrate.image import layerstore as L
from migrate.image import refs
from migrate.image import remote as R
from migrate.image.compress import Codec, CompressSpec, StreamCompressor, choose_codec, gzip_file, parse_compress
from migrate.image.local import LocalImage, merge_same_images
from migrate.image.plan import SEND, TAG, UP_TO_DATE, DiskNeed, check_access, check_arch, check_disk, plan_image
from migrate.image.stream import RateLimiter, StreamBroken, stream
from tests.conftest import run_cli
from tests.tar_helpers import tar_bytes

MIB = 1 << 20


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(files: dict[str, bytes]) -> bytes:
    return tar_bytes(files)


def config_for(diff_ids: list[str], arch: str = "amd64") -> bytes:
    return json.dumps({"architecture": arch, "os": "linux", "config": {"Cmd": ["sh"]},
                       "rootfs": {"type": "layers", "diff_ids": diff_ids},
                       "history": [{"created_by": f"step {i}"} for i in range(len(diff_ids))]}).encode()


# -- chain IDs and archives ----------------------------------------------------------------------
def test_chain_ids_follow_the_oci_definition():
    d = ["sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64]
    chains = A.chain_ids(d)
    assert chains[0] == d[0]
    assert chains[1] == digest(f"{d[0]} {d[1]}".encode())
    assert chains[2] == digest(f"{chains[1]} {d[2]}".encode())
    assert A.chain_ids([]) == []


def test_tar_stream_is_a_valid_tar_of_exact_size(tmp_path):
    f = tmp_path / "big"
    f.write_bytes(b"x" * 3000)
    members = [A.Member.from_bytes("a.json", b"{}"), A.Member.from_file("d/layer.tar", f),
               A.Member(name="c", size=5, chunks=lambda: iter([b"ab", b"cde"]))]
    data = b"".join(A.tar_stream(members))
    assert len(data) == A.tar_size(members)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == ["a.json", "d/layer.tar", "c"]
        assert tar.extractfile("c").read() == b"abcde"
        assert tar.extractfile("d/layer.tar").read() == b"x" * 3000


def test_tar_stream_refuses_a_member_that_changed_size():
    bad = A.Member(name="c", size=10, chunks=lambda: iter([b"abc"]))
    with pytest.raises(A.ArchiveError):
        b"".join(A.tar_stream([bad]))


def test_load_step_leaves_out_layers_already_there():
    layers = [layer({"a": b"1"}), layer({"b": b"2"})]
    diff_ids = [digest(x) for x in layers]
    config = config_for(diff_ids)
    step = A.LoadStep(config=config, diff_ids=diff_ids, send=[1], tags=["app:1"])
    members = step.members(lambda name, d: A.Member.from_bytes(name, layers[diff_ids.index(d)]))
    names = [m.name for m in members]
    manifest = json.loads(members[0].data)
    assert names[0] == "manifest.json" and len(names) == 3
    assert manifest[0]["RepoTags"] == ["app:1"]
    assert manifest[0]["Layers"] == [step.layer_name(0), step.layer_name(1)]
    assert step.layer_name(1) in names and step.layer_name(0) not in names
    assert step.image_id == digest(config)


def test_checkpoint_steps_commit_prefixes_and_end_with_the_real_image():
    diff_ids = [f"sha256:{i:064x}" for i in range(5)]
    config = config_for(diff_ids)
    sizes = [10, 30 * MIB, 30 * MIB, 40 * MIB, 1 * MIB]
    steps = A.plan_load_steps(config, diff_ids, ["app:1"], 1, sizes, step_bytes=64 * MIB)
    assert [s.send for s in steps] == [[1, 2, 3], [4]]
    first, last = steps
    assert first.checkpoint and not last.checkpoint
    cut = json.loads(first.config)
    assert cut["rootfs"]["diff_ids"] == diff_ids[:4]
    assert "history" not in cut
    assert cut["config"]["Labels"][A.PARTIAL_LABEL] == digest(config)
    assert first.tags == [A.partial_tag(digest(config), 4, 5)]
    assert first.tags[0].startswith("migrate-partial:") and refs.valid_tag(first.tags[0])
    assert last.config == config and last.tags == ["app:1"] and last.image_id == digest(config)


def test_plan_load_steps_config_only_when_every_layer_is_there():
    diff_ids = [f"sha256:{i:064x}" for i in range(2)]
    steps = A.plan_load_steps(config_for(diff_ids), diff_ids, [], 2, [1, 1], step_bytes=1)
    assert len(steps) == 1 and steps[0].send == []


def test_whole_archive_round_trips_through_spool(tmp_path):
    layers = [layer({"a": b"1" * 100}), layer({"b": b"2" * 100})]
    diff_ids = [digest(x) for x in layers]
    c1, c2 = config_for(diff_ids[:1]), config_for(diff_ids)
    members = A.archive_members([(c1, diff_ids[:1], ["base:1"]), (c2, diff_ids, ["app:1"])],
                                lambda name, d: A.Member.from_bytes(name, layers[diff_ids.index(d)]))
    assert sum(m.name.endswith("layer.tar") for m in members) == 2  # the shared layer is stored once
    data = b"".join(A.tar_stream(members))
    saved = A.spool_archive(io.BytesIO(data), tmp_path / "x")
    assert set(saved.images) == {digest(c1), digest(c2)}
    assert saved.images[digest(c2)].tags == ["app:1"]
    assert saved.layer_path(diff_ids[1]).read_bytes() == layers[1]
    assert saved.config(digest(c1)) == c1


def test_spool_keeps_every_path_inside_its_directory(tmp_path):
    data = b"".join(A.tar_stream([A.Member.from_bytes("../evil", b"x"), A.Member.from_bytes("/abs", b"y")]))
    with pytest.raises(A.ArchiveError, match="no manifest.json"):
        A.spool_archive(io.BytesIO(data), tmp_path / "x")
    assert not (tmp_path / "evil").exists() and (tmp_path / "x" / "evil").read_bytes() == b"x"
    assert A.safe_member_name("/abs/x") == "abs/x"
    with pytest.raises(A.ArchiveError, match="unsafe path"):
        A.safe_member_name("/")


def test_detect_compression():
    assert A.detect_compression(b"\x1f\x8b\x08") == "gzip"
    assert A.detect_compression(b"\x28\xb5\x2f\xfd\x00") == "zstd"
    assert A.detect_compression(b"BZh9") == "bzip2"
    assert A.detect_compression(b"manif") == "none"


# -- tar-split (direct layer read) ---------------------------------------------------------------
def test_tar_split_rebuilds_the_exact_layer_and_checks_its_digest(tmp_path):
    files = {"etc/a.txt": b"hello\n" * 100, "empty": b"", "bin/tool": b"\x7fELF" + b"\0" * 777}
    tar_bytes = layer(files)
    diff = tmp_path / "diff"
    for name, data in files.items():
        (diff / name).parent.mkdir(parents=True, exist_ok=True)
        (diff / name).write_bytes(data)
    # records as docker writes them: raw header/padding segments, then file entries
    records, pos = [], 0
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for info in tar:
            records.append({"type": 2, "payload": base64.b64encode(tar_bytes[pos:info.offset_data]).decode()})
            records.append({"type": 1, "name": info.name, "size": info.size})
            pos = info.offset_data + info.size
    records.append({"type": 2, "payload": base64.b64encode(tar_bytes[pos:]).decode()})
    entries = L.parse_tar_split(iter(json.dumps(r).encode() + b"\n" for r in records))
    assert L.tar_length(entries) == len(tar_bytes)
    assert b"".join(L.assemble(entries, diff, digest(tar_bytes))) == tar_bytes
    (diff / "etc/a.txt").write_bytes(b"HELLO\n" * 100)
    with pytest.raises(A.ArchiveError, match="does not match"):
        b"".join(L.assemble(entries, diff, digest(tar_bytes)))


# -- refs ----------------------------------------------------------------------------------------
def test_looks_like_image():
    assert refs.looks_like_image("app:1") is True
    assert refs.looks_like_image("registry:5000/team/app") is True
    assert refs.looks_like_image("app@sha256:" + "a" * 64) is True
    assert refs.looks_like_image("alice@gpu-box") is False
    assert refs.looks_like_image("10.0.0.5") is False
    assert refs.looks_like_image("fe80::1") is False
    assert refs.looks_like_image("gpu-box") is None
    assert refs.looks_like_image("-oProxyCommand=/bin/x") is False


def test_split_images_and_hosts():
    local = {"ubuntu", "app"}
    split = lambda args, known=(): refs.split_images_and_hosts(  # noqa: E731
        args, is_local_image=lambda a: a in local, is_known_host=lambda a: a in known)
    assert split(["app:1", "base:2", "gpu1", "alice@gpu2"]) == (["app:1", "base:2"], ["gpu1", "alice@gpu2"])
    assert split(["app", "gpu1"]) == (["app"], ["gpu1"])
    assert split(["app", "ubuntu"], known={"ubuntu"}) == (["app"], ["ubuntu"])
    with pytest.raises(UsageError, match="comes after host"):
        split(["gpu1", "app:1"])


def test_missing_image_is_a_bare_first_word_that_is_no_known_host():
    known = {"gpu1"}
    missing = lambda images, hosts: refs.missing_image(images, hosts, is_known_host=lambda a: a in known)  # noqa: E731
    assert missing([], ["nosuchimage", "gpu2"]) == "nosuchimage"
    assert missing([], ["gpu1", "gpu2"]) is None  # an ssh_config host: the image is what is missing
    assert missing([], ["alice@gpu2", "gpu3"]) is None  # certainly a host
    assert missing([], ["10.0.0.5", "gpu3"]) is None
    assert missing(["app:1"], ["gpu2", "gpu3"]) is None
    assert missing([], ["gpu2"]) is None  # one argument: "no host" or "no image", not a guess


def test_tag_for_and_close_matches():
    assert refs.tag_for("app", ["app:latest"]) == "app:latest"
    assert refs.tag_for("docker.io/library/app:2", []) == "app:2"
    assert refs.tag_for("sha256:" + "a" * 64, []) is None
    assert refs.tag_for("app@sha256:" + "a" * 64, []) is None
    names = ["team/child:1", "team/base:1", "other:3"]
    assert refs.close_matches("team/chlid:1", names)[0] == "team/child:1"
    assert refs.close_matches("team/child:2", names)[0] == "team/child:1"


def test_merge_same_images_keeps_both_tags():
    a = LocalImage("a:1", "sha256:1", [], tags=["a:1"])
    b = LocalImage("a:latest", "sha256:1", [], tags=["a:latest"])
    [m] = merge_same_images([a, b])
    assert m.tags == ["a:1", "a:latest"]


# -- remote facts and commands -------------------------------------------------------------------
FACTS = """arch=x86_64
aes=aes
zstd=/usr/bin/zstd
home=/home/alice
uid=1000
disk.home=5000000 /
docker=direct
info=20.10.24+dfsg1|overlay2|/var/lib/docker|linux|[["Backing Filesystem","extfs"]]
tmpdir=/mnt/small/t
disk.docker_root=9000000 /
disk.docker_tmp=60000 /mnt/small
img=sha256:111|app:1,app:latest,|sha256:aaa,sha256:bbb,|amd64
img=sha256:222||sha256:aaa,|amd64
inventory=done
"""


def test_parse_facts():
    f = R.parse_facts(FACTS)
    assert f.access == "direct" and f.inventoried and f.aes and f.zstd == "/usr/bin/zstd"
    assert f.engine == "20.10.24+dfsg1" and not f.engine_at_least(23) and f.storage_driver == "overlay2"
    assert f.docker_arch == "amd64" and f.tmp_dir == "/mnt/small/t" and not f.tmp_same_fs
    assert f.free_kib("docker_tmp") == 60000
    assert f.images[0].tags == ["app:1", "app:latest"] and f.images[0].diff_ids == ["sha256:aaa", "sha256:bbb"]
    assert f.chain_set() == set(A.chain_ids(["sha256:aaa", "sha256:bbb"]))
    assert f.tag_owner("app:latest").image_id == "sha256:111" and f.tag_owner("nope") is None
    assert not f.containerd_store
    f2 = R.parse_facts('info=29.0.0|overlayfs|/var/lib/docker|linux|[["driver-type","io.containerd.snapshotter.v1"]]')
    assert f2.containerd_store and f2.engine_at_least(23)


def test_inventory_of_only_the_wanted_images():
    script = R.with_wanted(R.INVENTORY_SCRIPT, ["sha256:1", "sha256:2"])
    assert script.startswith("want='sha256:1 sha256:2'\n")
    f = R.parse_facts("img=sha256:1|a:1,|sha256:aaa,|amd64\ninventory=wanted\n")
    assert f.inventoried and f.inventory_scope == "wanted" and f.image("sha256:1").tags == ["a:1"]


def test_add_image_moves_tags():
    f = R.parse_facts(FACTS)
    f.add_image("sha256:333", ["app:1"], ["sha256:ccc"])
    assert f.tag_owner("app:1").image_id == "sha256:333" and "app:1" not in f.image("sha256:111").tags


@pytest.mark.parametrize("access,needle,sudo", [
    ("direct", "docker image inspect", False),
    ("group", "sg docker -c 'docker image inspect", False),
    ("sudo", "docker image inspect", True),
    ("sudo-password", "docker image inspect", True),
])
def test_docker_command_per_access(access, needle, sudo):
    cmd, needs_sudo = R.docker_command(access, ["image", "inspect", "a b"])
    assert needle in cmd and needs_sudo is sudo
    assert "'a b'" in cmd


def test_stream_commands_quote_and_route_through_sudo():
    script = R.load_script("zstd")
    assert script == "zstd -dcq | docker load"
    assert R.stream_command("direct", script) == "sh -c 'zstd -dcq | docker load'"
    assert R.stream_command("sudo", script).startswith("sudo -n -H sh -c ")
    pw = R.stream_command("sudo-password", script)
    assert pw.startswith("sudo -S -k -p '' -H sh -c ") and "bobpass" not in pw
    assert R.stream_command("group", "docker load") == "sg docker -c 'docker load'"


def test_sif_script_quotes_paths_and_cleans_up():
    s = R.sif_script("/usr/bin/apptainer", ".migrate/tmp/x y.tar", "imgs/a b.sif", None)
    assert "trap 'rm -f '\"'\"'.migrate/tmp/x y.tar'\"'\"'' EXIT" in s
    assert "docker-archive://'.migrate/tmp/x y.tar'" in s and "mv -f 'imgs/a b.sif'.part 'imgs/a b.sif'" in s


def test_sif_script_runs_with_spaces_in_paths(tmp_path):
    """The generated script itself, run by sh: the trap parses and removes the temp archive."""
    tool = tmp_path / "fake tool"
    tool.write_text('#!/bin/sh\n[ "$1 $2" = "build --force" ] && cp "${4#docker-archive://}" "$3"\n')
    tool.chmod(0o755)
    s = R.sif_script(str(tool), ".migrate/tmp/x y.tar", "imgs/a b.sif", None)
    proc = subprocess.run(["sh", "-c", s], input=b"archive bytes", capture_output=True, cwd=tmp_path, timeout=30)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    assert (tmp_path / "imgs/a b.sif").read_bytes() == b"archive bytes"
    assert not (tmp_path / ".migrate/tmp/x y.tar").exists()  # the trap ran


def test_parse_load_output_finds_hidden_errors():
    tags, ids, errors = R.parse_load_output("Loaded image: app:1\nLoaded image ID: sha256:abc\n", "")
    assert tags == ["app:1"] and ids == ["sha256:abc"] and errors == []
    _, _, errors = R.parse_load_output("Error unpacking image app:1: boom\nLoaded image: app:1\n", "")
    assert errors == ["Error unpacking image app:1: boom"]
    _, _, errors = R.parse_load_output("", "write /var/lib/docker/tmp/x: no space left on device")
    assert errors


# -- plans and checks ----------------------------------------------------------------------------
def img(diff_ids, image_id="sha256:999", tags=("app:1",), arch="amd64") -> LocalImage:
    return LocalImage(ref=tags[0] if tags else image_id, image_id=image_id, diff_ids=list(diff_ids), arch=arch,
                      tags=list(tags))


def test_plan_image_cases():
    f = R.parse_facts(FACTS)
    assert plan_image(img(["sha256:aaa", "sha256:bbb"], "sha256:111"), f).action == UP_TO_DATE
    p = plan_image(img(["sha256:aaa", "sha256:bbb"], "sha256:111", tags=("app:2",)), f)
    assert p.action == TAG and p.tags_to_add == ["app:2"]
    p = plan_image(img(["sha256:aaa", "sha256:bbb", "sha256:ccc"]), f)
    assert p.action == SEND and p.first_missing == 2 and p.missing_layers == 1
    assert p.tag_moves == [("app:1", "sha256:111")]
    p = plan_image(img(["sha256:bbb", "sha256:aaa"]), f)  # same diffs, other order: other chains
    assert p.first_missing == 0
    f.driver_status = [["driver-type", "io.containerd.snapshotter.v1"]]
    p = plan_image(img(["sha256:aaa", "sha256:ccc"]), f)
    assert p.first_missing == 1 and p.archive_format == "oci-layout"  # trimmed, in the format that store loads


def test_check_arch_and_access():
    f = R.parse_facts(FACTS)
    check_arch(img([], arch="amd64"), f, "h", force=False)
    with pytest.raises(MigrateError, match="built for arm64 but h is amd64"):
        check_arch(img([], arch="arm64"), f, "h", force=False)
    check_arch(img([], arch="arm64"), f, "h", force=True)
    for access, needle in (("none", "not installed"), ("down", "does not answer"), ("denied", "no access")):
        f.access = access
        with pytest.raises(MigrateError, match=needle):
            check_access(f, "h")


def test_check_disk_separate_tmp_and_same_fs():
    f = R.parse_facts(FACTS)
    check_disk(DiskNeed(layers=100 * MIB, tmp=50 * MIB), f, "h")
    with pytest.raises(MigrateError, match=r"temporary space in /mnt/small/t \(/mnt/small\), only 58.6 MiB free"):
        check_disk(DiskNeed(layers=100 * MIB, tmp=80 * MIB), f, "h")
    f = R.parse_facts("info=20.10|overlay2|/var/lib/docker|linux|[]\ndisk.docker_root=102400 /\n"
                      "disk.docker_tmp=same\n")
    with pytest.raises(MigrateError, match=r"needs ~120.0 MiB \(100.0 MiB of layers \+ 20.0 MiB temporary"):
        check_disk(DiskNeed(layers=100 * MIB, tmp=20 * MIB), f, "h")


# -- codecs --------------------------------------------------------------------------------------
def test_parse_compress():
    assert parse_compress("zstd:5") == CompressSpec("zstd", 5)
    assert parse_compress("AUTO") == CompressSpec("auto")
    for bad in ("lz4", "zstd:30", "gzip:0", "none:3"):
        with pytest.raises(UsageError):
            parse_compress(bad)


def test_choose_codec_follows_the_measurements():
    big = 500 * MIB
    c = lambda spec, **kw: choose_codec(parse_compress(spec), **{  # noqa: E731
        "engine_loads_zstd": False, "remote_zstd": True, "link_mb_s": None, "payload": big, **kw})
    assert c("auto", link_mb_s=300).outer == "none"
    assert c("auto", link_mb_s=40) == Codec("zstd", 1, None, "zstd", c("auto", link_mb_s=40).reason)
    assert c("auto", link_mb_s=12.5).level == 3
    assert c("auto", link_mb_s=12.5).reason == "link 11.9 MiB/s"  # binary, as the tables and progress bars
    assert c("auto", link_mb_s=1).level == 9
    assert c("auto", link_mb_s=12.5, remote_zstd=False).layer_gzip == 1  # old engine, no zstd: gzip per layer
    assert c("auto", link_mb_s=12.5, engine_loads_zstd=True).remote_decompress is None
    assert c("gzip").layer_gzip == 1
    with pytest.raises(MigrateError, match="cannot load zstd"):
        c("zstd", remote_zstd=False)


def test_stream_compressors_round_trip(tmp_path):
    import zstandard

    data = b"abc" * 300_000 + bytes(range(256)) * 1000
    z = StreamCompressor(Codec("zstd", 3))
    out = b"".join(z.compress(data[i:i + 100_000]) for i in range(0, len(data), 100_000)) + z.flush()
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(out)).read() == data
    g = StreamCompressor(Codec("gzip", 1))
    out = b"".join(g.compress(data[i:i + 1_000_000]) for i in range(0, len(data), 1_000_000)) + g.flush()
    assert gzip.decompress(out) == data
    src = tmp_path / "src"
    src.write_bytes(data * 5)  # several 4 MiB members
    with open(src, "rb") as fh:
        size = gzip_file(fh, tmp_path / "dst.gz", 1)
    packed = (tmp_path / "dst.gz").read_bytes()
    assert size == len(packed) and gzip.decompress(packed) == data * 5


# -- streaming -----------------------------------------------------------------------------------
def test_rate_limiter_paces():
    lim = RateLimiter(2e6)
    t0 = time.monotonic()
    for _ in range(5):
        lim.consume(100_000)
    assert time.monotonic() - t0 >= 0.2


def test_stream_feeds_a_command_and_counts(tmp_path):
    dest = tmp_path / "out"
    res = stream([sys.executable, "-c", f"import sys; open({str(dest)!r},'wb').write(sys.stdin.buffer.read())"],
                 iter([b"a" * 1000, b"b" * 24]), StreamCompressor(Codec()), display="local", first_line=b"pw\n")
    assert res.exit_code == 0 and res.input_bytes == 1024 and res.wire_bytes == 1024
    assert dest.read_bytes() == b"pw\n" + b"a" * 1000 + b"b" * 24


def test_stream_reports_a_dead_connection():
    with pytest.raises(StreamBroken, match="lost"):
        stream([sys.executable, "-c", "import sys; sys.exit(255)"], iter([b"x" * 10_000_000]),
               StreamCompressor(Codec()), display="h")


def test_stream_returns_a_remote_failure_as_its_exit_code():
    res = stream([sys.executable, "-c", "import sys; sys.stderr.write('no space left on device'); sys.exit(1)"],
                 iter([b"x" * 5_000_000]), StreamCompressor(Codec()), display="h")
    assert res.exit_code == 1 and "no space" in res.stderr


# -- CLI usage errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    ([], "no image given"),
    (["app:1"], "no host given"),
    (["app:1", "h", "--compress", "lz4"], "unknown compression"),
    (["app:1", "h", "--bwlimit", "fast"], "bad rate"),
    (["app:1", "h", "--to-file", "x.tar"], "give no host"),
    (["app:1", "--to-file", "x.tar", "--from-file", "y.tar"], "cannot be combined"),
    (["app:1", "-H", "-oProxyCommand=touch /tmp/x"], "starts with '-'"),
    (["app:1", "-H", "gpu1", "-H", "alice@"], "malformed"),
])
def test_usage_errors_exit_2(args, needle):
    res = run_cli("push-image", *args)
    assert res.code == 2, res.output
    assert needle in res.stderr and "Traceback" not in res.output


def _fake_docker(tmp_path) -> dict:
    """A `docker` on PATH that knows no image (and lists none): unit tests need no daemon."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "docker"
    fake.write_text('#!/bin/sh\ncase "$1 $2" in\n  "image inspect") echo "Error: No such image: $5" >&2; exit 1;;\n'
                    'esac\nexit 0\n')
    fake.chmod(0o755)
    import os
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MIGRATE_SSH_CONFIG": os.devnull}  # no user ssh_config


def test_missing_image_is_not_found_not_no_image_given(tmp_path):
    res = run_cli("push-image", "nosuchimage", "gpu1", env=_fake_docker(tmp_path))
    assert res.code == 1, res.output
    assert "image nosuchimage not found locally" in res.stderr and "docker images" in res.stderr
    assert "no image given" not in res.output and "Traceback" not in res.output


def test_host_starting_with_a_dash_is_a_usage_error_as_positional_too(tmp_path):
    res = run_cli("push-image", "app:1", "--", "-oProxyCommand=touch /tmp/x", env=_fake_docker(tmp_path))
    assert res.code == 2, res.output
    assert "starts with '-'" in res.stderr


# -- a broken connection counts every step of the image (issue 12, item 8) -----------------------
def test_lost_connection_counts_the_bytes_of_every_step_not_only_the_last(tmp_path):
    from types import SimpleNamespace

    from migrate.image.archive import LoadStep, Member
    from migrate.image.push import Pusher, PushImageOptions

    layer = 3 * MIB
    diff_ids = ["sha256:" + "a" * 64, "sha256:" + "b" * 64]
    steps = [LoadStep(config=b'{"c": 1}', diff_ids=diff_ids[:1], send=[0], checkpoint=True),
             LoadStep(config=b'{"c": 2}', diff_ids=diff_ids, send=[1], tags=["app:1"])]

    class Layers:
        def member(self, name, diff_id, gzip_level=None):
            return Member.from_bytes(name, b"x" * layer)

    calls = []

    class Master:  # first stream: a `docker load` that reads everything; second: ssh dies at once
        def argv(self, command):
            calls.append(command)
            if len(calls) == 1:
                code = (f"import sys; sys.stdin.buffer.read(); print('Loaded image ID: {steps[0].image_id}')")
            else:
                code = "import sys; sys.exit(255)"
            return [sys.executable, "-c", code]

    facts = SimpleNamespace(access="direct", add_image=lambda *a, **kw: None)
    session = SimpleNamespace(name="alice@gpu", facts=facts)
    img = LocalImage(ref="app:1", image_id=steps[1].image_id, diff_ids=diff_ids, tags=["app:1"])
    pusher = Pusher([img], Layers(), PushImageOptions(), None)  # type: ignore[arg-type]
    with pytest.raises(StreamBroken) as exc:
        pusher._stream_steps(session, img, Master(), Codec(), steps, "docker load")
    assert len(calls) == 2
    assert re.search(r"lost after 3\.\d MiB", exc.value.message), exc.value.message  # the first step's 3 MiB
    assert exc.value.wire_bytes >= layer
    assert "1 of 2 layers of app:1 are committed" in exc.value.message


# -- a full disk names the filesystem that filled up (issue 12, item 8) --------------------------
def _load_failed(facts, stderr: str) -> MigrateError:
    from types import SimpleNamespace

    from migrate.image.push import Pusher, PushImageOptions

    pusher = Pusher([], None, PushImageOptions(), None)
    return pusher._load_failed(SimpleNamespace(name="alice@gpu", facts=facts),
                               SimpleNamespace(stderr=stderr, stdout="", exit_code=1))


TMP_FULL = ("Error processing tar file(exit status 1): write /" + "c" * 64 + "/layer.tar: "
            "no space left on device")


def test_disk_full_in_docker_tmpdir_names_docker_tmpdir_not_prune():
    err = _load_failed(R.parse_facts(FACTS), TMP_FULL)
    assert "DOCKER_TMPDIR /mnt/small/t (/mnt/small)" in err.hint
    assert "docker image prune frees the data-root, not this" in err.hint
    err = _load_failed(R.parse_facts(FACTS), "open /mnt/small/t/docker-import-1/x: no space left on device")
    assert "DOCKER_TMPDIR /mnt/small/t" in err.hint


def test_disk_full_in_the_data_root_suggests_prune_there():
    err = _load_failed(R.parse_facts(FACTS),
                       "write /var/lib/docker/overlay2/abc/diff/usr/lib/x: no space left on device")
    assert err.hint.startswith("free space on the host's Docker data-root /var/lib/docker (/)") and "prune" in err.hint
    same = R.parse_facts("info=20.10|overlay2|/var/lib/docker|linux|[]\ndisk.docker_root=102400 /\n"
                         "disk.docker_tmp=same\n")
    assert "data-root /var/lib/docker (/)" in _load_failed(same, TMP_FULL).hint  # one filesystem: it is that one
    containerd = R.parse_facts(FACTS)
    containerd.storage_driver = "overlayfs"  # the containerd image store makes no temporary copy
    assert "data-root /var/lib/docker (/)" in _load_failed(containerd, TMP_FULL).hint


def test_disk_full_in_a_layer_file_is_the_data_root_and_without_a_path_both_are_named():
    err = _load_failed(R.parse_facts(FACTS), "write /usr/lib/libfoo.so: no space left on device")
    assert err.hint.startswith("free space on the host's Docker data-root /var/lib/docker (/)")
    err = _load_failed(R.parse_facts(FACTS), "Error response from daemon: no space left on device")
    assert "DOCKER_TMPDIR /mnt/small/t (/mnt/small)" in err.hint and "data-root /var/lib/docker (/)" in err.hint
