"""Sleep is not death, on 3 real daemons (no logind here): SIGUSR1 runs the same
preparation as logind's PrepareForSleep(true), SIGUSR2 the same wake as (false).

The sleeper is then SIGSTOPped, as a suspend freezes it: it sends nothing and answers
nothing, far longer than it takes a silent node to be declared dead. Its running work
completes elsewhere exactly once, its peers list it `sleeping` (never `dead`), nothing
is placed on it, and after the wake it is alive within about a second and takes work.
The real logind path is in tests/test_systemd.py (the nspawn boot test).
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import fake_logind
from tests.harness import Daemon, new_secret, swarmctl, wait_until
from tests.test_drain import make_cluster, parallel_job, status, submit_job

WORKERS = "[node]\nmax_concurrency = 2\n"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Daemon]]:
    nodes = make_cluster(tmp_path, worker_config=WORKERS)
    yield nodes
    for d in nodes:
        d.stop()  # SIGKILL ends a stopped process too


def states_of(d: Daemon) -> dict[str, str]:
    out = swarmctl("--json", "peers", state_dir=d.state_dir)
    assert out.returncode == 0, out.stderr
    return {p["name"]: p["state"] for p in json.loads(out.stdout)}


def counted_job(count: int, runs: Path, seconds: float) -> str:
    """``count`` shell subtasks; each start appends a line to runs/ID."""
    return "\n".join(
        f'[[subtask]]\nid = "s{i}"\nkind = "shell"\n'
        f'run = ["sh", "-c", "echo started >> {runs}/s{i}; sleep {seconds}"]\n'
        for i in range(count)
    )


@pytest.mark.timeout(120)
def test_sleep_hands_work_back_shows_sleeping_and_wakes(
    cluster: list[Daemon], tmp_path: Path
) -> None:
    n1, n2, n3 = cluster
    runs = tmp_path / "runs"
    runs.mkdir()
    task = submit_job(n1, tmp_path, counted_job(4, runs, 3.0))["task"]
    on_n2 = wait_until(
        lambda: (
            [
                s["id"]
                for s in status(n1, task)["subtasks"]
                if s["peer"] == "n2" and s["state"] == "running"
            ]
            or None
        ),
        15,
        what="work running on n2",
    )

    # -- sleep: the preparation, then frozen as a suspended machine is
    t = time.monotonic()
    n2.signal(signal.SIGUSR1)
    line = wait_until(
        lambda: re.search(
            r"ready to sleep: (\d+) attempt\(s\) handed back in ([\d.]+) s", n2.log()
        ),
        10,
        what="n2 ready to sleep",
    )
    handed, took = int(line.group(1)), float(line.group(2))
    # The coordinator answered its hand-backs before it suspended (nothing to resend).
    assert n2.counters().get("worker_acked", 0) == handed
    n2.signal(signal.SIGSTOP)
    assert handed >= len(on_n2), n2.log()[-2000:]
    assert took < 3.5  # logind's InhibitDelayMaxSec is 5 s
    wait_until(lambda: n1.states().get("n2") == "sleeping", 5, what="n1 sees n2 sleeping")
    wait_until(lambda: n3.states().get("n2") == "sleeping", 5, what="n3 sees n2 sleeping")
    print(
        f"sleep -> {handed} attempt(s) handed back, ready to suspend: {took:.2f} s; "
        f"peers show it sleeping {time.monotonic() - t:.2f} s after the signal"
    )

    # -- its work completes elsewhere, once; it stays `sleeping` through the silence
    seen = set()
    final = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen |= {states_of(n1)["n2"], n3.states().get("n2")}
        final = status(n1, task)
        if final["state"] == "done" and time.monotonic() - t > 4.0:
            break
        time.sleep(0.2)
    assert seen == {"sleeping"}, seen  # never dead: ~1.7 s of silence kills a node
    assert final is not None and final["state"] == "done", final
    for sub in final["subtasks"]:
        assert sub["state"] == "done" and sub["exit_code"] == 0, sub
        if sub["id"] in on_n2:
            assert sub["peer"] == "n3" and sub["attempts"] == 2, sub  # re-dispatched once
    for sid in on_n2:
        assert (runs / sid).read_text().count("started") == 2  # cut on n2, once on n3
    assert n1.counters().get("tasks_retries_exhausted", 0) == 0

    # -- nothing is placed on a sleeping node
    during = submit_job(n1, tmp_path, parallel_job(4), "--wait")
    assert during["state"] == "done"
    assert {s["peer"] for s in during["subtasks"]} == {"n3"}

    # -- wake: alive again for its peers within about a second, and it takes work
    n2.signal(signal.SIGCONT)
    t = time.monotonic()
    n2.signal(signal.SIGUSR2)
    wait_until(
        lambda: n1.states().get("n2") == "alive" and n3.states().get("n2") == "alive",
        5,
        interval=0.02,
        what="n2 alive again",
    )
    rejoined = time.monotonic() - t
    print(f"wake -> alive on both peers in {rejoined:.2f} s")
    assert "awake: told the peers" in n2.log()
    pinned = submit_job(n1, tmp_path, parallel_job(2, 'node = "n2"'), "--wait")
    assert pinned["state"] == "done"
    assert {s["peer"] for s in pinned["subtasks"]} == {"n2"}
    assert states_of(n2) == {"n1": "alive", "n2": "alive", "n3": "alive"}


def test_a_vanished_node_is_still_dead(cluster: list[Daemon]) -> None:
    """Without the announcement, silence is death, as before."""
    n1, n2, _ = cluster
    n2.kill()
    wait_until(lambda: n1.states().get("n2") == "dead", 10, what="n2 dead")
    assert "sleeping" not in n1.states().values()


def test_logind_inhibitor_is_released_only_after_the_peers_know(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The logind path with the real dbus-daemon and a stand-in for logind
    (tests/fake_logind.py; the real logind: tests/test_systemd.py): the node takes a
    delay inhibitor at start, and on PrepareForSleep(true) releases it only once its
    peer shows it sleeping; on (false) it takes a new one and is alive again."""
    reason = fake_logind.available()
    if reason:
        pytest.skip(reason)
    fake = fake_logind.FakeLogind(tmp_path / "bus").start()
    secret = new_secret()
    n1 = Daemon(tmp_path, "n1", secret=secret)
    n2 = Daemon(tmp_path, "n2", secret=secret, args=("--join", n1.address))
    try:
        n1.start()
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", fake.address)
        n2.start()
        monkeypatch.delenv("DBUS_SYSTEM_BUS_ADDRESS")
        for d in (n1, n2):
            d.wait_ready()
        wait_until(lambda: n1.states().get("n2") == "alive", 15, what="n2 alive")
        wait_until(lambda: "holding a sleep delay inhibitor" in n2.log(), 15, what="inhibitor")
        wait_until(lambda: "listening on" in n2.log(), 15, what="n2 up")  # start-up ended
        [first] = fake.held
        assert (first.who, first.mode) == ("swarmd", "delay")
        fake.settle()
        assert not first.released()

        t = time.monotonic()
        fake.emit(True)
        wait_until(first.released, 5, interval=0.01, what="the inhibitor released")
        released = time.monotonic() - t
        # Announced before the release: the peer knows (or is a moment from knowing).
        wait_until(lambda: n1.states().get("n2") == "sleeping", 1, what="n1 sees n2 sleeping")
        assert released < 3.5, released
        print(f"PrepareForSleep(true) -> inhibitor released: {released:.2f} s")

        fake.emit(False)
        wait_until(lambda: len(fake.held) == 2, 5, what="a new inhibitor after the wake")
        wait_until(lambda: n1.states().get("n2") == "alive", 2, interval=0.02, what="alive")
        fake.settle()
        assert not fake.held[1].released()
    finally:
        for d in (n1, n2):
            d.stop()
        fake.close()
