"""push-image --via: where an image came from, credentials, the host probe and pull scripts, decisions,
and a dry run on a recording host (issue 15, part 2)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys

import pytest

from migrate.errors import MigrateError, UsageError
from migrate.image import credentials as C
from migrate.image import registry as R
from migrate.image import remote as R_remote
from migrate.image import via as V
from migrate.image.local import LocalImage
from migrate.image.plan import SEND, UP_TO_DATE, ImagePlan
from migrate.remote.hosts import ConnectOptions
from tests.fakehost import FakeHost, is_mutating

D = [f"sha256:{c * 64}" for c in "abcdef"]
BASE_DIGEST = "sha256:" + "9" * 64


# -- references --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,registry,repo,tag,digest", [
    ("nvcr.io/nvidia/pytorch:24.05-py3", "nvcr.io", "nvidia/pytorch", "24.05-py3", ""),
    ("busybox", "docker.io", "library/busybox", "", ""),
    ("me/app:1", "docker.io", "me/app", "1", ""),
    (f"busybox@{BASE_DIGEST}", "docker.io", "library/busybox", "", BASE_DIGEST),
    (f"172.31.237.2:5000/team/base@{BASE_DIGEST}", "172.31.237.2:5000", "team/base", "", BASE_DIGEST),
    ("localhost/x:2", "localhost", "x", "2", ""),
    ("index.docker.io/library/ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", ""),
])
def test_parse_ref_normalises_like_docker(text, registry, repo, tag, digest):
    ref = R.parse_ref(text)
    assert (ref.registry, ref.repo, ref.tag, ref.digest) == (registry, repo, tag, digest)


def test_ref_urls_and_auth_keys():
    hub = R.parse_ref(f"busybox@{BASE_DIGEST}")
    assert hub.manifest_url == f"https://registry-1.docker.io/v2/library/busybox/manifests/{BASE_DIGEST}"
    assert hub.auth_key == "https://index.docker.io/v1/"
    ngc = R.parse_ref("nvcr.io/nvidia/pytorch:24.05-py3")
    assert ngc.pull_ref == "nvcr.io/nvidia/pytorch:24.05-py3" and ngc.auth_key == "nvcr.io"
    assert ngc.manifest_url == "https://nvcr.io/v2/nvidia/pytorch/manifests/24.05-py3"


@pytest.mark.parametrize("bad", ["", "a b", "Upper/Case", "x@sha256:short"])
def test_parse_ref_refuses_garbage(bad):
    with pytest.raises(ValueError):
        R.parse_ref(bad)


# -- where an image came from ------------------------------------------------------------------------
def cand(name, layers, digests=()):
    return R.LocalCandidate(name=name, diff_ids=list(layers), repo_digests=list(digests))


def test_longest_base_with_a_repo_digest_comes_first():
    image = D[:4]
    sources = R.find_sources(image, [], [
        cand("os", D[:1], [f"reg.io/os@{BASE_DIGEST}"]),
        cand("fw", D[:3], [f"reg.io/fw@sha256:{'1' * 64}"]),
        cand("local-only", D[:3]),                       # no RepoDigest: built here
        cand("other", [D[0], D[5]], [f"reg.io/x@sha256:{'2' * 64}"]),  # not a prefix
        cand("bigger", D[:5], [f"reg.io/y@sha256:{'3' * 64}"]),       # longer than the image
    ])
    assert [(s.ref.repo, s.layers, s.base) for s in sources] == [("fw", 3, "fw"), ("os", 1, "os")]


def test_the_image_itself_pulled_from_a_registry_holds_every_layer():
    sources = R.find_sources(D[:2], [f"nvcr.io/nvidia/pytorch@{BASE_DIGEST}"],
                             [cand("os", D[:1], ["reg.io/os@" + BASE_DIGEST])])
    assert sources[0].layers == 2 and sources[0].ref.registry == "nvcr.io" and sources[0].base == "the image itself"


def test_parse_candidates_reads_the_listing():
    line = f"sha256:{'a' * 64}|base:1,|reg.io/base@{BASE_DIGEST},|{D[0]},{D[1]},\n"
    [(image_id, c)] = R.parse_candidates(line + "garbage\n").items()
    assert image_id == f"sha256:{'a' * 64}" and c.name == "base:1" and c.diff_ids == D[:2]
    assert c.repo_digests == [f"reg.io/base@{BASE_DIGEST}"]


# -- credentials --------------------------------------------------------------------------------------
def write_config(tmp_path, data):
    (tmp_path / "config.json").write_text(json.dumps(data))
    return tmp_path


def test_credentials_from_auths_and_their_spellings(tmp_path):
    auth = base64.b64encode(b"alice:s3cret:with:colons").decode()
    hub = base64.b64encode(b"bob:pw").decode()
    d = write_config(tmp_path, {"auths": {"https://reg.io:5000": {"auth": auth},
                                          "https://index.docker.io/v1/": {"auth": hub}}})
    cred = C.lookup("reg.io:5000", d)
    assert (cred.username, cred.secret) == ("alice", "s3cret:with:colons")
    assert "s3cret" not in repr(cred) and "s3cret" not in str(cred)
    assert C.lookup("docker.io", d).username == "bob"
    assert C.lookup("other.io", d) is None
    assert C.lookup("x.io", tmp_path / "missing") is None


def test_credentials_from_a_helper(tmp_path, monkeypatch):
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text(f"#!{sys.executable}\nimport json,sys\nserver=sys.stdin.read().strip()\n"
                      "if server != 'nvcr.io': sys.exit(1)\n"
                      "print(json.dumps({'ServerURL': server, 'Username': '$oauthtoken', 'Secret': 'ngc-key'}))\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:/usr/bin:/bin")
    d = write_config(tmp_path, {"credHelpers": {"nvcr.io": "fake"}})
    cred = C.lookup("nvcr.io", d)
    assert (cred.username, cred.secret, cred.origin) == ("$oauthtoken", "ngc-key", "docker-credential-fake")
    d = write_config(tmp_path, {"credsStore": "fake"})
    assert C.lookup("nvcr.io", d).secret == "ngc-key"
    assert C.lookup("other.io", d) is None  # the helper knows nothing: anonymous


def test_host_config_json_holds_only_that_registry():
    cred = C.Credential("alice", "pw")
    data = json.loads(C.host_config_json("reg.io:5000", cred))
    assert data == {"auths": {"reg.io:5000": {"auth": base64.b64encode(b"alice:pw").decode()}}}
    assert json.loads(C.host_config_json("x", None)) == {"auths": {}}
    token = json.loads(C.host_config_json("x", C.Credential("<token>", "tok", identity_token=True)))
    assert token == {"auths": {"x": {"identitytoken": "tok"}}}


def test_registry_login_asks_once(monkeypatch):
    asked = []
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or "alice")
    monkeypatch.setattr(C.getpass, "getpass", lambda prompt: asked.append(prompt) or "pw")
    regs = V.Registries("auto", "reg.io:5000", list_local=lambda: "", lookup=lambda r: pytest.fail("looked up"))
    assert regs.credential("reg.io:5000").secret == "pw"
    assert regs.credential("reg.io:5000").secret == "pw"
    assert len(asked) == 2  # one username, one password, asked up front


# -- scripts that run on the host ------------------------------------------------------------------------
def test_probe_command_carries_no_secret_and_changes_nothing():
    cmd = R.probe_command(R.parse_ref(f"reg.io:5000/team/base@{BASE_DIGEST}"))
    assert "python3 -I -c" in cmd and f"https://reg.io:5000/v2/team/base/manifests/{BASE_DIGEST}" in cmd
    assert not is_mutating(cmd)


def test_probe_script_compiles_and_answers_unreachable(tmp_path):
    """The probe really runs (python3, stdlib): a port nobody listens on is `unreachable`."""
    out = subprocess.run([sys.executable, "-I", "-c", R.PROBE_SCRIPT, "https://127.0.0.1:9/v2/x/manifests/y",
                          "127.0.0.1:9"], input=json.dumps({"username": "u", "password": "p"}), capture_output=True,
                         text=True, timeout=60)
    res = R.parse_probe(out.stdout)
    assert res.verdict == "unreachable", out.stdout + out.stderr


@pytest.mark.parametrize("access,needle", [
    ("direct", 'docker --config "$d" pull "$ref"'),
    ("sudo", 'sudo -n docker --config "$d" pull "$ref"'),
    ("sudo-password", "| sudo -S -k -p '' docker --config"),
    ("group", 'sg docker -c "docker --config $d pull $ref"'),
])
def test_pull_script_uses_a_private_temporary_config(access, needle):
    script = R.pull_script(access, f"reg.io:5000/team/base@{BASE_DIGEST}")
    assert needle in script
    assert script.index("umask 077") < script.index("mktemp -d") < script.index("trap") < script.index("cat >")
    assert "rm -rf \"$d\"" in script
    assert ("IFS= read -r pw" in script) == (access == "sudo-password")
    with pytest.raises(ValueError):
        R.pull_script("direct", "reg.io/x;rm -rf /")


def test_pull_script_really_keeps_nothing(tmp_path):
    """Run the script with a fake `docker` that records what it saw: the config is there during the pull,
    gone afterwards, never in the argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen = tmp_path / "seen"
    (bin_dir / "docker").write_text(f'#!/bin/sh\necho "$@" > {seen}.argv\nstat -c %a "$2" > {seen}.mode\n'
                                    f'cat "$2/config.json" > {seen}.config\n')
    (bin_dir / "docker").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "TMPDIR": str(tmp_path)}
    secret = C.host_config_json("reg.io", C.Credential("alice", "TOPSECRET"))
    proc = subprocess.run(["sh", "-c", R.pull_script("direct", f"reg.io/base@{BASE_DIGEST}")], input=secret,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "seen.config").read_text() == secret
    assert (tmp_path / "seen.mode").read_text().strip() == "700"
    assert "TOPSECRET" not in (tmp_path / "seen.argv").read_text()
    assert not list(tmp_path.glob("migrate-pull.*"))


@pytest.mark.parametrize("text,needle", [
    ("unauthorized: authentication required", "check the credentials for reg.io"),
    ("x509: certificate signed by unknown authority", "TLS error"),
    ("dial tcp: lookup reg.io: no such host", "unreachable from the host"),
])
def test_pull_failures_read_as_one_clear_cause(text, needle):
    cause, hint = R.explain_failure(text, "reg.io")
    assert needle in cause and hint


# -- decisions -------------------------------------------------------------------------------------------
IMG = LocalImage("app:2", "sha256:222", D[:3], arch="amd64", size=10 << 20, tags=["app:2"])
SOURCE = R.Source(R.parse_ref(f"reg.io:5000/team/base@{BASE_DIGEST}"), 2, "team/base:1")


def plan(first_missing=0, action=SEND):
    return ImagePlan("sha256:222", "app:2", action, 3, first_missing)


def test_auto_pulls_when_the_host_reaches_the_registry():
    d = V.decide("auto", IMG, plan(), [SOURCE], lambda s: R.ProbeResult("ok"))
    assert d.pulls and d.ref == SOURCE.ref.pull_ref and d.layers == 2 and "reg.io:5000" in d.reason


@pytest.mark.parametrize("verdict", ["unreachable", "tls", "noauth", "notfound", "nopython"])
def test_auto_falls_back_to_push_with_the_reason(verdict):
    d = V.decide("auto", IMG, plan(), [SOURCE], lambda s: R.ProbeResult(verdict, "boom"))
    assert d.via == "push" and d.reason


@pytest.mark.parametrize("verdict", ["unreachable", "tls", "noauth"])
def test_via_pull_refuses_before_anything_moves(verdict):
    with pytest.raises(MigrateError, match="--via pull"):
        V.decide("pull", IMG, plan(), [SOURCE], lambda s: R.ProbeResult(verdict, "boom"))


def test_via_pull_without_a_registry_source_is_refused():
    with pytest.raises(MigrateError, match="no registry source"):
        V.decide("pull", IMG, plan(), [], lambda s: pytest.fail("probed"))


@pytest.mark.parametrize("mode", ["auto", "pull"])
def test_wrong_credentials_are_refused_in_every_mode(mode):
    with pytest.raises(MigrateError, match="unauthorized: .*check the credentials for reg.io:5000"):
        V.decide(mode, IMG, plan(), [SOURCE], lambda s: R.ProbeResult("unauthorized", "HTTP 401 Unauthorized"))


def test_nothing_to_ask_when_the_host_has_the_registry_layers_or_the_image():
    probe = lambda s: pytest.fail("probed")  # noqa: E731
    assert V.decide("auto", IMG, plan(first_missing=2), [SOURCE], probe).via == "push"
    assert V.decide("auto", IMG, plan(action=UP_TO_DATE), [SOURCE], probe).via == "push"
    assert V.decide("push", IMG, plan(), [SOURCE], probe).reason == "--via push"


# -- a dry run on a recording host -----------------------------------------------------------------------
IMAGE_FACTS = """arch=x86_64
home=/home/alice
uid=1000
disk.home=5000000 /
docker=direct
info=20.10.24+dfsg1|overlay2|/var/lib/docker|linux|[["Backing Filesystem","extfs"]]
tmpdir=/var/lib/docker/tmp
disk.docker_root=9000000 /
disk.docker_tmp=9000000 /
img=sha256:111|other:1,|sha256:999,|amd64
inventory=done
"""
LISTING = (f"sha256:222|app:2,||{D[0]},{D[1]},{D[2]},\n"
           f"sha256:333|team/base:1,|reg.io:5000/team/base@{BASE_DIGEST},|{D[0]},{D[1]},\n")


def fake_run(monkeypatch, probe_answer: str, via: str = "auto"):
    from migrate.image import push

    fake = FakeHost().reply(r"docker_root", IMAGE_FACTS).reply(r"python3 -I -c", probe_answer)
    monkeypatch.setattr(push, "connect", lambda h, conn: fake)
    monkeypatch.setattr(push, "inspect_images", lambda names: [
        LocalImage("app:2", "sha256:222", D[:3], arch="amd64", size=10 << 20, tags=["app:2"])])
    monkeypatch.setattr(V, "_list_local_images", lambda: LISTING)
    monkeypatch.setattr(C, "lookup", lambda registry, config_dir=None: C.Credential("alice", "TOPSECRET"))
    results = push.push_images(["app:2"], ["gpu"], ConnectOptions(), push.PushImageOptions(dry_run=True, via=via))
    return fake, results


def test_dry_run_shows_the_pull_and_changes_nothing(monkeypatch):
    fake, [r] = fake_run(monkeypatch, "probe=ok\ndetail=\n")
    assert r.status == "would send" and r.via == "pull" and r.pulled.startswith("reg.io:5000/team/base@"), r
    assert "would pull" in r.detail and "1/3 layers" in r.detail, r.detail
    assert fake.mutations() == []
    # the credentials went on stdin, never into a command line, the result or its JSON
    assert not any("TOPSECRET" in c for c in fake.commands())
    assert any(b"TOPSECRET" in rec.data for rec in fake.log)
    assert "TOPSECRET" not in json.dumps(r.__dict__)


def test_dry_run_falls_back_to_push_with_the_reason(monkeypatch):
    fake, [r] = fake_run(monkeypatch, "probe=unreachable\ndetail=[Errno 111] Connection refused\n")
    assert r.via == "push" and "unreachable" in r.via_reason and "3/3 layers" in r.detail, r
    assert fake.mutations() == []


def test_dry_run_via_pull_fails_when_the_host_cannot_reach_the_registry(monkeypatch):
    fake, [r] = fake_run(monkeypatch, "probe=unreachable\ndetail=[Errno 111] Connection refused\n", via="pull")
    assert r.status == "failed" and "--via pull" in r.error and "unreachable" in r.error, r
    assert fake.mutations() == []


def test_via_pull_cannot_be_combined_with_files():
    from migrate.image import push

    with pytest.raises(UsageError, match="--via pull cannot be combined with --to-file"):
        push.push_images(["a:1"], [], ConnectOptions(), push.PushImageOptions(via="pull", to_file="x.tar"))
    with pytest.raises(UsageError, match="--registry-login has nothing to log in to"):
        push.push_images(["a:1"], ["gpu"], ConnectOptions(), push.PushImageOptions(via="push", registry_login="r.io"))


# -- playbooks: `images: - pull: REF` ----------------------------------------------------------------------
def test_playbook_pull_entries(tmp_path):
    from pathlib import Path

    from migrate.playbook.loader import PlaybookError, parse_playbook

    pb = parse_playbook("hosts: [gpu]\nimages:\n  - app:1\n  - pull: nvcr.io/nvidia/pytorch:24.05-py3\n",
                        Path("p.yml"))
    assert [(i.name, i.pull) for i in pb.images] == [("app:1", False), ("nvcr.io/nvidia/pytorch:24.05-py3", True)]
    for bad, needle in [("  - {name: a:1, pull: b:2}", "exactly one of"), ("  - {pull: b:2, build: .}", "build"),
                        ("  - {pull: 'Bad Ref'}", "images[0].pull")]:
        with pytest.raises(PlaybookError, match=re.escape(needle)):
            parse_playbook(f"hosts: [gpu]\nimages:\n{bad}\n", Path("p.yml"))


def test_host_pull_is_idempotent_and_dry_run_changes_nothing(monkeypatch):
    from migrate.image import hostpull

    facts = "arch=x86_64\nhome=/home/alice\ndocker=direct\n"
    present = FakeHost().reply(r"docker_root|docker info", facts).reply(r"image inspect", "sha256:111\n")
    monkeypatch.setattr(hostpull, "connect", lambda h, conn: present)
    [r] = hostpull.pull_images(["reg.io/team/base:1"], ["gpu"], ConnectOptions())
    assert r.status == "up to date" and present.mutations() == []

    absent = FakeHost().reply(r"docker_root|docker info", facts).reply(r"image inspect", exit_code=1) \
        .reply(r"python3 -I -c", "probe=ok\n")
    monkeypatch.setattr(hostpull, "connect", lambda h, conn: absent)
    monkeypatch.setattr(C, "lookup", lambda registry, config_dir=None: C.Credential("alice", "TOPSECRET"))
    [r] = hostpull.pull_images(["reg.io/team/base:1"], ["gpu"], ConnectOptions(), dry_run=True)
    assert r.status == "would pull" and absent.mutations() == []
    [r] = hostpull.pull_images(["reg.io/team/base:1"], ["gpu"], ConnectOptions())
    assert r.status == "pulled", r
    [pull] = [c for c in absent.commands() if "pull" in c and "mktemp" in c]
    auth = base64.b64encode(b"alice:TOPSECRET")
    assert "TOPSECRET" not in pull and auth.decode() not in pull
    assert any(auth in rec.data for rec in absent.log if rec.command == pull)  # on stdin only


@pytest.mark.parametrize("text,name", [("nvcr.io", "nvcr.io"), ("https://nvcr.io/", "nvcr.io"),
                                       ("index.docker.io", "docker.io"), ("myreg:5000", "myreg:5000"),
                                       ("https://index.docker.io/v1/", "docker.io")])
def test_registry_login_names(text, name):
    assert V.registry_name(text) == name


def test_via_push_is_recorded_without_asking_anything(monkeypatch):
    fake, [r] = fake_run(monkeypatch, "probe=ok\n", via="push")
    assert r.via == "push" and r.via_reason == "--via push" and "3/3 layers" in r.detail, r
    assert not any("python3" in c for c in fake.commands())


def test_push_image_help_names_the_new_options():
    from tests.conftest import run_cli

    res = run_cli("push-image", "--help")
    assert res.code == 0 and "--via [auto|push|pull]" in res.stdout and "--registry-login REGISTRY" in res.stdout


# -- the pull and the stream at the same time (image/overlap.py) -------------------------------------------
def test_spool_script_receives_privately_and_says_the_size(tmp_path):
    from migrate.image.overlap import spool_ok, spool_script

    path = tmp_path / "sub" / "load.tar"
    stale, fresh = tmp_path / "sub" / "load-old.tar", tmp_path / "sub" / "load-new.tar"
    stale.parent.mkdir(mode=0o700)
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (0, 0))
    ok = subprocess.run(["sh", "-c", spool_script(str(path), None)], input=b"12345", capture_output=True, text=False)
    assert ok.returncode == 0 and path.read_bytes() == b"12345"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert spool_ok(ok.stdout.decode(), 5) and not spool_ok(ok.stdout.decode(), 6) and not spool_ok("", 0)
    assert not stale.exists() and fresh.exists()  # a day-old spool of a dead connection goes
    bad = subprocess.run(["sh", "-c", spool_script(str(tmp_path / "nodir" / "x" / "load.tar"), "zstd")],
                         input=b"not zstd", capture_output=True, env={"PATH": "/usr/bin:/bin"})
    assert bad.returncode == 1 and not (tmp_path / "nodir" / "x" / "load.tar").exists()


@pytest.mark.parametrize("mode,error", [("auto", None), ("pull", "boom")])
def test_a_failed_pull_falls_back_to_push_only_with_via_auto(monkeypatch, mode, error):
    from migrate.image import overlap
    from migrate.image.remote import RemoteDocker

    def fail(*a, **k):
        raise MigrateError("boom")

    monkeypatch.setattr(overlap, "pull_on_host", fail)

    class Session:
        name = "alice@gpu"
        remote = FakeHost()
        facts = RemoteDocker()
        via = {IMG.image_id: V.ViaDecision("pull", "why", ref=SOURCE.ref.pull_ref, layers=2, registry="reg.io:5000")}

    job = overlap.PullJob(Session(), [IMG], None, mode)
    assert job.pulls(IMG.image_id)
    assert job.wait(IMG.image_id) == error
    decision = Session.via[IMG.image_id]
    want = ("push", True) if mode == "auto" else ("pull", False)
    assert (decision.via, "the pull failed" in decision.reason) == want


def test_a_tls_verdict_gets_the_certificate_hint_whatever_its_wording():
    err = V.refusal(R.ProbeResult("tls", "CA cert does not include key usage extension"), "reg.io:5000")
    assert err.message.startswith("TLS error talking to reg.io:5000") and "/etc/docker/certs.d/reg.io:5000" in err.hint
    err = V.refusal(R.ProbeResult("unreachable", "[Errno 111] Connection refused"), "reg.io:5000")
    assert "unreachable from the host" in err.message and "https://reg.io:5000/v2/" in err.hint


def test_containerd_hosts_get_the_registry_layer_descriptors():
    from migrate.image.archive import LoadStep

    out = ("layer=application/vnd.docker.image.rootfs.diff.tar.gzip sha256:" + "1" * 64 + " 123\n"
           "layer=application/vnd.docker.image.rootfs.diff.tar.gzip sha256:" + "2" * 64 + " 456\nprobe=ok\ndetail=\n")
    verdict = R.parse_probe(out)
    assert verdict.ok and [size for _, _, size in verdict.layers] == [123, 456]
    d = V.decide("auto", IMG, plan(), [SOURCE], lambda s: verdict, need_layers=True)
    assert d.pulls and d.registry_layers[D[1]] == ("application/vnd.docker.image.rootfs.diff.tar.gzip",
                                                   "sha256:" + "2" * 64, 456)
    # a manifest whose layer count differs from the local base's is no source for that store
    one = R.ProbeResult("ok", "", verdict.layers[:1])
    assert V.decide("auto", IMG, plan(), [SOURCE], lambda s: one, need_layers=True).via == "push"
    step = LoadStep(config=b"{}", diff_ids=D[:3], send=[2], tags=["app:2"], registry_layers=d.registry_layers)
    from migrate.image.archive import Member

    sent = []
    members = step.oci_members(lambda name, diff_id: sent.append(diff_id) or Member.from_bytes(name, b"x"),
                               lambda diff_id: ("application/vnd.oci.image.layer.v1.tar", diff_id, 10))
    blobs = [m.reader().read() for m in members if m.name.startswith("blobs/")]
    manifest = json.loads(next(b for b in blobs if b'"layers"' in b))
    assert [x["digest"] for x in manifest["layers"]] == ["sha256:" + "1" * 64, "sha256:" + "2" * 64, D[2]]
    assert sent == [D[2]]  # only the user's layer travels
    assert R.probe_command(SOURCE.ref, "amd64").endswith(" amd64")


def test_a_containerd_host_that_pulled_the_base_names_its_blobs_instead_of_getting_them_again():
    """The host has the base's layers as a pull left them (compressed blobs): the layout names the registry's
    blobs, as a whole `docker load` there would, and sends nothing for them; a host that got the layers
    any other way (no RepoDigest with that digest) is not asked, and the plain blobs ride along."""
    layers = [("application/vnd.docker.image.rootfs.diff.tar.gzip", "sha256:" + c * 64, n)
              for c, n in (("1", 123), ("2", 456))]
    asked = []

    def ask(source):
        asked.append(source)
        return R.ProbeResult("ok", "", layers)

    d = V.decide("auto", IMG, plan(first_missing=2), [SOURCE], ask, need_layers=True, pulled={BASE_DIGEST})
    assert d.via == "push" and "already has" in d.reason and d.registry_layers == dict(zip(D[:2], layers))
    assert V.registry_layers(d) == d.registry_layers
    d = V.decide("auto", IMG, plan(first_missing=2), [SOURCE], ask, need_layers=True, pulled={"sha256:" + "8" * 64})
    assert d.via == "push" and d.registry_layers == {} and len(asked) == 1
    facts = R_remote.parse_facts("img=sha256:111|base:1,|" + ",".join(D[:2]) + ",|amd64|linux|2026|{}"
                                 f"|rd=reg.io:5000/team/base@{BASE_DIGEST},\n")
    assert facts.pulled_digests() == {BASE_DIGEST} and facts.images[0].tags == ["base:1"]


def test_an_unreachable_registry_is_asked_once_per_host():
    regs = V.Registries("auto", list_local=lambda: "", lookup=lambda r: None)
    host = FakeHost().reply(r"python3 -I -c", "probe=unreachable\ndetail=timed out\n")
    for _ in range(3):
        assert regs.ask(host, SOURCE.ref).verdict == "unreachable"
    assert len([c for c in host.commands() if "python3 -I -c" in c]) == 1
    other = FakeHost(target=type(host.target)(alias="gpu2"))
    other.reply(r"python3 -I -c", "probe=ok\n")
    assert regs.ask(other, SOURCE.ref).ok  # another host has its own answer
