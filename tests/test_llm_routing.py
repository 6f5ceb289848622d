"""Routing by what is measured, through real daemons and a real llama.cpp server.

"slow" declares an 80 GiB GPU, so advertised hardware says it is the fast one, but its
endpoint is the llama.cpp server behind a proxy that holds every request for
DELAY_S; "fast" has no GPU and reaches the same server directly. "coord" serves no
model and coordinates. Before any request the GPU node wins (hardware estimate). After
a warm-up pinned to each node, each worker's measured time to first token and tokens/s
are gossiped: they show in `peers --json` on every node, and an unpinned request goes
to "fast" — from "coord", whose own measurements decide, and from "slow", which sent
nothing and prices with what "fast" and itself gossip.

And a full endpoint queues on the coordinator: it never sends a profile more requests
than its max_concurrency.
"""

from __future__ import annotations

import json
import textwrap
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.harness import Daemon, new_secret, swarmctl, wait_until
from tests.llm_server import LlamaServer
from tests.test_llm_cluster import DelayProxy

DELAY_S = 0.5
WARM_UP = 3  # requests pinned to each node


def profile(endpoint: str, model: str) -> str:
    return (
        f'[models.tiny]\nendpoint = "{endpoint}"\nmodel = "{model}"\n'
        'capabilities = ["lint"]\nmax_concurrency = 2\n'
    )


GPU = '[hardware]\ngpus = [{ name = "A100", vram = "80GiB" }]\n'


def submit(d: Daemon, work: Path, node: str | None) -> dict[str, Any]:
    """One llm subtask (pinned to ``node`` if given), waited for; its final status."""
    pin = f'node = "{node}"\n' if node else ""
    job = f"""
        name = "routing"
        [[subtasks]]
        id = "main"
        kind = "llm"
        capability = "lint"
        prompt = "Fix the lint."
        max_tokens = 24
        {pin}"""
    work.mkdir(parents=True, exist_ok=True)
    (work / "job.toml").write_text(textwrap.dedent(job))
    out = swarmctl(
        "--json", "submit", "--wait", "-f", "job.toml", state_dir=d.state_dir, cwd=work,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr + out.stdout
    final: dict[str, Any] = json.loads(out.stdout)
    assert final["state"] == "done", final
    return final


def placement(d: Daemon, task: str) -> list[dict[str, Any]]:
    out = swarmctl("--json", "explain", task, state_dir=d.state_dir)
    assert out.returncode == 0, out.stderr
    explain = json.loads(out.stdout)
    rows: list[dict[str, Any]] = explain["subtasks"][0]["candidates"]
    return rows


def measured(d: Daemon) -> dict[str, dict[str, Any]] | None:
    """Each model node's profile as `peers --json` shows it, once both are measured
    and show no request running (the last one's end is gossiped within a second)."""
    out = {p["name"]: p["models"][0] for p in d.peers() if p["models"]}
    ready = all(
        m["ttft_ms"] is not None and m["tokens_per_s"] is not None and m["in_flight"] == 0
        for m in out.values()
    )
    return out if ready and set(out) == {"slow", "fast"} else None


def test_measured_speed_beats_advertised_hardware(llama: LlamaServer, tmp_path: Path) -> None:
    host, port = llama.endpoint.split("//")[1].split("/")[0].split(":")
    proxy = DelayProxy((host, int(port)), DELAY_S)
    secret = new_secret()
    slow_endpoint = f"http://127.0.0.1:{proxy.port}/v1"
    configs = {
        "coord": "",
        "slow": GPU + profile(slow_endpoint, llama.model),
        "fast": profile(llama.endpoint, llama.model),
    }
    nodes = {name: Daemon(tmp_path, name, secret=secret, config=c) for name, c in configs.items()}
    coord = nodes["coord"]
    try:
        for d in nodes.values():
            d.start()
        for d in nodes.values():
            d.wait_ready()
        everyone = {name: "alive" for name in nodes}
        wait_until(lambda: coord.states() == everyone, 20, what="three alive")
        wait_until(
            lambda: {p["name"] for p in coord.peers() if p["models"]} == {"slow", "fast"},
            20,
            what="both model profiles gossiped",
        )

        # Nothing measured: advertised hardware decides, for the GPU node.
        first = submit(coord, tmp_path / "w0", None)
        assert first["subtasks"][0]["peer"] == "slow"
        rows = {r["peer"]: r for r in placement(coord, first["id"]) if r["feasible"]}
        assert "from 80.0 GiB GPU" in rows["slow"]["basis"], rows

        for i in range(WARM_UP):
            for name in ("slow", "fast"):
                done = submit(coord, tmp_path / f"w{name}{i}", name)
                assert done["subtasks"][0]["peer"] == name

        # What each worker measured is gossiped: every node shows it.
        for d in nodes.values():
            seen = wait_until(lambda d=d: measured(d), 20, what=f"measurements on {d.name}")
            print(f"{d.name} sees {seen}")
            assert seen["slow"]["ttft_ms"] > seen["fast"]["ttft_ms"] + DELAY_S * 1000 / 2

        # The coordinator that sent the warm-up prices with its own measurements.
        routed = submit(coord, tmp_path / "w1", None)
        assert routed["subtasks"][0]["peer"] == "fast"
        rows = {r["peer"]: r for r in placement(coord, routed["id"]) if r["feasible"]}
        assert rows["fast"]["chosen"] and rows["fast"]["basis"].startswith("measured ")
        assert rows["slow"]["basis"].startswith("measured ")
        assert rows["slow"]["run_s"] > rows["fast"]["run_s"] + DELAY_S / 2

        # One that sent nothing prices with what the workers gossiped.
        slow = nodes["slow"]
        routed = submit(slow, tmp_path / "w2", None)
        assert routed["subtasks"][0]["peer"] == "fast"
        rows = {r["peer"]: r for r in placement(slow, routed["id"]) if r["feasible"]}
        assert rows["fast"]["basis"].startswith("peer-measured "), rows
        assert rows["slow"]["basis"].startswith("peer-measured "), rows
    finally:
        for d in nodes.values():
            d.stop()
        proxy.close()


class CountingProxy:
    """An HTTP proxy in front of the llama.cpp server that counts the completions in
    flight at once (not the 1-token latency probes), buffering each answer whole."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.lock = threading.Lock()
        self.active = self.peak = self.served = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.forward(None)

            def do_POST(self) -> None:
                self.forward(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

            def forward(self, body: bytes | None) -> None:
                counted = body is not None and json.loads(body).get("max_tokens") != 1
                if counted:
                    with proxy.lock:
                        proxy.active += 1
                        proxy.peak = max(proxy.peak, proxy.active)
                try:
                    url = proxy.upstream + self.path.removeprefix("/v1")
                    headers = {"Content-Type": "application/json"}
                    request = urllib.request.Request(url, data=body, headers=headers)
                    try:
                        with urllib.request.urlopen(request, timeout=60) as resp:
                            status, kind, data = (
                                resp.status,
                                resp.headers["Content-Type"],
                                resp.read(),
                            )
                    except urllib.error.HTTPError as exc:
                        status, kind, data = exc.code, "application/json", exc.read()
                    self.send_response(status)
                    self.send_header("Content-Type", kind or "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    if counted:
                        with proxy.lock:
                            proxy.active -= 1
                            proxy.served += 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_full_endpoint_queues_on_the_coordinator(llama: LlamaServer, tmp_path: Path) -> None:
    """Ten requests for a profile with max_concurrency 2: the coordinator never has more
    than 2 out at its server (the worker never had to refuse one), and all complete."""
    proxy = CountingProxy(llama.endpoint)
    secret = new_secret()
    coord = Daemon(tmp_path, "coord", secret=secret)
    worker = Daemon(tmp_path, "w", secret=secret, config=profile(proxy.endpoint, llama.model))
    try:
        for d in (coord, worker):
            d.start()
        for d in (coord, worker):
            d.wait_ready()
        wait_until(lambda: any(p["models"] for p in coord.peers()), 20, what="w's profile")
        subtasks = "".join(
            f'[[subtasks]]\nid = "p{i}"\nkind = "llm"\ncapability = "lint"\n'
            f'prompt = "Fix lint {i}."\nmax_tokens = 64\n'
            for i in range(10)
        )
        work = tmp_path / "work"
        work.mkdir()
        (work / "job.toml").write_text(f'name = "ten"\n{subtasks}')
        out = swarmctl(
            "--json", "submit", "--wait", "-f", "job.toml", state_dir=coord.state_dir, cwd=work,
            timeout=180,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr + out.stdout
        final = json.loads(out.stdout)
        assert final["state"] == "done"
        assert {s["peer"] for s in final["subtasks"]} == {"w"}
        print(f"peak in flight {proxy.peak}, served {proxy.served}")
        assert proxy.served == 10
        assert proxy.peak == 2  # used to its limit, never beyond
        assert worker.counters().get("worker_refused", 0) == 0
    finally:
        for d in (coord, worker):
            d.stop()
        proxy.close()
