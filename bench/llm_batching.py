"""Grouping small llm subtasks, on versus off: wall time of N small prompts through real
daemons and a real llama.cpp OpenAI-compatible server.

    python bench/llm_batching.py [--prompts 64] [--rounds 4] [--concurrency 8] [--quick]

One cluster: a worker ``w1`` whose ``[models.fast]`` profile is the llama.cpp server
(``tests/llm_server.py``: llama-cpp-python serving a tiny generated model, one
thread) with ``max_concurrency`` requests at once, and two coordinators that run no
work: ``on`` (``[tasks] llm_grouping = true``, the default) and ``off`` (``false``).
Each round submits one job of N llm subtasks (``max_tokens`` 16, a one-line prompt)
to each coordinator in turn (the order alternates every round), timed from submit
until the task is done with its results. Beside them, the same N requests sent
straight to the server with the same concurrency and one after another: the floor,
and what the server does with concurrent requests (llama-cpp-python's server runs one
completion at a time: concurrency there only overlaps the HTTP round trips).

Writes bench/results/llm_batching.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.common import daemons, fmt_summary, load, save, summary, table  # noqa: E402
from bench.dispatch import cpu_and_counters, wait_done  # noqa: E402
from protocol.messages import SubmitReply, SubmitRequest, TaskReply, TaskRequest  # noqa: E402
from swarmctl.client import Client  # noqa: E402
from tests.harness import Daemon, new_secret, wait_until  # noqa: E402
from tests.llm_server import LlamaServer, llama_python, llama_server  # noqa: E402

MAX_TOKENS = 16
PROMPT = "Name one color."
ARMS = ("on", "off")


def prompts_job(n: int, tag: str) -> dict[str, Any]:
    subtasks = [
        {
            "id": f"p{i}",
            "kind": "llm",
            "capability": "lint",
            "prompt": f"{PROMPT} ({tag} {i})",
            "max_tokens": MAX_TOKENS,
        }
        for i in range(n)
    ]
    return {"name": f"prompts-{tag}", "subtasks": subtasks}


def worker_config(endpoint: str, model: str, concurrency: int) -> str:
    return (
        "[node]\nallow_shell = false\n"
        f'[models.fast]\nendpoint = "{endpoint}"\nmodel = "{model}"\n'
        f'capabilities = ["lint"]\nmax_concurrency = {concurrency}\n'
    )


def coordinator_config(grouping: bool) -> str:
    return f"[node]\nallow_shell = false\n[tasks]\nllm_grouping = {str(grouping).lower()}\n"


# ---------------------------------------------------------------- through the swarm


def run_job(client: Client, n: int, tag: str) -> dict[str, Any]:
    """One job of ``n`` prompts, submit to done; the wall time and where they ran."""
    t0 = time.perf_counter()
    reply = client.request(SubmitRequest(job=prompts_job(n, tag)))
    assert isinstance(reply, SubmitReply), reply
    result = wait_done(client, reply.task, 600)
    wall = time.perf_counter() - t0
    assert result["state"] == "done", result
    subs = result["subtasks"].values()
    assert all(s.get("output") for s in subs), list(subs)[:2]
    return {
        "task": reply.task,
        "wall_s": round(wall, 4),
        "per_peer": dict(Counter(s["peer"] for s in subs)),
    }


def groups_of(client: Client, task: str) -> dict[str, Any]:
    """From explain: how the prompts were placed (grouped, and in how many groups)."""
    reply = client.request(TaskRequest(task=task, what="explain"))
    assert isinstance(reply, TaskReply), reply
    body = reply.body
    notes = [row.get("grouped") for row in body["subtasks"]]
    leads = {(g["task"], g["lead"]): g["size"] for g in notes if g}
    priced = sum(row.get("priced", 0) for row in body["subtasks"])
    return {
        "grouped_subtasks": sum(1 for g in notes if g and g["size"] > 1),
        "groups": len([s for s in leads.values() if s > 1]),
        "largest_group": max(leads.values(), default=0),
        "pricings": priced,
    }


# ---------------------------------------------------------------- straight to the server


async def _direct(endpoint: str, model: str, n: int, concurrency: int) -> float:
    """``n`` chat completions straight to the server, ``concurrency`` at a time, on
    one client (kept connections): the wall time."""
    gate = asyncio.Semaphore(concurrency)
    body = {"model": model, "max_tokens": MAX_TOKENS, "stream": True}

    async def one(client: httpx.AsyncClient, i: int) -> None:
        async with gate:
            messages = [{"role": "user", "content": f"{PROMPT} (direct {i})"}]
            async with client.stream(
                "POST", endpoint + "/chat/completions", json=body | {"messages": messages}
            ) as resp:
                resp.raise_for_status()
                async for _ in resp.aiter_lines():
                    pass

    async with httpx.AsyncClient(trust_env=False, timeout=120) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, i) for i in range(n)))
        return time.perf_counter() - t0


def direct(server: LlamaServer, n: int, concurrency: int) -> float:
    return round(asyncio.run(_direct(server.endpoint, server.model, n, concurrency)), 4)


# ---------------------------------------------------------------- the run


@contextlib.contextmanager
def cluster(
    root: Path, server: LlamaServer, concurrency: int
) -> Iterator[dict[str, tuple[Client, Daemon]]]:
    secret = new_secret()
    nodes = [
        Daemon(root, "w1", secret=secret, config=worker_config(server.endpoint, server.model,
                                                               concurrency)),
        Daemon(root, "on", secret=secret, config=coordinator_config(True)),
        Daemon(root, "off", secret=secret, config=coordinator_config(False)),
    ]  # fmt: skip
    with daemons(nodes):
        for d in nodes:
            d.start()
        for d in nodes:
            d.wait_ready(30)
        coords = nodes[1:]

        def serves() -> bool:
            return all(any(p["name"] == "w1" and p["models"] for p in c.peers()) for c in coords)

        wait_until(serves, 30, what="the coordinators to see w1's model")
        clients = {d.name: (Client(d.state_dir, timeout_s=60), d) for d in coords}
        try:
            yield clients
        finally:
            for c, _ in clients.values():
                c.close()


def _rounds(
    server: LlamaServer,
    clients: dict[str, tuple[Client, Daemon]],
    prompts: int,
    rounds: int,
    concurrency: int,
    log: bool,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[float]]]:
    """Alternating rounds: per arm a row per round; the direct floor per round."""
    detail: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    floor: dict[str, list[float]] = {"concurrent": [], "sequential": []}
    for arm in ARMS:  # warm-up: the worker's client, the server's cache
        run_job(clients[arm][0], min(prompts, 2 * concurrency), f"warm-{arm}")
    for r in range(rounds):
        for arm in ARMS if r % 2 == 0 else ARMS[::-1]:
            client, coordinator = clients[arm]
            before = cpu_and_counters(coordinator)["cpu_s"]
            row = run_job(client, prompts, f"{arm}-{r}")
            cpu = cpu_and_counters(coordinator)["cpu_s"] - before
            row["coordinator_cpu_ms"] = round(cpu * 1000, 1)
            row |= groups_of(client, row.pop("task"))
            detail[arm].append(row)
            if log:
                print(f"round {r} grouping {arm}: {row}", file=sys.stderr)
        floor["concurrent"].append(direct(server, prompts, concurrency))
        floor["sequential"].append(direct(server, prompts, 1))
        if log:
            print(f"round {r} direct: {floor}", file=sys.stderr)
    return detail, floor


def measure(prompts: int, rounds: int, concurrency: int, log: bool = True) -> dict[str, Any]:
    python, why = llama_python()
    if python is None:
        return {"skipped": f"llama-cpp-python is not available: {why}"}
    with (
        tempfile.TemporaryDirectory(prefix="swarmd-bench-batching-") as tmp,
        llama_server(python, Path(tmp)) as server,
        cluster(Path(tmp), server, concurrency) as clients,
    ):
        detail, floor = _rounds(server, clients, prompts, rounds, concurrency, log)
    walls = {arm: [row["wall_s"] for row in detail[arm]] for arm in ARMS}
    on, off = statistics.median(walls["on"]), statistics.median(walls["off"])
    return {
        "prompts": prompts,
        "max_tokens": MAX_TOKENS,
        "rounds": rounds,
        "max_concurrency": concurrency,
        "server": "llama-cpp-python (llama_cpp.server), tiny generated GGUF, 1 thread",
        "wall_s": {arm: summary(walls[arm], 4) for arm in ARMS},
        "per_prompt_ms": {
            arm: round(statistics.median(walls[arm]) / prompts * 1000, 2) for arm in ARMS
        },
        "off_over_on": round(off / on, 3),
        "coordinator_cpu_ms": {
            arm: summary([d["coordinator_cpu_ms"] for d in detail[arm]], 1) for arm in ARMS
        },
        "direct_s": {k: summary(v, 4) for k, v in floor.items()},
        "server_serializes": _serializes(floor),
        "rounds_detail": detail,
        "load": load(),
    }


def _serializes(floor: dict[str, list[float]]) -> bool:
    """Whether concurrent requests took about as long as one after another (within 25%)."""
    concurrent = statistics.median(floor["concurrent"])
    return concurrent > 0.75 * statistics.median(floor["sequential"])


def run(quick: bool = False) -> dict[str, Any]:
    if quick:
        return measure(prompts=16, rounds=1, concurrency=4, log=False)
    return measure(prompts=64, rounds=4, concurrency=8)


def markdown(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"Skipped: {result['skipped']}"
    ws, ds = result["wall_s"], result["direct_s"]
    cpu = result["coordinator_cpu_ms"]
    rows = [
        ["swarm, grouping on", fmt_summary(ws["on"], 3), result["per_prompt_ms"]["on"],
         fmt_summary(cpu["on"], 0)],
        ["swarm, grouping off", fmt_summary(ws["off"], 3), result["per_prompt_ms"]["off"],
         fmt_summary(cpu["off"], 0)],
        ["direct, same concurrency", fmt_summary(ds["concurrent"], 3), "-", "-"],
        ["direct, one at a time", fmt_summary(ds["sequential"], 3), "-", "-"],
    ]  # fmt: skip
    detail = result["rounds_detail"]
    pricings = {arm: statistics.median(d["pricings"] for d in detail[arm]) for arm in ARMS}
    groups = statistics.median(d["groups"] for d in detail["on"])
    serial = "runs one completion at a time" if result["server_serializes"] else "overlaps them"
    return (
        f"{result['prompts']} prompts of max_tokens {result['max_tokens']}, "
        f"max_concurrency {result['max_concurrency']}, {result['rounds']} rounds "
        f"alternating; {result['server']}.\n\n"
        + table(["", "wall s (median, range)", "ms per prompt", "coordinator CPU ms"], rows)
        + f"\n\noff / on: {result['off_over_on']}. Grouping on: {groups:g} groups per job "
        f"(median); pricings per job (a pass prices the queue's head again each time a "
        f"slot frees): on {pricings['on']:g}, off {pricings['off']:g}. The server {serial} "
        "(direct concurrent vs one at a time)."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    quick = args.quick
    result = run(quick=True) if quick else measure(args.prompts, args.rounds, args.concurrency)
    print(json.dumps({k: v for k, v in result.items() if k != "rounds_detail"}, indent=2))
    print(markdown(result))
    print(f"wrote {save('llm_batching', result)}")


if __name__ == "__main__":
    main()
