"""Journal first, then state: a failed commit (a real SQLITE_FULL) shows nothing and
acks nothing until it succeeds; bad journal rows are quarantined and the rest
restored; a damaged file is moved aside; state files are 0600; a node whose state dir
is deleted or replaced stops (exit 78)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from protocol.messages import (
    AttemptResult,
    ErrorReply,
    NodeRef,
    ResultAck,
    StatsReply,
    StatsRequest,
    TaskReply,
    TaskRequest,
)
from protocol.messages import Dispatch as WireDispatch
from swarmd import group_commit
from swarmd.control import Control
from swarmd.core.jobspec import parse_job
from swarmd.store import Store
from swarmd.work import Coordination
from tests.capacity import peer
from tests.harness import Daemon, new_secret, swarmctl, wait_until

A = peer("A", slots_total=64)
BIG = "x" * 200_000  # a result this big needs new pages: a full file refuses it


class Clock:
    t = 1_000.0

    def __call__(self) -> float:
        return self.t


def job(name: str, *ids: str) -> Any:
    return parse_job(
        {"name": name, "subtask": [{"id": i, "kind": "shell", "run": ["true"]} for i in ids]}
    )


def coordination(store: Store, sent: list[Any]) -> Coordination:
    return Coordination(
        node_id="coord-id",
        node_name="coord",
        store=store,
        send=lambda addr, m: sent.append(m) or True,
        address_of=lambda node_id: f"{node_id}:1",
        peers=lambda loads: [A],
        me=lambda: NodeRef("coord-id", 1, 1, "coord:1"),
        clock=Clock(),  # type: ignore[arg-type]
        log=logging.getLogger("test"),
    )


def fill(store: Store, full: bool) -> None:
    """No new page for the file (a real SQLITE_FULL on the next commit that needs one)."""
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages if full else 1 << 30}")


def ask(work: Coordination, request: Any) -> Any:
    control = Control(SimpleNamespace(coordination=work))  # type: ignore[arg-type]
    if not control.answers_later(request):
        return control.handle(request, True)
    return asyncio.run(control.answer_later(request))


def test_a_result_is_acked_and_shown_only_once_its_commit_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_commit, "RETRY_S", 0.0)
    sent: list[Any] = []
    store = Store(tmp_path / "swarmd.db")
    work = coordination(store, sent)
    task = work.submit(job("one", "s"), {})
    assert len([m for m in sent if isinstance(m, WireDispatch)]) == 1

    fill(store, full=True)
    work.on_message(AttemptResult(task=task, subtask="s", attempt=1, node="A", stdout=BIG))
    assert not [m for m in sent if isinstance(m, ResultAck)]  # the worker keeps its result
    assert "SQLITE_FULL" in (work.health.reason or "")
    status = ask(work, TaskRequest(task=task, what="status"))
    assert isinstance(status, ErrorReply) and status.code == "unavailable"
    assert "no space left" in status.message and str(tmp_path) in status.message
    with pytest.raises(RuntimeError, match="not taking new work"):
        work.submit(job("two", "s"), {})
    assert work.coordinator.task_ids() == [task]

    # A restart now finds the attempt still out (its worker will send the result again).
    again = coordination(Store(tmp_path / "swarmd.db"), [])
    again.restore()
    assert again.coordinator.status(task)["subtasks"][0]["state"] in ("dispatched", "running")

    fill(store, full=False)  # space again: the retry commits, then acks
    work.flush()
    (ack,) = [m for m in sent if isinstance(m, ResultAck)]
    assert ack.committed and work.health.reason is None
    reply = ask(work, TaskRequest(task=task, what="status"))
    assert isinstance(reply, TaskReply) and reply.body["state"] == "done"
    after = coordination(Store(tmp_path / "swarmd.db"), [])
    after.restore()
    assert after.coordinator.result(task)["subtasks"]["s"]["stdout"] == BIG


def test_a_submit_whose_commit_fails_is_refused_and_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_commit, "RETRY_S", 0.0)
    sent: list[Any] = []
    store = Store(tmp_path / "swarmd.db")
    work = coordination(store, sent)
    fill(store, full=True)
    big = [{"id": f"s{i}", "kind": "shell", "run": ["echo", BIG[:3000]]} for i in range(40)]
    with pytest.raises(RuntimeError, match=r"not taking new work.*no space left"):
        work.submit(parse_job({"name": "big", "subtask": big}), {})
    assert work.coordinator.task_ids() == [] and sent == []  # nothing went out
    fill(store, full=False)
    work.flush()
    assert work.health.reason is None
    assert work.submit(job("small", "s"), {}) in work.coordinator.task_ids()


def _corrupt(path: Path, task: str, kind: str, subtask: str, data: bytes) -> None:
    db = sqlite3.connect(path)
    db.execute(
        "UPDATE journal SET data = ? WHERE task = ? AND kind = ? AND subtask = ?",
        (data, task, kind, subtask),
    )
    db.commit()
    db.close()


def test_bad_rows_are_quarantined_and_the_rest_restored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "swarmd.db"
    store = Store(path)
    work = coordination(store, [])
    ids = [work.submit(job(f"j{i}", "a", "b"), {}) for i in range(4)]
    store.close()
    enc = msgspec.msgpack.encode
    _corrupt(path, ids[0], "subtask", "a", b"\xc1 not msgpack")
    _corrupt(path, ids[1], "task", "", enc({"task": ids[1], "submitted": 0}))  # no job
    _corrupt(path, ids[2], "subtask", "b", enc({"task": ids[2], "subtask": "b", "state": 5}))

    store = Store(path)
    again = coordination(store, [])
    with caplog.at_level(logging.ERROR):
        again.restore()
    assert sorted(again.coordinator.task_ids()) == sorted([ids[0], ids[2], ids[3]])

    def states(task: str) -> list[str]:
        return [s["state"] for s in again.coordinator.status(task)["subtasks"]]

    # A subtask whose record was bad is as submitted (queued again); the rest restored.
    assert states(ids[3]) == ["dispatched", "dispatched"]
    assert states(ids[0]) == ["ready", "dispatched"] and states(ids[2]) == ["dispatched", "ready"]
    rows = store.db.execute("SELECT kind, task, subtask, reason FROM quarantine").fetchall()
    keys = {(k, t, s) for k, t, s, _ in rows}
    assert (("subtask", ids[0], "a") in keys and ("task", ids[1], "") in keys) and (
        ("subtask", ids[2], "b") in keys
    )
    assert ("subtask", ids[1], "a") in keys  # no task to restore it into
    reasons = {(k, t, s): r for k, t, s, r in rows}
    assert "not msgpack" in reasons[("subtask", ids[0], "a")]
    assert "missing key 'job'" in reasons[("task", ids[1], "")]
    assert "unknown state 5" in reasons[("subtask", ids[2], "b")]
    for task in ids[:3]:
        assert task in caplog.text
    assert store.quarantined() == len(rows)
    assert store.db.execute("SELECT COUNT(*) FROM journal WHERE task = ?", (ids[1],)).fetchone()[
        0
    ] == (0)
    store.close()


# ---------------------------------------------------------------- real daemons


def _daemon(tmp_path: Path, daemons: list[Daemon], name: str = "n1") -> Daemon:
    d = Daemon(tmp_path, name, secret=new_secret(), args=("--no-mdns",))
    daemons.append(d)
    return d


def _stats(d: Daemon) -> dict[str, int]:
    reply = d.request(StatsRequest())
    assert isinstance(reply, StatsReply)
    return reply.counters


def test_a_damaged_database_is_moved_aside_and_the_node_starts(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = _daemon(tmp_path, daemons)
    (d.state_dir / "swarmd.db").write_bytes(b"SQLite format 3\x00" + os.urandom(8000))
    d.start().wait_ready()
    moved = list(d.state_dir.glob("swarmd.db.damaged-*"))
    assert len(moved) == 1 and moved[0].read_bytes().startswith(b"SQLite format 3")
    log = d.log()
    assert "is damaged" in log and str(moved[0]) in log and ".recover" in log
    assert "Traceback" not in log
    assert _stats(d)["journal_damaged_moved"] == 1
    done = swarmctl("submit", "--wait", "--", "echo", "ok", state_dir=d.state_dir)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


def test_a_bad_row_is_quarantined_by_a_restarting_node(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = _daemon(tmp_path, daemons).start().wait_ready()
    tasks = []
    for word in ("one", "two"):
        r = swarmctl("submit", "--wait", "--", "echo", word, state_dir=d.state_dir)
        assert r.returncode == 0, r.stderr
        tasks.append(r.stderr.split()[-1])
    assert d.term() == 0
    _corrupt(d.state_dir / "swarmd.db", tasks[0], "subtask", "main", b"\xc1")
    d.start().wait_ready()
    assert f"quarantined the subtask record of task {tasks[0]}" in d.log()
    assert "Traceback" not in d.log()
    assert _stats(d)["journal_quarantined"] == 1
    reply = d.request(TaskRequest(task=tasks[1], what="result"))
    assert isinstance(reply, TaskReply) and reply.body["subtasks"]["main"]["stdout"] == "two\n"


def test_state_files_are_0600_in_a_0700_dir(tmp_path: Path, daemons: list[Daemon]) -> None:
    d = _daemon(tmp_path, daemons)
    os.chmod(d.state_dir, 0o755)
    old = d.state_dir / "swarmd.db"  # as an older version left it
    sqlite3.connect(old).close()
    os.chmod(old, 0o644)
    d.start().wait_ready()
    r = swarmctl("submit", "--wait", "--", "echo", "hi", state_dir=d.state_dir)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(d.state_dir.stat().st_mode) == 0o700
    modes, wrong = {}, {}
    for entry in d.state_dir.iterdir():
        mode = entry.lstat().st_mode
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            modes[entry.name] = stat.S_IMODE(mode)
            if modes[entry.name] != (0o700 if stat.S_ISDIR(mode) else 0o600):
                wrong[entry.name] = oct(modes[entry.name])
    assert {"swarmd.db", "swarmd.db-wal", "swarmd.db-shm", "node_id", "lock"} <= set(modes)
    assert wrong == {}


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_node_whose_state_dir_goes_stops_loudly(
    tmp_path: Path, daemons: list[Daemon], how: str
) -> None:
    d = _daemon(tmp_path, daemons).start().wait_ready()
    if how == "deleted":
        shutil.rmtree(d.state_dir)
    else:
        d.state_dir.rename(tmp_path / "elsewhere")
        d.state_dir.mkdir()
    assert d.wait_exit(15) == 78
    log = d.log()
    assert f"STATE DIR LOST: {d.state_dir}" in log and how in log
    wait_until(lambda: "stopping" in d.log(), 5, what="the stop in the log")
