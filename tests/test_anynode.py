"""Any node answers for any task, between 3 real daemons on loopback (CURVE links):
``swarmctl status/result/explain/logs/cancel`` on n2 and n3 give what n1 gives for
n1's task, an unknown task is an error that names the nodes asked, ``tasks --all``
lists the whole cluster's tasks, and a forwarded request to a node that dies is an
error within the deadline, not a hang."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import Browser, find_chromium
from tests.harness import ROOT, Daemon, free_port, new_secret, swarmctl, wait_until

TWO_SUBTASKS = """
name = "two"
[[subtask]]
id = "a"
kind = "shell"
run = ["sh", "-c", "echo out-a; echo err-a >&2"]
[[subtask]]
id = "b"
kind = "shell"
run = ["sh", "-c", "echo out-b; echo artifact-b > out.txt"]
outputs = ["out.txt"]
after = ["a"]
"""


DASHBOARD_PORT = free_port()


def _cluster(where: Path, dashboard_port: int | None = None) -> Iterator[list[Daemon]]:
    secret = new_secret()
    dashboard = f"[node]\ndashboard_port = {dashboard_port}\n" if dashboard_port else None
    nodes = [
        Daemon(where, name, secret=secret, config=dashboard if name == "n3" else None)
        for name in ("n1", "n2", "n3")
    ]
    for d in nodes:
        d.start()
    for d in nodes:
        d.wait_ready()
    everyone = {"n1": "alive", "n2": "alive", "n3": "alive"}
    wait_until(lambda: all(d.states() == everyone for d in nodes), 20, what="cluster")
    yield nodes
    for d in nodes:
        d.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Daemon]]:
    yield from _cluster(tmp_path_factory.mktemp("anynode"), DASHBOARD_PORT)  # on n3


def ctl(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return swarmctl(*args, state_dir=d.state_dir)


def ctl_json(d: Daemon, *args: str) -> Any:
    out = ctl(d, "--json", *args)
    assert out.returncode == 0, f"{d.name} {args}: {out.stderr}"
    return json.loads(out.stdout)


def submit(d: Daemon, *args: str, cwd: Path | None = None) -> str:
    out = swarmctl("--json", "submit", *args, state_dir=d.state_dir, cwd=cwd)
    assert out.returncode == 0, out.stderr
    task: str = json.loads(out.stdout)["task"]
    return task


def finished(d: Daemon, task: str) -> dict[str, Any]:
    return wait_until(
        lambda: (s := ctl_json(d, "status", task))["state"] in ("done", "failed") and s,
        30,
        what=f"{task} done",
    )


@pytest.fixture(scope="module")
def done_task(cluster: list[Daemon], tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("job")
    (work / "job.toml").write_text(TWO_SUBTASKS)
    task = submit(cluster[0], "-f", "job.toml", cwd=work)
    assert finished(cluster[0], task)["state"] == "done"
    return task


@pytest.mark.parametrize("command", ["status", "result", "explain"])
def test_other_nodes_answer_as_the_coordinator(
    cluster: list[Daemon], done_task: str, command: str
) -> None:
    n1, n2, n3 = cluster
    expected = ctl_json(n1, command, done_task)
    assert expected["id"] == done_task
    assert ctl_json(n2, command, done_task) == expected
    assert ctl_json(n3, command, done_task) == expected


def test_logs_from_any_node(cluster: list[Daemon], done_task: str) -> None:
    n1, n2, n3 = cluster
    expected = ctl_json(n1, "logs", done_task, "a")
    assert expected["stdout"] == "out-a\n" and expected["stderr"] == "err-a\n"
    assert ctl_json(n3, "logs", done_task, "a") == expected
    text = ctl(n2, "logs", done_task, "b")
    assert text.returncode == 0 and text.stdout == "out-b\n", text.stderr


def test_text_result_from_another_node(cluster: list[Daemon], done_task: str) -> None:
    out = ctl(cluster[2], "result", done_task)
    assert out.returncode == 0, out.stderr
    assert "out-a" in out.stdout and "out-b" in out.stdout


def test_artifacts_from_another_node(cluster: list[Daemon], done_task: str, tmp_path: Path) -> None:
    """``result --out`` reads the artifacts in pieces (``artifact``), each forwarded."""
    out = ctl(cluster[2], "result", "--out", str(tmp_path / "got"), done_task)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "got" / "b" / "out.txt").read_text() == "artifact-b\n"


def test_unknown_task_names_the_nodes_asked(cluster: list[Daemon]) -> None:
    n3 = cluster[2]
    started = time.monotonic()
    out = ctl(n3, "status", "abcdef-0000000000")
    assert out.returncode == 2, out.stderr  # as an unknown task on its own node
    assert "unknown task 'abcdef-0000000000' (asked 2 node(s): n1, n2)" in out.stderr
    assert time.monotonic() - started < 10
    assert ctl(n3, "result", "nosuchtask").returncode == 2
    assert ctl(n3, "logs", "nosuchtask").returncode == 2


def test_cancel_from_another_node(cluster: list[Daemon]) -> None:
    n1, n2, _ = cluster
    task = submit(n1, "--", "sleep", "60")
    wait_until(lambda: ctl_json(n1, "status", task)["state"] == "running", 20, what="running")
    body = ctl_json(n2, "cancel", task)
    assert body["id"] == task and body["state"] == "cancelled"
    assert ctl_json(n1, "status", task)["state"] == "cancelled"


def test_status_wait_and_logs_follow_forwarded(cluster: list[Daemon]) -> None:
    n1, _, n3 = cluster
    task = submit(n1, "--", "sh", "-c", "echo one; sleep 2; echo two")
    follow = ctl(n3, "logs", "-f", task)
    assert follow.returncode == 0, follow.stderr
    assert follow.stdout == "one\ntwo\n"
    waited = ctl(n3, "--json", "status", "--wait", task)
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["state"] == "done"


def test_tasks_all_lists_every_nodes_tasks(cluster: list[Daemon], done_task: str) -> None:
    n1, n2, n3 = cluster
    on_n2 = submit(n2, "--", "true")
    finished(n2, on_n2)
    rows = ctl_json(n3, "tasks", "--all")
    by_id = {r["id"]: r for r in rows}
    assert by_id[done_task]["coordinator"] == "n1"  # its name, as in `status --json`
    assert by_id[done_task]["coordinator_id"] == n1.node_id()
    assert by_id[on_n2]["coordinator"] == "n2"
    own = {r["id"]: r for r in ctl_json(n1, "tasks")}
    fields = set(own[done_task])
    assert set(by_id[done_task]) == fields | {"coordinator", "coordinator_id"}
    assert {k: by_id[done_task][k] for k in fields} == own[done_task]
    assert ctl_json(n3, "tasks") == []  # without --all: n3's own (none)
    text = ctl(n3, "tasks", "--all")
    assert text.returncode == 0 and f"{on_n2}" in text.stdout and "n2" in text.stdout


def test_the_dashboard_lists_the_clusters_tasks(cluster: list[Daemon], done_task: str) -> None:
    """n3's dashboard: the cluster's tasks, and the placement of n1's task on click."""
    n1 = cluster[0]
    base = f"http://127.0.0.1:{DASHBOARD_PORT}"
    listed = httpx.get(f"{base}/api/cluster-tasks", timeout=10)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    rows = {r["id"]: r for r in body["tasks"]}
    assert rows[done_task]["coordinator"] == "n1" and body["missing"] == []
    assert [r["submitted"] for r in body["tasks"]] == sorted(
        (r["submitted"] for r in body["tasks"]), reverse=True
    )  # newest first, as the node's own list
    explained = httpx.get(f"{base}/api/explain/{done_task}", timeout=10)
    assert explained.status_code == 200 and explained.json() == ctl_json(n1, "explain", done_task)
    unknown = httpx.get(f"{base}/api/explain/abcdef-0000000000", timeout=10)
    assert unknown.status_code == 404 and "asked 2 node(s)" in unknown.json()["error"]


CHROMIUM = find_chromium()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to drive")
def test_the_dashboard_page_shows_the_cluster_tasks(cluster: list[Daemon], done_task: str) -> None:
    pytest.importorskip("websockets", reason="pip install websockets (the test extra)")
    assert CHROMIUM is not None
    with Browser(CHROMIUM, width=1440, height=900) as browser:
        browser.goto(f"http://127.0.0.1:{DASHBOARD_PORT}/")
        row = f"#cluster-tasks tr.cluster-task[data-task='{done_task}']"
        where = browser.wait_for(
            f'(document.querySelector("{row}") || {{}}).dataset?.coordinator', 15, what="the row"
        )
        assert where == "n1"  # n1's task, on n3's page
        assert (
            browser.eval(f"!!document.querySelector(\".task[data-task='{done_task}']\")") is False
        )
        # its placement, asked of n1 (clicked again should the layout have moved under
        # the pointer: the peers above re-render every second)
        shown = "document.querySelectorAll('#explain tr.candidate').length === 3"
        for _ in range(5):
            browser.click(row)
            with contextlib.suppress(AssertionError):
                browser.wait_for(shown, 4, what="placement")
                break
        assert browser.eval(shown), browser.eval("document.querySelector('#explain').innerText")
        browser.click("#cluster-toggle")
        hidden = browser.wait_for(
            "!document.querySelector('#cluster-tasks tr.cluster-task')", 5, what="hidden"
        )
        assert hidden


def test_forwarded_member_request_with_node_flag(cluster: list[Daemon], done_task: str) -> None:
    """``swarmctl --node`` to n3 (a member's port, not the local socket) is forwarded too."""
    n1, _, n3 = cluster
    out = swarmctl("--node", n3.address, "--json", "status", done_task, state_dir=n1.state_dir)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ctl_json(n1, "status", done_task)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[list[Daemon]]:
    """A cluster of its own, for the test that kills a node."""
    yield from _cluster(tmp_path)


def test_a_forwarded_request_to_a_node_that_dies_fails_in_time(fresh: list[Daemon]) -> None:
    n1, _, n3 = fresh
    task = submit(n1, "--", "sleep", "60")
    wait_until(lambda: ctl_json(n1, "status", task)["state"] == "running", 20, what="running")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "swarmctl", "--state-dir", str(n3.state_dir), "logs", "-f", task]
    follow = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        # n3 forwards the follow to n1, which holds it (no output comes): then n1 dies.
        wait_until(lambda: n3.counters().get("forward_requests", 0) >= 1, 20, what="forwarded")
        n1.kill()
        started = time.monotonic()
        _, err = follow.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 1, err
    assert f"node n1 ({n1.address}), which has task '{task}'" in err
    # within the forward's own deadline (2.5 s + the follow's 10 s), before swarmctl's
    # own timeout (13 s) would have said only "no answer"
    assert took < 12.5, (took, err)
    # n1 dead: its task is unknown, and the error says where it came from (or, once a
    # successor has taken n1's tasks over, that node answers)
    wait_until(lambda: n3.states()["n1"] == "dead", 20, what="n1 dead on n3")
    status = ctl(n3, "status", task)
    assert status.returncode == 0 or (
        status.returncode == 2 and "node n1, which submitted it, is dead" in status.stderr
    ), status.stderr
