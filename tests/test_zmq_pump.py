"""The ZeroMQ transport's receive pump: woken by the socket's FD, by sends, and after a
link closes and another opens (the new socket may get the closed one's FD number)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import zmq
import zmq.asyncio

from swarmd.identity import ClusterKeys
from swarmd.transport.zmq import POLL_MS, ZmqTransport, _Readable

PROMPT_S = POLL_MS / 1000 / 2  # well under the fallback timer: woken by the FD itself


def _transport(ctx: zmq.asyncio.Context) -> ZmqTransport:
    return ZmqTransport(
        ctx=ctx,
        keys=ClusterKeys.from_secret(bytes(32)),
        on_server=lambda *_: None,
        on_link=lambda *_: None,
        log=logging.getLogger("test"),
    )


async def _arrives(got: list[Any], n: int) -> float:
    start = time.monotonic()
    while len(got) < n:
        assert time.monotonic() - start < 5, "never arrived"
        await asyncio.sleep(0.001)
    return time.monotonic() - start


def test_messages_wake_the_pump_at_once_also_after_a_link_is_replaced() -> None:
    async def main() -> None:
        ctx = zmq.asyncio.Context()
        transport = _transport(ctx)
        got: list[Any] = []
        opened: list[zmq.Socket[bytes]] = []

        def pair(name: str) -> tuple[zmq.Socket[bytes], _Readable, asyncio.Task[None]]:
            ours, theirs = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
            ours.bind(f"inproc://{name}")
            theirs.connect(f"inproc://{name}")
            opened.extend([ours, theirs])
            sync: zmq.Socket[bytes] = zmq.Socket.shadow(ours.underlying)
            readable = _Readable()
            task = asyncio.ensure_future(transport._pump(sync, readable, got.append))
            return theirs, readable, task

        try:
            sender, readable, task = pair("one")
            await asyncio.sleep(0.05)  # the pump waits
            sender.send(b"a")
            assert await _arrives(got, 1) < PROMPT_S
            # Closed as _close_link does: the reader goes before the socket closes, so
            # a next socket that gets the same FD number keeps its own reader even
            # though the old pump's clean-up runs only later.
            task.cancel()
            readable.release()
            opened[0].close(linger=0)
            await asyncio.sleep(0.05)  # ZeroMQ's reaper frees the closed socket's FD
            sender2, _, task2 = pair("two")
            await asyncio.sleep(0.05)  # the old pump's clean-up has run by now
            assert task.done()
            sender2.send(b"b")
            assert await _arrives(got, 2) < PROMPT_S
            task2.cancel()
        finally:
            for sock in opened:
                sock.close(linger=0)
            ctx.term()

    asyncio.run(main())
