"""The gateway's added latency before and after a change, in one run: the same
llama.cpp server called directly, through a gateway of a baseline checkout (A) and
through one of this checkout (B), the three alternated request by request in a new
seeded random order each time, so that a busy machine slows all three alike.

    python bench/gateway_ab.py [--baseline REF] [--requests 300]

REF (default ``main``) is exported with ``git archive`` into a temporary directory
and its daemon started from there. The client is bench/gateway.py's (httpx's async
client, one kept connection per target): non-streamed chat completions timed end to
end, streamed ones to the first content chunk. Prints each gateway's added median and
p99 over direct and its daemon's CPU per request (user + system, both kinds of
request), and writes bench/results/gateway_ab.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import load, quantile, save  # noqa: E402
from bench.gateway import timed_call, timed_first_token  # noqa: E402
from bench.gateway_targets import STUB_MODEL, Target, stub_upstream  # noqa: E402
from tests.llm_server import llama_python, llama_server  # noqa: E402

_SERVE = """
import sys, json
from pathlib import Path
sys.path.insert(0, ".")
from bench.gateway_targets import swarmd_gateway
with swarmd_gateway(Path(sys.argv[1]), *sys.argv[2:5]) as gw:
    print(json.dumps({"base": gw.base, "pid": gw.pid}), flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def gateway_of(root: Path, workdir: Path, llama: str, model: str, stub: str) -> Iterator[Target]:
    """A swarmd gateway running the code of the checkout at ``root``."""
    env = dict(os.environ, PYTHONPATH=str(root))
    argv = [sys.executable, "-c", _SERVE, str(workdir), llama, model, stub]
    proc = subprocess.Popen(
        argv, cwd=root, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the gateway of {root} did not start")
        info = json.loads(line)
        yield Target(root.name, info["base"], model, STUB_MODEL, pid=info["pid"])
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(60)


@contextlib.contextmanager
def exported(ref: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="swarmd-ab-") as tmp:
        out = Path(tmp) / "A"
        out.mkdir()
        archive = subprocess.run(
            ["git", "archive", ref], cwd=ROOT, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
        yield out


def _cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


async def alternate(targets: list[Target], n: int) -> dict[str, Any]:
    rng = random.Random(7)
    got: dict[str, dict[str, list[float]]] = {t.name: {"call": [], "ttft": []} for t in targets}
    clients = {t.name: httpx.AsyncClient(trust_env=False, timeout=60) for t in targets}
    try:
        for t in targets:  # warm: connections, caches, the upstream's first requests
            for i in range(20):
                await timed_call(clients[t.name], t, -1 - i)
        cpu0 = {t.name: _cpu(t.pid) for t in targets}
        for i in range(n):
            for t in rng.sample(targets, len(targets)):
                got[t.name]["call"].append(await timed_call(clients[t.name], t, i))
            for t in rng.sample(targets, len(targets)):
                got[t.name]["ttft"].append(await timed_first_token(clients[t.name], t, i))
        cpu = {t.name: (_cpu(t.pid) - cpu0[t.name]) / (2 * n) * 1000 for t in targets}
    finally:
        for c in clients.values():
            await c.aclose()
    ms = lambda xs, q: round(quantile(xs, q) * 1000, 3)  # noqa: E731
    direct = got["direct"]
    out: dict[str, Any] = {}
    for t in targets:
        row: dict[str, Any] = {}
        for kind in ("call", "ttft"):
            mine = got[t.name][kind]
            row[f"{kind}_ms"] = {"median": ms(mine, 0.5), "p99": ms(mine, 0.99)}
            if t.name != "direct":
                row[f"added_{kind}_ms"] = {
                    "median": round(ms(mine, 0.5) - ms(direct[kind], 0.5), 3),
                    "p99": round(ms(mine, 0.99) - ms(direct[kind], 0.99), 3),
                }
        if t.pid is not None:
            row["daemon_cpu_ms_per_request"] = round(cpu[t.name], 3)
        out[t.name] = row
    return out


def measure(baseline: str, requests: int) -> dict[str, Any]:
    python, why = llama_python()
    if python is None:
        return {"skipped": f"llama-cpp-python is not available: {why}"}
    with (
        tempfile.TemporaryDirectory(prefix="swarmd-bench-ab-") as tmp,
        exported(baseline) as base_root,
        llama_server(python, Path(tmp)) as llama,
        stub_upstream(Path(tmp)) as stub,
    ):
        work_a, work_b = Path(tmp) / "a", Path(tmp) / "b"
        work_a.mkdir()
        work_b.mkdir()
        up = (llama.endpoint, llama.model, stub)
        with gateway_of(base_root, work_a, *up) as a, gateway_of(ROOT, work_b, *up) as b:
            a = Target("A", a.base, a.model, a.stub_model, pid=a.pid)
            b = Target("B", b.base, b.model, b.stub_model, pid=b.pid)
            direct = Target("direct", llama.endpoint, llama.model, STUB_MODEL)
            rows = asyncio.run(alternate([direct, a, b], requests))
    return {"baseline": baseline, "requests": requests, "targets": rows, "load": load()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default="main")
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    result = measure(args.baseline, args.requests)
    print(json.dumps(result, indent=2))
    for name in ("A", "B"):
        row = result.get("targets", {}).get(name)
        if row:
            c, t = row["added_call_ms"], row["added_ttft_ms"]
            print(
                f"{name}: added {c['median']} ms (p99 {c['p99']}), TTFT +{t['median']} ms "
                f"(p99 {t['p99']}), daemon CPU {row['daemon_cpu_ms_per_request']} ms/request"
            )
    print(f"wrote {save('gateway_ab', result)}")


if __name__ == "__main__":
    main()
