"""A state dir on a real small filesystem (tmpfs) that fills up: the node refuses new
work with the reason (submit, peers, stats), keeps and commits what it holds once
space returns, starts on a full disk with one line and exit code 75 — and the task
invariants of the chaos suite hold across it all (nothing lost, each subtask committed
once), with a SIGKILL while the disk is full.

Needs ``mount -t tmpfs`` (root); skipped with the reason where it is not permitted.
"""

from __future__ import annotations

import contextlib
import errno
import random
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from protocol.messages import (
    PeersReply,
    PeersRequest,
    SubmitReply,
    SubmitRequest,
    TaskReply,
    TaskRequest,
)
from swarmctl.client import RequestFailed
from swarmd.core.tasks import FINAL_TASK
from tests import chaos
from tests.harness import Daemon, new_secret, wait_until

FS_SIZE = "3m"


@contextlib.contextmanager
def small_fs(path: Path, size: str = FS_SIZE) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_up(directory: Path) -> Path:
    """Write a file until the filesystem is full."""
    path = directory / "filler"
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return path


@pytest.fixture
def full_dir(tmp_path: Path, daemons: list[Daemon]) -> Iterator[Path]:
    with small_fs(tmp_path / "small") as mnt:
        yield mnt
        for d in daemons:  # before the unmount
            d.stop()


def task_request(d: Daemon, task: str, what: str) -> dict[str, object] | None:
    try:
        reply = d.request(TaskRequest(task=task, what=what), timeout=3.0)  # type: ignore[arg-type]
    except Exception:
        return None
    return reply.body if isinstance(reply, TaskReply) else None


def test_starting_on_a_full_disk_exits_75_with_one_line(
    full_dir: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    d = Daemon(full_dir, "n1", secret=new_secret(), args=("--no-mdns",))
    d.log_path = tmp_path / "n1.log"
    daemons.append(d)
    fill_up(full_dir)
    assert d.start().wait_exit(30) == 75
    log = d.log()
    assert "Traceback" not in log
    (line,) = [x for x in log.splitlines() if "ERROR" in x]
    assert f"state dir {d.state_dir}" in line and "No space left on device (ENOSPC)" in line


def submit(d: Daemon, rng: random.Random, markers: Path, n: int) -> chaos.Submitted | str:
    key = f"j{n:03d}"
    shape, job = chaos.make_job(rng, markers, key)
    try:
        reply = d.request(SubmitRequest(job=job), timeout=5.0)
    except RequestFailed as exc:
        return str(exc)
    assert isinstance(reply, SubmitReply)
    subtasks = tuple(str(s["id"]) for s in job["subtask"])
    return chaos.Submitted(reply.task, 1, shape, key, subtasks, 0.0)


@pytest.mark.slow
def test_a_full_state_dir_refuses_work_keeps_its_tasks_and_recovers(
    full_dir: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    secret = new_secret()
    a = Daemon(full_dir, "a", secret=secret, args=("--no-mdns",))
    a.log_path = tmp_path / "a.log"
    b = Daemon(tmp_path, "b", secret=secret, args=("--no-mdns", "--join", a.address))
    daemons += [a, b]
    a.start().wait_ready()
    b.start().wait_ready()
    wait_until(lambda: len(a.peers()) == 2, 20, what="a and b to meet")
    markers = tmp_path / "markers"
    markers.mkdir()
    rng = random.Random(11)
    accepted: list[chaos.Submitted] = []
    for n in range(8):
        s = submit(a, rng, markers, n)
        assert isinstance(s, chaos.Submitted), s
        accepted.append(s)

    filler = fill_up(full_dir)  # while those run: their results cannot be journaled
    refusal = ""
    for n in range(8, 60):
        s = submit(a, rng, markers, n)
        if isinstance(s, str):
            refusal = s
            break
        accepted.append(s)  # fitted in pages the file already had
    assert refusal.startswith("unavailable: not taking new work"), refusal
    assert f"state dir {a.state_dir}" in refusal
    wait_until(lambda: a.counters()["journal_failing"] == 1, 10, what="a to say it fails")

    def refusing_seen_by_b() -> bool:
        reply = b.request(PeersRequest())
        assert isinstance(reply, PeersReply)
        row = next(p for p in reply.peers if p.name == "a")
        return row.draining and "no space left" in (row.refusing or "")

    wait_until(refusing_seen_by_b, 10, what="b to see a refusing work")

    a.kill()  # with results held in memory only: they must not be lost
    assert a.start().wait_exit(30) == 75  # still full: one line, exit 75
    filler.unlink()
    a.start().wait_ready()

    def all_final() -> bool:
        for s in accepted:
            if s.status is None or s.status["state"] not in FINAL_TASK:
                s.status = task_request(a, s.task, "status")
        return all(s.status is not None and s.status["state"] in FINAL_TASK for s in accepted)

    wait_until(all_final, 150, interval=0.5, what="every accepted task to finish")
    violations: list[str] = []
    counts: Counter[str] = Counter()
    for s in accepted:
        s.result = task_request(a, s.task, "result")
        s.explain = task_request(a, s.task, "explain")
        found, seen = chaos.check_commits(s, markers)
        violations += found
        counts += seen
        assert s.status is not None and s.status["state"] == "done", s.status
    print(f"{len(accepted)} tasks accepted, refused: {refusal!r}; {dict(counts)}")
    assert violations == []
    assert a.counters()["journal_failing"] == 0
    for d in (a, b):
        assert "Traceback" not in d.log()
