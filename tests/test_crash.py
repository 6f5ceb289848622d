"""A crash noticed from a dropped link: the sans-I/O decision (swarmd/core/crash.py),
gossip's new input (``Gossip.crashed``), and the probe against real sockets.

The decision and gossip run on a fake clock with the hand-wired gossip of
tests/test_gossip.py; the probe connects to real loopback ports (a closed one, a
listener that never accepts, a frozen process's listener).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import pytest

from protocol.messages import Claim, Syn
from swarmd.core.crash import Confirmed, CrashCases, CrashConfig, Outcome, Probe
from swarmd.core.failure import Liveness
from swarmd.core.gossip import GossipConfig
from swarmd.crash_watch import probe_port
from tests.harness import free_port, wait_until
from tests.test_gossip import INTERVAL, Wire, addr, changes, view

CONFIG = CrashConfig()
PEER = "10.0.0.2:7946"

# ------------------------------------------------------------ the cases


def test_two_refusals_confirm_the_generation_the_link_dropped_for() -> None:
    cases = CrashCases(CONFIG)
    assert cases.link_lost(PEER, "b", 3, now=10.0) == Probe(PEER, 10.0)
    assert cases.link_lost(PEER, "b", 3, now=10.001) is None  # a second drop: already on it
    again = cases.outcome(PEER, Outcome.REFUSED, now=10.002)
    assert again == Probe(PEER, 10.002 + CONFIG.probe_gap_s)  # one refusal is not enough
    verdict = cases.outcome(PEER, Outcome.REFUSED, now=10.11)
    assert verdict == Confirmed("b", 3, PEER, 2)
    assert cases.open_cases() == []


@pytest.mark.parametrize("outcome", [Outcome.ANSWERED, Outcome.SILENT])
@pytest.mark.parametrize("first", [True, False])
def test_an_answer_or_silence_closes_the_case_without_a_verdict(
    outcome: Outcome, first: bool
) -> None:
    """Open port (a reconnect, a restart) or no answer (partition, frozen machine):
    the accrual detector decides, whether it came first or after one refusal."""
    cases = CrashCases(CONFIG)
    cases.link_lost(PEER, "b", 1, now=0.0)
    if not first:
        assert isinstance(cases.outcome(PEER, Outcome.REFUSED, now=0.01), Probe)
    assert cases.outcome(PEER, outcome, now=0.12) is None
    assert cases.open_cases() == []
    # The address cools down: a drop soon after opens no case (no probe storm)...
    assert cases.link_lost(PEER, "b", 1, now=1.0) is None
    # ...until the cool-down is over.
    assert cases.link_lost(PEER, "b", 1, now=0.12 + CONFIG.cooldown_s + 0.01) is not None


def test_a_reconnect_closes_the_case_and_a_late_refusal_is_ignored() -> None:
    cases = CrashCases(CONFIG)
    cases.link_lost(PEER, "b", 1, now=0.0)
    cases.link_up(PEER, now=0.05)  # ZeroMQ reconnected by itself
    assert cases.outcome(PEER, Outcome.REFUSED, now=0.06) is None
    assert cases.outcome(PEER, Outcome.REFUSED, now=0.2) is None
    assert cases.open_cases() == []


def test_refusals_after_the_window_confirm_nothing() -> None:
    cases = CrashCases(CrashConfig(window_s=0.5))
    cases.link_lost(PEER, "b", 1, now=0.0)
    assert isinstance(cases.outcome(PEER, Outcome.REFUSED, now=0.1), Probe)
    assert cases.outcome(PEER, Outcome.REFUSED, now=0.7) is None
    cases.link_lost("10.0.0.3:7946", "c", 1, now=1.0)
    cases.expire(now=1.6)  # a probe that never came back
    assert cases.open_cases() == []


def test_nobody_known_or_disabled_opens_no_case() -> None:
    assert CrashCases(CONFIG).link_lost(PEER, None, 0, now=0.0) is None
    assert CrashCases(CrashConfig(enabled=False)).link_lost(PEER, "b", 1, now=0.0) is None


def test_one_refusal_is_enough_when_configured() -> None:
    cases = CrashCases(CrashConfig(probes=1))
    cases.link_lost(PEER, "b", 1, now=0.0)
    assert cases.outcome(PEER, Outcome.REFUSED, now=0.01) == Confirmed("b", 1, PEER, 1)


def test_a_new_generation_at_the_address_opens_a_new_case() -> None:
    cases = CrashCases(CONFIG)
    cases.link_lost(PEER, "b", 1, now=0.0)
    assert cases.link_lost(PEER, "b", 2, now=0.01) == Probe(PEER, 0.01)
    cases.outcome(PEER, Outcome.REFUSED, now=0.02)
    assert cases.outcome(PEER, Outcome.REFUSED, now=0.13) == Confirmed("b", 2, PEER, 2)


# ------------------------------------------------------------ gossip's new input


def three(seed: int) -> tuple[Wire, float]:
    wire = Wire(seed=seed)
    wire.add("a")
    wire.add("b", seeds=(addr("a"),))
    wire.add("c", seeds=(addr("a"),))
    now = wire.run(0.0, 2.0)
    for g in wire.nodes.values():
        g.drain_events()
    return wire, now


def test_a_confirmed_crash_is_dead_at_once_and_spreads_as_a_dead_claim() -> None:
    wire, now = three(seed=21)
    a, c = wire.nodes[addr("a")], wire.nodes[addr("c")]
    wire.down.add(addr("b"))  # b's process is gone
    assert a.crashed("b", 1, now) is True
    assert a.liveness("b") is Liveness.DEAD
    assert changes(a.drain_events(), "b") == [(Liveness.ALIVE, Liveness.DEAD)]
    assert a.counters["crashes_confirmed"] == 1
    assert a.crashed("b", 1, now) is False  # dead already: nothing twice
    # The next round carries the claim: c (which had no link to b) takes it at once,
    # long before its own detector would have judged b.
    now += INTERVAL
    wire.round(now)
    assert c.liveness("b") is Liveness.DEAD
    assert changes(c.drain_events(), "b") == [
        (Liveness.ALIVE, Liveness.SUSPECT),
        (Liveness.SUSPECT, Liveness.DEAD),
    ]
    now = wire.run(now, 3.0)
    assert view(a, now)["b"] is view(c, now)["b"] is Liveness.DEAD


def test_a_crash_of_an_older_generation_or_of_a_left_node_changes_nothing() -> None:
    wire, now = three(seed=22)
    a = wire.nodes[addr("a")]
    assert a.crashed("b", 0, now) is False  # the link dropped for a generation since replaced
    assert a.crashed("nobody", 1, now) is False
    b = wire.nodes[addr("b")]
    wire.deliver(addr("b"), b.leave(now), now)
    assert a.liveness("b") is Liveness.LEFT
    a.drain_events()
    assert a.crashed("b", 1, now) is False
    assert a.liveness("b") is Liveness.LEFT
    assert a.drain_events() == []


def test_late_relayed_beats_do_not_revive_a_crash_but_a_live_peer_comes_back() -> None:
    """A crash confirmed at heartbeat h; a beat h+1 sent before the crash and relayed
    late raises the dead claim instead of reviving. A false crash (the process lives)
    is alive again once the quarantine is over and it beats on."""
    wire, now = three(seed=23)
    a, b, c = (wire.nodes[addr(n)] for n in "abc")
    hb = a.state.nodes["b"].heartbeat
    assert a.crashed("b", 1, now)
    a.drain_events()
    # c relays b's beat h+1 (b beat once more before it died, and c heard it).
    late = Syn(
        sender=c.me, seq=77, digest=[], complete=False, news=[Claim("b", 1, hb + 1, "alive")]
    )
    a.receive(late, now + 0.01, wire.rng)
    assert a.liveness("b") is Liveness.DEAD
    belief = a.beliefs.get("b")
    assert belief is not None and (belief.verdict, belief.hb) == ("dead", hb + 1)
    assert a.drain_events() == []
    # b was alive all along (say, a firewall reset the connection): it keeps beating and
    # refutes; within the quarantine that changes nothing, after it b is alive again.
    quarantine = GossipConfig().crash.quarantine_s
    now = wire.run(now, quarantine - 4 * INTERVAL)
    assert a.liveness("b") is Liveness.DEAD
    now = wire.run(now, 8 * INTERVAL)
    assert a.liveness("b") is Liveness.ALIVE
    assert view(b, now) == view(c, now) == view(a, now)


def test_a_restarted_generation_is_alive_after_its_predecessor_crashed() -> None:
    wire, now = three(seed=24)
    a = wire.nodes[addr("a")]
    wire.down.add(addr("b"))
    assert a.crashed("b", 1, now)
    wire.down.discard(addr("b"))
    b2 = wire.add("b", now=now, seeds=(addr("a"),), generation=2)
    now += INTERVAL
    wire.deliver(addr("b"), b2.tick(now, wire.rng), now)
    assert a.state.nodes["b"].generation == 2
    assert a.liveness("b") is Liveness.ALIVE  # within the old generation's quarantine
    assert a.crashed("b", 1, now) is False  # a late verdict on generation 1
    now = wire.run(now, 2.0)
    assert a.liveness("b") is Liveness.ALIVE


# ------------------------------------------------------------ the probe, on real sockets

TIMEOUT_S = 2.0  # generous: the machine is shared; what is asserted is the outcome


def test_a_closed_port_is_refused() -> None:
    port = free_port()
    assert asyncio.run(probe_port(f"127.0.0.1:{port}", TIMEOUT_S)) is Outcome.REFUSED


def test_a_listener_that_says_nothing_is_silent() -> None:
    """The kernel accepts, nobody speaks: not a ZeroMQ peer at work (left to accrual)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        assert asyncio.run(probe_port(f"127.0.0.1:{port}", 0.3)) is Outcome.SILENT


def test_a_listener_that_closes_at_once_is_gone() -> None:
    """A port whose process is being killed accepts for a moment, then resets."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]

        async def probe_while_closing() -> Outcome:
            probing = asyncio.ensure_future(probe_port(f"127.0.0.1:{port}", TIMEOUT_S))
            conn, _ = await asyncio.get_running_loop().sock_accept(listener)
            conn.close()
            return await probing

        listener.setblocking(False)
        assert asyncio.run(probe_while_closing()) is Outcome.REFUSED


ZMQ_PEER = (
    "import sys, time, zmq\n"
    "s = zmq.Context().socket(zmq.ROUTER); s.bind(sys.argv[1])\n"
    "print('up', flush=True)\n"
    "while True: time.sleep(1)\n"
)


def test_a_zmq_peer_answers_and_frozen_it_is_silent() -> None:
    """A live ZeroMQ socket greets at once; SIGSTOP freezes its I/O thread while the
    kernel still accepts on its port: silent, not refused. Killed, it is refused."""
    port = free_port()
    where = f"127.0.0.1:{port}"
    argv = [sys.executable, "-c", ZMQ_PEER, f"tcp://{where}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"up"
        assert asyncio.run(probe_port(where, TIMEOUT_S)) is Outcome.ANSWERED
        os.kill(proc.pid, signal.SIGSTOP)
        wait_until(lambda: _state(proc.pid) == "T", 5, what="the process to stop")
        assert asyncio.run(probe_port(where, 0.5)) is Outcome.SILENT
        proc.kill()
        proc.wait(5)
        assert asyncio.run(probe_port(where, TIMEOUT_S)) is Outcome.REFUSED
    finally:
        proc.kill()
        proc.wait(5)


def test_a_bad_address_is_silent() -> None:
    # (An unroutable address may be refused too: a firewall's REJECT answers with a
    # reset. That is why a refusal counts only after an established link dropped.)
    assert asyncio.run(probe_port("not-an-address", 0.2)) is Outcome.SILENT
    assert asyncio.run(probe_port("no-such-host.invalid:7946", 2.0)) is Outcome.SILENT


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
