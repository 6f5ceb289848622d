"""The web dashboard: its HTTP server in-process (bad requests, access, no secrets), the
settings a node refuses, and a headless-Chromium test against 3 real daemons."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from swarmd.core.jobspec import parse_job
from swarmd.core.tasks import Coordinator
from swarmd.dashboard import (
    EVENT_INTERVAL_S,
    Dashboard,
    DashboardError,
    check_settings,
    safe_endpoint,
)
from swarmd.identity import ClusterKeys
from swarmd.watchers import TaskWatchers
from tests.browser import Browser, find_chromium
from tests.harness import ROOT, Daemon, free_port, new_secret, swarmctl, wait_until

ARTIFACTS = ROOT / "test-artifacts"
TOKEN = "t0k3n-" + "a1b2c3d4e5f6a7b8"

# ---------------------------------------------------------------- in-process server


def fake_node(secret: bytes, task_name: str = "hello") -> Any:
    coordinator = Coordinator(node_id="abc123", node_name="n1")
    job = parse_job(
        {"name": task_name, "subtask": [{"id": "main", "kind": "shell", "run": ["echo", "hi"]}]}
    )
    coordinator.submit("abc123-0001", job, time.time())
    return SimpleNamespace(
        members=lambda: [],
        coordination=SimpleNamespace(coordinator=coordinator, watchers=TaskWatchers(coordinator)),
        node_id="abc123",
        name="n1",
        address="127.0.0.1:7946",
        generation=1,
        keys=ClusterKeys.from_secret(secret),
    )


async def raw(
    port: int, data: bytes, read_timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is; return the status, headers and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        writer.write_eof()
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), read_timeout)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def get(path: str, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def serve(node: Any, test: Any, **kwargs: Any) -> None:
    """Run ``test(dashboard)`` against a started dashboard, in a fresh event loop."""

    async def main() -> None:
        dashboard = Dashboard(node, port=0, **kwargs)
        await dashboard.start()
        try:
            await test(dashboard)
        finally:
            await asyncio.wait_for(dashboard.close(), 5)

    asyncio.run(main())


def test_routes_and_bad_requests_never_break_the_server() -> None:
    secret = bytes(range(32))

    async def check(d: Dashboard) -> None:
        p = d.port
        status, headers, body = await raw(p, get("/"))
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b"<title>swarmd</title>" in body and b"http://" not in body.replace(
            b"http://127", b""
        )
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        status, _, body = await raw(p, get("/api/state"))
        state = json.loads(body)
        assert status == 200 and state["node"]["name"] == "n1" and state["task_count"] == 1
        assert state["tasks"][0]["status"]["subtasks"][0]["id"] == "main"
        status, _, body = await raw(p, get("/api/explain/abc123-0001"))
        assert status == 200 and json.loads(body)["subtasks"][0]["id"] == "main"
        assert (await raw(p, get("/api/explain/nope-1")))[0] == 404
        assert (await raw(p, get("/api/explain/a%2Fb")))[0] == 400
        assert (await raw(p, get("/nowhere")))[0] == 404
        assert (await raw(p, b"HEAD / HTTP/1.1\r\nHost: localhost\r\n\r\n"))[2] == b""
        # garbage of every kind gets a 4xx/5xx answer or a closed connection
        assert (await raw(p, b"garbage\r\n\r\n"))[0] == 400
        assert (await raw(p, b"\x00\xff\xfe\r\n\r\n"))[0] == 400
        assert (await raw(p, b"GET / HTTP/2.0\r\n\r\n"))[0] == 505
        assert (await raw(p, b"GET / HTTP/1.1\r\n\r\n"))[0] == 400  # no Host
        assert (await raw(p, b"GET nohost HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 400
        assert (await raw(p, b"GET / HTTP/1.1\r\nHost: localhost\r\nbad header\r\n\r\n"))[0] == 400
        post = b"POST /api/state HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
        assert (await raw(p, post))[0] == 405
        body_req = b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello"
        assert (await raw(p, body_req))[0] == 413
        huge = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: " + b"a" * 20000 + b"\r\n\r\n"
        assert (await raw(p, huge))[0] == 431
        many = b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"X-A: 1\r\n" * 100 + b"\r\n"
        assert (await raw(p, many))[0] == 431
        assert (await raw(p, b"GET / HTTP/1.1\r\nHost: loc"))[0] == 400  # cut short
        # a web page reached through DNS rebinding sends its own name as Host
        status, _, body = await raw(p, get("/api/state").replace(b"127.0.0.1", b"evil.example"))
        assert status == 403 and b"127.0.0.1" in body
        for host in (b"localhost:8080", b"[::1]:80", b"127.0.0.1"):
            assert (await raw(p, get("/").replace(b"127.0.0.1", host)))[0] == 200
        # still serving after all of that
        assert (await raw(p, get("/api/state")))[0] == 200
        assert d.counters["dashboard_bad_requests"] >= 10 and not d.counters["dashboard_errors"]

    serve(fake_node(secret), check)


def test_events_stream_the_state() -> None:
    async def check(d: Dashboard) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", d.port)
        writer.write(get("/api/events"))
        events: list[dict[str, Any]] = []
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"text/event-stream" in head
        while len(events) < 2:
            line = await asyncio.wait_for(reader.readline(), 5)
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
        assert events[1]["time"] > events[0]["time"]  # a fresh state each second
        assert [p["name"] for p in events[0]["tasks"]] == ["hello"]
        writer.close()
        # a slow or idle client cannot hold the server up: close() ends open streams
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", d.port)
        writer2.write(get("/api/events"))
        await asyncio.wait_for(reader2.readuntil(b"data: "), 5)

    serve(fake_node(bytes(32)), check)


def test_a_task_change_is_pushed_without_waiting_for_the_interval() -> None:
    """The stream uses the coordinator's watchers, as `swarmctl --wait` does."""
    node = fake_node(bytes(32))

    async def check(d: Dashboard) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", d.port)
        writer.write(get("/api/events"))
        await asyncio.wait_for(reader.readuntil(b"data: "), 5)
        await asyncio.wait_for(reader.readline(), 5)
        first = time.monotonic()
        await asyncio.sleep(0.3)
        node.coordination.watchers.changed(node.coordination.coordinator.task_ids()[0])
        await asyncio.wait_for(reader.readuntil(b"data: "), 5)
        assert time.monotonic() - first < EVENT_INTERVAL_S - 0.2  # not the next interval
        writer.close()

    serve(node, check)


def test_access_with_a_token() -> None:
    async def check(d: Dashboard) -> None:
        p = d.port
        status, headers, _ = await raw(p, get("/api/state"))
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert (await raw(p, get("/")))[0] == 401
        assert (await raw(p, get("/api/state?token=wrong")))[0] == 401
        assert (await raw(p, get("/api/state", "Authorization: Bearer nope")))[0] == 401
        assert (await raw(p, get(f"/api/state?token={TOKEN}")))[0] == 200
        assert (await raw(p, get("/api/state", f"Authorization: Bearer {TOKEN}")))[0] == 200
        # with a token, any Host may be used (the token is the protection)
        other_host = get(f"/?token={TOKEN}").replace(b"127.0.0.1", b"desk.lan:8080")
        assert (await raw(p, other_host))[0] == 200

    serve(fake_node(bytes(32)), check, token=TOKEN)


def test_a_response_holding_the_secret_is_withheld() -> None:
    secret = bytes(range(100, 132))

    async def check(d: Dashboard) -> None:
        status, _, body = await raw(d.port, get("/api/state"))
        assert status == 500 and secret.hex().encode() not in body
        assert d.counters["dashboard_withheld"] == 1

    # a task named after the secret (whatever the cause) must not carry it out
    serve(fake_node(secret, task_name=secret.hex()[:60]), check)


def test_settings() -> None:
    for bind in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        check_settings(bind, None)
    check_settings("0.0.0.0", TOKEN)
    for bind in ("0.0.0.0", "::", "192.168.1.20", "desk.lan"):
        with pytest.raises(DashboardError, match="dashboard_token"):
            check_settings(bind, None)
    with pytest.raises(DashboardError, match="at least 16"):
        check_settings("0.0.0.0", "short")
    with pytest.raises(DashboardError, match="dashboard_token"):
        Dashboard(fake_node(bytes(32)), bind="0.0.0.0")
    assert safe_endpoint("http://user:pw@gpu:8001/v1?api_key=x#f") == "http://gpu:8001/v1"
    assert safe_endpoint("http://[::1]:8001/v1") == "http://[::1]:8001/v1"


# ---------------------------------------------------------------- real daemons


def test_node_refuses_a_dashboard_beyond_loopback_without_a_token(tmp_path: Path) -> None:
    config = tmp_path / "swarmd.toml"
    config.write_text(f'[node]\ndashboard_port = {free_port()}\ndashboard_bind = "0.0.0.0"\n')
    cmd = [sys.executable, "-m", "swarmd", "run", "--state-dir", str(tmp_path / "s")]
    cmd += ["--bind", "127.0.0.1", "--port", str(free_port()), "--no-mdns", "--config", str(config)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert "dashboard_bind '0.0.0.0' is not a loopback address: set dashboard_token" in out.stderr
    assert not (tmp_path / "s" / "cluster.secret").exists()  # refused before it started


def wait_http(url: str, **kwargs: Any) -> httpx.Response:
    def answer() -> httpx.Response | None:
        try:
            return httpx.get(url, timeout=2, **kwargs)
        except httpx.TransportError:
            return None

    return wait_until(answer, 15, interval=0.1, what=f"{url} to answer")


def test_node_serves_a_token_protected_dashboard(tmp_path: Path) -> None:
    secret = new_secret()
    port = free_port()
    config = f'[node]\ndashboard_port = {port}\ndashboard_bind = "0.0.0.0"\n'
    config += f'dashboard_token = "{TOKEN}"\n'
    d = Daemon(tmp_path, "n1", secret=secret, config=config, args=("--no-mdns",)).start()
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_http(f"{url}/api/state").status_code == 401
        assert httpx.get(f"{url}/", timeout=5).status_code == 401
        ok = httpx.get(f"{url}/api/state", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()["peers"][0]["name"] == "n1"
        page = httpx.get(f"{url}/?token={TOKEN}", timeout=5)
        assert page.status_code == 200 and "swarmd" in page.text
        for response in (ok, page):
            assert secret not in response.text and TOKEN not in response.text
        assert d.term() == 0
    finally:
        d.stop()


N1_CONFIG = """
[node]
allow_shell = false
dashboard_port = {port}

[models.fast]
endpoint = "http://127.0.0.1:9/v1"
model = "Qwen/Qwen3.5-1.5B"
capabilities = ["lint", "format"]
"""
N2_CONFIG = """
[hardware]
gpus = [{ name = "RTX 4090", vram = "24GiB" }, { name = "RTX 3090", vram = "24GiB" }]
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[list[Daemon], str, str]]:
    """n1 (coordinator, dashboard, a model), n2 (two declared GPUs), n3; with its
    dashboard URL and the cluster secret."""
    secret = new_secret()
    port = free_port()
    nodes = [
        Daemon(tmp_path, "n1", secret=secret, config=N1_CONFIG.format(port=port)),
        Daemon(tmp_path, "n2", secret=secret, config=N2_CONFIG),
        Daemon(tmp_path, "n3", secret=secret),
    ]
    for d in nodes:
        d.start()
    try:
        for d in nodes:
            d.wait_ready()
        everyone = {"n1": "alive", "n2": "alive", "n3": "alive"}
        wait_until(lambda: all(d.states() == everyone for d in nodes), 15, what="cluster")
        yield nodes, f"http://127.0.0.1:{port}/", secret
    finally:
        for d in nodes:
            d.stop()


def submit(d: Daemon, *args: str) -> str:
    out = swarmctl("--json", "submit", *args, state_dir=d.state_dir)
    assert out.returncode == 0, out.stderr
    task: str = json.loads(out.stdout)["task"]
    return task


PEER_KEYS = {"id", "name", "address", "state", "self", "generation", "draining", "rtt_ms"}
PEER_KEYS |= {"last_seen_s", "cpu", "memory", "gpus", "models"}


def test_api_state_shape_and_no_secrets(cluster: tuple[list[Daemon], str, str]) -> None:
    nodes, url, secret = cluster
    n1 = nodes[0]
    task = submit(n1, "--", "echo", "hi")

    def done() -> dict[str, Any] | None:
        state: dict[str, Any] = httpx.get(url + "api/state", timeout=5).json()
        return state if state["tasks"] and state["tasks"][0]["state"] == "done" else None

    state = wait_until(done, 30, interval=0.1, what="the task done in /api/state")
    assert state["node"]["name"] == "n1" and state["node"]["id"] == n1.node_id()
    # the peers are the rows of `swarmctl peers --json`, plus measured tokens/s
    assert [p["name"] for p in state["peers"]] == ["n1", "n2", "n3"]
    ctl = json.loads(swarmctl("--json", "peers", state_dir=n1.state_dir).stdout)
    assert [p["id"] for p in ctl] == [p["id"] for p in state["peers"]]
    for row in state["peers"]:
        assert set(row) >= PEER_KEYS and row["state"] == "alive"
    assert [g["name"] for g in state["peers"][1]["gpus"]] == ["RTX 4090", "RTX 3090"]
    model = state["peers"][0]["models"][0]
    assert model["name"] == "fast" and "tokens_per_s" in model and "latency_ms" in model
    (summary,) = state["tasks"]
    assert summary["id"] == task and summary["done"] == summary["subtasks"] == 1
    (sub,) = summary["status"]["subtasks"]
    assert sub["state"] == "done" and sub["peer"] in ("n2", "n3") and sub["attempts"] == 1
    explain = httpx.get(f"{url}api/explain/{task}", timeout=5).json()
    (row,) = explain["subtasks"]
    assert {c["peer"] for c in row["candidates"]} == {"n1", "n2", "n3"}
    assert sum(c["chosen"] for c in row["candidates"]) == 1
    # nothing served carries the cluster secret or a join token
    token = swarmctl("join-token", state_dir=n1.state_dir).stdout.strip()
    assert token.startswith("swarmd2-")
    with httpx.stream("GET", url + "api/events", timeout=5) as events:
        first = next(line for line in events.iter_lines() if line.startswith("data: "))
    bodies = [first] + [
        httpx.get(url + path, timeout=5).text
        for path in ("", "api/state", f"api/explain/{task}", "nowhere")
    ]
    for body in bodies:
        assert secret not in body and secret.upper() not in body and token not in body
        assert token[len("swarmd2-") :][:20] not in body


CHROMIUM = find_chromium()


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH (apt-get install chromium; .ci/run installs it as root)",
)
def test_dashboard_in_a_browser(cluster: tuple[list[Daemon], str, str], tmp_path: Path) -> None:
    pytest.importorskip("websockets", reason="pip install websockets (the test extra)")
    nodes, url, _secret = cluster
    n1, n3 = nodes[0], nodes[2]
    assert CHROMIUM is not None
    with Browser(CHROMIUM, width=1440, height=900) as browser:
        browser.goto(url)
        # the three peers, alive, live over server-sent events
        names = browser.wait_for(
            "(() => { const rows = [...document.querySelectorAll('#peers tr.peer')];"
            " return rows.length === 3 && rows.every(r => r.dataset.state === 'alive')"
            " && rows.map(r => r.dataset.peer).join(','); })()",
            15,
            what="three alive peers on the page",
        )
        assert names == "n1,n2,n3"
        assert browser.eval("document.querySelector('#conn').dataset.live") == "yes"
        gpus = browser.eval("document.querySelectorAll('tr.peer[data-peer=n2] .gpu').length")
        assert gpus == 2
        assert "RTX 4090" in browser.eval("document.querySelector('#peers').innerText")

        # a submitted task appears and reaches done
        task = submit(n1, "--", "echo", "hi")
        sel = f".task[data-task='{task}']"
        browser.wait_for(f'!!document.querySelector("{sel}")', 10, what="the task on the page")
        browser.wait_for(
            f"document.querySelector(\"{sel}\").dataset.state === 'done'",
            30,
            what="the task done on the page",
        )
        sub_state = browser.eval(f'document.querySelector("{sel} tr.subtask").dataset.state')
        assert sub_state == "done"

        # click its subtask: the placement explanation with one row per peer
        browser.click(f"{sel} tr.subtask")
        peers = browser.wait_for(
            "(() => { const rows = [...document.querySelectorAll('#explain tr.candidate')];"
            " return rows.length === 3 && rows.map(r => r.dataset.peer).sort().join(','); })()",
            10,
            what="the candidate table",
        )
        assert peers == "n1,n2,n3"
        chosen = browser.eval("document.querySelector('#explain tr.candidate.chosen').dataset.peer")
        peer = browser.eval(f'document.querySelector("{sel} tr.subtask td:nth-child(4)").innerText')
        assert chosen == peer and chosen in ("n2", "n3")
        assert "shell disabled" in browser.eval("document.querySelector('#explain').innerText") or (
            browser.eval("document.querySelectorAll('#explain tr.candidate .no').length") >= 1
        )

        # a task whose deadline cannot be met (run anyway): the page says so
        late = tmp_path / "late.toml"
        late.write_text(
            'name = "late"\ndeadline = "20s"\ndeadline_best_effort = true\n[[subtask]]\n'
            'id = "w"\nkind = "shell"\nrun = ["sleep", "30"]\nestimate = "10m"\n'
        )
        task = submit(n1, "-f", str(late))
        head = browser.wait_for(
            f"(() => {{ const h = document.querySelector(\".task[data-task='{task}'] .meta\");"
            " return h && h.innerText.includes('unreachable') && h.innerText; })()",
            15,
            what="the unreachable deadline on the page",
        )
        assert "deadline in" in head
        assert swarmctl("cancel", task, state_dir=n1.state_dir).returncode == 0

        # SIGKILL n3: the page shows it dead
        n3.signal(signal.SIGKILL)
        killed = time.monotonic()
        browser.wait_for(
            "document.querySelector('tr.peer[data-peer=n3]').dataset.state === 'dead'",
            20,
            what="n3 dead on the page",
        )
        seconds = time.monotonic() - killed
        print(f"n3 shown dead {seconds:.1f} s after SIGKILL")
        n3.wait_exit(10)
        alive = browser.eval("document.querySelectorAll('#peers tr.peer[data-state=alive]').length")
        assert alive == 2
        shot = browser.screenshot(ARTIFACTS / "dashboard.png")
        assert shot.stat().st_size > 10_000
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
