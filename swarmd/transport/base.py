"""What the node needs of a transport, whichever moves the bytes.

A transport delivers messages between node addresses (``host:port``). Two directions,
as in ZeroMQ's ROUTER/DEALER pair: what a peer sends us arrives at ``on_server`` with a
function that answers that peer and the sender's node id *as the transport proved it*
(its credential, see :mod:`swarmd.credentials`; None for the local control socket);
what a peer answers on our link to it arrives at ``on_link``. A node presents its own
credentials (``set_identity``) before it sends anything. Work messages (dispatches,
results, acks) may be held until the end of the current turn of the event loop and go
together; those that cannot go (the peer is not connected, its queue is full) are handed
to ``on_undelivered``.

Implementations: :mod:`.zmq` (CURVE over TCP, the real thing) and :mod:`.memory` (one
process, for tests and the simulator: loss, partitions and delay on demand).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from protocol.messages import AnyMessage, EnrollRequest, Message, WorkItem

from ..credentials import Credentials
from ..identity import ClusterKeys

Reply = Callable[[Message], bool]
# (message, a function that answers its sender, whether it came over the local socket,
# the sender's node id as its credential proved it: None over the local socket)
ServerHandler = Callable[[AnyMessage, Reply, bool, str | None], None]
LinkHandler = Callable[[str, AnyMessage], None]
# (address, work messages that could not be sent there: not connected, or its queue full)
UndeliveredHandler = Callable[[str, list[WorkItem]], None]
# (an enroll request from a client without a credential, its CURVE public key (z85), a
# function that answers it): the one message such a client may send (enroll_gate.py)
EnrollHandler = Callable[[EnrollRequest, bytes, Reply], None]


@dataclass(frozen=True)
class LinkEvents:
    """What a transport calls when its link to a peer's address drops (the connection
    closed: a crashed peer's kernel resets it at once) or is up again (reconnected)."""

    lost: Callable[[str], None]
    up: Callable[[str], None]


class BindError(RuntimeError):
    """The transport cannot listen where it was told to (the message says where)."""


class Transport(Protocol):
    on_server: ServerHandler
    on_link: LinkHandler
    on_undelivered: UndeliveredHandler | None
    on_enroll: EnrollHandler | None  # None: enroll requests are dropped like the rest
    link_events: LinkEvents | None  # set before links open; None: nobody asks
    counters: Counter[str]

    @property
    def links(self) -> list[str]:
        """Addresses we hold a link to."""
        ...

    def send(self, addr: str, message: Message) -> bool:
        """Queue ``message`` for ``addr``; False if it was dropped at once."""
        ...

    def flush(self) -> None:
        """Send the work messages held for the end of this turn now."""
        ...

    def set_identity(self, credentials: Credentials) -> None:
        """Present ``credentials`` on every link from now on (links open anew)."""
        ...

    def shut_out(self, node_id: str) -> None:
        """``node_id`` was revoked: refuse its keys at the handshake from now on."""
        ...

    def close_idle_links(self, keep: set[str]) -> None:
        """Close links not used for a while, except those to ``keep``."""
        ...

    async def close(self) -> None: ...


class TransportFactory(Protocol):
    """Builds the node's transport, listening at ``address`` (and wherever else the
    implementation's configuration says: ZeroMQ also binds the local control socket).
    Raises :class:`BindError` if it cannot listen."""

    async def __call__(
        self,
        *,
        address: str,
        keys: ClusterKeys,
        on_server: ServerHandler,
        on_link: LinkHandler,
        on_undelivered: UndeliveredHandler | None,
        counters: Counter[str],
        log: logging.Logger,
    ) -> Transport: ...
