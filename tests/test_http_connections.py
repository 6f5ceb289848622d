"""Idle, half-open and slow connections cannot starve /healthz (the metrics port)."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

from swarmd.httpapi import MAX_CONNECTIONS, REQUEST_TIMEOUT_S
from tests.harness import Daemon, free_port, wait_until

IDLE = 40
ANSWER_WITHIN_S = 2.0  # well inside REQUEST_TIMEOUT_S, after which idle ones go anyway


def test_idle_connections_cannot_starve_healthz(tmp_path: Path, daemons: list[Daemon]) -> None:
    assert IDLE > MAX_CONNECTIONS and ANSWER_WITHIN_S < REQUEST_TIMEOUT_S
    port = free_port()
    d = Daemon(tmp_path, "n1", args=("--no-mdns",), config=f"[node]\nmetrics_port = {port}\n")
    daemons.append(d)
    d.start().wait_ready()
    url = f"http://127.0.0.1:{port}/healthz"
    wait_until(lambda: _get(url)[0] == 200, 10, what="/healthz to answer")

    idle: list[socket.socket] = []
    try:
        for i in range(IDLE):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:  # half of them start a request and never finish it
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            idle.append(s)
        for _ in range(3):  # and again: each time within the deadline
            started = time.monotonic()
            status, body = _get(url)
            took = time.monotonic() - started
            print(f"/healthz with {IDLE} idle connections open: {status} in {took * 1000:.1f} ms")
            assert status == 200 and json.loads(body)["status"] == "ok"
            assert took < ANSWER_WITHIN_S
    finally:
        for s in idle:
            s.close()
    shed = d.counters().get("http_shed", 0)
    assert shed >= IDLE - MAX_CONNECTIONS, shed
    assert d.states() == {"n1": "alive"}


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=ANSWER_WITHIN_S) as response:
            return response.status, response.read()
    except OSError as exc:  # refused, reset, closed without an answer, timed out
        return 0, repr(exc).encode()
