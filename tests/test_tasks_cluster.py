"""Tasks across 3 real daemons on loopback: DAGs, placement by VRAM, faults, bad input."""

from __future__ import annotations

import json
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protocol.messages import TaskReply, TaskRequest
from tests.harness import Daemon, new_secret, swarmctl, wait_until

# These tests restart a coordinator and expect it to resume its own tasks: no successor
# adopts them meanwhile, however slow the restart (tests/test_succession_cluster.py
# tests adoption).
NO_ADOPTION = "adopt_after_s = 600\n"
# n1 coordinates and runs no shell work itself, so faults can hit a worker
COORDINATOR_CONFIG = "[node]\nallow_shell = false\n" + NO_ADOPTION
BIG_GPU_CONFIG = (
    "[node]\n" + NO_ADOPTION + '[hardware]\ngpus = [{ name = "RTX 4090", vram = "24GiB" }]\n'
)


def _cluster(where: Path) -> Iterator[list[Daemon]]:
    secret = new_secret()
    nodes = [
        Daemon(where, "n1", secret=secret, config=COORDINATOR_CONFIG),
        Daemon(where, "n2", secret=secret, config=BIG_GPU_CONFIG),
        Daemon(where, "n3", secret=secret, config="[node]\n" + NO_ADOPTION),
    ]
    for d in nodes:
        d.start()
    for d in nodes:
        d.wait_ready()
    everyone = {"n1": "alive", "n2": "alive", "n3": "alive"}
    wait_until(lambda: all(d.states() == everyone for d in nodes), 15, what="cluster")
    yield nodes
    for d in nodes:
        d.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Daemon]]:
    """A fresh cluster for a test that kills, stops or loads its nodes."""
    yield from _cluster(tmp_path)


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Daemon]]:
    """One cluster for the tests that only submit what it refuses (it stays untouched)."""
    yield from _cluster(tmp_path_factory.mktemp("shared"))


def status(d: Daemon, task: str) -> dict[str, Any]:
    reply = d.request(TaskRequest(task=task, what="status"))
    assert isinstance(reply, TaskReply)
    return reply.body


def submit(d: Daemon, *args: str, cwd: Path | None = None) -> str:
    out = swarmctl("--json", "submit", *args, state_dir=d.state_dir, cwd=cwd)
    assert out.returncode == 0, out.stderr
    task: str = json.loads(out.stdout)["task"]
    return task


def wait_state(
    d: Daemon, task: str, states: tuple[str, ...], timeout: float = 30
) -> dict[str, Any]:
    return wait_until(
        lambda: (s := status(d, task))["state"] in states and s, timeout, what=f"{task} {states}"
    )


def test_dag_with_inputs_outputs_and_templating(cluster: list[Daemon], tmp_path: Path) -> None:
    n1 = cluster[0]
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "src" / "a.txt").write_text("alpha\nbeta\ngamma\n")
    (work / "note.txt").write_text("count was {{ count.stdout }}\n")
    (work / "job.toml").write_text(
        textwrap.dedent(
            """
            name = "pipeline"

            [[subtask]]
            id = "count"
            kind = "shell"
            run = ["sh", "-c", "wc -l < src/a.txt | tr -d ' '"]
            inputs = ["src/"]

            [[subtask]]
            id = "double"
            kind = "shell"
            run = ["sh", "-c", "echo $(( {{ count.stdout }} * 2 ))"]
            after = ["count"]

            [[subtask]]
            id = "report"
            kind = "shell"
            run = ["sh", "-c", "(cat note.txt; echo doubled {{ double.stdout }}) > report.txt"]
            inputs = ["note.txt"]
            outputs = ["report.txt"]
            after = ["count", "double"]

            [[subtask]]
            id = "shout"
            kind = "shell"
            run = ["tr", "a-z", "A-Z"]
            after = ["report"]
            env = { GREETING = "hi" }
            """
        )
    )
    out = swarmctl("--json", "submit", "--wait", "-f", "job.toml", state_dir=n1.state_dir, cwd=work)
    assert out.returncode == 0, out.stderr + out.stdout
    final = json.loads(out.stdout)
    assert final["state"] == "done"
    assert {s["id"]: s["state"] for s in final["subtasks"]} == dict.fromkeys(
        ["count", "double", "report", "shout"], "done"
    )
    # n1 runs no shell work: everything ran on the workers
    assert {s["peer"] for s in final["subtasks"]} <= {"n2", "n3"}

    res = swarmctl(
        "--json", "result", final["id"], "--out", str(tmp_path / "out"), state_dir=n1.state_dir
    )
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)["subtasks"]
    assert body["count"]["stdout"].strip() == "3"
    assert body["double"]["stdout"].strip() == "6"
    assert body["report"]["artifacts"] == ["report.txt"]
    report = (tmp_path / "out" / "report" / "report.txt").read_text()
    assert report == "count was 3\ndoubled 6\n"


def test_min_vram_goes_to_the_node_with_the_big_gpu(cluster: list[Daemon]) -> None:
    n1 = cluster[0]
    tasks = [submit(n1, "--min-vram", "16GiB", "--", "echo", "gpu") for _ in range(3)]
    for task in tasks:
        final = wait_state(n1, task, ("done", "failed"))
        assert final["state"] == "done"
        assert final["subtasks"][0]["peer"] == "n2"
    explain = swarmctl("--json", "explain", tasks[0], state_dir=n1.state_dir)
    assert explain.returncode == 0, explain.stderr
    assert "VRAM" in explain.stdout  # the other peers are infeasible, and it says why


def test_a_pin_by_id_prefix_is_placed_on_that_node(cluster: list[Daemon], tmp_path: Path) -> None:
    """The submit check takes a unique id prefix for `node`; placement must too."""
    n1, n3 = cluster[0], cluster[2]
    prefix = n3.node_id()[:6]
    (tmp_path / "job.toml").write_text(
        f'[[subtask]]\nid = "a"\nkind = "shell"\nrun = ["true"]\nnode = "{prefix}"\n'
    )
    task = submit(n1, "-f", "job.toml", cwd=tmp_path)
    final = wait_state(n1, task, ("done", "failed"), timeout=20)
    assert final["state"] == "done", final
    assert final["subtasks"][0]["peer"] == "n3"


def test_sigkill_of_the_worker_redispatches(cluster: list[Daemon]) -> None:
    n1, n2, n3 = cluster
    task = submit(n1, "--", "sh", "-c", "sleep 1.5; echo finished")
    running = wait_until(
        lambda: (s := status(n1, task))["subtasks"][0]["state"] == "running" and s,
        15,
        what="the subtask to run",
    )
    victim = {"n2": n2, "n3": n3}[running["subtasks"][0]["peer"]]
    victim.kill()
    final = wait_state(n1, task, ("done", "failed"), timeout=30)
    sub = final["subtasks"][0]
    assert final["state"] == "done", final
    assert sub["attempts"] == 2
    assert sub["peer"] != victim.name
    result = swarmctl("--json", "result", task, state_dir=n1.state_dir)
    assert json.loads(result.stdout)["subtasks"]["main"]["stdout"] == "finished\n"


@pytest.mark.slow  # the same logic in seconds: test_node_memory.py's partitioned worker
def test_a_stopped_worker_s_late_result_is_fenced_off(cluster: list[Daemon]) -> None:
    n1, n2, n3 = cluster
    task = submit(n1, "--", "sh", "-c", "sleep 1; echo done")
    running = wait_until(
        lambda: (s := status(n1, task))["subtasks"][0]["state"] == "running" and s,
        15,
        what="the subtask to run",
    )
    victim = {"n2": n2, "n3": n3}[running["subtasks"][0]["peer"]]
    victim.signal(signal.SIGSTOP)
    try:
        final = wait_state(n1, task, ("done", "failed"), timeout=30)
    finally:
        victim.signal(signal.SIGCONT)
    assert final["state"] == "done", final
    assert final["subtasks"][0]["attempts"] == 2
    assert final["subtasks"][0]["peer"] != victim.name
    # The stopped worker wakes up and reports attempt 1: dropped and counted.
    wait_until(lambda: n1.counters().get("tasks_stale_results", 0) >= 1, 20, what="a fenced result")
    wait_until(lambda: n1.states()[victim.name] == "alive", 20, what="victim alive again")
    assert status(n1, task)["subtasks"][0]["attempts"] == 2
    result = swarmctl("--json", "result", task, state_dir=n1.state_dir)
    assert json.loads(result.stdout)["subtasks"]["main"]["stdout"] == "done\n"


def test_sigkill_of_the_coordinator_loses_nothing(cluster: list[Daemon]) -> None:
    n1 = cluster[0]
    task = submit(n1, "--", "sh", "-c", "sleep 2; echo survived")
    wait_until(lambda: status(n1, task)["subtasks"][0]["state"] == "running", 15, what="running")
    n1.signal(signal.SIGKILL)
    n1.wait_exit(10)
    n1.start().wait_ready()
    final = wait_state(n1, task, ("done", "failed"), timeout=40)
    assert final["state"] == "done", final
    assert final["subtasks"][0]["attempts"] == 1  # re-adopted, not re-run
    result = swarmctl("--json", "result", task, state_dir=n1.state_dir)
    assert json.loads(result.stdout)["subtasks"]["main"]["stdout"] == "survived\n"


def test_cancel_stops_the_work_on_the_peer(cluster: list[Daemon], tmp_path: Path) -> None:
    n1 = cluster[0]
    marker = tmp_path / "still-running"
    task = submit(n1, "--", "sh", "-c", f"sleep 3; touch {marker}")
    wait_until(lambda: status(n1, task)["subtasks"][0]["state"] == "running", 15, what="run")
    out = swarmctl("--json", "cancel", task, state_dir=n1.state_dir)
    assert out.returncode == 0, out.stderr
    assert wait_state(n1, task, ("cancelled",))["state"] == "cancelled"
    worker = next(d for d in cluster if d.name == status(n1, task)["subtasks"][0]["peer"])
    wait_until(
        lambda: worker.counters().get("worker_cancelled", 0) >= 1, 10, what="cancel on the worker"
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (
            '[[subtask]]\nid = "a"\nkind = "shell"\nrun = ["true"]\nafter = ["b"]\n'
            '[[subtask]]\nid = "b"\nkind = "shell"\nrun = ["true"]\nafter = ["a"]\n',
            "cycle",
        ),
        ('[[subtask]]\nid = "a"\nkind = "shell"\nrun = ["true"]\nafter = ["nope"]\n', "nope"),
        (
            '[[subtask]]\nid = "a"\nkind = "llm"\nprompt = "hi"\ncapability = "astrology"\n',
            "astrology",
        ),
        (
            '[[subtask]]\nid = "a"\nkind = "shell"\nrun = ["true"]\nmin_vram = "80GiB"\n',
            "80 GiB needed",
        ),
        (
            '[[subtask]]\nid = "a"\nkind = "shell"\nrun = ["true"]\ninputs = ["missing.txt"]\n',
            "missing",
        ),
        ('[[subtask]]\nid = "a"\nkind = "shel"\nrun = ["true"]\n', "shel"),
    ],
    ids=["cycle", "unknown-after", "unknown-capability", "min-vram", "missing-input", "bad-kind"],
)
def test_invalid_job_files_exit_2(
    shared_cluster: list[Daemon], tmp_path: Path, job: str, message: str
) -> None:
    (tmp_path / "job.toml").write_text(job)
    n1 = shared_cluster[0]
    out = swarmctl("submit", "-f", "job.toml", state_dir=n1.state_dir, cwd=tmp_path)
    assert out.returncode == 2, out
    assert message in out.stderr
    assert '"a"' in out.stderr  # names the subtask
