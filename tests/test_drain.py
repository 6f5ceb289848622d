"""Draining on 3 real daemons: swarmctl drain/undrain, and SIGTERM (systemctl stop)."""

from __future__ import annotations

import json
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol.messages import TaskReply, TaskRequest
from tests.harness import Daemon, new_secret, swarmctl, wait_until

# n1 coordinates and runs no shell work; n2 and n3 are the workers
COORDINATOR_CONFIG = "[node]\nallow_shell = false\n"


def make_cluster(tmp_path: Path, worker_config: str = "") -> list[Daemon]:
    secret = new_secret()
    n1 = Daemon(tmp_path, "n1", secret=secret, config=COORDINATOR_CONFIG)
    seed = ("--join", n1.address)
    nodes = [
        n1,
        Daemon(tmp_path, "n2", secret=secret, args=seed, config=worker_config or None),
        Daemon(tmp_path, "n3", secret=secret, args=seed, config=worker_config or None),
    ]
    for d in nodes:
        d.start()
    for d in nodes:
        d.wait_ready()
    everyone = {"n1": "alive", "n2": "alive", "n3": "alive"}
    wait_until(lambda: all(d.states() == everyone for d in nodes), 15, what="cluster")
    # The control socket answers before start-up ends (mDNS registration); SIGTERM is
    # handled from then on.
    wait_until(lambda: all("listening on" in d.log() for d in nodes), 15, what="started")
    return nodes


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Daemon]]:
    nodes = make_cluster(tmp_path)
    yield nodes
    for d in nodes:
        d.stop()


def draining(d: Daemon) -> dict[str, bool]:
    return {p["name"]: p["draining"] for p in d.peers()}


def status(d: Daemon, task: str) -> dict[str, Any]:
    reply = d.request(TaskRequest(task=task, what="status"))
    assert isinstance(reply, TaskReply)
    return reply.body


def submit_job(d: Daemon, tmp_path: Path, job: str, *flags: str) -> dict[str, Any]:
    path = tmp_path / f"job-{time.monotonic_ns()}.toml"
    path.write_text(textwrap.dedent(job))
    out = swarmctl("--json", "submit", *flags, "-f", str(path), state_dir=d.state_dir)
    assert out.returncode in (0, 1), out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def parallel_job(count: int, extra: str = "") -> str:
    return "\n".join(
        f'[[subtask]]\nid = "s{i}"\nkind = "shell"\nrun = ["sh", "-c", "sleep 0.2"]\n{extra}'
        for i in range(count)
    )


def test_drain_stops_placements_and_undrain_resumes(cluster: list[Daemon], tmp_path: Path) -> None:
    n1, n2, n3 = cluster
    everyone_idle = {"n1": False, "n2": False, "n3": False}
    assert all(draining(d) == everyone_idle for d in cluster)

    # Drain n2 from n1, by name: n1 sends the request to n2 over CURVE.
    out = swarmctl("drain", "n2", state_dir=n1.state_dir)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("n2: draining")
    drained = {"n1": False, "n2": True, "n3": False}
    wait_until(lambda: all(draining(d) == drained for d in cluster), 10, what="n2 draining")
    table = swarmctl("peers", state_dir=n3.state_dir).stdout
    assert "alive (draining)" in next(line for line in table.splitlines() if line.startswith("n2"))

    # Nothing goes to n2 while it drains, even what would fit there.
    final = submit_job(n1, tmp_path, parallel_job(6), "--wait")
    assert final["state"] == "done"
    assert {s["peer"] for s in final["subtasks"]} == {"n3"}
    assert n2.counters().get("worker_accepted", 0) == 0

    # A subtask pinned to n2 waits (not failed) until n2 takes work again.
    pinned = submit_job(n1, tmp_path, parallel_job(1, 'node = "n2"'))["task"]
    time.sleep(1.0)
    assert status(n1, pinned)["subtasks"][0]["state"] == "ready"

    # Undrain by id prefix, asking n3 (any member can).
    out = swarmctl("--json", "undrain", n2.node_id()[:6], state_dir=n3.state_dir)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "node": n2.node_id(),
        "name": "n2",
        "draining": False,
        "running": 0,
    }
    wait_until(lambda: all(draining(d) == everyone_idle for d in cluster), 10, what="undrained")
    done = wait_until(
        lambda: (s := status(n1, pinned))["state"] == "done" and s, 20, what="pinned task"
    )
    assert done["subtasks"][0]["peer"] == "n2"
    final = submit_job(n1, tmp_path, parallel_job(6), "--wait")
    assert final["state"] == "done"
    assert "n2" in {s["peer"] for s in final["subtasks"]}

    # Local drain (no NODE) and the errors.
    out = swarmctl("--json", "drain", state_dir=n3.state_dir)
    assert json.loads(out.stdout)["name"] == "n3" and json.loads(out.stdout)["draining"]
    wait_until(lambda: draining(n1)["n3"], 10, what="n3 draining seen by n1")
    out = swarmctl("drain", "nosuch", state_dir=n1.state_dir)
    assert out.returncode == 2 and "no member named 'nosuch'" in out.stderr


def test_sigterm_lets_running_work_finish_then_leaves(
    cluster: list[Daemon], tmp_path: Path
) -> None:
    n1, n2, _ = cluster
    task = submit_job(
        n1,
        tmp_path,
        """
        [[subtask]]
        id = "slow"
        kind = "shell"
        run = ["sh", "-c", "sleep 2; echo finished"]
        node = "n2"
        """,
    )["task"]
    wait_until(
        lambda: status(n1, task)["subtasks"][0]["state"] == "running", 10, what="slow running"
    )
    started = time.monotonic()
    n2.signal(signal.SIGTERM)
    assert n2.wait_exit(20) == 0
    took = time.monotonic() - started
    final = wait_until(lambda: (s := status(n1, task))["state"] == "done" and s, 10, what="done")
    sub = final["subtasks"][0]
    assert sub["peer"] == "n2" and sub["attempts"] == 1 and sub["exit_code"] == 0
    wait_until(lambda: n1.states().get("n2") == "left", 5, what="n2 left")
    log = n2.log()
    assert "draining" in log and "handing back" not in log
    assert took >= 1.0  # it waited for the work, not just exited
    print(f"SIGTERM -> exit with a 2 s subtask running: {took:.2f} s")


def test_sigterm_hands_back_what_outlasts_the_grace(tmp_path: Path) -> None:
    nodes = make_cluster(tmp_path, worker_config='[node]\ndrain_grace = "0.5s"\n')
    try:
        n1 = nodes[0]
        task = submit_job(
            n1,
            tmp_path,
            """
            [[subtask]]
            id = "long"
            kind = "shell"
            run = ["sh", "-c", "sleep 3; echo finished"]
            """,
        )["task"]
        first = wait_until(
            lambda: (s := status(n1, task)["subtasks"][0])["state"] == "running" and s,
            10,
            what="long running",
        )
        victim = next(d for d in nodes if d.name == first["peer"])
        other = next(d for d in nodes[1:] if d is not victim)
        started = time.monotonic()
        victim.signal(signal.SIGTERM)
        assert victim.wait_exit(15) == 0
        took = time.monotonic() - started
        assert took < 2.5  # the grace, the hand-back and the leave; not the 3 s of work
        final = wait_until(
            lambda: (s := status(n1, task))["state"] == "done" and s, 20, what="rerun elsewhere"
        )
        sub = final["subtasks"][0]
        assert sub["peer"] == other.name and sub["attempts"] == 2
        assert "handing back 1 unfinished attempt" in victim.log()
        print(f"SIGTERM -> exit with grace 0.5 s: {took:.2f} s")
    finally:
        for d in nodes:
            d.stop()
