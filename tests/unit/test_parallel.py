import threading
import time

from migrate.errors import ConnectError
from migrate.remote.parallel import for_each_host


def test_results_keep_host_order_and_failures_do_not_stop_others():
    def work(h):
        if h == "bad":
            raise ConnectError("cannot connect to bad", hint="check it")
        if h == "bug":
            raise ValueError("boom")
        time.sleep(0.05)
        return h.upper()

    out = for_each_host(["a", "bad", "b", "bug"], work)
    assert [o.host for o in out] == ["a", "bad", "b", "bug"]
    assert [o.value for o in out] == ["A", None, "B", None]
    assert out[1].error == "cannot connect to bad (hint: check it)"
    assert "ValueError" in out[3].error and not out[3].ok and out[0].ok


def test_hosts_really_run_concurrently():
    seen = set()
    barrier = threading.Barrier(3, timeout=5)

    def work(h):
        barrier.wait()  # would time out if run one after another
        seen.add(threading.get_ident())
        return h

    assert all(o.ok for o in for_each_host(["x", "y", "z"], work))
    assert len(seen) == 3
