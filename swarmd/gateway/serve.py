"""The gateway's HTTP server, in the node's event loop: uvicorn on a socket bound here
(so a busy port is an OSError for the caller, not uvicorn's exit), with its limits:
open connections capped, idle keep-alive connections closed, and a connection whose
request head has not arrived in HEAD_TIMEOUT_S closed (a slow or half-open client
cannot hold a slot)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, Final

import uvicorn

MAX_CONNECTIONS: Final = 1024  # then 503 (uvicorn's limit_concurrency)
KEEP_ALIVE_S: Final = 5
HEAD_TIMEOUT_S: Final = 10.0  # from the connection (or the last answer) to a request head


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; OSError if it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: without, every answer waits ~40 ms for the
        # client's delayed ACK (Nagle), as asyncio only sets it on sockets it makes.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _head_timeout_protocol(base: type[Any]) -> type[Any]:
    """uvicorn's HTTP protocol, closing a connection that is between requests (none yet,
    or the last one answered) HEAD_TIMEOUT_S after it connected or was last answered:
    one that sends its request head slowly, or half of one, loses its slot."""

    class Protocol(base):  # type: ignore[misc]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)

        def _head_timeout(self) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._head_timer.cancel()
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_timer.cancel()
            super().connection_lost(exc)

    return Protocol


class HttpServer:
    def __init__(self, app: Any, sock: socket.socket, log: logging.Logger) -> None:
        self.sock = sock  # from bind()
        self.host, self.port = sock.getsockname()[:2]
        self.log = log
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=KEEP_ALIVE_S,
            server_header=False,
            h11_max_incomplete_event_size=64 * 1024,
        )
        config.load()
        config.http_protocol_class = _head_timeout_protocol(config.http_protocol_class)
        self.server = uvicorn.Server(config)
        self.server.lifespan = config.lifespan_class(config)  # "off": a no-op
        self._ticker: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        await self.server.startup(sockets=[self.sock])
        self._ticker = asyncio.ensure_future(self.server.main_loop())  # date headers

    async def close(self) -> None:
        self.server.should_exit = True
        self.server.force_exit = True
        if self._ticker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ticker, 1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.shutdown(sockets=[self.sock]), 3.0)
