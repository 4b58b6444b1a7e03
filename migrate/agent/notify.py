"""Notifications when a job or a sweep ends: a short message POSTed to a webhook (stdlib only).

Formats (a target is `[FORMAT+]URL`; without a prefix the format follows the URL's host, else plain):

    plain     ntfy-style: the text as the body, a `Title` header (ntfy.sh, gotify-like receivers, any logger)
    slack     {"text": "..."}  Slack incoming webhooks and compatible (Mattermost, Rocket.Chat, Discord /slack)
    feishu    {"msg_type": "text", "content": {"text": "..."}}  Feishu / Lark custom bots
    dingtalk  {"msgtype": "text", "text": {"content": "..."}}    DingTalk custom robots

On the host the agent keeps one record per `submit` and target (dispatcher/notify/<id>.json, 0600:
the URL carries its token, so it is stored only there and never logged), and the dispatcher posts
when the last of its jobs has ended: one message for one job, one summary for a sweep. The post runs
in a thread with a short timeout; its outcome is one line in each job's log. A failed post never
changes a job. Only the scheme and host of a URL are ever shown (`redact`). The client
(`migrate wait --notify`) uses the same functions from the laptop.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any, Callable, Optional

FORMATS = ("plain", "slack", "feishu", "dingtalk")
FINAL = ("done", "failed", "cancelled", "lost")
TIMEOUT_S = 10.0
HOST_FORMATS = (("hooks.slack.com", "slack"), ("open.feishu.cn", "feishu"), ("open.larksuite.com", "feishu"),
                ("oapi.dingtalk.com", "dingtalk"))
MAX_LISTED = 10  # failed jobs named in a sweep's message


def parse_target(target: str) -> tuple:
    """`[FORMAT+]URL` -> (format, url); ValueError saying what is wrong (pure)."""
    if not isinstance(target, str) or not target.strip() or any(c.isspace() for c in target):
        raise ValueError("a notify target is [FORMAT+]http(s)://HOST/PATH without spaces")
    fmt, url = "", target
    head, sep, rest = target.partition("+")
    if sep and "://" in rest and "://" not in head:
        fmt, url = head.lower(), rest
        if fmt == "ntfy":
            fmt = "plain"
        if fmt not in FORMATS:
            raise ValueError(f"unknown notify format {head!r} (one of: ntfy/plain, slack, feishu, dingtalk)")
    scheme, _, after = url.partition("://")
    host = after.split("/", 1)[0].split("@")[-1]
    if scheme.lower() not in ("http", "https") or not host:
        raise ValueError(f"a notify URL must be http:// or https:// with a host, not {redact(url)!r}")
    if not fmt:
        fmt = next((f for suffix, f in HOST_FORMATS if host.lower().split(":")[0].endswith(suffix)), "plain")
    return fmt, url


def check_target(target: Any) -> str:
    """'' when the target is usable, else what is wrong (pure)."""
    try:
        parse_target(target)
    except ValueError as exc:
        return str(exc)
    return ""


def redact(url: str) -> str:
    """Only the scheme and host of a webhook URL (its path and query carry tokens) (pure)."""
    if "+" in url.split("://", 1)[0]:
        url = url.split("+", 1)[1]
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "?"
    host = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0].split("@")[-1]
    return f"{scheme}://{host}"


def describe(target: str) -> str:
    """`slack https://hooks.slack.com`: what a log line may say about a target (pure)."""
    try:
        fmt, url = parse_target(target)
    except ValueError:
        return redact(target)
    return f"{fmt} {redact(url)}"


def request_parts(target: str, title: str, text: str) -> tuple:
    """(url, body bytes, headers) of the POST for a message (pure)."""
    fmt, url = parse_target(target)
    if fmt == "plain":
        return url, text.encode("utf-8"), {"Title": _header(title), "Content-Type": "text/plain; charset=utf-8"}
    full = f"{title}\n{text}" if text else title
    if fmt == "slack":
        body = {"text": full}  # type: dict
    elif fmt == "feishu":
        body = {"msg_type": "text", "content": {"text": full}}
    else:
        body = {"msgtype": "text", "text": {"content": full}}
    return url, json.dumps(body).encode("utf-8"), {"Content-Type": "application/json"}


def _header(value: str) -> str:
    """A header value urllib can send (latin-1, one line)."""
    return value.replace("\n", " ").encode("latin-1", "replace").decode("latin-1")


def post(target: str, title: str, text: str, timeout: float = TIMEOUT_S,
         opener: Optional[Callable] = None) -> str:
    """POST the message; '' on success (2xx), else one line saying why (the URL redacted)."""
    try:
        url, body, headers = request_parts(target, title, text)
    except ValueError as exc:
        return str(exc)
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with (opener or urllib.request.urlopen)(req, timeout=timeout) as resp:
            resp.read(65536)
            code = getattr(resp, "status", 200)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} from {redact(url)}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{redact(url)}: {type(reason).__name__ if not str(reason) else reason}"
    return "" if 200 <= code < 300 else f"HTTP {code} from {redact(url)}"


# -- messages --------------------------------------------------------------------------------------
def _took(job: dict) -> str:
    start, end = job.get("started_at"), job.get("ended_at")
    if job.get("runtime_s") is not None:  # a job as `status` shows it
        start, end = 0.0, float(job["runtime_s"])
    elif not start or not end:
        return ""
    s = int(max(0, end - start))
    return f" after {s // 3600}h{(s % 3600) // 60:02d}m" if s >= 3600 else (
        f" after {s // 60}m{s % 60:02d}s" if s >= 60 else f" after {s}s")


def job_line(job: dict) -> str:
    """`job 3 (train[lr=0.1]) failed: exit 1 after 2m05s` (pure)."""
    name = f" ({job['name']})" if job.get("name") else ""
    code = job.get("exit_code")
    how = f"exit {code}" if code is not None else "no exit code"
    why = f" ({job['reason']})" if job.get("reason") and job.get("state") != "done" else ""
    return f"job {job['id']}{name} {job.get('state')}: {how}{_took(job)}{why}"


def message(jobs: list, where: str) -> tuple:
    """(title, text) for jobs that all ended on `where`: one job, or a sweep's summary (pure)."""
    if len(jobs) == 1:
        j = jobs[0]
        ok = j.get("state") == "done"
        return (f"{'✔' if ok else '✘'} migrate: job {j['id']} {j.get('state')} on {where}", job_line(j))
    counts = {}  # type: dict
    for j in jobs:
        counts[j.get("state")] = counts.get(j.get("state"), 0) + 1
    summary = ", ".join(f"{counts[s]} {s}" for s in FINAL if counts.get(s))
    bad = [j for j in jobs if j.get("state") != "done"]
    title = f"{'✘' if bad else '✔'} migrate: {len(jobs)} jobs ended on {where}: {summary}"
    lines = [job_line(j) for j in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        lines.append(f"... and {len(bad) - MAX_LISTED} more")
    return title, "\n".join(lines) if lines else f"jobs {jobs[0]['id']}-{jobs[-1]['id']} all done"


# -- on the host: records per submit, delivery by the dispatcher ------------------------------------
def notify_dir(layout: Any) -> str:
    return os.path.join(layout.state_dir, "notify")


def remember(layout: Any, specs: list, answers: list) -> int:
    """After `submit`: one record per notify target with the ids of the jobs queued now; how many."""
    from .layout import private_dir, write_private

    groups = {}  # type: dict
    for spec, ans in zip(specs, answers):
        if spec.get("notify") and ans.get("status") == "queued":
            groups.setdefault(spec["notify"], []).append(int(ans["id"]))
    if not groups:
        return 0
    private_dir(notify_dir(layout))
    for target, ids in groups.items():
        record = {"target": target, "jobs": ids, "created": time.time()}
        write_private(os.path.join(notify_dir(layout), f"{uuid.uuid4().hex}.json"), json.dumps(record))
    return len(groups)


def due(layout: Any, get_job: Callable) -> list:
    """Records whose jobs have all ended: [(path, target, jobs)], each claimed (its file removed)."""
    try:
        names = sorted(n for n in os.listdir(notify_dir(layout)) if n.endswith(".json"))
    except OSError:
        return []
    out = []
    for n in names:
        path = os.path.join(notify_dir(layout), n)
        try:
            with open(path) as fh:
                rec = json.load(fh)
            jobs = [get_job(i) for i in rec["jobs"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        jobs = [j for j in jobs if j is not None]
        if jobs and any(j.get("state") not in FINAL for j in jobs):
            continue
        try:
            os.unlink(path)  # claimed: sent once (a retried job is not announced again)
        except OSError:
            continue
        if jobs:
            out.append((path, rec["target"], jobs))
    return out


def deliver(queue: Any, layout: Any, log: Callable, *, wait: bool = False) -> list:
    """The dispatcher's hook: post every record whose jobs all ended, each in a thread (never raises)."""
    try:
        ready = due(layout, queue.get)
    except Exception as exc:  # a notification must never stop the dispatcher
        log(f"notify: could not read the records: {exc}")
        return []
    threads = []
    for _, target, jobs in ready:
        t = threading.Thread(target=_send, args=(layout, target, jobs, log), daemon=True)
        t.start()
        threads.append(t)
    if wait:
        for t in threads:
            t.join()
    return threads


def _send(layout: Any, target: str, jobs: list, log: Callable) -> None:
    from .recovery import append_log

    try:
        title, text = message(jobs, socket.gethostname())
        error = post(target, title, text)
    except Exception as exc:  # a bug here must not reach the dispatcher's thread
        error = f"{type(exc).__name__}: {exc}"
    what = describe(target)
    line = (f"[migrate] notified {what}\n" if not error else
            f"[migrate] notification to {what} failed: {error} (the job's result is unchanged)\n")
    for j in jobs:
        append_log(layout.job_log(j["id"]), line)
    log(f"notify {what} for job(s) {','.join(str(j['id']) for j in jobs)}: {error or 'sent'}")
