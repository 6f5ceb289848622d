"""The checks every request passes before an app served by :mod:`swarmd.web` sees it:
a well-formed head within the limits, and the whole body read (at most the limit).

An ASGI middleware (h11 has already parsed the head). What it refuses is answered here
and counted as ``bad_requests``; the app never runs for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from .web import WebServer

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ErrorBody = Callable[[int, str], tuple[str, bytes]]  # (status, message) -> (type, body)

# The scope key under which swarmd.web puts the connection's :class:`Cork`.
CORK: Final = "swarmd.cork"


class Cork(Protocol):
    """Holds a response's writes from its start until its (first) body part, so that
    they leave in one write (see swarmd.web's ``_Corked``)."""

    def cork(self) -> None: ...

    def uncork(self) -> None: ...


_SINGLE = (b"host", b"authorization", b"content-length")


def plain_error(status: int, message: str) -> tuple[str, bytes]:
    return "text/plain; charset=utf-8", f"{message}\n".encode()


class Guard:
    def __init__(self, app: Any, web: WebServer, error_body: ErrorBody = plain_error) -> None:
        self.app = app
        self.web = web
        self.error_body = error_body

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self._malformed(scope)
        if problem is not None:
            await self._refuse(send, *problem)
            return
        headers = dict(scope["headers"])
        if b"transfer-encoding" in headers or int(headers.get(b"content-length", b"0") or 0):
            limit = self.web.limits.max_body_bytes
            if int(headers.get(b"content-length", b"0") or 0) > limit:
                await self._refuse(send, 413, f"request body over {limit} bytes")
                return
            body = await _read_body(receive, limit)
            if body is None:
                return  # the client went away: nobody to answer
            if isinstance(body, int):
                await self._refuse(send, 413, f"request body over {limit} bytes")
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, _yielding(send, scope.get(CORK)))

    def _malformed(self, scope: Message) -> tuple[int, str] | None:
        limits = self.web.limits
        if not scope["raw_path"].startswith(b"/"):
            return 400, "malformed request target: expected a path"
        if scope["http_version"] not in ("1.0", "1.1"):
            return 505, f"HTTP/{scope['http_version']} is not supported"
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if len(headers) > limits.max_headers:
            return 431, "too many header fields"
        size = len(scope["raw_path"]) + len(scope["query_string"])
        size += sum(len(name) + len(value) + 4 for name, value in headers)
        if size > limits.max_head_bytes:
            return 431, "request head too large"
        names = [name for name, _ in headers if name in _SINGLE]
        if len(names) != len(set(names)):
            return 400, "a repeated Host, Authorization or Content-Length header"
        return None

    async def _refuse(self, send: Send, status: int, message: str) -> None:
        self.web.count("bad_requests")
        content_type, body = self.error_body(status, message)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode("latin-1")),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, limit: int) -> bytes | int | None:
    """The whole body; its size so far once past ``limit``; None if the client left."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return size
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _yielding(send: Send, cork: Cork | None = None) -> Send:
    """``send``, with a response's head held until its first body part (one write, so
    one segment and one wakeup of the client instead of two), and giving the loop a
    turn after each part of a streamed body: uvicorn's send returns at once once the
    client is gone, and a stream that never waits would then spin without its
    disconnect listener ever running."""

    async def sending(message: Message) -> None:
        kind = message["type"]
        if cork is not None and kind == "http.response.start":
            cork.cork()
        await send(message)
        if kind == "http.response.body":
            if cork is not None:
                cork.uncork()
            if message.get("more_body"):
                await asyncio.sleep(0)

    return sending


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body, read already, as one message; then the server's (disconnect)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
