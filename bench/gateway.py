"""What an OpenAI-compatible gateway adds: swarmd's gateway and LiteLLM's proxy versus
calling the upstream server directly, in one run, on loopback.

    python bench/gateway.py [--requests 300] [--rounds 3] [--seconds 5] [--quick]

Three targets. Latency: each gateway paired with ``direct`` alone, the two alternated
request by request in a seeded random order (a third system run between them would
leave the CPU caches of this small machine to whichever came next). Requests/s: all
three alternated round by round. Drift on a shared machine hits both sides alike:

* ``direct``: the upstream server itself;
* ``litellm``: LiteLLM's proxy (``litellm --config``, from bench/.venv-peers, pinned in
  bench/peers/gateway-requirements.txt) with one ``openai/`` model entry per upstream;
* ``swarmd``: one swarmd daemon serving its gateway (``--gateway-port``) with one
  ``[models.NAME]`` profile per upstream. Skipped, saying why, where this checkout's
  daemon has no gateway.

Latency upstream: the llama.cpp server of the tests (tests/llm_server.py,
llama-cpp-python serving a tiny generated model): per target, non-streamed chat
completions (``max_tokens`` 8) timed end to end, and streamed ones timed to the first
content chunk (TTFT). *Added* latency is the target's quantile minus direct's in the
same pairing.

Requests/s upstream: a stub that answers at once (bench/stub_upstream.py), so the
gateway is the bottleneck: a closed loop of CONCURRENCY clients for SECONDS per target
per round, non-streamed. ``direct`` there is the load generator's own ceiling.

Writes bench/results/gateway.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.common import load, quantile, save, table  # noqa: E402
from bench.gateway_targets import (  # noqa: E402
    STUB_MODEL,
    Skip,
    Target,
    litellm_proxy,
    stub_upstream,
    swarmd_gateway,
)
from tests.llm_server import llama_python, llama_server  # noqa: E402

NAMES = ("direct", "litellm", "swarmd")
Samples = dict[str, dict[str, list[float]]]  # target -> "call"/"ttft" -> seconds
MAX_TOKENS = 8
CONCURRENCY = 16


def chat(model: str, stream: bool, i: int) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"Say one word. ({i})"}]
    return {"model": model, "messages": messages, "max_tokens": MAX_TOKENS, "stream": stream}


# ---------------------------------------------------------------- one request


async def timed_call(client: httpx.AsyncClient, t: Target, i: int) -> float:
    """A non-streamed completion, end to end, seconds."""
    t0 = time.perf_counter()
    url, body = t.base + "/chat/completions", chat(t.model, False, i)
    reply = await client.post(url, json=body, headers=t.headers)
    reply.raise_for_status()
    assert reply.json()["choices"], reply.text
    return time.perf_counter() - t0


async def timed_first_token(client: httpx.AsyncClient, t: Target, i: int) -> float:
    """A streamed completion: seconds until the first chunk with content (read to the end)."""
    t0 = time.perf_counter()
    first: float | None = None
    url = t.base + "/chat/completions"
    body = chat(t.model, True, i)
    async with client.stream("POST", url, json=body, headers=t.headers) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if first is None and line.startswith("data: {") and _has_content(line[6:]):
                first = time.perf_counter() - t0
    if first is None:
        raise RuntimeError(f"{t.name}: a stream without content")
    return first


def _has_content(data: str) -> bool:
    with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
        return bool(json.loads(data)["choices"][0]["delta"].get("content"))
    return False


# ---------------------------------------------------------------- the measurements


async def latencies(targets: list[Target], n: int) -> dict[str, Samples]:
    """For each target after ``direct`` (the first): ``n`` calls and ``n`` streams of it
    and as many of ``direct``, in a new seeded random order of the two each time. Each
    target is paired with ``direct`` alone, so that nothing else runs between the two
    (on this small machine a third system run in between leaves the CPU caches to
    whichever comes next, and it is not the same one for both)."""
    direct, rng = targets[0], random.Random(12)
    out: dict[str, Samples] = {}
    for target in targets[1:]:
        pair = [direct, target]
        got: Samples = {t.name: {"call": [], "ttft": []} for t in pair}
        clients = {t.name: httpx.AsyncClient(trust_env=False, timeout=60) for t in pair}
        try:
            for t in pair:  # warm: connections, the upstream's first request
                await timed_call(clients[t.name], t, -1)
            for i in range(n):
                for t in rng.sample(pair, 2):
                    got[t.name]["call"].append(await timed_call(clients[t.name], t, i))
                for t in rng.sample(pair, 2):
                    got[t.name]["ttft"].append(await timed_first_token(clients[t.name], t, i))
        finally:
            for c in clients.values():
                await c.aclose()
        out[target.name] = got
    return out


async def throughput(t: Target, seconds: float, concurrency: int) -> dict[str, float]:
    """A closed loop of ``concurrency`` clients for ``seconds``: completed requests/s."""
    done = errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(trust_env=False, timeout=30, limits=limits) as client:
        url, body = t.base + "/chat/completions", chat(t.stub_model, False, 0)

        async def loop() -> None:
            nonlocal done, errors
            while time.perf_counter() < stop:
                try:
                    reply = await client.post(url, json=body, headers=t.headers)
                    ok = reply.status_code == 200
                except httpx.HTTPError:
                    ok = False
                done, errors = done + ok, errors + (not ok)

        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"rps": done / elapsed, "errors": errors}


async def throughputs(
    targets: list[Target], rounds: int, seconds: float, concurrency: int
) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
    for r in range(rounds):
        k = r % len(targets)
        for t in targets[k:] + targets[:k]:
            out[t.name].append(await throughput(t, seconds, concurrency))
    return out


# ---------------------------------------------------------------- the run


def ms(values: list[float], q: float) -> float:
    return round(quantile(values, q) * 1000, 3)


def digest(lat: dict[str, Samples], tps: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Medians and p99s per target, and what each adds over direct in its own pairing
    (the direct row: all of direct's samples)."""
    out: dict[str, Any] = {}
    rows: dict[str, tuple[dict[str, list[float]], dict[str, list[float]] | None]] = {}
    every_direct: dict[str, list[float]] = {"call": [], "ttft": []}
    for name, got in lat.items():
        for kind in every_direct:
            every_direct[kind] += got["direct"][kind]
        rows[name] = (got[name], got["direct"])
    names = ["direct", *lat] if lat else []
    for name in names:
        mine, paired = (every_direct, None) if name == "direct" else rows[name]
        row: dict[str, Any] = {"n": len(mine["call"])}
        for kind in ("call", "ttft"):
            row[f"{kind}_ms"] = {"median": ms(mine[kind], 0.5), "p99": ms(mine[kind], 0.99)}
            if paired is not None:
                row[f"added_{kind}_ms"] = {
                    q: round(row[f"{kind}_ms"][q] - ms(paired[kind], v), 3)
                    for q, v in (("median", 0.5), ("p99", 0.99))
                }
        rps = [x["rps"] for x in tps.get(name, [])]
        row["rps"] = round(statistics.median(rps), 1) if rps else None
        row["rps_rounds"] = [round(x, 1) for x in rps]
        row["errors"] = int(sum(x["errors"] for x in tps.get(name, [])))
        out[name] = row
    return out


@contextlib.contextmanager
def targets_up(
    workdir: Path, llama: str, model: str, stub: str, log: bool
) -> Iterator[tuple[list[Target], dict[str, str]]]:
    """Every target that starts here, and why the others do not."""
    skipped: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        up = [Target("direct", llama, model, STUB_MODEL)]
        starters = {
            "litellm": lambda: litellm_proxy(workdir, llama, model, stub, log),
            "swarmd": lambda: swarmd_gateway(workdir, llama, model, stub),
        }
        for name, start in starters.items():
            try:
                up.append(stack.enter_context(start()))
            except Skip as exc:
                skipped[name] = str(exc)
                if log:
                    print(f"gateway: {name} skipped: {exc}", file=sys.stderr)
        yield up, skipped


def measure(requests: int, rounds: int, seconds: float, log: bool = True) -> dict[str, Any]:
    python, why = llama_python()
    if python is None:
        return {"skipped": f"llama-cpp-python is not available: {why}"}
    with (
        tempfile.TemporaryDirectory(prefix="swarmd-bench-gateway-") as tmp,
        llama_server(python, Path(tmp)) as llama,
        stub_upstream(Path(tmp)) as stub,
        targets_up(Path(tmp), llama.endpoint, llama.model, stub, log) as (targets, skipped),
    ):
        # The direct target of the stub is the stub itself.
        stub_direct = Target("direct", stub, llama.model, STUB_MODEL)
        lat = asyncio.run(latencies(targets, requests))
        rps_targets = [stub_direct, *targets[1:]]
        tps = asyncio.run(throughputs(rps_targets, rounds, seconds, CONCURRENCY))
    return {
        "requests": requests,
        "rounds": rounds,
        "seconds": seconds,
        "concurrency": CONCURRENCY,
        "max_tokens": MAX_TOKENS,
        "latency_upstream": "llama-cpp-python (llama_cpp.server), tiny generated GGUF",
        "rps_upstream": "bench/stub_upstream.py: a stub answering at once (no model); "
        "direct = the load generator's ceiling",
        "targets": digest(lat, tps),
        "skipped": skipped,
        "load": load(),
    }


def run(quick: bool = False) -> dict[str, Any]:
    if quick:
        return measure(requests=10, rounds=1, seconds=1.0, log=False)
    return measure(requests=300, rounds=3, seconds=5.0)


def markdown(result: dict[str, Any]) -> str:
    if "targets" not in result:
        return f"Skipped: {result.get('skipped')}"
    rows = []
    for name, r in result["targets"].items():
        add_c, add_t = r.get("added_call_ms"), r.get("added_ttft_ms")
        rows.append([
            name,
            f"{r['call_ms']['median']} / {r['call_ms']['p99']}",
            "-" if add_c is None else f"{add_c['median']} / {add_c['p99']}",
            f"{r['ttft_ms']['median']} / {r['ttft_ms']['p99']}",
            "-" if add_t is None else f"{add_t['median']} / {add_t['p99']}",
            r["rps"],
        ])  # fmt: skip
    head = ["target", "call ms (median / p99)", "added", "TTFT ms", "added TTFT", "req/s (stub)"]
    skipped = "".join(f"\n\n{k}: skipped ({v})" for k, v in result["skipped"].items())
    return (
        f"{result['requests']} non-streamed and {result['requests']} streamed requests per "
        f"target, each alternated with as many direct ones; latency upstream: "
        f"{result['latency_upstream']}; requests/s: "
        f"{result['concurrency']} concurrent clients for {result['seconds']:g} s x "
        f"{result['rounds']} rounds against {result['rps_upstream']}.\n\n"
        + table(head, rows)
        + skipped
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    quick = args.quick
    result = run(quick=True) if quick else measure(args.requests, args.rounds, args.seconds)
    print(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"wrote {save('gateway', result)}")


if __name__ == "__main__":
    main()
