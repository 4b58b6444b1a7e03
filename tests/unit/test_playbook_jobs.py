from migrate.playbook.jobs import plan_jobs

RUN = {"command": "python t.py --lr {lr} --seed {seed}", "sweep": {"lr": ["1e-3", "1e-4"], "seed": ["0", "1"]},
       "gpus_per_job": 1, "image": "lab/pt:1", "mounts": ["/data:/data"], "env": {}, "priority": 0, "retries": 0}


def test_keys_are_stable_and_unique():
    a = plan_jobs("exp", RUN, ["h1"])
    b = plan_jobs("exp", RUN, ["h1"])
    assert [j.key for j in a] == [j.key for j in b]
    assert len({j.key for j in a}) == 4
    assert a[0].key.startswith("exp:lr=1e-3,seed=0:") and a[0].name == "exp[lr=1e-3,seed=0]"
    assert a[0].command == "python t.py --lr 1e-3 --seed 0" and a[0].spec["image"] == "lab/pt:1"


def test_changing_what_runs_changes_the_keys():
    a = plan_jobs("exp", RUN, ["h1"])
    b = plan_jobs("exp", {**RUN, "image": "lab/pt:2"}, ["h1"])
    assert not {j.key for j in a} & {j.key for j in b}


def test_jobs_spread_round_robin_over_hosts_and_keys_do_not_depend_on_hosts():
    one = plan_jobs("exp", RUN, ["h1"])
    two = plan_jobs("exp", RUN, ["h1", "h2"])
    assert [j.host for j in two] == ["h1", "h2", "h1", "h2"]
    assert [j.key for j in one] == [j.key for j in two]


def test_no_sweep_is_one_job():
    jobs = plan_jobs("exp", {"command": "echo hi"}, ["h"])
    assert len(jobs) == 1 and jobs[0].name == "exp" and jobs[0].key.startswith("exp:default:")
