"""Which of our links to peers dropped or came up, from ZeroMQ's socket monitor.

Each DEALER link gets a monitor (an inproc PAIR socket libzmq writes events to) for two
events only: ``EVENT_DISCONNECTED`` (the TCP connection to the peer closed: when the
peer's process dies the kernel resets it at once) and ``EVENT_HANDSHAKE_SUCCEEDED``
(connected and authenticated, again after a reconnect). Their receive pump waits on
the monitor's FD like every other pump; nothing else is sent on that socket, so its
fall-back timer can be slow. The monitor is stopped before the link closes: our own
closing of a link also disconnects it, and that must not read as the peer's crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from .base import LinkEvents
from .readable import _Readable

LINK_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
MONITOR_POLL_S = 1.0  # the fall-back timer of a monitor's pump (its FD wakes it)
_names = itertools.count()


@dataclass
class LinkMonitor:
    sock: zmq.asyncio.Socket
    sync: zmq.Socket[bytes]
    readable: _Readable
    task: asyncio.Task[None] | None = None

    def stop(self, link_sock: zmq.asyncio.Socket) -> None:
        """Before the link closes: its own disconnect events are not the peer's."""
        if self.task is not None:
            self.task.cancel()
        self.readable.release()
        with contextlib.suppress(zmq.ZMQError):
            link_sock.disable_monitor()
        self.sock.close(linger=0)


def open_monitor(link_sock: zmq.asyncio.Socket) -> LinkMonitor:
    """A monitor on ``link_sock`` (before it connects), under a name of its own (the
    default name is made from the socket's FD number, which a later socket may reuse)."""
    sock = link_sock.get_monitor_socket(LINK_EVENTS, f"inproc://swarmd-link-{next(_names)}")
    return LinkMonitor(sock, zmq.Socket.shadow(sock.underlying), _Readable())


def event_handler(
    addr: str, events: LinkEvents, counters: Counter[str], log: logging.Logger
) -> Callable[[list[Any]], None]:
    """The monitor pump's handler for the link to ``addr``."""

    def handle(frames: list[Any]) -> None:
        try:
            event = parse_monitor_message(frames)["event"]
        except (ValueError, KeyError, IndexError, TypeError):  # not a monitor event
            counters["dropped_monitor_event"] += 1
            return
        if event == zmq.EVENT_DISCONNECTED:
            counters["link_dropped"] += 1
            log.debug("link to %s dropped", addr)
            events.lost(addr)
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            events.up(addr)

    return handle
