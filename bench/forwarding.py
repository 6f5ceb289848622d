"""What answering for another node's task costs: ``status`` of n1's task asked of n1
(its own) and of n3 (forwarded over the CURVE link, the task's node remembered after
the first), an unknown task asked of n3 (both peers say no), and ``tasks --all``.

    python bench/forwarding.py [--n 200]

Three daemons on loopback; each request is one control request on the node's local
socket, timed in this process (medians and p95 in ms).
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

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protocol.messages import ControlRequest, TaskRequest, TasksRequest
from swarmctl.client import Client, RequestFailed
from tests.harness import Daemon, new_secret, swarmctl, wait_until


def timed(d: Daemon, requests: list[ControlRequest]) -> list[float]:
    client = Client(d.state_dir, timeout_s=5)
    out = []
    try:
        for request in requests:
            started = time.perf_counter()
            with contextlib.suppress(RequestFailed):  # the unknown task's answer
                client.request(request)
            out.append((time.perf_counter() - started) * 1000)
    finally:
        client.close()
    return out


def show(label: str, ms: list[float]) -> None:
    p95 = sorted(ms)[int(0.95 * (len(ms) - 1))]
    print(f"{label:36} median {statistics.median(ms):6.2f} ms  p95 {p95:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    n = parser.parse_args().n
    secret = new_secret()
    root = Path(tempfile.mkdtemp(prefix="swarmd-forwarding-"))
    nodes = [Daemon(root, name, secret=secret) for name in ("n1", "n2", "n3")]
    for d in nodes:
        d.start()
    try:
        for d in nodes:
            d.wait_ready()
        everyone = {"n1": "alive", "n2": "alive", "n3": "alive"}
        wait_until(lambda: all(d.states() == everyone for d in nodes), 20, what="cluster")
        n1, _, n3 = nodes
        task = json.loads(swarmctl("--json", "submit", "--", "true", state_dir=n1.state_dir).stdout)
        status = TaskRequest(task=task["task"], what="status")
        wait_until(lambda: n1.request(status).body["state"] == "done", 20, what="done")
        timed(n3, [status])  # locates once
        show("status, own task (n1)", timed(n1, [status] * n))
        show("status, forwarded (n3 -> n1)", timed(n3, [status] * n))
        unknown = [TaskRequest(task=f"zzzzzz-{i:010d}", what="status") for i in range(n)]
        show("unknown task (n3 asks n1, n2)", timed(n3, unknown))  # type: ignore[arg-type]
        show("tasks --all (n3)", timed(n3, [TasksRequest(cluster=True)] * n))
    finally:
        for d in nodes:
            d.stop()


if __name__ == "__main__":
    main()
