"""Waiting on a ZeroMQ socket's FD from asyncio (the receive pumps of :mod:`.zmq`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

POLL_MS = 250


class _Readable:
    """When a socket may have messages to read, for its receive pump. ZeroMQ's FD is
    edge-triggered, and a send on the socket can take in the edge of a message that
    arrived meanwhile: so every send kicks too (the pump then asks ZMQ_EVENTS), and a
    timer kicks every POLL_MS in any case. One event per socket, no future or poller
    per wait (pyzmq's ``poll`` cost ~10% of a coordinator's CPU per message)."""

    __slots__ = ("event", "fd", "loop")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.fd = -1

    def kick(self) -> None:
        self.event.set()

    def watch(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop, self.fd = loop, fd
        loop.add_reader(fd, self.kick)

    def release(self) -> None:
        """Stop watching the FD: before its socket closes (a new socket may get the
        same number, and must not lose its reader to this one's late clean-up)."""
        if self.loop is not None:
            with contextlib.suppress(Exception):  # the loop is closed already
                self.loop.remove_reader(self.fd)
            self.loop = None


class _Every:
    """Calls ``call`` every ``seconds`` on ``loop`` until cancelled."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, seconds: float, call: Callable[[], None]
    ) -> None:
        self.loop, self.seconds, self.call = loop, seconds, call
        self.handle = loop.call_later(seconds, self._tick)

    def _tick(self) -> None:
        self.call()
        self.handle = self.loop.call_later(self.seconds, self._tick)

    def cancel(self) -> None:
        self.handle.cancel()
