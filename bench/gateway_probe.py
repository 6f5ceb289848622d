"""What one gateway request costs the daemon itself: a plain blocking HTTP/1.1 client
(``http.client``, one kept connection per target) alternating direct calls and calls
through one swarmd gateway, sequentially, with the daemon's CPU time per request.

    python bench/gateway_probe.py [--requests 1000] [--upstream stub|llama]

``stub`` (bench/stub_upstream.py, answers at once) shows the gateway's own cost;
``llama`` the tiny llama.cpp server of the tests. Unlike bench/gateway.py (httpx's
async client, whose own 0.65 ms of Python per call shares this small machine's caches
with the daemon), the client here does next to nothing between requests. Prints the
medians and p99s, the added latency and the daemon's CPU (user + system) per request.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import quantile  # noqa: E402
from bench.gateway_targets import STUB_MODEL, stub_upstream, swarmd_gateway  # noqa: E402
from tests.llm_server import llama_python, llama_server  # noqa: E402


def _connection(base: str) -> http.client.HTTPConnection:
    host, port = base.split("//")[1].split("/")[0].split(":")
    return http.client.HTTPConnection(host, int(port))


def _call(conn: http.client.HTTPConnection, model: str, i: int) -> float:
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 8}
    )
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    reply = conn.getresponse()
    data = reply.read()
    if reply.status != 200:
        raise RuntimeError(f"HTTP {reply.status}: {data[:200]!r}")
    return time.perf_counter() - t0


def probe(requests: int, upstream: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="swarmd-probe-") as tmp, contextlib.ExitStack() as st:
        workdir = Path(tmp)
        stub = st.enter_context(stub_upstream(workdir))
        base, model = stub, STUB_MODEL
        if upstream == "llama":
            python, why = llama_python()
            if python is None:
                return {"skipped": f"llama-cpp-python is not available: {why}"}
            llama = st.enter_context(llama_server(python, workdir))
            base, model = llama.endpoint, llama.model
        gateway = st.enter_context(swarmd_gateway(workdir, base, model, stub))
        daemon = psutil.Process(gateway.pid) if gateway.pid else None
        direct, through = _connection(base), _connection(gateway.base)
        for i in range(50):  # warm: connections, caches, the upstream's first requests
            _call(direct, model, i)
            _call(through, model, i)
        before = daemon.cpu_times() if daemon else None
        d, g = [], []
        for i in range(requests):
            d.append(_call(direct, model, i))
            g.append(_call(through, model, i))
        after = daemon.cpu_times() if daemon else None
    cpu = None
    if before is not None and after is not None:
        spent = (after.user + after.system) - (before.user + before.system)
        cpu = round(spent / requests * 1000, 3)
    ms = lambda xs, q: round(quantile(xs, q) * 1000, 3)  # noqa: E731
    return {
        "upstream": upstream,
        "requests": requests,
        "direct_ms": {"median": ms(d, 0.5), "p99": ms(d, 0.99)},
        "gateway_ms": {"median": ms(g, 0.5), "p99": ms(g, 0.99)},
        "added_ms": {"median": round(ms(g, 0.5) - ms(d, 0.5), 3)},
        "daemon_cpu_ms_per_request": cpu,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--upstream", choices=("stub", "llama"), default="stub")
    args = ap.parse_args()
    print(json.dumps(probe(args.requests, args.upstream), indent=2))


if __name__ == "__main__":
    main()
