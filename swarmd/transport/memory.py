"""An in-process transport: every node of a :class:`MemoryHub` in one event loop.

Nodes register under their address. Every message is encoded and decoded by the
protocol codec on its way (the wire path, validation included, is exercised), and
delivered on a later turn of the event loop, in order per direction. The hub can lose
messages (seeded, so a run repeats), drop those matching a rule, cut the links between
two sets of addresses (a partition: messages vanish, as over a TCP link that stopped
answering), and delay every message. ``counters`` say what happened to them.

The sender's node id reaches ``on_server`` as the id its transport presents
(``set_identity``), the hub standing in for CURVE and the credential check; a test that
wants a node to lie about its id does so in the message, as an attacker would.

Work messages are bundled per turn of the loop, as over ZeroMQ; a message to an address
where nobody listens cannot be sent (``send`` is False, work goes to ``on_undelivered``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from protocol import ProtocolError, codec
from protocol.messages import AnyMessage, Bundle, Message, WorkItem

from ..credentials import Credentials
from ..identity import ClusterKeys
from .base import (
    BindError,
    EnrollHandler,
    LinkEvents,
    LinkHandler,
    ServerHandler,
    UndeliveredHandler,
)
from .bundler import Bundler

LOCAL = "(local)"  # the sender address of requests made through MemoryHub.request


@dataclass
class DropRule:
    """Drop the next ``count`` messages of type ``kind`` from ``src`` to ``dst``
    (None: any)."""

    kind: type[Message] | None = None
    src: str | None = None
    dst: str | None = None
    count: int = 1

    def matches(self, src: str, dst: str, message: AnyMessage) -> bool:
        if self.count <= 0 or (self.src is not None and self.src != src):
            return False
        if self.dst is not None and self.dst != dst:
            return False
        return self.kind is None or isinstance(message, self.kind)


class MemoryHub:
    def __init__(self, *, seed: int = 0, loss: float = 0.0, delay_s: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.loss = loss  # chance that any one message is lost
        self.delay_s = delay_s  # every message arrives this much later
        self.nodes: dict[str, MemoryTransport] = {}
        self.counters: Counter[str] = Counter()
        self.rules: list[DropRule] = []
        self._cuts: list[tuple[frozenset[str], frozenset[str]]] = []

    # ------------------------------------------------------------ faults

    def partition(self, side_a: Iterable[str], side_b: Iterable[str]) -> None:
        """Cut every link between an address in ``side_a`` and one in ``side_b``."""
        self._cuts.append((frozenset(side_a), frozenset(side_b)))

    def heal(self) -> None:
        self._cuts.clear()

    def drop(self, rule: DropRule) -> DropRule:
        self.rules.append(rule)
        return rule

    def cut(self, src: str, dst: str) -> bool:
        return any((src in a and dst in b) or (src in b and dst in a) for a, b in self._cuts)

    # ------------------------------------------------------------ nodes

    async def open(
        self,
        *,
        address: str,
        keys: ClusterKeys,
        on_server: ServerHandler,
        on_link: LinkHandler,
        on_undelivered: UndeliveredHandler | None,
        counters: Counter[str],
        log: logging.Logger,
    ) -> MemoryTransport:
        """A :class:`~.base.TransportFactory`: the node listening at ``address``."""
        if address in self.nodes:
            raise BindError(f"address {address} is in use")
        transport = MemoryTransport(
            self, address, on_server, on_link, on_undelivered, counters, log, keys
        )
        self.nodes[address] = transport
        return transport

    async def request(
        self, addr: str, message: Message, *, local: bool = True, timeout: float = 10.0
    ) -> AnyMessage:
        """Ask the node at ``addr`` as ``swarmctl`` would (over its control socket when
        ``local``) and wait for the answer. No faults apply."""
        node = self.nodes[addr]
        answer: asyncio.Future[AnyMessage] = asyncio.get_running_loop().create_future()

        def reply(m: Message) -> bool:
            if not answer.done():
                answer.set_result(codec.decode(codec.encode(m)))
            return True

        node.on_server(codec.decode(codec.encode(message)), reply, local, None)
        return await asyncio.wait_for(answer, timeout)

    # ------------------------------------------------------------ delivery

    def carry(self, src: str, dst: str, frame: bytes, deliver: Callable[[bytes], None]) -> None:
        """Take one frame from ``src`` towards ``dst``: lost, dropped or delivered later."""
        if self.cut(src, dst):
            self.counters["dropped_partition"] += 1
            return
        if self.loss and self.rng.random() < self.loss:
            self.counters["dropped_loss"] += 1
            return
        if self.rules and self._ruled_out(src, dst, frame):
            self.counters["dropped_rule"] += 1
            return
        self.counters["carried"] += 1
        loop = asyncio.get_running_loop()
        if self.delay_s > 0:
            loop.call_later(self.delay_s, deliver, frame)
        else:
            loop.call_soon(deliver, frame)

    def _ruled_out(self, src: str, dst: str, frame: bytes) -> bool:
        message = codec.decode(frame)
        items = message.items if isinstance(message, Bundle) else [message]
        for rule in self.rules:
            if any(rule.matches(src, dst, m) for m in items):
                rule.count -= 1
                return True
        return False


class MemoryTransport:
    def __init__(
        self,
        hub: MemoryHub,
        address: str,
        on_server: ServerHandler,
        on_link: LinkHandler,
        on_undelivered: UndeliveredHandler | None,
        counters: Counter[str],
        log: logging.Logger,
        keys: ClusterKeys,
    ) -> None:
        self.hub = hub
        self.address = address
        self.on_server = on_server
        self.on_link = on_link
        self.on_undelivered = on_undelivered
        self.on_enroll: EnrollHandler | None = None  # never called: no enrollment here
        self.link_events: LinkEvents | None = None  # never called: no connections here
        self.counters = counters
        self.log = log
        self.fingerprint = keys.fingerprint  # nodes of another cluster cannot talk
        self._links: set[str] = set()
        self._bundler = Bundler(self._send_frame, self._undelivered, counters)
        self.closed = False
        self.node_id = address  # who it speaks as: its address until set_identity
        self.shut_out_ids: set[str] = set()  # revoked: their frames are not delivered

    @property
    def links(self) -> list[str]:
        return sorted(self._links)

    def _peer(self, addr: str) -> MemoryTransport | None:
        peer = self.hub.nodes.get(addr)
        if peer is None or peer.closed or peer.fingerprint != self.fingerprint:
            return None
        return peer

    # ------------------------------------------------------------ sending

    def send(self, addr: str, message: Message) -> bool:
        if self.closed:
            return False
        self._links.add(addr)
        if isinstance(message, WorkItem):
            self._bundler.hold(addr, message)
            return True
        return self._send_frame(addr, codec.encode(message))

    def _send_frame(self, addr: str, frame: bytes) -> bool:
        peer = self._peer(addr)
        if peer is None:
            self.counters["send_dropped"] += 1  # nobody listens there: not connected
            return False
        self.counters["sent"] += 1
        src, sender = self.address, self.node_id
        self.hub.carry(src, addr, frame, lambda f: peer.receive_request(src, f, sender))
        return True

    def flush(self) -> None:
        self._bundler.flush()

    def _undelivered(self, addr: str, items: list[WorkItem]) -> None:
        if self.on_undelivered is not None:
            self.on_undelivered(addr, items)

    def set_identity(self, credentials: Credentials) -> None:
        self.node_id = credentials.node_id

    def shut_out(self, node_id: str) -> None:
        self.shut_out_ids.add(node_id)

    def close_idle_links(self, keep: set[str]) -> None:
        self._links &= keep  # no idle time here: a link costs nothing

    # ------------------------------------------------------------ receiving

    def _decode(self, frame: bytes) -> AnyMessage | None:
        try:
            message = codec.decode(frame)
        except ProtocolError as exc:
            self.counters[f"dropped_{exc.reason}"] += 1
            return None
        self.counters["received"] += 1
        return message

    def receive_request(self, src: str, frame: bytes, sender: str | None = None) -> None:
        """A frame from ``src`` (node ``sender``) on our server side; answers go back on
        its link to us."""
        if sender is None or sender in self.shut_out_ids:
            self.counters["zap_denied" if sender else "dropped_unauthenticated"] += 1
            return
        message = None if self.closed else self._decode(frame)
        if message is None:
            return
        here = self.address

        def reply(answer: Message) -> bool:
            sender = self.hub.nodes.get(src)
            if self.closed or sender is None or sender.closed:
                self.counters["reply_dropped"] += 1
                return False
            self.hub.carry(
                here, src, codec.encode(answer), lambda f: sender.receive_answer(here, f)
            )
            return True

        try:
            self.on_server(message, reply, False, sender)
        except Exception:
            self.counters["handler_error"] += 1
            self.log.exception("error while handling a message (dropped)")

    def receive_answer(self, src: str, frame: bytes) -> None:
        """A frame that ``src`` answered on our link to it."""
        message = None if self.closed else self._decode(frame)
        if message is None:
            return
        try:
            self.on_link(src, message)
        except Exception:
            self.counters["handler_error"] += 1
            self.log.exception("error while handling a message (dropped)")

    async def close(self) -> None:
        self.flush()
        self.closed = True
        if self.hub.nodes.get(self.address) is self:
            del self.hub.nodes[self.address]
