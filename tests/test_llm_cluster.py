"""The LLM path through real daemons and a real llama.cpp OpenAI-compatible server.

n2 serves the model directly; n3 serves the same model behind a proxy that adds
150 ms to every request, so its measured latency is higher. An llm subtask routed by
capability must go to n2, get a completion, and record usage.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

from tests.harness import Daemon, new_secret, swarmctl, wait_until
from tests.llm_server import LlamaServer

DELAY_S = 0.15


class DelayProxy:
    """A TCP proxy on 127.0.0.1 that holds every client->server chunk for ``delay``."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream, self.delay = upstream, delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream, timeout=30)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        try:
            while data := src.recv(65536):
                if slow:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        self.server.close()


def model_config(endpoint: str, model: str) -> str:
    return (
        f'[models.fast]\nendpoint = "{endpoint}"\nmodel = "{model}"\n'
        'capabilities = ["lint", "format"]\nmax_concurrency = 2\n'
    )


def test_llm_subtask_goes_to_the_faster_node_and_records_usage(
    llama: LlamaServer, tmp_path: Path
) -> None:
    host, port = llama.endpoint.split("//")[1].split("/")[0].split(":")
    proxy = DelayProxy((host, int(port)), DELAY_S)
    secret = new_secret()
    nodes = [
        Daemon(tmp_path, "n1", secret=secret),
        Daemon(tmp_path, "n2", secret=secret, config=model_config(llama.endpoint, llama.model)),
        Daemon(
            tmp_path,
            "n3",
            secret=secret,
            config=model_config(f"http://127.0.0.1:{proxy.port}/v1", llama.model),
        ),
    ]
    try:
        for d in nodes:
            d.start()
        for d in nodes:
            d.wait_ready()
        n1 = nodes[0]

        def latencies() -> dict[str, float] | None:
            out = {}
            for p in n1.peers():
                for m in p["models"]:
                    if m["latency_ms"] is not None:
                        out[p["name"]] = m["latency_ms"]
            return out if {"n2", "n3"} <= out.keys() else None

        measured = wait_until(latencies, 30, what="measured model latency in peers --json")
        print(f"measured latency_ms: {measured}")
        assert measured["n3"] > measured["n2"] + DELAY_S * 1000 / 2

        out = swarmctl(
            "--json", "submit", "--wait", "--prompt", "Fix the lint.", "--capability", "lint",
            state_dir=n1.state_dir,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr + out.stdout
        final = json.loads(out.stdout)
        assert final["state"] == "done"
        assert final["subtasks"][0]["peer"] == "n2"

        result = json.loads(
            swarmctl("--json", "result", final["id"], state_dir=n1.state_dir).stdout
        )
        sub = result["subtasks"]["main"]
        assert sub["output"] and len(sub["output"].split()) > 0
        assert sub["usage"]["completion_tokens"] > 0
        assert sub["usage"]["tokens_per_s"] > 0

        explain = json.loads(
            swarmctl("--json", "explain", final["id"], state_dir=n1.state_dir).stdout
        )
        text = json.dumps(explain)
        assert "n3" in text and "n2" in text  # both were candidates, n2 scored better
    finally:
        for d in nodes:
            d.stop()
        proxy.close()
