"""push-image on the containerd image store: identity, the OCI layout we load, the laptop's OCI save."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest

from migrate.errors import MigrateError
from migrate.image import archive as A
from migrate.image import identity
from migrate.image import remote as R
from migrate.image.local import LocalImage
from migrate.image.plan import SEND, TAG, UP_TO_DATE, check_disk, check_store, disk_full_hint, disk_need, plan_image
from tests.tar_helpers import tar_bytes


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


L1 = tar_bytes({"a.txt": b"base\n" * 100})
L2 = tar_bytes({"b.txt": b"app\n" * 100})
D1, D2 = digest(L1), digest(L2)
CONFIG = json.dumps({"architecture": "amd64", "os": "linux", "created": "2026-01-02T03:04:05.123456789Z",
                     "config": {"Cmd": ["/b.txt"], "Env": ["A=1"]},
                     "rootfs": {"type": "layers", "diff_ids": [D1, D2]}}).encode()
CONFIG_ID = digest(CONFIG)
INSPECT = {"Id": CONFIG_ID, "Created": "2026-01-02T03:04:05.123456789Z", "Architecture": "amd64", "Os": "linux",
           "RootFS": {"Layers": [D1, D2]}, "Config": {"Cmd": ["/b.txt"], "Env": ["A=1"], "Hostname": "",
                                                     "Labels": None}}
FP = identity.fingerprint_of_inspect(INSPECT)


def local(**kw) -> LocalImage:
    fields = {"ref": "app:1", "image_id": CONFIG_ID, "diff_ids": [D1, D2], "tags": ["app:1"], "fingerprint": FP}
    return LocalImage(**{**fields, **kw})


def img_line(image_id: str, tags: str, layers: list[str], config: dict) -> str:
    return (f"img={image_id}|{tags}|{','.join(layers)},|amd64|linux|2026-01-02T03:04:05.123456789Z|"
            f"{json.dumps(config)}")


def test_fingerprint_ignores_fields_engines_print_differently_but_not_run_settings():
    newer = dict(INSPECT, Config={"Cmd": ["/b.txt"], "Env": ["A=1"], "Entrypoint": None, "OnBuild": None,
                                  "WorkingDir": "", "User": ""})
    assert identity.fingerprint_of_inspect(newer) == FP
    for change in ({"Created": "2026-01-02T03:04:05.1Z"}, {"Architecture": "arm64"},
                   {"RootFS": {"Layers": [D1]}}, {"Config": {"Cmd": ["/b.txt"], "Env": ["A=2"]}},
                   {"Config": {"Cmd": ["/b.txt"], "Env": ["A=1"], "Labels": {"v": "2"}}}):
        assert identity.fingerprint_of_inspect(dict(INSPECT, **change)) != FP, change


def test_containerd_names_are_fully_qualified():
    assert identity.containerd_name("app:1") == "docker.io/library/app:1"
    assert identity.containerd_name("me/app:1") == "docker.io/me/app:1"
    assert identity.containerd_name("registry.example:5000/x/app:1") == "registry.example:5000/x/app:1"
    assert identity.containerd_name("localhost/app:1") == "localhost/app:1"


def test_an_image_on_a_containerd_host_is_found_by_fingerprint_not_id():
    text = ("info=28.5.2|overlayfs|/var/lib/docker|linux|[[\"driver-type\",\"io.containerd.snapshotter.v1\"]]\n"
            + img_line("sha256:manifest1", "app:1,", [D1, D2], {"Cmd": ["/b.txt"], "Env": ["A=1"]}) + "\n"
            + img_line("sha256:manifest0", "base:1,", [D1], {}) + "\ninventory=done\n")
    f = R.parse_facts(text)
    assert f.containerd_store and f.images[0].config_digest == ""  # the ID there is no config digest
    p = plan_image(local(), f)
    assert p.action == UP_TO_DATE and p.remote_id == "sha256:manifest1" and p.tag_moves == []
    p = plan_image(local(tags=["app:1", "app:latest"]), f)
    assert p.action == TAG and p.tags_to_add == ["app:latest"] and p.remote_id == "sha256:manifest1"
    f.images.pop(0)  # only the base is there: send the second layer, as an OCI layout
    p = plan_image(local(), f)
    assert p.action == SEND and p.first_missing == 1 and p.archive_format == "oci-layout"


def test_a_different_image_under_the_tag_is_a_tag_move_on_both_stores():
    other = img_line("sha256:manifest9", "app:1,", [D1, D2], {"Cmd": ["/other"]})
    for info in ("", "info=28.5.2|overlayfs|/x|linux|[[\"driver-type\",\"io.containerd.snapshotter.v1\"]]\n"):
        p = plan_image(local(), R.parse_facts(info + other + "\ninventory=done\n"))
        assert p.action == SEND and p.first_missing == 2 and p.tag_moves == [("app:1", "sha256:manifest9")]


def test_classic_hosts_still_match_by_config_digest():
    f = R.parse_facts(img_line(CONFIG_ID, "app:1,", [D1, D2], {"Cmd": ["/x"]}) + "\ninventory=done\n")
    assert f.images[0].config_digest == CONFIG_ID
    assert plan_image(local(fingerprint=""), f).action == UP_TO_DATE


def test_oci_members_leave_out_only_blobs_the_content_store_holds_and_keep_the_config():
    step = A.LoadStep(config=CONFIG, diff_ids=[D1, D2], send=[1], tags=["app:1", "me/app:2"], blobs_present={D1})
    members = step.oci_members(lambda name, d: A.Member.from_bytes(name, {D1: L1, D2: L2}[d]),
                               lambda d: (A.OCI_LAYER, d, len({D1: L1, D2: L2}[d])))
    names = [m.name for m in members]
    assert names[0] == "oci-layout" and names[-1] == "index.json"
    blobs = {m.name: m.data for m in members}
    assert blobs[A.oci_blob_name(CONFIG_ID)] == CONFIG  # unchanged: its digest is the classic image ID
    assert A.oci_blob_name(D2) in blobs and A.oci_blob_name(D1) not in blobs
    index = json.loads(blobs["index.json"])
    assert [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]] == [
        "docker.io/library/app:1", "docker.io/me/app:2"]
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads(blobs[A.oci_blob_name(manifest_digest)])
    assert digest(blobs[A.oci_blob_name(manifest_digest)]) == manifest_digest
    assert manifest["config"] == {"mediaType": A.OCI_CONFIG, "digest": CONFIG_ID, "size": len(CONFIG)}
    # every layer in full (a size-0 descriptor made `docker save` there export an empty layer)
    assert manifest["layers"] == [{"mediaType": A.OCI_LAYER, "digest": D1, "size": len(L1)},
                                  {"mediaType": A.OCI_LAYER, "digest": D2, "size": len(L2)}]
    assert A.tar_size(members) == len(b"".join(A.tar_stream(members)))
    assert step.oci_blobs(lambda d: (A.OCI_LAYER, d, len({D1: L1, D2: L2}[d]))) == {D2: len(L2)}


def _manifest_of(step: A.LoadStep) -> bytes:
    members = step.oci_members(lambda name, d: A.Member.from_bytes(name, {D1: L1, D2: L2}[d]),
                               lambda d: (A.OCI_LAYER, d, len({D1: L1, D2: L2}[d])))
    blobs = {m.name: m.data for m in members}
    return blobs[A.oci_blob_name(json.loads(blobs["index.json"])["manifests"][0]["digest"])]


def test_a_layer_the_host_has_only_as_a_snapshot_rides_along():
    step = A.LoadStep(config=CONFIG, diff_ids=[D1, D2], send=[1], tags=["app:1"])  # nothing known present
    members = step.oci_members(lambda name, d: A.Member.from_bytes(name, {D1: L1, D2: L2}[d]),
                               lambda d: (A.OCI_LAYER, d, len({D1: L1, D2: L2}[d])))
    assert {A.oci_blob_name(D1), A.oci_blob_name(D2)} <= {m.name for m in members}


def test_the_manifest_and_so_the_id_depend_on_the_image_alone():
    """Whatever the host had and wherever an earlier push stopped, the same image gets the same ID."""
    variants = [A.LoadStep(config=CONFIG, diff_ids=[D1, D2], send=send, tags=["app:1"], blobs_present=present)
                for send, present in (([0, 1], set()), ([1], {D1}), ([1], set()), ([], {D1, D2}))]
    assert len({_manifest_of(s) for s in variants}) == 1


def test_the_docker_style_manifest_is_the_one_containerd_makes_of_a_docker_save_archive():
    """containerd's importer (core/images/archive/importer.go) turns a manifest.json-only archive into a
    Docker schema 2 manifest, Go's json.Marshal of {schemaVersion, mediaType, config, layers}, each
    descriptor {mediaType, digest, size}: the same bytes give the same ID as `docker save | docker load`."""
    step = A.LoadStep(config=CONFIG, diff_ids=[D1, D2], send=[1], tags=["app:1"], manifest_style="docker")
    expected = ('{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
                f'"config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{CONFIG_ID}",'
                f'"size":{len(CONFIG)}}},"layers":['
                f'{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar","digest":"{D1}","size":{len(L1)}}},'
                f'{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar","digest":"{D2}","size":{len(L2)}}}]}}')
    assert _manifest_of(step) == expected.encode()


def test_blob_layers_come_from_recorded_images_and_labelled_checkpoints_only():
    store = "info=28.5.2|overlayfs|/var/lib/docker|linux|[[\"driver-type\",\"io.containerd.snapshotter.v1\"]]\n"
    cut = json.loads(A.checkpoint_config(CONFIG, 1))
    text = (store + "blobs.complete=sha256:mine\n"
            + img_line("sha256:mine", "app:1,", [D1], {}) + "\n"
            + img_line("sha256:pulled", "other:1,", [D2], {}) + "\n"
            + img_line("sha256:cp", "migrate-partial:x-1of2,", ["sha256:" + "3" * 64], cut["config"]) + "\n")
    f = R.parse_facts(text)
    assert f.complete_ids == {"sha256:mine"}
    assert f.blob_layers() == {D1, "sha256:" + "3" * 64}  # the pulled image may hold only compressed blobs


def _docker25_save(tmp_path, layer_files: dict[str, bytes]) -> tuple[A.SavedArchive, str]:
    """What `docker save` of a containerd store writes: blobs, index.json, and manifest.json pointing into blobs."""
    root = tmp_path / "save"
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (blobs / CONFIG_ID[7:]).write_bytes(CONFIG)
    layer_names = []
    layers_desc = []
    for data in layer_files.values():
        d = digest(data)
        (blobs / d[7:]).write_bytes(data)
        layer_names.append(f"blobs/sha256/{d[7:]}")
        media = A.OCI_LAYER + ("+gzip" if data[:2] == b"\x1f\x8b" else "")
        layers_desc.append({"mediaType": media, "digest": d, "size": len(data)})
    manifest = json.dumps({"schemaVersion": 2, "config": {"mediaType": A.OCI_CONFIG, "digest": CONFIG_ID,
                                                          "size": len(CONFIG)}, "layers": layers_desc}).encode()
    (blobs / digest(manifest)[7:]).write_bytes(manifest)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": A.OCI_MANIFEST, "digest": digest(manifest), "size": len(manifest)}]}))
    (root / "manifest.json").write_text(json.dumps([{"Config": f"blobs/sha256/{CONFIG_ID[7:]}",
                                                     "RepoTags": ["app:1"], "Layers": layer_names}]))
    return A.SavedArchive(root), digest(manifest)


def test_a_containerd_laptops_save_maps_its_manifest_digest_to_the_config(tmp_path):
    gz = gzip.compress(L2, mtime=0)
    saved, manifest_digest = _docker25_save(tmp_path, {"l1": L1, "l2": gz})
    assert saved.config_digest_of(manifest_digest, [D1, D2]) == CONFIG_ID
    assert saved.config_digest_of(CONFIG_ID, [D1, D2]) == CONFIG_ID
    assert saved.config_digest_of("sha256:unknown", [D1, D2], ["app:1"]) == CONFIG_ID  # the one with these layers
    with pytest.raises(A.ArchiveError):
        saved.config_digest_of("sha256:unknown", [D2])
    assert saved.layer_descriptor(D1) == (A.OCI_LAYER, D1, len(L1))
    assert saved.layer_descriptor(D2) == (A.OCI_LAYER + "+gzip", digest(gz), len(gz))  # pulled: sent compressed


def test_disk_need_on_the_containerd_store_counts_content_and_snapshot():
    need = disk_need([10, 20], 100, containerd=True, blob_bytes=150)
    assert (need.layers, need.blobs, need.tmp) == (100, 150, 0) and disk_need([10, 20], 100).tmp == 20
    assert disk_need([10, 20], 100, containerd=True).blobs == 100


def test_a_trimmed_oci_layout_is_a_readable_tar(tmp_path):
    step = A.LoadStep(config=CONFIG, diff_ids=[D1, D2], send=[0, 1], tags=["app:1"])
    members = step.oci_members(lambda name, d: A.Member.from_bytes(name, {D1: L1, D2: L2}[d]),
                               lambda d: (A.OCI_LAYER, d, len({D1: L1, D2: L2}[d])))
    with tarfile.open(fileobj=io.BytesIO(b"".join(A.tar_stream(members)))) as tar:
        assert set(tar.getnames()) >= {"oci-layout", "index.json", A.oci_blob_name(D1), A.oci_blob_name(D2)}


def test_an_engine_too_old_for_its_containerd_store_is_refused_before_anything_moves():
    store = '[["driver-type","io.containerd.snapshotter.v1"]]'
    with pytest.raises(MigrateError, match="Docker 23.0.6 on gpu1 keeps images in the"):
        check_store(R.parse_facts(f"info=23.0.6|overlayfs|/var/lib/docker|linux|{store}\n"), "gpu1")
    check_store(R.parse_facts(f"info=28.5.2|overlayfs|/x|linux|{store}\n"), "gpu1")
    check_store(R.parse_facts("info=20.10.24|overlay2|/x|linux|[]\n"), "gpu1")


C8D_INFO = "info=28.5.2|overlayfs|/var/lib/docker|linux|[[\"driver-type\",\"io.containerd.snapshotter.v1\"]]\n"


def test_the_containerd_stores_disk_check_looks_at_containerds_root_not_the_data_root():
    f = R.parse_facts(C8D_INFO + "disk.docker_root=90000000 /\nc8d.root=/var/lib/c8d-small\n"
                      "disk.c8d_content=65536 /var/lib/c8d-small\ndisk.c8d_snapshots=65536 /var/lib/c8d-small\n")
    assert f.c8d_root == "/var/lib/c8d-small"
    need = disk_need([1], 40 << 20, containerd=True)  # 40 MiB layer: blob + snapshot
    with pytest.raises(MigrateError) as exc:
        check_disk(need, f, "gpu1")
    assert "containerd's root /var/lib/c8d-small (/var/lib/c8d-small)" in exc.value.message
    assert "80.0 MiB" in exc.value.message and "/var/lib/docker" not in exc.value.one_line()
    check_disk(disk_need([1], 20 << 20, containerd=True), f, "gpu1")  # 40 MiB fits in 64
    # content store and snapshots on different filesystems: each is checked apart
    f = R.parse_facts(C8D_INFO + "c8d.root=/srv/c8d\ndisk.c8d_content=10240 /srv\n"
                      "disk.c8d_snapshots=900000 /srv/c8d/io.containerd.snapshotter.v1.overlayfs\n")
    with pytest.raises(MigrateError, match="containerd's content store /srv/c8d/io.containerd.content.v1.content"):
        check_disk(disk_need([1], 20 << 20, containerd=True), f, "gpu1")
    check_disk(disk_need([1], 20 << 20, containerd=True, blob_bytes=0), f, "gpu1")  # every blob already there


def test_a_host_that_did_not_report_containerds_root_falls_back_to_the_data_root():
    f = R.parse_facts(C8D_INFO + "disk.docker_root=65536 /\n")
    with pytest.raises(MigrateError, match="/var/lib/docker"):
        check_disk(disk_need([1], 40 << 20, containerd=True), f, "gpu1")


def test_a_full_disk_on_the_containerd_store_names_containerds_root():
    f = R.parse_facts(C8D_INFO + "disk.docker_root=90000000 /\nc8d.root=/var/lib/containerd\n"
                      "disk.c8d_content=65536 /var/lib/containerd\ndisk.c8d_snapshots=65536 /var/lib/containerd\n")
    hint = disk_full_hint("write /var/lib/containerd/tmpmounts/x/big.bin: no space left on device", f)
    assert "containerd's root /var/lib/containerd" in hint and "/var/lib/docker" not in hint


def test_the_facts_script_finds_containerds_root_from_its_process_then_its_config():
    script = R.INVENTORY_SCRIPT
    assert "c8d_root" in script and "io.containerd.content.v1.content" in script
    assert "/containerd/daemon" in R._C8D_ROOT and "/etc/containerd/config.toml" in R._C8D_ROOT


def test_an_image_from_a_save_with_an_oci_index_keeps_the_id_the_saving_engine_gave_it(tmp_path):
    """A containerd laptop (or Engine >= 25) names the image by its own manifest: that manifest goes as it is,
    so the host reports the laptop's ID, as after `docker save | docker load`."""
    gz = gzip.compress(L2, mtime=0)
    saved, manifest_digest = _docker25_save(tmp_path, {"l1": L1, "l2": gz})
    step = A.LoadStep(config=CONFIG, diff_ids=[D1, D2], send=[1], tags=["app:1"], target=saved.target(CONFIG_ID))
    members = step.oci_members(saved.layer_member, saved.layer_descriptor)
    blobs = {m.name: m.reader().read() for m in members}
    [entry] = json.loads(blobs["index.json"])["manifests"]
    assert entry["digest"] == manifest_digest and digest(blobs[A.oci_blob_name(manifest_digest)]) == manifest_digest
    assert A.oci_blob_name(D1) in blobs and A.oci_blob_name(digest(gz)) in blobs  # nothing known present: both go
    # a manifest that names other blobs (say, a layer recompressed) is not used: ours is
    other = A.LoadStep(config=CONFIG, diff_ids=[D1, D2], send=[1], tags=["app:1"], target=saved.target(CONFIG_ID))
    members = other.oci_members(saved.layer_member, lambda d: (A.OCI_LAYER, d, len({D1: L1, D2: L2}[d])))
    index = json.loads({m.name: m.reader().read() for m in members}["index.json"])
    assert index["manifests"][0]["digest"] != manifest_digest


def test_only_a_checkpoint_of_plain_blobs_says_so():
    """blob_layers trusts the label to mean plain-tar blobs (digest = DiffID): a checkpoint whose layers went
    as compressed blobs (a containerd laptop's) must not carry it."""
    plain = json.loads(A.checkpoint_config(CONFIG, 1))["config"]["Labels"]
    other = json.loads(A.checkpoint_config(CONFIG, 1, plain_blobs=False))["config"]["Labels"]
    assert plain[A.PARTIAL_BLOBS_LABEL] == "all" and A.PARTIAL_BLOBS_LABEL not in other
    assert plain[A.PARTIAL_LABEL] == other[A.PARTIAL_LABEL] == CONFIG_ID


@pytest.mark.parametrize("cmdline, toml, want", [
    (["/usr/bin/containerd"], None, "/var/lib/containerd"),  # no --root, no readable config: the default
    (["/usr/bin/containerd", "--root", "/srv/c8d"], None, "/srv/c8d"),
    (["/usr/bin/containerd", "--root=/srv/c8d2"], None, "/srv/c8d2"),
    (["/usr/bin/containerd", "-c", "CONF"], 'version = 2\nroot = "/var/lib/c8d-small"\n[plugins]\n  root = "/no"\n',
     "/var/lib/c8d-small"),
    (["/usr/bin/containerd", "--config", "CONF"], "version = 2\n[plugins.x]\nroot = \"/no\"\n", "/var/lib/containerd"),
    # dockerd's own containerd: its generated config is root's only (here: absent)
    (["containerd", "--config", "RUN/docker/containerd/containerd.toml"], None, "/data/docker/containerd/daemon"),
])
def test_c8d_root_reads_the_running_containerds_flags_then_its_config(tmp_path, cmdline, toml, want):
    """The shell function on a stand-in /proc: one unrelated process, one containerd."""
    import subprocess

    conf = tmp_path / "config.toml"
    if toml is not None:
        conf.write_text(toml)
    proc = tmp_path / "proc"
    for pid, comm, argv in (("1", "systemd", ["/sbin/init"]),
                            ("42", "containerd", [str(conf) if a == "CONF" else a.replace("RUN", str(tmp_path))
                                                  for a in cmdline])):
        (proc / pid).mkdir(parents=True)
        (proc / pid / "comm").write_text(comm + "\n")
        (proc / pid / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    script = R._C8D_ROOT + f"_proc={proc}\nc8d_root /data/docker\n"
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert out == want
