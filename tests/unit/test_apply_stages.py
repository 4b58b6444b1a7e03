"""apply's stages through their packages (migrate/playbook/apply.py, issue 13).

1. apply hands each package function the options the playbook gives (the package functions are
   replaced where they live: migrate.setup.orchestrator, migrate.image.push, migrate.data.push,
   migrate.jobs.client).
2. `apply --dry-run` on recording hosts (`tests/fakehost.py: FakeHost`, one per stage, put where
   each package connects) issues no mutating command through any stage, while the same apply
   without --dry-run does change those hosts (so the dry-run test can fail).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from migrate.playbook.apply import apply_playbook
from migrate.playbook.jobs import plan_jobs
from migrate.playbook.loader import parse_playbook
from migrate.remote.hosts import ConnectOptions
from migrate.remote.openssh import SessionPool
from tests.fakehost import FakeHost
from tests.unit.test_data_orchestrator import dest_host
from tests.unit.test_dry_run_changes_nothing import FRESH_DEBIAN, IMAGE_FACTS

PB = """name: exp
hosts: [h1]
setup:
  docker_source: distro
  nvidia: false
  default_runtime: runc
  registry_mirrors: [https://mirror.example]
  data_root: /data/docker
images: [lab/x:1]
data:
  - {src: ./d, dest: /srv/d, exclude: ["*.tmp"], into: true, sudo: true}
run:
  command: "echo {n}"
  sweep: {n: [1, 2]}
  priority: 3
  retries: 2
  env: {A: b}
"""


# -- 1. each stage calls its package function with the playbook's options -------------------------
@pytest.fixture
def packages(monkeypatch):
    """Replace the four package functions apply calls; record (stage, args) per call."""
    from migrate.data import push as data_push
    from migrate.data.plan import DataPushResult
    from migrate.image import push as image_push
    from migrate.jobs import client
    from migrate.jobs.spec import SubmittedJob
    from migrate.setup import orchestrator
    from migrate.setup.options import HostSetupReport

    calls: list[tuple[str, dict]] = []

    def setup_hosts(hosts, conn, options, *, dry_run=False, quiet=False):
        calls.append(("setup", {"hosts": hosts, "options": options, "dry_run": dry_run}))
        return [HostSetupReport(host=h, dry_run=dry_run) for h in hosts]

    def push_images(names, hosts, conn, options):
        calls.append(("images", {"names": names, "hosts": hosts, "options": options}))
        return [image_push.ImagePushResult(image=n, host=h, status="would send" if options.dry_run else "sent",
                                           bytes_sent=2048) for n in names for h in hosts]

    def push_data(srcs, hosts, dest, conn, options, reach=None):
        calls.append(("data", {"srcs": srcs, "hosts": hosts, "dest": dest, "options": options}))
        return [DataPushResult(host=h, source=srcs[0], dest=dest, status="dry run" if options.dry_run else "changed",
                               files_transferred=3) for h in hosts]

    def submit_jobs(host, conn, jobs, options, remote=None):
        calls.append(("run", {"host": host, "jobs": jobs, "options": options}))
        return [SubmittedJob(id=i, key=j.key, name=j.name or "", status="queued") for i, j in enumerate(jobs, 1)]

    monkeypatch.setattr(orchestrator, "setup_hosts", setup_hosts)
    monkeypatch.setattr(image_push, "push_images", push_images)
    monkeypatch.setattr(data_push, "push_data", push_data)
    monkeypatch.setattr(client, "submit_jobs", submit_jobs)
    return calls


def test_apply_calls_each_package_with_the_playbook_options(packages):
    pb = parse_playbook(PB, Path("/p/exp.yml"))
    report = apply_playbook(pb, pb.hosts, ConnectOptions(), only=[], dry_run=False)
    assert [stage for stage, _ in packages] == ["setup", "images", "data", "run"]
    setup, images, data, run = (args for _, args in packages)

    o = setup["options"]
    assert setup["hosts"] == ["h1"] and setup["dry_run"] is False
    assert (o.docker_source, o.nvidia, o.default_runtime, o.registry_mirrors, o.data_root, o.force) == \
        ("distro", False, "runc", ["https://mirror.example"], "/data/docker", False)

    assert images["names"] == ["lab/x:1"] and images["hosts"] == ["h1"] and images["options"].dry_run is False

    o = data["options"]
    assert data["srcs"] == [pb.data[0].src] and data["hosts"] == ["h1"] and data["dest"] == "/srv/d"
    assert (o.exclude, o.into, o.delete, o.sudo, o.yes, o.dry_run) == (["*.tmp"], True, False, True, False, False)

    assert run["host"] == "h1" and run["options"].gpu_backend is None
    assert [j.command for j in run["jobs"]] == ["echo 1", "echo 2"]
    assert [j.key for j in run["jobs"]] == [j.key for j in plan_jobs("exp", pb.run, ["h1"])]
    assert all((j.priority, j.retries, j.env) == (3, 2, {"A": "b"}) for j in run["jobs"])

    cells = {s: report.cells[("h1", s)].text for s in report.stages}
    assert cells == {"setup": "ok", "images": "1 sent (2.0 KiB)", "data": "3 file(s) sent", "run": "2 queued"}
    assert report.changed == 1 + 1 + 2 and not report.failed_hosts()


def test_apply_dry_run_passes_dry_run_to_every_package_and_queues_nothing(packages, monkeypatch):
    from migrate.playbook import apply as apply_mod

    monkeypatch.setattr(apply_mod, "existing_job_keys", lambda h, conn, remote=None: (set(), None))
    pb = parse_playbook(PB, Path("/p/exp.yml"))
    report = apply_playbook(pb, pb.hosts, ConnectOptions(), only=[], dry_run=True)
    assert [stage for stage, _ in packages] == ["setup", "images", "data"]   # no submit_jobs in a dry run
    setup, images, data = (args for _, args in packages)
    assert setup["dry_run"] is True and images["options"].dry_run is True and data["options"].dry_run is True
    assert report.cells[("h1", "run")].text == "would queue 2 job(s)"


@pytest.mark.parametrize("built_before", [True, False])
def test_a_dry_run_checks_an_image_built_before_as_the_real_apply_does(monkeypatch, capsys, built_before):
    """Issue 20: right after an apply of sandbox-demo.yml (an image with `build:`), `--dry-run` said
    `would push 1 image(s)` while the real apply said up to date: the dry run never asked the host."""
    from migrate.image import local as image_local
    from migrate.image import push as image_push
    from migrate.playbook import apply as apply_mod

    asked: list[list[str]] = []

    def push_images(names, hosts, conn, options):
        asked.append(list(names))
        return [image_push.ImagePushResult(image=n, host=h, status="up to date") for n in names for h in hosts]

    monkeypatch.setattr(image_push, "push_images", push_images)
    monkeypatch.setattr(image_local, "image_exists", lambda ref: built_before)
    monkeypatch.setattr(apply_mod.local, "run", lambda *a, **k: pytest.fail("a dry run ran docker build"))
    pb = parse_playbook("hosts: [h1]\nimages: [{name: lab/built:1, build: ./ctx}, lab/plain:1]\n",
                        Path("/p/exp.yml"))
    report = apply_playbook(pb, ["h1"], ConnectOptions(), only=["images"], dry_run=True)
    cell = report.cells[("h1", "images")]
    if built_before:
        assert asked == [["lab/built:1", "lab/plain:1"]] and (cell.text, cell.changed) == ("up to date", 0)
    else:  # never built here: nothing to compare, it would be built and pushed whole
        assert asked == [["lab/plain:1"]] and (cell.text, cell.changed) == ("would push 1 image(s)", 1)
    assert "would build: docker build -t lab/built:1" in capsys.readouterr().err


# -- 2. a dry run on recording hosts changes nothing, through every stage --------------------------
@pytest.fixture
def hosts(monkeypatch, tmp_path):
    """One recording host per stage, put where each package connects; a playbook using all four."""
    import migrate.remote.connection
    from migrate.data import push as data_push
    from migrate.image import push as image_push
    from migrate.image.local import LocalImage
    from migrate.jobs import client
    from migrate.setup import orchestrator

    fakes = {
        "setup": FakeHost().reply(r"hs\.%s", FRESH_DEBIAN).reply(r"daemon\.json", "{}\n"),
        "images": FakeHost().reply(r"docker_root", IMAGE_FACTS),
        "data": dest_host(),
        # no agent of this migrate version on the host: a real call would install it (mkdir + file)
        "run": FakeHost().reply(r"python3 -I -S", "", exit_code=98),
    }
    monkeypatch.setattr(orchestrator, "connect", lambda h, conn: fakes["setup"])
    monkeypatch.setattr(orchestrator, "target_for", lambda h, conn: None)
    monkeypatch.setattr(image_push, "connect", lambda h, conn: fakes["images"])
    monkeypatch.setattr(image_push, "inspect_images", lambda names: [
        LocalImage("app:2", "sha256:222", ["sha256:aaa", "sha256:bbb"], arch="amd64", size=10 << 20, tags=["app:2"])])
    reach = data_push.Reach(session=lambda h: fakes["data"], root=lambda h: fakes["data"],
                            transfers=fakes["data"].transfers)
    monkeypatch.setattr(data_push.Reach, "ssh", classmethod(lambda cls, conn, sessions=None: reach))
    monkeypatch.setattr(migrate.remote.connection, "connect", lambda h, conn: fakes["run"])   # existing_job_keys
    monkeypatch.setattr(client, "connect", lambda h, conn: fakes["run"])                      # submit_jobs
    monkeypatch.setattr(SessionPool, "get", lambda self, h: fakes["run"])                    # apply's sessions
    from migrate.data.rsync import Stats

    fakes["data"].transfers.dry_run_stats = Stats(files=1, regular_files_transferred=1, transferred_size=100)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.bin").write_bytes(b"x" * 100)
    text = ("hosts: [gpu]\nsetup: {docker_source: distro}\nimages: [app:2]\n"
            "data: [{src: ./d, dest: /srv/d}]\nrun: {command: 'echo {n}', sweep: {n: [1, 2]}}\n")
    return fakes, parse_playbook(text, tmp_path / "exp.yml")


def test_apply_dry_run_issues_no_mutating_command_through_any_stage(hosts):
    fakes, pb = hosts
    report = apply_playbook(pb, ["alice@gpu"], ConnectOptions(), only=[], dry_run=True)
    cells = {s: report.cells[("alice@gpu", s)] for s in report.stages}
    assert not report.failed_hosts(), cells
    assert cells["setup"].changed == 2                         # a fresh host: setup would change it...
    assert cells["images"].text == "would push 1 image(s) after setup"   # ...so images wait for it
    assert (cells["data"].text, cells["data"].changed) == ("would send 1 file(s)", 1)
    assert cells["run"].text == ("would queue 2 job(s) (existing jobs not checked: "
                                 "no dispatcher agent of this version there)")
    # the images stage asks its host too when setup has nothing left to do (here: no setup stage)
    report = apply_playbook(pb, ["alice@gpu"], ConnectOptions(), only=["images"], dry_run=True)
    assert report.cells[("alice@gpu", "images")].text == "would push 1 image(s)", report.cells
    for stage, fake in fakes.items():
        assert fake.log, f"{stage}: the stage never reached its host"
        assert fake.mutations() == [], (stage, fake.mutations())


def test_apply_dry_run_images_cell_when_the_host_is_given_without_user(hosts):
    fakes, pb = hosts
    report = apply_playbook(pb, ["gpu"], ConnectOptions(), only=["images"], dry_run=True)
    assert report.cells[("gpu", "images")].text == "would push 1 image(s)"


@pytest.mark.parametrize("stage", ["setup", "data", "run"])
def test_the_same_apply_without_dry_run_changes_the_hosts(hosts, stage):
    """Without --dry-run each stage does change its recording host: the test above can fail."""
    fakes, pb = hosts
    apply_playbook(pb, ["gpu"], ConnectOptions(), only=[stage], dry_run=False)
    assert fakes[stage].mutations(), stage


def test_the_envs_stage_runs_between_images_and_data_and_is_idempotent(packages, monkeypatch, tmp_path):
    """Issue 21: `envs:` calls push-env with the playbook's options; an unchanged env counts as no change."""
    from migrate.env import push as env_push

    (tmp_path / "requirements.txt").write_text("six==1.16.0\n")
    pb = parse_playbook(PB.replace("data:", "envs:\n  - {name: torch, source: requirements.txt, python: python3.11}\n"
                                           "data:", 1), tmp_path / "exp.yml")
    seen: list = []
    state = {"status": "installed"}

    def push_env(hosts, src, opts, conn):
        seen.append((hosts, src.kind, src.path, opts.name, opts.python, opts.dry_run))
        return [env_push.EnvResult(host=h, name=opts.name, status=state["status"]) for h in hosts]

    monkeypatch.setattr(env_push, "push_env", push_env)
    report = apply_playbook(pb, pb.hosts, ConnectOptions(), only=[], dry_run=False)
    assert report.stages == ["setup", "images", "envs", "data", "run"]
    assert seen == [(["h1"], "requirements", tmp_path / "requirements.txt", "torch", "python3.11", False)]
    assert report.cells[("h1", "envs")].text == "1 env(s) installed or updated"
    state["status"] = "unchanged"
    again = apply_playbook(pb, pb.hosts, ConnectOptions(), only=["envs"], dry_run=True)
    assert again.cells[("h1", "envs")].text == "up to date" and again.changed == 0 and seen[-1][-1] is True
