"""The in-memory transport on its own: codec on the way, bundling, faults, counters."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from protocol.messages import (
    Ack,
    AnyMessage,
    Bundle,
    CancelAttempt,
    NodeRef,
    PeersReply,
    PeersRequest,
)
from swarmd.identity import ClusterKeys
from swarmd.transport.base import Reply, Transport
from swarmd.transport.memory import DropRule, MemoryHub

KEYS = ClusterKeys.from_secret(bytes(range(32)))
OTHER_KEYS = ClusterKeys.from_secret(bytes(32))


class Inbox:
    def __init__(self) -> None:
        self.server: list[AnyMessage] = []
        self.link: list[tuple[str, AnyMessage]] = []
        self.undelivered: list[tuple[str, list[Any]]] = []

    def on_server(
        self, message: AnyMessage, reply: Reply, local: bool, sender: str | None = None
    ) -> None:
        self.server.append(message)
        if isinstance(message, PeersRequest):
            reply(PeersReply(peers=[]))

    def on_link(self, addr: str, message: AnyMessage) -> None:
        self.link.append((addr, message))


async def _open(hub: MemoryHub, addr: str, inbox: Inbox, keys: ClusterKeys = KEYS) -> Transport:
    return await hub.open(
        address=addr,
        keys=keys,
        on_server=inbox.on_server,
        on_link=inbox.on_link,
        on_undelivered=lambda a, items: inbox.undelivered.append((a, items)),
        counters=Counter(),
        log=logging.getLogger("test"),
    )


def _ack(i: int = 0) -> Ack:
    return Ack(sender=NodeRef(f"n{i}", 1, 1, "10.0.0.1:1"), delta=[])


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_messages_arrive_decoded_and_replies_come_back_on_the_link() -> None:
    async def main() -> None:
        hub = MemoryHub()
        a_in, b_in = Inbox(), Inbox()
        a, _b = await _open(hub, "a:1", a_in), await _open(hub, "b:1", b_in)
        assert a.send("b:1", PeersRequest())
        await _turns()
        assert b_in.server == [PeersRequest()]
        assert a_in.link == [("b:1", PeersReply(peers=[]))]
        assert a.links == ["b:1"]

    asyncio.run(main())


def test_work_is_bundled_per_turn_and_unreachable_work_is_undelivered() -> None:
    async def main() -> None:
        hub = MemoryHub()
        a_in, b_in = Inbox(), Inbox()
        a, _b = await _open(hub, "a:1", a_in), await _open(hub, "b:1", b_in)
        items = [CancelAttempt(task="t", subtask=f"s{i}", attempt=1) for i in range(3)]
        for item in items:
            assert a.send("b:1", item)
            assert a.send("nobody:1", item)
        await _turns()
        assert b_in.server == [Bundle(items=items)]
        assert a_in.undelivered == [("nobody:1", items)]
        assert a.counters["sent_items"] == 3

    asyncio.run(main())


def test_partitions_loss_rules_and_other_clusters() -> None:
    async def main() -> None:
        hub = MemoryHub(seed=7, loss=0.5)
        b_in = Inbox()
        a = await _open(hub, "a:1", Inbox())
        await _open(hub, "b:1", b_in)
        for i in range(200):
            a.send("b:1", _ack(i))
        await _turns()
        assert 60 < len(b_in.server) < 140 and hub.counters["dropped_loss"] > 60
        hub.loss = 0.0
        hub.partition({"a:1"}, {"b:1"})
        a.send("b:1", _ack())
        hub.heal()
        rule = hub.drop(DropRule(kind=Ack, src="a:1", count=1))
        a.send("b:1", _ack())
        a.send("b:1", _ack())
        before = len(b_in.server)
        await _turns()
        assert len(b_in.server) == before + 1 and rule.count == 0
        assert hub.counters["dropped_partition"] == 1 and hub.counters["dropped_rule"] == 1
        stranger = await _open(hub, "x:1", Inbox(), keys=OTHER_KEYS)
        assert not stranger.send("b:1", _ack())  # another cluster: never connects

    asyncio.run(main())


def test_delay_holds_messages_back_in_order() -> None:
    async def main() -> None:
        hub = MemoryHub(delay_s=0.05)
        b_in = Inbox()
        a = await _open(hub, "a:1", Inbox())
        await _open(hub, "b:1", b_in)
        a.send("b:1", _ack(1))
        a.send("b:1", _ack(2))
        await _turns()
        assert b_in.server == []
        await asyncio.sleep(0.1)
        assert b_in.server == [_ack(1), _ack(2)]

    asyncio.run(main())
