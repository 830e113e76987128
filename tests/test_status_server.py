"""The read-only status server (``engine.serve_status``): its JSON, its refusals (token, host,
methods), reads that assign nothing while the engine runs, and the page in a real browser."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from engine_helpers import WAIT, check_db, close_bounded, run_threads
from taskengine.errors import InvalidArgument

TOKEN = "s3cret-token-of-the-test-0123456789"


def ok(ctx: Any) -> Any:
    return {"index": ctx.index, "got": ctx.data}


def boom(ctx: Any) -> Any:
    raise ValueError(f"bad input at index {ctx.index}")


def request(
    server: Any, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One HTTP request to the server: (status, headers, JSON body or raw text)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=WAIT)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        head = {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()
    if head.get("content-type", "").startswith("application/json") and raw:
        return resp.status, head, json.loads(raw)
    return resp.status, head, raw.decode(errors="replace")


def get(server: Any, path: str, **headers: str) -> tuple[int, Any]:
    status, _, body = request(server, "GET", path, headers)
    return status, body


@pytest.fixture
def node(make_engine: Any, db_path: str) -> Any:
    """An engine with a task of 7 successful executions, a failing task and a task whose id
    needs escaping in a URL."""
    engine = make_engine(db_path, jobs={"ok": ok, "boom": boom})
    engine.create_task("alpha", job="ok")
    engine.create_task("beta", job="boom")
    engine.create_task("a/b c?ü", job="ok")
    for i in range(7):
        engine.trigger("alpha", {"n": i}, blocking=True, timeout=WAIT)
    engine.trigger("beta", {"x": 1}, blocking=True, timeout=WAIT)
    engine.trigger("a/b c?ü", blocking=True, timeout=WAIT)
    return engine


def q(task_id: str) -> str:
    return urllib.parse.quote(task_id, safe="")


# -- the JSON ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_json_endpoints_page_through_tasks_and_executions(node: Any) -> None:
    server = node.serve_status()
    assert server.host == "127.0.0.1" and server.url == f"http://127.0.0.1:{server.port}/"

    status, body = get(server, "/api/stats")
    assert status == 200 and body["path"] == node.path
    assert body["stats"]["finished"] >= 9

    status, page1 = get(server, "/api/tasks?limit=2")
    assert status == 200 and [t["id"] for t in page1["items"]] == ["a/b c?ü", "alpha"]
    assert page1["next"] == "alpha"
    status, page2 = get(server, f"/api/tasks?limit=2&after={q(page1['next'])}")
    assert [t["id"] for t in page2["items"]] == ["beta"] and page2["next"] is None
    assert page1["items"][1]["execution_count"] == 7 and page1["items"][1]["status"] == "ACTIVE"

    status, task = get(server, f"/api/tasks/{q('a/b c?ü')}")
    assert status == 200 and task["id"] == "a/b c?ü" and task["execution_count"] == 1

    # newest first by default, paged by index
    status, newest = get(server, "/api/tasks/alpha/executions?limit=3")
    assert [e["index"] for e in newest["items"]] == [6, 5, 4] and newest["next"] == 4
    status, older = get(server, "/api/tasks/alpha/executions?limit=3&after=4")
    assert [e["index"] for e in older["items"]] == [3, 2, 1]
    status, oldest = get(server, "/api/tasks/alpha/executions?limit=5&order=oldest&after=4")
    assert [e["index"] for e in oldest["items"]] == [5, 6] and oldest["next"] is None

    # one execution, by index and by id
    status, by_index = get(server, "/api/tasks/alpha/executions/3")
    assert status == 200 and by_index["index"] == 3 and by_index["result"] == {"index": 3, "got": {"n": 3}}
    status, by_id = get(server, f"/api/tasks/alpha/executions/{by_index['id']}")
    assert by_id == by_index
    status, failed = get(server, "/api/tasks/beta/executions/0")
    assert failed["status"] == "FAILED" and failed["error"] == "ValueError: bad input at index 0"
    assert failed["traceback"].startswith("Traceback (most recent call last):")
    assert 'raise ValueError(f"bad input at index {ctx.index}")' in failed["traceback"]


@pytest.mark.timeout(60)
def test_bad_paths_and_arguments_are_clear_errors(node: Any) -> None:
    server = node.serve_status()
    cases = {
        "/api/tasks/nope": (404, "task 'nope' not found"),
        "/api/tasks/nope/executions": (404, "not found"),
        "/api/tasks/alpha/executions/7": (404, "no execution with index 7"),
        "/api/tasks/alpha/executions/01ZZZZZZZZZZZZZZZZZZZZZZZZ": (404, "not found"),
        "/api/tasks?limit=0": (400, "limit must be from 1 to 500"),
        "/api/tasks?limit=x": (400, "limit must be a whole number"),
        "/api/tasks/alpha/executions?order=up": (400, "order must be"),
        "/api/tasks/alpha/executions?after=-1": (400, "after must be >= 0"),
        # an index past the largest one names the index as given, not a derived "after"
        f"/api/tasks/alpha/executions/{2**64}": (400, f"index must be from 0 to {2**63 - 1}, not {2**64}"),
        f"/api/tasks/alpha/executions?after={2**63}": (400, f"after must be from 0 to {2**63 - 1}, not {2**63}"),
        "/api/nothing": (404, "no such path"),
        "/metrics": (404, "metrics=PrometheusMetrics(engine)"),
        "/elsewhere": (404, "no such path"),
    }
    for path, (code, text) in cases.items():
        status, body = get(server, path)
        assert status == code and text in body["error"], (path, status, body)
    assert node.next_index("alpha") == 7
    node.prune("alpha", keep_last=2)
    status, body = get(server, "/api/tasks/alpha/executions/3")
    assert status == 404 and body["error"] == "execution 3 of task 'alpha' was pruned (indexes from 5 are kept)"
    assert get(server, "/api/tasks/alpha")[1]["prune_mark"] == 5


@pytest.mark.timeout(60)
def test_page_files_are_served_locally_with_a_strict_policy(node: Any) -> None:
    server = node.serve_status()
    status, head, html = request(server, "GET", "/")
    assert status == 200 and head["content-type"].startswith("text/html")
    assert "default-src 'self'" in head["content-security-policy"]
    assert head["x-content-type-options"] == "nosniff" and head["cache-control"] == "no-store"
    for path in ("/page.js", "/page.css"):
        status, _, text = request(server, "GET", path)
        assert status == 200 and len(text) > 500
        # nothing fetched from elsewhere: no absolute URL in any of the page's files
        assert not re.search(r"(https?:)?//[a-z0-9]", text.replace("http://www.w3.org", "")), path
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


@pytest.mark.timeout(60)
def test_metrics_are_served_when_given(node: Any) -> None:
    """``/metrics`` is the engine's PrometheusMetrics in Prometheus' text format, after a known
    workload (9 executions finished, 1 of them FAILED), and it needs the token like any path."""
    from taskengine.prometheus import PrometheusMetrics

    metrics = PrometheusMetrics(node, registry=None)
    try:
        node.trigger("alpha", {"n": 7}, blocking=True, timeout=WAIT)
        server = node.serve_status(token=TOKEN, metrics=metrics)
        assert request(server, "GET", "/metrics")[0] == 401
        status, head, text = request(server, "GET", "/metrics", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and head["content-type"].startswith("text/plain")
        assert re.search(r'^taskengine_executions_finished_total\{status="FAILED"\} 1\.0$', text, re.M), text
        assert re.search(r'^taskengine_executions_finished_total\{status="SUCCESS"\} 9\.0$', text, re.M), text
        assert re.search(r"^taskengine_ack_latency_seconds_count 0\.0$", text, re.M)  # every trigger blocked
        assert re.search(r"^taskengine_run_seconds_count\{status=\"SUCCESS\"\} 1\.0$", text, re.M), text
    finally:
        metrics.close()


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_every_method_but_get_is_refused_and_changes_nothing(node: Any) -> None:
    server = node.serve_status()
    before = (node.next_index("alpha"), node.stats().triggered)
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FROB"):
        for path in ("/api/tasks/alpha", "/api/tasks/alpha/executions", "/", "/metrics"):
            status, head, _ = request(server, method, path)
            assert status == 405, (method, path, status)
            assert head["allow"] == "GET"
    assert (node.next_index("alpha"), node.stats().triggered) == before
    assert [t.id for t in node.list_tasks()] == ["a/b c?ü", "alpha", "beta"]


@pytest.mark.timeout(60)
def test_binding_beyond_loopback_needs_a_token(node: Any) -> None:
    for host in ("0.0.0.0", "::", "example.org", "10.1.2.3"):
        with pytest.raises(InvalidArgument, match="not a loopback address: give it a token"):
            node.serve_status(host=host)
    for bad in ("short", "has space in it 0123456789", 12345678901234567890):
        with pytest.raises(InvalidArgument, match="token must be"):
            node.serve_status(host="0.0.0.0", token=bad)
    with pytest.raises(InvalidArgument, match="port must be"):
        node.serve_status(port=70000)
    with pytest.raises(InvalidArgument, match="metrics must be"):
        node.serve_status(metrics=object())  # type: ignore[arg-type]
    server = node.serve_status(host="0.0.0.0", token=TOKEN)
    assert server.host == "0.0.0.0"


@pytest.mark.timeout(60)
def test_with_a_token_requests_without_it_are_refused(node: Any) -> None:
    server = node.serve_status(token=TOKEN)
    for path in ("/", "/page.js", "/api/stats", "/api/tasks", "/api/tasks/alpha/executions/0", "/metrics"):
        status, head, body = request(server, "GET", path)
        assert status == 401, path
        assert head["www-authenticate"].startswith("Bearer") and "token" in body["error"]
        status, _, body = request(server, "GET", path, {"Authorization": "Bearer wrong-token-0123456789"})
        assert status == 403 and body["error"] == "wrong token"
        status, _, body = request(server, "GET", path, {"Cookie": "taskengine_status=wrong-token-0123456789"})
        assert status == 403
    # a method other than GET is refused before the token is even looked at
    status, _, _ = request(server, "POST", "/api/tasks/alpha")
    assert status == 401
    status, _, _ = request(server, "POST", "/api/tasks/alpha", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 405

    status, stats = get(server, "/api/stats", Authorization=f"Bearer {TOKEN}")
    assert status == 200 and stats["path"] == node.path
    # the page's entry: ?token= answers with a cookie that its own requests then carry
    status, head, html = request(server, "GET", f"/?token={TOKEN}")
    assert status == 200 and "<title>taskengine status</title>" in html
    cookie = head["set-cookie"].split(";")[0]
    assert cookie == f"taskengine_status={TOKEN}" and "HttpOnly" in head["set-cookie"]
    status, tasks = get(server, "/api/tasks", Cookie=cookie)
    assert status == 200 and len(tasks["items"]) == 3


@pytest.mark.timeout(60)
def test_without_a_token_only_local_host_names_are_answered(node: Any) -> None:
    """A site that rebinds its own name to 127.0.0.1 makes a browser send its name as Host."""
    server = node.serve_status()
    for host in ("evil.example:80", "evil.example", "192.168.1.5:8080"):
        status, body = get(server, "/api/stats", Host=host)
        assert status == 403 and "not a loopback name" in body["error"], host
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "[::1]:80", "localhost"):
        status, _ = get(server, "/api/stats", Host=host)
        assert status == 200, host


@pytest.mark.timeout(60)
def test_close_stops_the_server_and_later_requests_fail(make_engine: Any, db_path: str) -> None:
    engine = make_engine(db_path, jobs={"ok": ok})
    server = engine.serve_status()
    assert get(server, "/api/stats")[0] == 200
    close_bounded(engine)
    with pytest.raises(ConnectionError):
        get(server, "/api/stats")
    server.close()  # idempotent
    from taskengine.errors import EngineClosed

    with pytest.raises(EngineClosed):
        engine.serve_status()


def test_a_connection_kept_alive_across_close_is_answered_closed_and_ended(make_engine: Any, db_path: str) -> None:
    """A browser keeps its connection open between polls: after close() its next request must not
    be served by the stopped server (nor its files: a node reopened on the same port would look
    closed through it), but refused and the connection ended, so the page reconnects and the
    server's thread ends."""
    engine = make_engine(db_path, jobs={"ok": ok})
    server = engine.serve_status()
    conn = http.client.HTTPConnection(server.host, server.port, timeout=WAIT)
    try:
        conn.request("GET", "/page.css")
        first = conn.getresponse()
        first.read()
        assert first.status == 200 and not first.will_close  # HTTP/1.1: kept alive
        close_bounded(engine)
        conn.request("GET", "/page.css")
        after = conn.getresponse()
        raw = after.read()
        assert after.status == 503 and after.will_close, (after.status, raw[:60])
        assert "stopped" in json.loads(raw)["error"]
        assert conn.sock is None or conn.sock.recv(1) == b""  # the server ended the connection
    finally:
        conn.close()


# -- reads while the engine runs ---------------------------------------------------------------


@pytest.mark.timeout(120)
def test_reads_while_the_engine_runs_assign_nothing(make_engine: Any, db_path: str) -> None:
    """Triggers from 8 threads while 4 threads read every endpoint: every index handed out
    belongs to an acknowledged trigger (reads add none), and the disk checker passes."""
    engine = make_engine(db_path, jobs={"ok": ok})
    for t in ("t0", "t1", "t2"):
        engine.create_task(t, job="ok")
    server = engine.serve_status()
    stop = threading.Event()
    read_errors: list[str] = []
    reads = [0]

    def reader(k: int) -> None:
        paths = ["/api/stats", "/api/tasks", "/api/tasks/t0/executions?limit=20", "/api/tasks/t1",
                 "/api/tasks/t2/executions?order=oldest", "/api/tasks/t1/executions/0"]
        while not stop.is_set():
            for p in paths:
                status, body = get(server, p)
                if status not in (200, 404):  # 404: index 0 of t1 before its first trigger
                    read_errors.append(f"{p}: {status} {body}")
                reads[0] += 1

    readers = [threading.Thread(target=reader, args=(k,), daemon=True) for k in range(4)]
    for r in readers:
        r.start()
    try:
        results = run_threads(8, lambda k: [engine.trigger(f"t{(k + i) % 3}", {"k": k}) for i in range(40)])
    finally:
        stop.set()
        for r in readers:
            r.join(WAIT)
    assert not read_errors, read_errors[:5]
    assert reads[0] > 0
    acked: dict[str, list[int]] = {"t0": [], "t1": [], "t2": []}
    results.raise_unexpected()
    for batch in results.results:
        for ex in batch:
            acked[ex.task_id].append(ex.index)
    for task_id, indexes in acked.items():
        assert sorted(indexes) == list(range(len(indexes)))
        assert engine.next_index(task_id) == len(indexes)
    for batch in results.results:
        for ex in batch:
            engine.wait(ex.task_id, ex.id, timeout=WAIT)
    close_bounded(engine)
    check_db(db_path, allow_live=False)


# -- the page in a real browser ----------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def browser(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url``: the DOM once the page's script has had 5 s of (virtual) time."""
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium); the page is not tested in a browser")
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.iterdir()))}"
    cmd = [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", *extra, url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


def _text(dom: str) -> str:
    """The DOM's text: tags dropped, entities of the few characters the page escapes decoded."""
    text = re.sub(r"<[^>]+>", " ", dom)
    for entity, char in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&amp;", "&")):
        text = text.replace(entity, char)
    return " ".join(text.split())


@pytest.mark.timeout(180)
def test_page_in_a_headless_browser_shows_the_node(node: Any, tmp_path: Path) -> None:
    server = node.serve_status()
    failed = node.list_executions("beta")[0]
    proc = browser(f"{server.url}#task=beta&exec={failed.id}", tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert 'data-loaded="yes"' in dom, dom[:3000]
    text = _text(dom)
    # the engine's figures, the task list, the task's executions, the one execution
    assert node.path in text and "triggered" in text and "finished" in text
    for task_id in ("alpha", "beta", "a/b c?ü"):
        assert task_id in text
    assert "Executions of beta" in text and "next index 1" in text
    assert "FAILED" in text and "ValueError: bad input at index 0" in text
    assert failed.id in text and '{"x":1}' in text
    # the traceback the engine kept with the execution
    assert re.search(r'<pre id="traceback">Traceback \(most recent call last\):.*in boom.*'
                     r'ValueError: bad input at index 0', dom, re.S), dom[-3000:]
    assert 'id="problem" role="alert" hidden' in dom  # no error shown

    # a task's executions by index, newest first
    proc = browser(f"{server.url}#task=alpha", tmp_path, "--dump-dom")
    text = _text(proc.stdout)
    assert "Executions of alpha" in text
    rows = re.findall(r'<td class="num"><a href="#task=alpha&amp;exec=(\d+)">', proc.stdout)
    assert rows == ["6", "5", "4", "3", "2", "1", "0"], rows


@pytest.mark.timeout(180)
def test_page_with_a_token_works_only_when_opened_with_it(node: Any, tmp_path: Path) -> None:
    server = node.serve_status(token=TOKEN)
    proc = browser(f"{server.url}?token={TOKEN}#task=alpha", tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-loaded="yes"' in proc.stdout and "Executions of alpha" in _text(proc.stdout)
    proc = browser(server.url, tmp_path, "--dump-dom")
    assert "taskengine status" not in proc.stdout and "needs its token" in proc.stdout


@pytest.mark.timeout(60)
def test_list_tasks_pages_by_id_without_mixing_prefixes(make_engine: Any, db_path: str) -> None:
    """What the server's task pages stand on: ids that share a prefix stay apart and in order."""
    engine = make_engine(db_path, jobs={"ok": ok})
    ids = ["a", "a:", "a:b", "a\u00e9", "b", "z" * 256]
    for tid in reversed(ids):
        engine.create_task(tid, job="ok")
        engine.trigger(tid)
    seen, after = [], None
    while True:
        page = engine.list_tasks(after=after, limit=2)
        seen += page
        if len(page) < 2:
            break
        after = page[-1].id
    assert [t.id for t in seen] == ids and all(t.execution_count == 1 for t in seen)
    assert [t.id for t in engine.list_tasks(after="a:", limit=50)] == ids[2:]
    for bad in ({"limit": 0}, {"limit": 10_001}, {"after": ""}, {"after": 3}):
        with pytest.raises(InvalidArgument):
            engine.list_tasks(**bad)
