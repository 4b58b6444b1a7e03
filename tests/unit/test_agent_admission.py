"""The free-GPU rule and the admission order, against recorded GPU states.

The H100 states are the ones measured in the project's research (driver 580, MIG off): an idle
GPU reports ~480 MiB `used` through the v1 memory API and a few MiB through v2; a PyTorch child
first shows up in NVML with 14 MiB; a bare CUDA context costs ~528 MiB.
"""

from __future__ import annotations

import pytest

from migrate.agent.admission import (
    BUSY,
    ERROR,
    FREE,
    MIG_PARENT,
    RESERVED,
    Policy,
    fits,
    gpu_verdict,
    idle_threshold,
    in_pool,
    learn_idle_baseline,
    load_idle_baselines,
    plan,
)
from migrate.agent.gpus import GpuDevice, GpuProcess, GpuSnapshot

H100 = 81559


def gpu(i, used=4, util=0, procs=(), error=None, total=H100, uuid=None, **kw):
    return GpuDevice(index=str(i), uuid=uuid or f"GPU-{i:04d}", name="H100", memory_total_mib=total,
                     memory_used_mib=used, utilization=util, processes=[GpuProcess(*p) for p in procs], error=error,
                     **kw)


def snap(*devices):
    return GpuSnapshot(backend="test", devices=list(devices))


def job(i, gpus=1, priority=0, queued_at=1000.0, **kw):
    return {"id": i, "name": f"j{i}", "gpus": gpus, "priority": priority, "queued_at": queued_at, **kw}


POLICY = Policy(max_util_pct=10, idle_mem_mib=512, backfill_wait_s=600, cpu_slots=2)

# -- recorded states --------------------------------------------------------------------------------
H100_IDLE_V2 = gpu(0, used=4)  # v2 'used' excludes the driver's reservation
H100_IDLE_V1 = gpu(0, used=480, memory_api="v1")  # v1 'used' includes ~480 MiB reserved: still idle
A100_IDLE_V1 = gpu(0, used=912, memory_api="v1", total=81920)  # 912 MB reserved on an A100 (rust-nvml#57)
A100_CONTEXT_V1 = gpu(0, used=912 + 600, memory_api="v1", total=81920)  # plus a foreign, unlisted context
H100_FIRST_SIGHTING = gpu(0, used=502, procs=[(4242, 14)])  # a torch child 3.4 s after spawn
H100_CONTEXT_UNLISTED = gpu(0, used=1008)  # a foreign CUDA context NVML does not list (other namespace)
H100_BUSY_UTIL = gpu(0, used=300, util=87)


@pytest.mark.parametrize("device,verdict", [
    (H100_IDLE_V2, FREE),
    (H100_IDLE_V1, FREE),
    (A100_IDLE_V1, FREE),
    (A100_CONTEXT_V1, BUSY),
    (H100_FIRST_SIGHTING, BUSY),
    (H100_CONTEXT_UNLISTED, BUSY),
    (H100_BUSY_UTIL, BUSY),
    (gpu(0, error="NVML: GPU is lost"), ERROR),
])
def test_verdicts_on_recorded_states(device, verdict):
    assert gpu_verdict(device, {}, POLICY).verdict == verdict


def test_idle_baseline_is_the_lowest_reading_without_process_or_reservation():
    seen = learn_idle_baseline([gpu(0, used=9), gpu(1, used=300, procs=[(5, 290)]), gpu(2, used=7)],
                               {"GPU-0002": 4}, {})
    assert seen == {"GPU-0000/fake": 9}  # GPU 1 has a process, GPU 2 is ours: neither teaches anything
    seen = learn_idle_baseline([gpu(0, used=4), gpu(0, used=480, memory_api="v1")], {}, seen)
    assert seen == {"GPU-0000/fake": 4, "GPU-0000/v1": 480}
    assert learn_idle_baseline([gpu(0, used=40)], {}, seen) == seen  # never creeps up


def test_measured_baseline_catches_an_unlisted_context_the_fixed_ceiling_misses():
    # v1 H100: idle 480 MiB; a small foreign context NVML does not list adds ~400 MiB -> 880 MiB,
    # under the 1 GiB v1 ceiling, but above the measured 480 + 256 margin.
    sneaky = gpu(0, used=880, memory_api="v1")
    assert gpu_verdict(sneaky, {}, POLICY).verdict == FREE
    baselines = learn_idle_baseline([H100_IDLE_V1], {}, {})
    assert idle_threshold(sneaky, POLICY, baselines) == 480 + POLICY.idle_margin_mib
    v = gpu_verdict(sneaky, {}, POLICY, baselines=baselines)
    assert v.verdict == BUSY and "idle threshold 736 MiB" in v.reason
    assert gpu_verdict(H100_IDLE_V1, {}, POLICY, baselines=baselines).verdict == FREE


def test_baseline_never_raises_the_threshold_above_the_ceiling():
    baselines = learn_idle_baseline([gpu(0, used=5000)], {}, {})  # first seen while someone hid on it
    assert idle_threshold(gpu(0), POLICY, baselines) == POLICY.idle_mem_mib
    assert gpu_verdict(gpu(0, used=5000), {}, POLICY, baselines=baselines).verdict == BUSY


def test_baselines_load_from_meta_and_tolerate_garbage():
    class Meta:
        def __init__(self, text):
            self.text = text

        def get_meta(self, key):
            assert key == "idle_baselines"
            return self.text

    assert load_idle_baselines(Meta('{"GPU-1/v2": 3}')) == {"GPU-1/v2": 3}
    assert load_idle_baselines(Meta("")) == {}
    assert load_idle_baselines(Meta("not json")) == {}
    assert load_idle_baselines(Meta("[1, 2]")) == {}


def test_foreign_process_reason_names_pid_owner_and_memory():
    v = gpu_verdict(gpu(1, used=20500, procs=[(4242, 20480)]), {}, POLICY, owners={4242: "bob"})
    assert v.verdict == BUSY and v.shareable
    assert "pid 4242 (bob) 20.0 GiB" in v.reason


def test_graphics_process_also_blocks():
    assert gpu_verdict(gpu(0, procs=[(77, 12, "graphics")]), {}, POLICY).verdict == BUSY


def test_reserved_gpu_is_not_free_even_if_idle():
    v = gpu_verdict(H100_IDLE_V2, {"GPU-0000": 7}, POLICY)
    assert v.verdict == RESERVED and "job 7" in v.reason


def test_utilisation_is_not_shareable():
    assert not gpu_verdict(H100_BUSY_UTIL, {}, POLICY).shareable


def test_min_free_mem_threshold():
    v = gpu_verdict(H100_IDLE_V2, {}, POLICY)
    assert fits(v, {"min_free_mem_mib": 80000})
    assert fits(v, {"min_free_mem_mib": 81555}) and not fits(v, {"min_free_mem_mib": 81556})


def test_allow_shared_admits_onto_foreign_gpu_only_when_memory_fits():
    v = gpu_verdict(gpu(0, used=60000, procs=[(1, 60000)]), {}, POLICY)
    assert not fits(v, {"allow_shared": False, "min_free_mem_mib": 10000})
    assert fits(v, {"allow_shared": True, "min_free_mem_mib": 20000})
    assert not fits(v, {"allow_shared": True, "min_free_mem_mib": 30000})


def test_plan_skips_busy_and_reserved_gpus():
    s = snap(gpu(0, procs=[(99, 1000)]), gpu(1), gpu(2), gpu(3, util=95))
    adm, reasons = plan([job(1), job(2), job(3)], s, None, {"GPU-0002": 50}, 0, POLICY, 2000)
    assert [a.devices[0].uuid for a in adm] == ["GPU-0001"]
    assert "waiting for 1 GPU, 0 of 4 usable" in reasons[2]
    assert "reserved" in reasons[2] and "busy" in reasons[2]


def test_plan_multi_gpu_jobs_get_distinct_gpus_and_never_double_book():
    s = snap(*[gpu(i) for i in range(4)])
    jobs = [job(i, gpus=2) for i in range(1, 4)]
    adm, reasons = plan(jobs, s, None, {}, 0, POLICY, 2000)
    assert len(adm) == 2
    used = [d.uuid for a in adm for d in a.devices]
    assert len(used) == len(set(used)) == 4
    assert 3 in reasons


def test_plan_prefers_high_index_so_gpu0_stays_free():
    adm, _ = plan([job(1)], snap(gpu(0), gpu(1), gpu(2)), None, {}, 0, POLICY, 2000)
    assert adm[0].devices[0].index == "2"


def test_priority_then_age_order():
    s = snap(gpu(0))
    queued = [job(5, priority=10), job(1, priority=0)]  # the caller passes them in dispatch order
    adm, reasons = plan(queued, s, None, {}, 0, POLICY, 2000)
    assert adm[0].job["id"] == 5 and 1 in reasons


def test_backfill_lets_small_jobs_past_a_big_blocked_one_until_it_starves():
    s = snap(gpu(0), gpu(1), gpu(2, procs=[(9, 100)]), gpu(3, procs=[(9, 100)]))
    big = job(1, gpus=4, queued_at=1000)
    small = job(2, gpus=1, queued_at=1000)
    adm, _ = plan([big, small], s, None, {}, 0, POLICY, 1000 + 60)
    assert [a.job["id"] for a in adm] == [2]  # backfill while the big job has waited only 60 s
    adm, reasons = plan([big, small], s, None, {}, 0, POLICY, 1000 + 601)
    assert adm == [] and "waiting behind job 1" in reasons[2]


def test_impossible_job_does_not_hold_others_back():
    s = snap(gpu(0), gpu(1))
    adm, reasons = plan([job(1, gpus=8, queued_at=0), job(2)], s, None, {}, 0, POLICY, 10_000)
    assert [a.job["id"] for a in adm] == [2]
    assert "cannot start: needs 8 GPUs, 2 on this host" in reasons[1]


def test_gpu_pool_by_index_uuid_and_prefix():
    s = snap(gpu(0, uuid="GPU-aaaa1111-x"), gpu(1, uuid="GPU-bbbb2222-y"), gpu(2, uuid="GPU-cccc3333-z"))
    for pool, want in ((["0"], "0"), (["GPU-bbbb2222-y"], "1"), (["GPU-cccc"], "2")):
        adm, _ = plan([job(1, gpu_pool=pool)], s, None, {}, 0, POLICY, 2000)
        assert adm[0].devices[0].index == want
    adm, reasons = plan([job(1, gpu_pool=["5"])], s, None, {}, 0, POLICY, 2000)
    assert adm == [] and "in --gpu-pool 5" in reasons[1]


def test_mig_instances_are_leaves_and_multi_gpu_jobs_skip_them():
    parent = gpu(0, uuid="GPU-par", mig_mode=True)
    m0 = gpu("0:0", uuid="MIG-a", total=9856, parent_uuid="GPU-par")
    m1 = gpu("0:1", uuid="MIG-b", total=9856, parent_uuid="GPU-par", procs=[(5, 900)])
    full = gpu(1, uuid="GPU-full")
    s = snap(parent, m0, m1, full)
    assert gpu_verdict(parent, {}, POLICY).verdict == MIG_PARENT
    adm, _ = plan([job(1), job(2), job(3)], s, None, {}, 0, POLICY, 2000)
    got = [a.devices[0].uuid for a in adm]
    assert got == ["GPU-full", "MIG-a"]  # whole GPUs first, then a free MIG instance; MIG-b is busy
    adm, reasons = plan([job(4, gpus=2)], s, None, {}, 0, POLICY, 2000)
    assert adm == [] and "needs 2 GPUs, 1 on this host" in reasons[4]
    assert in_pool(m0, ["0"], {"GPU-par": parent})  # a MIG instance belongs to its parent's pool


def test_cpu_jobs_flow_when_the_gpu_view_is_down_and_respect_slots():
    queued = [job(1), job(2, gpus=0), job(3, gpus=0), job(4, gpus=0)]
    adm, reasons = plan(queued, None, "NVML: Unknown Error", {}, 0, POLICY, 2000)
    assert [a.job["id"] for a in adm] == [2, 3]  # cpu_slots=2
    assert "GPU view unavailable (NVML: Unknown Error)" in reasons[1]
    assert "waiting for a CPU slot" in reasons[4]


def test_errored_gpu_is_skipped_others_used():
    s = snap(gpu(0), gpu(1, error="NVML: Unknown Error"))
    adm, reasons = plan([job(1), job(2)], s, None, {}, 0, POLICY, 2000)
    assert [a.devices[0].index for a in adm] == ["0"]
    assert "1 error (GPU 1: NVML: Unknown Error)" in reasons[2]


def test_twenty_jobs_on_four_gpus_one_tick_no_double_booking():
    s = snap(*[gpu(i) for i in range(4)])
    adm, reasons = plan([job(i) for i in range(20)], s, None, {}, 0, POLICY, 2000)
    uuids = [a.devices[0].uuid for a in adm]
    assert len(adm) == 4 and len(set(uuids)) == 4 and len(reasons) == 16


def test_never_fits_counts_whole_gpus_in_the_pool():
    from migrate.agent.admission import never_fits
    from migrate.agent.gpus import GpuDevice, GpuSnapshot

    snap = GpuSnapshot(backend="nvml", devices=[
        GpuDevice(index="0", uuid="GPU-a", name="X"), GpuDevice(index="1", uuid="GPU-b", name="X", mig_mode=True),
        GpuDevice(index="1:0", uuid="MIG-c", parent_uuid="GPU-b"), GpuDevice(index="2", uuid="GPU-d", error="lost")])
    assert never_fits({"gpus": 3}, snap) is None
    assert never_fits({"gpus": 0}, snap) is None and never_fits({"gpus": 9}, None) is None
    assert never_fits({"gpus": 4, "name": "n"}, snap) == "job 'n' needs 4 GPUs; this host offers 3: 0, 1, 2 (X)"
    assert never_fits({"gpus": 2, "gpu_pool": ["0"]}, snap) == \
        "the job needs 2 GPUs; this host offers 1 in --gpu-pool 0: 0 (X)"
