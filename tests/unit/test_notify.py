"""Notifications (migrate/agent/notify.py): targets, formats, redaction, on-host records, real posts to 127.0.0.1."""

from __future__ import annotations

import http.server
import json
import os
import stat
import threading

import pytest

from migrate.agent import notify
from migrate.agent.db import Queue
from migrate.agent.layout import Layout
from migrate.agent.main import AgentError, validate_spec
from migrate.errors import UsageError
from migrate.jobs.options import notify_target
from migrate.jobs.spec import JobSpec
from migrate.jobs.submit import redacted

TOKEN = "T0KEN-s3cret"


@pytest.mark.parametrize("target,fmt", [
    ("https://ntfy.sh/topic", "plain"),
    ("ntfy+https://ntfy.example/t", "plain"),
    (f"https://hooks.slack.com/services/{TOKEN}", "slack"),
    ("slack+http://127.0.0.1:9/hook", "slack"),
    (f"https://open.feishu.cn/open-apis/bot/v2/hook/{TOKEN}", "feishu"),
    (f"https://oapi.dingtalk.com/robot/send?access_token={TOKEN}", "dingtalk"),
    ("DingTalk+https://example.org/x", "dingtalk"),
])
def test_the_format_comes_from_the_prefix_or_the_host(target, fmt):
    assert notify.parse_target(target)[0] == fmt
    assert not notify.parse_target(target)[1].startswith(fmt + "+")


@pytest.mark.parametrize("bad", ["", "ftp://x/y", "https://", "teams+https://x/y", "https://a b/c", "ntfy.sh/topic"])
def test_bad_targets_are_refused_by_client_and_agent(bad):
    assert notify.check_target(bad)
    with pytest.raises(UsageError):
        notify_target(bad, None)
    with pytest.raises(AgentError):
        validate_spec({"command": "true", "notify": bad}, 0)


def test_notify_format_prefixes_the_url():
    assert notify_target("https://x.org/h", "slack") == "slack+https://x.org/h"
    assert notify_target(None, None) is None
    with pytest.raises(UsageError, match="goes with --notify"):
        notify_target(None, "slack")


def test_only_scheme_and_host_are_ever_shown():
    for url in (f"https://hooks.slack.com/services/{TOKEN}", f"slack+https://user:{TOKEN}@h.example/x?k={TOKEN}",
                f"https://oapi.dingtalk.com/robot/send?access_token={TOKEN}"):
        assert TOKEN not in notify.redact(url) and TOKEN not in notify.describe(url)
    assert notify.describe(f"https://hooks.slack.com/services/{TOKEN}") == "slack https://hooks.slack.com"
    payload = JobSpec(command="true", notify=f"https://ntfy.sh/{TOKEN}").payload()
    assert payload["notify"].endswith(TOKEN) and redacted(payload)["notify"] == "plain https://ntfy.sh"


def test_request_bodies_per_format():
    url, body, headers = notify.request_parts("https://ntfy.sh/t", "Title ✔", "line")
    assert body == b"line" and headers["Title"] == "Title ?"  # a header is latin-1
    _, body, headers = notify.request_parts("slack+https://x/h", "T", "line")
    assert json.loads(body) == {"text": "T\nline"} and headers["Content-Type"] == "application/json"
    _, body, _ = notify.request_parts("feishu+https://x/h", "T", "")
    assert json.loads(body) == {"msg_type": "text", "content": {"text": "T"}}
    _, body, _ = notify.request_parts("dingtalk+https://x/h", "T", "x")
    assert json.loads(body) == {"msgtype": "text", "text": {"content": "T\nx"}}


def test_messages_for_one_job_and_a_sweep():
    job = {"id": 3, "name": "train", "state": "failed", "exit_code": 1, "started_at": 100.0, "ended_at": 225.0,
           "reason": ""}
    title, text = notify.message([job], "gpu1")
    assert title == "✘ migrate: job 3 failed on gpu1" and text == "job 3 (train) failed: exit 1 after 2m05s"
    done = [{"id": i, "name": f"j{i}", "state": "done", "exit_code": 0, "runtime_s": 5} for i in range(4, 20)]
    title, text = notify.message([job, *done], "gpu1")
    assert title == "✘ migrate: 17 jobs ended on gpu1: 16 done, 1 failed" and text.splitlines() == [
        "job 3 (train) failed: exit 1 after 2m05s"]
    title, text = notify.message(done, "gpu1")
    assert title.startswith("✔") and text == "jobs 4-19 all done"


class Receiver:
    """A real HTTP server on 127.0.0.1 that records each POST (path, headers, body); answers `status`."""

    def __init__(self, status: int = 200) -> None:
        got = self.got = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                got.append((self.path, dict(self.headers), self.rfile.read(n)))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_a_real_post_and_its_failures(receiver):
    assert notify.post(f"{receiver.url}/{TOKEN}", "T", "body") == ""
    assert receiver.got[0][0] == f"/{TOKEN}" and receiver.got[0][1]["Title"] == "T" and receiver.got[0][2] == b"body"
    bad = Receiver(status=403)
    try:
        error = notify.post(f"slack+{bad.url}/{TOKEN}", "T", "x")
        assert error.startswith("HTTP 403 from http://127.0.0.1:") and TOKEN not in error
    finally:
        bad.close()
    closed = notify.post(f"http://127.0.0.1:1/{TOKEN}", "T", "x", timeout=2)
    assert closed and TOKEN not in closed


def test_records_are_private_and_sent_once_when_the_whole_run_ended(tmp_path, receiver):
    layout = Layout(str(tmp_path / "m")).ensure()
    q = Queue(layout.db)
    target = f"slack+{receiver.url}/{TOKEN}"
    specs = [{"command": "true", "name": f"j{i}", "notify": target} for i in range(2)] + [{"command": "true"}]
    answers = q.submit(specs)
    assert notify.remember(layout, specs, answers) == 1
    [name] = os.listdir(notify.notify_dir(layout))
    assert stat.S_IMODE(os.stat(os.path.join(notify.notify_dir(layout), name)).st_mode) == 0o600
    lines: list[str] = []
    assert notify.deliver(q, layout, lines.append, wait=True) == []  # nothing ended yet
    for a in answers[:1]:
        q.conn.execute("UPDATE jobs SET state = 'done', exit_code = 0 WHERE id = ?", (a["id"],))
    assert notify.deliver(q, layout, lines.append, wait=True) == [] and not receiver.got  # one still queued
    q.conn.execute("UPDATE jobs SET state = 'failed', exit_code = 2 WHERE id = ?", (answers[1]["id"],))
    os.makedirs(layout.job_dir(answers[0]["id"]))
    assert len(notify.deliver(q, layout, lines.append, wait=True)) == 1
    assert json.loads(receiver.got[0][2])["text"].startswith("✘ migrate: 2 jobs ended on ")
    assert notify.deliver(q, layout, lines.append, wait=True) == [] and len(receiver.got) == 1  # sent once
    log = (tmp_path / "m" / "dispatcher" / "jobs" / str(answers[0]["id"]) / "output.log").read_text()
    assert log == f"[migrate] notified slack {receiver.url}\n"
    assert all(TOKEN not in ln for ln in lines)


def test_a_failed_post_is_a_line_in_the_job_log_and_nothing_else(tmp_path):
    layout = Layout(str(tmp_path / "m")).ensure()
    q = Queue(layout.db)
    specs = [{"command": "true", "notify": f"http://127.0.0.1:1/{TOKEN}"}]
    answers = q.submit(specs)
    notify.remember(layout, specs, answers)
    q.conn.execute("UPDATE jobs SET state = 'done', exit_code = 0 WHERE id = ?", (answers[0]["id"],))
    os.makedirs(layout.job_dir(answers[0]["id"]))
    notify.deliver(q, layout, lambda s: None, wait=True)
    with open(layout.job_log(answers[0]["id"])) as fh:
        log = fh.read()
    assert "notification to plain http://127.0.0.1:1 failed" in log and "result is unchanged" in log
    assert TOKEN not in log and q.get(answers[0]["id"])["state"] == "done"
