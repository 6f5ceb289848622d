"""Coordinator death -> its task adopted by the successor, through real daemons on loopback.

    python bench/adoption.py [--trials 10] [--adopt-after 5]

Per trial: three fresh daemons (n1 coordinates and runs no work; n2, n3 run it), a task
of one long shell subtask submitted to n1; once it runs, n1 is SIGKILLed for good.
Measured from the SIGKILL: *dead* (the successor's view says n1 dead), *adopted* (the
successor answers ``status`` for the task at coordinator epoch 2), *reporting* (the
running attempt, re-adopted, is seen running again at the successor: its worker's first
progress there). Writes bench/results/adoption.json; prints the medians.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import daemons, load, poll_until, save, summary  # noqa: E402
from protocol.messages import SubmitReply, SubmitRequest, TaskReply, TaskRequest  # noqa: E402
from swarmctl.client import RequestFailed, Unreachable  # noqa: E402
from tests.harness import Daemon, new_secret, wait_until  # noqa: E402


def _status(d: Daemon, task: str) -> dict[str, Any] | None:
    try:
        reply = d.request(TaskRequest(task=task, what="status"), timeout=1.0)
    except (RequestFailed, Unreachable):
        return None
    return reply.body if isinstance(reply, TaskReply) else None


def trial(root: Path, adopt_after_s: float) -> dict[str, float]:
    secret = new_secret()
    extra = f"adopt_after_s = {adopt_after_s}\n"
    nodes = [
        Daemon(root, "n1", secret=secret, config="[node]\nallow_shell = false\n" + extra),
        Daemon(root, "n2", secret=secret, config="[node]\n" + extra),
        Daemon(root, "n3", secret=secret, config="[node]\n" + extra),
    ]
    with daemons(nodes):
        for d in nodes:
            d.start()
        for d in nodes:
            d.wait_ready()
        everyone = {"n1": "alive", "n2": "alive", "n3": "alive"}
        wait_until(lambda: all(d.states() == everyone for d in nodes), 30, what="cluster")
        n1 = nodes[0]
        job = {
            "name": "long",
            "subtasks": [{"id": "main", "kind": "shell", "run": ["sleep", "60"]}],
        }
        reply = n1.request(SubmitRequest(job=job), timeout=10)
        assert isinstance(reply, SubmitReply), reply
        task = reply.task
        first = _status(n1, task)
        assert first is not None and first["replica"]["acknowledged"], first
        heir = {d.node_id(): d for d in nodes[1:]}[first["replica"]["node"]]
        poll_until(
            lambda: (s := _status(n1, task)) is not None and s["subtasks"][0]["state"] == "running",
            30,
            what="running",
        )
        n1.signal(signal.SIGKILL)
        t0 = time.monotonic()
        dead = poll_until(lambda: heir.states().get("n1") == "dead", 30, 0.02, "dead")
        adopted = poll_until(
            lambda: (s := _status(heir, task)) is not None and s["epoch"] == 2, 60, 0.02, "adopted"
        )
        reporting = poll_until(
            lambda: (
                (s := _status(heir, task)) is not None and s["subtasks"][0]["state"] == "running"
            ),
            60,
            0.02,
            "reporting",
        )
        final = _status(heir, task)
        assert final is not None and final["subtasks"][0]["attempts"] == 1, final
        return {"dead_s": dead - t0, "adopted_s": adopted - t0, "reporting_s": reporting - t0}


def measure(trials: int, adopt_after_s: float) -> dict[str, Any]:
    rows = []
    for i in range(trials):
        with tempfile.TemporaryDirectory(prefix="swarmd-adopt-") as tmp:
            row = trial(Path(tmp), adopt_after_s)
        rows.append(row)
        print(f"trial {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    return {
        "trials": trials,
        "adopt_after_s": adopt_after_s,
        "dead_s": summary(r["dead_s"] for r in rows),
        "adopted_s": summary(r["adopted_s"] for r in rows),
        "reporting_s": summary(r["reporting_s"] for r in rows),
        "rows": rows,
        "load": load(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--adopt-after", type=float, default=5.0)
    args = parser.parse_args()
    result = measure(args.trials, args.adopt_after)
    path = save("adoption", result)
    for key in ("dead_s", "adopted_s", "reporting_s"):
        print(f"{key}: median {result[key]['median']:.2f} s ({json.dumps(result[key])})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
