"""Table rows for status/gpus (pure)."""

from migrate.jobs.render import duration, gpu_cell, info_cell, status_rows


def test_duration():
    assert [duration(s) for s in (None, 5, 75, 3720, 90000)] == ["", "5s", "1m15s", "1h02m", "1d01h"]


def test_cells():
    job = {"id": 3, "name": "n", "state": "queued", "gpus": 2, "gpu_indices": [], "command": "python t.py",
           "reason": "waiting for 2 GPUs, 0 of 4 usable now", "attempt": 0, "runtime_s": None, "exit_code": None}
    assert gpu_cell(job) == "2×" and gpu_cell({**job, "gpus": 0}) == "cpu"
    assert gpu_cell({**job, "gpu_indices": ["0", "3"]}) == "0,3"
    assert info_cell(job).startswith("waiting for 2 GPUs")
    assert len(info_cell({**job, "reason": "x" * 500})) == 70
    row = status_rows([job])[0]
    assert row[0] == "3" and str(row[2]) == "queued"
