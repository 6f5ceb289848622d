"""A crash noticed in under a second, with real daemons (tests/harness.py).

Three daemons on loopback, seeded with ``--join`` (no mDNS). SIGKILL one: the kernel
resets its connections, the others' links to it drop, their probes of its port are
refused, and both list it dead well before the accrual detector would (~1.7 s). A
SIGSTOPped peer keeps its connections and its port: it is judged by the accrual
detector only, as before. A peer killed and restarted on the same port (a new
generation) ends alive.

Times are measured by polling both survivors' ``peers`` every 20 ms; the assertion
has a margin for a loaded 2-core machine (bench/failover.py reports the medians).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon, new_secret, wait_until

CRASH_LIMIT_S = 1.5  # the goal is < 1 s; the margin is for a loaded shared machine


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[tuple[Daemon, Daemon, Daemon]]:
    secret = new_secret()
    a = Daemon(tmp_path, "a", secret=secret, args=("--no-mdns",))
    seeded = ("--no-mdns", "--join", a.address)
    b = Daemon(tmp_path, "b", secret=secret, args=seeded)
    c = Daemon(tmp_path, "c", secret=secret, args=seeded)
    nodes = (a, b, c)
    try:
        for d in nodes:
            d.start()
        for d in nodes:
            d.wait_ready()
        everyone = {"a": "alive", "b": "alive", "c": "alive"}
        for d in nodes:
            wait_until(lambda d=d: d.states() == everyone, 20, what=f"{d.name} to see all")
        # Each has a link to c (an RTT is measured over one): what the crash path watches.
        for d in (a, b):
            wait_until(lambda d=d: _peer(d, "c").get("rtt_ms") is not None, 20, what="links")
        yield nodes
    finally:
        for d in nodes:
            if d.proc is not None and d.proc.poll() is None:
                d.signal(signal.SIGCONT)
            d.stop()


def _peer(d: Daemon, name: str) -> dict[str, Any]:
    return next((p for p in d.peers() if p["name"] == name), {})


def _dead_times(
    survivors: tuple[Daemon, ...], victim: str, t0: float, limit: float
) -> dict[str, float]:
    """When each survivor first lists ``victim`` dead, in seconds after ``t0``."""
    seen: dict[str, float] = {}

    def all_dead() -> bool:
        for d in survivors:
            if d.name not in seen and d.states().get(victim) == "dead":
                seen[d.name] = time.monotonic() - t0
        return len(seen) == len(survivors)

    wait_until(all_dead, limit, 0.02, f"{victim} dead on {[d.name for d in survivors]}")
    return seen


def test_a_killed_peer_is_dead_to_the_others_within_a_second(
    trio: tuple[Daemon, Daemon, Daemon],
) -> None:
    a, b, c = trio
    t0 = time.monotonic()
    c.signal(signal.SIGKILL)
    seen = _dead_times((a, b), "c", t0, 10)
    print(f"SIGKILL -> dead: {seen}")
    assert max(seen.values()) < CRASH_LIMIT_S, seen
    counters = {d.name: d.counters() for d in (a, b)}
    # Both saw their link drop and c's port refuse; at least one declared the crash
    # itself (the other may have taken its dead claim first): this path, not accrual.
    assert all(c.get("crash_probe_refused", 0) >= 2 for c in counters.values()), counters
    assert sum(c.get("gossip_crashes_confirmed", 0) for c in counters.values()) >= 1, counters
    assert any("crashed: the link dropped" in d.log() for d in (a, b))


def test_a_frozen_peer_is_left_to_the_accrual_detector(
    trio: tuple[Daemon, Daemon, Daemon],
) -> None:
    a, b, c = trio
    t0 = time.monotonic()
    c.signal(signal.SIGSTOP)
    # Its connections stay up: nothing drops, nothing is probed, and for 0.8 s (the
    # accrual detector needs ~1.4 s of silence at the least) it is not dead.
    while time.monotonic() - t0 < 0.8:
        assert all(d.states().get("c") in ("alive", "suspect") for d in (a, b))
        time.sleep(0.05)
    _dead_times((a, b), "c", t0, 15)  # then the accrual detector judges it, as before
    for d in (a, b):
        counters = d.counters()
        assert counters.get("gossip_crashes_confirmed", 0) == 0, counters
        assert counters.get("crash_probe_refused", 0) == 0, counters
    c.signal(signal.SIGCONT)  # thawed, it refutes and is alive again
    for d in (a, b):
        wait_until(lambda d=d: d.states().get("c") == "alive", 15, what=f"c alive on {d.name}")


def test_a_peer_restarted_on_its_port_ends_alive(trio: tuple[Daemon, Daemon, Daemon]) -> None:
    a, b, c = trio
    generation = _peer(a, "c")["generation"]
    c.signal(signal.SIGKILL)
    c.wait_exit(10)
    c.start()  # the same state dir and port: a new generation at the same address
    c.wait_ready()
    for d in (a, b):
        wait_until(
            lambda d=d: (
                _peer(d, "c").get("generation", 0) > generation
                and _peer(d, "c")["state"] == "alive"
            ),
            15,
            what=f"c's new generation alive on {d.name}",
        )
    # ...and it stays alive (nothing of the old generation's crash sticks to it).
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert all(d.states().get("c") == "alive" for d in (a, b))
        time.sleep(0.1)
