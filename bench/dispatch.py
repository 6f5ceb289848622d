"""Dispatch throughput and submit-to-result latency through real daemons on loopback.

    python bench/dispatch.py [--subtasks 2000] [--sequential 100]

One coordinator (it runs no work itself) and two worker daemons, each with
``max_concurrency`` slots. Throughput: one job of N python no-op subtasks
(``operator:truth``), from submit until the task is done. Latency: single-subtask
tasks submitted one after another, each timed from submit until the coordinator says
it is done (one watch request over the local control socket, answered when the task
ends, with its result: pushed, not polled; the result is inside the timing, as
``ray.get`` returns the value). Writes bench/results/dispatch.json.

Importable: :func:`measure` runs both and returns the result dict (``bench/compare.py``
uses it); :class:`Swarm` starts and stops the three daemons.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protocol.messages import (  # noqa: E402
    SubmitReply,
    SubmitRequest,
)
from swarmctl.client import Client  # noqa: E402
from tests.harness import Daemon, new_secret, wait_until  # noqa: E402

NOOP = {"kind": "python", "call": "operator:truth", "args": [1]}
FINAL = ("done", "failed", "cancelled")


def job(n: int) -> dict[str, Any]:
    return {"name": f"noop-{n}", "subtasks": [{"id": f"s{i}", **NOOP} for i in range(n)]}


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0..1) of an already sorted list."""
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def wait_done(client: Client, task: str, timeout: float) -> dict[str, Any]:
    """Wait until the task is final (the coordinator pushes: one watch request answered
    when the task ends, with its result, as ``ray.get`` returns a task's value); the
    task's result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = max(0.0, deadline - time.monotonic())
        row = client.watch(task, 0, min(10.0, left), final_only=True, with_result=True)
        if row["state"] in FINAL:
            result: dict[str, Any] = row["result"]
            return result
    raise TimeoutError(task)


class Swarm:
    """A coordinator that runs no work and two workers with ``slots`` slots each."""

    def __init__(self, root: Path, slots: int = 4, max_queue: int | None = None) -> None:
        secret = new_secret()
        worker_cfg = f"[node]\nmax_concurrency = {slots}\n"
        if max_queue is not None:  # else the worker's adaptive queue
            worker_cfg += f"max_queue = {max_queue}\n"
        self.slots = slots
        self.nodes = [
            Daemon(root, "coord", secret=secret, config="[node]\nallow_shell = false\n"),
            Daemon(root, "w1", secret=secret, config=worker_cfg),
            Daemon(root, "w2", secret=secret, config=worker_cfg),
        ]
        self.client: Client | None = None

    @property
    def coord(self) -> Daemon:
        return self.nodes[0]

    def start(self) -> Client:
        for d in self.nodes:
            d.start()
        for d in self.nodes:
            d.wait_ready()
        names = {d.name: "alive" for d in self.nodes}
        wait_until(lambda: all(d.states() == names for d in self.nodes), 15, what="membership")
        self.client = Client(self.coord.state_dir, timeout_s=60)
        return self.client

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        for d in self.nodes:
            d.stop()

    def __enter__(self) -> Client:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def submit(client: Client, n: int) -> str:
    reply = client.request(SubmitRequest(job=job(n)))
    assert isinstance(reply, SubmitReply), reply
    return reply.task


def warm_up(client: Client, slots: int) -> None:
    """Start the python worker processes on both workers."""
    wait_done(client, submit(client, 2 * slots * 2), 120)


def throughput(client: Client, subtasks: int, timeout: float = 1800) -> dict[str, Any]:
    """One job of ``subtasks`` no-ops, from submit until done."""
    started = time.perf_counter()
    task = submit(client, subtasks)
    submitted = time.perf_counter()
    result = wait_done(client, task, timeout)
    elapsed = time.perf_counter() - started
    assert result["state"] == "done", result["state"]
    per_peer: dict[str, int] = {}
    for sub in result["subtasks"].values():
        per_peer[sub["peer"]] = per_peer.get(sub["peer"], 0) + 1
    return {
        "subtasks": subtasks,
        "elapsed_s": elapsed,
        "submit_s": submitted - started,
        "throughput_per_s": subtasks / elapsed,
        "per_peer": per_peer,
    }


def latencies(client: Client, n: int) -> list[float]:
    """``n`` one-subtask tasks one after another, seconds from submit to done, sorted
    (after one that is not counted)."""
    wait_done(client, submit(client, 1), 60)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        result = wait_done(client, submit(client, 1), 60)
        out.append(time.perf_counter() - t0)
        assert result["state"] == "done", result
    return sorted(out)


def cpu_and_counters(d: Daemon) -> dict[str, float]:
    """CPU seconds of the daemon and its children (the python pool), and its counters."""
    assert d.proc is not None
    proc = psutil.Process(d.proc.pid)
    cpu = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            cpu += times.user + times.system
    counters = d.counters()
    return {
        "cpu_s": cpu,
        "frames_sent": counters.get("sent", 0),
        "messages_sent": counters.get("sent_items", 0),
        "sqlite_transactions": counters.get("store_transactions", 0),
    }


def per_subtask(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """CPU (ms), frames, messages and SQLite transactions per subtask between two samples."""
    delta = {k: (after[k] - before[k]) / n for k in after}
    return {
        "cpu_ms": round(delta["cpu_s"] * 1000, 3),
        "frames": round(delta["frames_sent"], 2),
        "messages": round(delta["messages_sent"], 2),
        "sqlite_tx": round(delta["sqlite_transactions"], 2),
    }


def measure(
    subtasks: int,
    sequential: int,
    slots: int = 4,
    log: bool = True,
    max_queue: int | None = None,
) -> dict[str, Any]:
    """Start the three daemons, measure throughput and latency, stop them."""
    with tempfile.TemporaryDirectory(prefix="swarmd-bench-") as tmp:
        swarm = Swarm(Path(tmp), slots, max_queue)
        with swarm as client:
            warm_up(client, slots)
            before = [cpu_and_counters(d) for d in swarm.nodes]
            tp = throughput(client, subtasks)
            tp["per_process"] = {
                d.name: per_subtask(b, cpu_and_counters(d), subtasks)
                for d, b in zip(swarm.nodes, before, strict=True)
            }
            if log:
                print(
                    f"throughput: {subtasks} python no-op subtasks in {tp['elapsed_s']:.2f} s = "
                    f"{tp['throughput_per_s']:.0f}/s (submit took {tp['submit_s']:.3f} s; per "
                    f"worker {tp['per_peer']})",
                    flush=True,
                )
                for name, row in tp["per_process"].items():
                    print(f"  per subtask on {name}: {row}", flush=True)
            lat = latencies(client, sequential)
            counters = swarm.coord.counters()
    median = statistics.median(lat)
    p99 = percentile(lat, 0.99)
    if log:
        print(
            f"sequential submit-to-result: median {median * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms (n={len(lat)})",
            flush=True,
        )
    return {
        "subtasks": subtasks,
        "slots_per_worker": slots,
        "throughput_per_s": round(tp["throughput_per_s"], 1),
        "elapsed_s": round(tp["elapsed_s"], 3),
        "submit_s": round(tp["submit_s"], 3),
        "latency_median_ms": round(median * 1000, 2),
        "latency_p99_ms": round(p99 * 1000, 2),
        "sequential": len(lat),
        "journal_writes": counters.get("journal_writes"),
        "per_subtask": tp["per_process"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--subtasks", type=int, default=2000)
    parser.add_argument("--sequential", type=int, default=100)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument(
        "--max-queue",
        type=int,
        default=None,
        help="the workers' [node] max_queue (default: adaptive)",
    )
    args = parser.parse_args()
    result = measure(args.subtasks, args.sequential, args.slots, max_queue=args.max_queue)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "dispatch.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'dispatch.json'}")


if __name__ == "__main__":
    main()
