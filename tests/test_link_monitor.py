"""The ZeroMQ transport's link monitor (transport/link_monitor.py) against a real daemon:
a link's drop is reported when the peer's process is killed, its coming back up when
the peer restarts on the same port (ZeroMQ reconnects by itself), and our own closing
of a link is not reported as a drop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from pathlib import Path

import zmq.asyncio

from protocol.messages import PeersRequest
from swarmd.credentials import Credentials, NodeKeys
from swarmd.identity import ClusterKeys
from swarmd.transport.base import LinkEvents
from swarmd.transport.zmq import ZmqTransport
from tests.harness import Daemon, new_secret


async def _until(events: list[tuple[str, str, float]], n: int, timeout: float) -> float:
    start = time.monotonic()
    while len(events) < n:
        assert time.monotonic() - start < timeout, f"only {events} after {timeout} s"
        await asyncio.sleep(0.005)
    return events[n - 1][2]


def test_a_link_reports_the_peers_crash_and_restart_but_not_its_own_close(
    tmp_path: Path,
) -> None:
    secret = new_secret()
    d = Daemon(tmp_path, "peer", secret=secret, args=("--no-mdns",)).start()
    try:
        d.wait_ready()
        asyncio.run(_scenario(d, secret))
    finally:
        d.stop()


async def _scenario(d: Daemon, secret: str) -> None:
    raw = bytes.fromhex(secret)
    ctx = zmq.asyncio.Context()
    counters: Counter[str] = Counter()
    transport = ZmqTransport(
        ctx=ctx,
        keys=ClusterKeys.from_secret(raw),
        on_server=lambda *_: None,
        on_link=lambda *_: None,
        log=logging.getLogger("test"),
        counters=counters,
    )
    events: list[tuple[str, str, float]] = []
    transport.link_events = LinkEvents(
        lost=lambda addr: events.append(("lost", addr, time.monotonic())),
        up=lambda addr: events.append(("up", addr, time.monotonic())),
    )
    transport.set_identity(Credentials.issue(raw, "tester", NodeKeys.generate()))
    try:
        transport.send(d.address, PeersRequest())  # opens the link
        await _until(events, 1, 10)
        assert events[0][:2] == ("up", d.address)

        killed = time.monotonic()
        assert d.proc is not None
        d.proc.kill()
        dropped = await _until(events, 2, 5)
        assert events[1][:2] == ("lost", d.address)
        assert dropped - killed < 1.0, dropped - killed  # milliseconds, in fact
        assert counters["link_dropped"] == 1

        d.wait_exit(10)
        d.start().wait_ready()  # the same port: ZeroMQ reconnects by itself
        await _until(events, 3, 15)
        assert events[2][:2] == ("up", d.address)

        await transport.close()  # our own close disconnects the link too: not reported
        await asyncio.sleep(0.3)
        assert [e[0] for e in events] == ["up", "lost", "up"]
        assert counters["link_dropped"] == 1
    finally:
        await transport.close()
        ctx.term()
