"""The opt-in HTTP port of real daemons: /metrics (Prometheus) and /healthz."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from swarmd.config import Config, ConfigError, load
from swarmd.httpapi import HttpApi
from tests.harness import Daemon, free_port, new_secret, swarmctl, wait_until

# n1 coordinates and runs no shell work, so a task's dispatch crosses the network to n2
COORDINATOR_CONFIG = "[node]\nallow_shell = false\nmetrics_port = {port}\n"
TOKEN = "0123456789abcdef0123"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon, int]]:
    secret = new_secret()
    port = free_port()
    n1 = Daemon(tmp_path, "n1", secret=secret, config=COORDINATOR_CONFIG.format(port=port))
    n2 = Daemon(tmp_path, "n2", secret=secret, args=("--join", n1.address))
    nodes = [n1, n2]
    for d in nodes:
        d.start()
    for d in nodes:
        d.wait_ready()
    everyone = {"n1": "alive", "n2": "alive"}
    wait_until(lambda: all(d.states() == everyone for d in nodes), 15, what="cluster")
    yield n1, n2, port
    for d in nodes:
        d.stop()


def http(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read to EOF; (status, headers, body), status 0 if closed unanswered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)  # EOF: a half request ends here
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    if not data:
        return 0, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    return http(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """sample name + sorted labels -> value, parsed by prometheus_client's own parser."""
    status, headers, body = get(port, "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(metrics: dict[Any, float], sample: str, **labels: str) -> float:
    return metrics[(sample, tuple(sorted(labels.items())))]


def health(port: int) -> tuple[int, dict[str, Any]]:
    status, headers, body = get(port, "/healthz")
    assert headers["content-type"] == "application/json"
    return status, json.loads(body)


def tcp_listen_ports(d: Daemon) -> set[int]:
    assert d.proc is not None
    conns = psutil.Process(d.proc.pid).net_connections(kind="tcp")
    return {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}


def test_a_scrape_after_a_task_shows_the_counters_moved(
    cluster: tuple[Daemon, Daemon, int],
) -> None:
    n1, n2, port = cluster
    before = scrape(port)
    assert value(before, "swarmd_peers", state="alive") == 2
    assert value(before, "swarmd_peers", state="dead") == 0
    assert value(before, "swarmd_dispatch_latency_seconds_count") == 0
    assert value(before, "swarmd_subtasks", state="done") == 0
    info = value(before, "swarmd_info", node=n1.node_id(), name="n1", version="0.1.0")
    assert info == 1

    out = swarmctl("--json", "submit", "--wait", "--", "echo", "hi", state_dir=n1.state_dir)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["subtasks"][0]["peer"] == "n2"

    after = scrape(port)
    assert value(after, "swarmd_dispatch_latency_seconds_count") == 1
    latency = value(after, "swarmd_dispatch_latency_seconds_sum")
    assert 0 < latency < 5
    assert value(after, "swarmd_subtasks", state="done") == 1
    assert value(after, "swarmd_tasks", state="done") == 1
    assert value(after, "swarmd_redispatches_total") == 0
    assert value(after, "swarmd_fenced_results_total") == 0
    assert value(after, "swarmd_messages_received_total") > value(
        before, "swarmd_messages_received_total"
    )
    # n1 runs no shell work: the attempt ran on n2, whose counters the stats show
    assert value(after, "swarmd_worker_attempts_total", outcome="ok") == 0
    assert n2.counters()["worker_outcome_ok"] == 1
    assert value(after, "process_resident_memory_bytes") > 0
    print(f"dispatch latency n1 -> n2 (accepted): {latency * 1000:.2f} ms")

    status, body = health(port)
    assert status == 200
    assert body["status"] == "ok"
    assert body["node"] == n1.node_id()
    assert body["peers_alive"] == 2
    assert body["uptime_s"] > 0
    assert body["draining"] is False

    # swarmd_draining and the drained peer count follow swarmctl drain
    assert swarmctl("drain", "n2", state_dir=n1.state_dir).returncode == 0
    wait_until(
        lambda: value(scrape(port), "swarmd_peers_draining") == 1, 10, what="n2 draining seen"
    )


def test_bad_requests_get_400_or_a_closed_connection_and_the_node_keeps_serving(
    cluster: tuple[Daemon, Daemon, int],
) -> None:
    n1, _, port = cluster
    cases = {
        "garbage": bytes(range(256)) * 4 + b"\r\n\r\n",
        "no newline, too long": b"\x00\xff" * 20000,
        "huge request line": b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n",
        "huge header": b"GET /metrics HTTP/1.1\r\nX: " + b"b" * 100_000 + b"\r\n\r\n",
        "too many headers": b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
        "http/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "not http": b"hello\r\n\r\n",
        "relative target": b"GET metrics HTTP/1.1\r\n\r\n",
        "half a request": b"GET /metr",
    }
    for what, request in cases.items():
        status, _, _ = http(port, request)
        assert status in (0, 400, 431), what
        assert health(port)[0] == 200, f"after {what}"
    assert http(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")[0] == 405
    assert http(port, b"GET /metrics HTTP/1.1\r\n\r\n")[0] == 400  # HTTP/1.1 needs a Host
    assert get(port, "/nope")[0] == 404
    status, headers, body = http(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    assert get(port, "/metrics?x=1")[0] == 200
    assert n1.proc is not None and n1.proc.poll() is None
    assert n1.try_peers() is not None
    assert n1.counters()["http_bad_requests"] >= 5
    assert "Traceback" not in n1.log()


def test_metrics_are_off_by_default(cluster: tuple[Daemon, Daemon, int]) -> None:
    n1, n2, port = cluster
    assert tcp_listen_ports(n1) == {n1.port, port}
    assert tcp_listen_ports(n2) == {n2.port}  # nothing but the cluster port
    assert "metrics on" not in n2.log()
    assert f"metrics on http://127.0.0.1:{port}/metrics" in n1.log()


def test_a_taken_metrics_port_is_a_startup_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        d = Daemon(tmp_path, "n1", config=f"[node]\nmetrics_port = {port}\n").start()
        assert d.wait_exit(15) == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in d.log()
    assert "Traceback" not in d.log()


def test_health_is_503_when_the_gossip_loop_stalls_or_the_node_stops() -> None:
    node = SimpleNamespace(
        config=Config(state_dir=Path("/nonexistent")),
        node_id="d35c0ffee0000001",
        name="desk",
        draining=True,
        counters={},
        members=list,
        worker=SimpleNamespace(running={}),
        coordination=SimpleNamespace(),
        last_tick=time.monotonic(),
        stopping=False,
    )
    api = HttpApi(node, logging.getLogger("test"))
    assert api.health()[0] == 200
    assert api.health()[1]["draining"] is True  # draining is healthy: it just takes no work
    node.last_tick -= 3.0  # 15 gossip intervals of 200 ms without a tick
    status, body = api.health()
    assert (status, body["status"]) == (503, "stalled") and body["last_tick_s"] >= 3.0
    node.last_tick = time.monotonic()
    node.stopping = True
    status, body = api.health()
    assert (status, body["status"]) == (503, "stopping")


def test_config_keys(tmp_path: Path) -> None:
    path = tmp_path / "swarmd.toml"
    path.write_text(
        f'[node]\nmetrics_port = 9464\nmetrics_bind = "0.0.0.0"\nmetrics_token = "{TOKEN}"\n'
        'drain_grace = "5s"\n'
    )
    cfg = load(path, {}, state_dir=tmp_path)
    assert (cfg.metrics_port, cfg.metrics_bind, cfg.drain_grace_s) == (9464, "0.0.0.0", 5.0)
    assert cfg.metrics_token == TOKEN
    default = load(None, {}, state_dir=tmp_path)
    assert (default.metrics_port, default.metrics_bind, default.drain_grace_s) == (
        None,
        "127.0.0.1",
        20.0,
    )
    for bad, message in (
        ("metrics_port = 70000", "metrics_port 70000: expected 1-65535"),
        ('metrics_port = "9464"', "metrics_port: expected int"),
        ('drain_grace = "soon"', "drain_grace: bad duration"),
        (
            'metrics_port = 9464\nmetrics_bind = "0.0.0.0"',
            "metrics_bind '0.0.0.0' is not a loopback address: set metrics_token too",
        ),
        ('metrics_port = 9464\nmetrics_bind = "::"', "metrics_bind '::' is not a loopback"),
        ('metrics_port = 9464\nmetrics_bind = "10.0.0.5"', "'10.0.0.5' is not a loopback"),
        ('metrics_port = 9464\nmetrics_token = "short"', "metrics_token: use at least 16"),
    ):
        path.write_text(f"[node]\n{bad}\n")
        with pytest.raises(ConfigError, match=message):
            load(path, {}, state_dir=tmp_path)


def test_metrics_beyond_loopback_need_a_token_and_then_every_request_carries_it(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    open_config = f'[node]\nmetrics_port = {free_port()}\nmetrics_bind = "0.0.0.0"\n'
    open_bind = Daemon(tmp_path, "open", config=open_config)
    daemons.append(open_bind)
    assert open_bind.start().wait_exit(15) == 2  # refused at config load: nothing served
    assert "metrics_bind '0.0.0.0' is not a loopback address" in open_bind.log()
    assert "Traceback" not in open_bind.log()

    port = free_port()
    config = f'[node]\nmetrics_port = {port}\nmetrics_token = "{TOKEN}"\n'
    d = Daemon(tmp_path, "guarded", config=config, args=("--no-mdns",))
    daemons.append(d)
    d.start().wait_ready()
    for path in ("/metrics", "/healthz", "/metrics?token=wrong"):
        status, headers, body = get(port, path)
        assert (status, headers["www-authenticate"]) == (401, "Bearer"), path
        assert b"swarmd_" not in body and d.node_id().encode() not in body
    wrong = b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\r\n"
    assert http(port, wrong)[0] == 401
    bearer = f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    status, _, body = http(port, bearer)
    assert status == 200 and b"swarmd_peers" in body
    assert get(port, f"/healthz?token={TOKEN}")[0] == 200
    assert d.counters()["http_unauthorized"] == 4
