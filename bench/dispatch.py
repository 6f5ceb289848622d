"""Dispatch throughput and submit-to-result latency through real daemons on loopback.

    python bench/dispatch.py [--subtasks 2000] [--sequential 100]

One coordinator (it runs no work itself) and two worker daemons, each with
``max_concurrency`` slots. Throughput: one job of N python no-op subtasks
(``operator:truth``), from submit until the task is done. Latency: single-subtask
tasks submitted one after another, each timed from submit until its status says
done (polled every millisecond over the local control socket; the throughput run polls
every 50 ms so the measuring client does not load the coordinator).
Writes bench/results/dispatch.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocol.messages import SubmitReply, SubmitRequest, TaskReply, TaskRequest  # noqa: E402
from swarmctl.client import Client  # noqa: E402
from tests.harness import Daemon, new_secret, wait_until  # noqa: E402

NOOP = {"kind": "python", "call": "operator:truth", "args": [1]}


def job(n: int) -> dict[str, Any]:
    return {"name": f"noop-{n}", "subtasks": [{"id": f"s{i}", **NOOP} for i in range(n)]}


def wait_done(client: Client, task: str, poll_s: float, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = client.request(TaskRequest(task=task, what="status"))
        assert isinstance(reply, TaskReply)
        if reply.body["state"] in ("done", "failed", "cancelled"):
            return reply.body
        time.sleep(poll_s)
    raise TimeoutError(task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subtasks", type=int, default=2000)
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args()
    secret = new_secret()
    with tempfile.TemporaryDirectory(prefix="swarmd-bench-") as tmp:
        root = Path(tmp)
        worker_cfg = f"[node]\nmax_concurrency = {args.slots}\n"
        nodes = [
            Daemon(root, "coord", secret=secret, config="[node]\nallow_shell = false\n"),
            Daemon(root, "w1", secret=secret, config=worker_cfg),
            Daemon(root, "w2", secret=secret, config=worker_cfg),
        ]
        try:
            for d in nodes:
                d.start()
            for d in nodes:
                d.wait_ready()
            names = {"coord": "alive", "w1": "alive", "w2": "alive"}
            wait_until(lambda: all(d.states() == names for d in nodes), 15)
            coord = nodes[0]
            client = Client(coord.state_dir, timeout_s=30)

            # warm up: start the python worker processes on both workers
            reply = client.request(SubmitRequest(job=job(2 * args.slots * 2)))
            assert isinstance(reply, SubmitReply)
            wait_done(client, reply.task, 0.05, 120)

            started = time.perf_counter()
            reply = client.request(SubmitRequest(job=job(args.subtasks)))
            assert isinstance(reply, SubmitReply)
            submitted = time.perf_counter()
            status = wait_done(client, reply.task, 0.05, 600)
            elapsed = time.perf_counter() - started
            assert status["state"] == "done", status
            per_peer: dict[str, int] = {}
            for sub in status["subtasks"]:
                per_peer[sub["peer"]] = per_peer.get(sub["peer"], 0) + 1
            throughput = args.subtasks / elapsed
            print(
                f"throughput: {args.subtasks} python no-op subtasks in {elapsed:.2f} s = "
                f"{throughput:.0f}/s (submit took {submitted - started:.3f} s; per worker "
                f"{per_peer})"
            )

            latencies = []
            for _ in range(args.sequential):
                t0 = time.perf_counter()
                reply = client.request(SubmitRequest(job=job(1)))
                assert isinstance(reply, SubmitReply)
                status = wait_done(client, reply.task, 0.001, 60)
                latencies.append(time.perf_counter() - t0)
                assert status["state"] == "done"
            latencies.sort()
            median = statistics.median(latencies)
            p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
            print(
                f"sequential submit-to-result: median {median * 1000:.1f} ms, "
                f"p99 {p99 * 1000:.1f} ms (n={len(latencies)})"
            )
            counters = coord.counters()
            client.close()
        finally:
            for d in nodes:
                d.stop()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "subtasks": args.subtasks,
        "slots_per_worker": args.slots,
        "throughput_per_s": round(throughput, 1),
        "elapsed_s": round(elapsed, 3),
        "latency_median_ms": round(median * 1000, 2),
        "latency_p99_ms": round(p99 * 1000, 2),
        "journal_writes": counters.get("journal_writes"),
    }
    (out / "dispatch.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'dispatch.json'}")


if __name__ == "__main__":
    main()
