"""The one way the daemon serves HTTP: an ASGI app (starlette) on uvicorn, inside the
daemon's own event loop, with limits that hold against slow, half-open and hostile
clients.

API::

    server = WebServer(app, bind="127.0.0.1", port=0, limits=Limits(max_body_bytes=1 << 20),
                       counters=node.counters, prefix="gateway",
                       headers=[("Cache-Control", "no-store")],  # on every response
                       error_body=lambda status, message: ("application/json", b"..."))
    await server.start()      # binds now: OSError if the address is taken or not ours
    server.port               # the bound port (port 0 picks a free one)
    await server.stop()       # stops listening, ends open connections (graceful_s at most)

    token_matches(given, expected)        # constant time (hmac.compare_digest)
    token_matches_any(given, keys)        # each key compared, no early exit
    presented_token(headers, query)       # "Authorization: Bearer X" or ?token=X, else ""
    host_is_loopback(host_header)         # the DNS-rebinding guard of loopback-only ports
    on_client_gone(scope, callback)       # called when the client hangs up (or sends EOF)
                                          # before its response is complete

What it guarantees, before the app sees a request (see :class:`Limits`):

* **Request head and body**: a connection must deliver a complete request (head and
  body) within ``request_timeout_s`` of opening or of its previous response, else it is
  closed (with 408 when part of a request came). Trickling bytes does not extend that.
* **Size**: the head at most ``max_head_bytes`` and ``max_headers`` fields (431); a body
  larger than ``max_body_bytes`` gets 413 (declared by Content-Length: before reading it;
  chunked: as soon as it passes the limit). The app receives the body already read.
* **Malformed requests** get 400 (505 for an HTTP version other than 1.0/1.1) and never
  reach the app: no Host on HTTP/1.1, a repeated Host/Authorization/Content-Length, a
  target that is not a path, a request cut short by the client's EOF.
* **Connections**: at most ``max_connections``. One more closes the connection that has
  waited longest for its request (idle, half-open or slow ones cannot starve a quick
  request); when every one is busy answering, the newcomer gets an immediate 503.
* **Slow readers**: a client that reads nothing of a response for ``write_timeout_s``
  while the server has data for it is dropped. Idle keep-alive: ``keep_alive_s``.

Counters (``counters[f"{prefix}_NAME"]``): ``bad_requests`` (every 4xx/505 above),
``shed``, ``refused`` (503), ``timeouts`` (request and write deadlines).

uvicorn runs without its own signal handlers, logging configuration, access log, lifespan
or tick loop (the bound port and stop are ours); client-caused protocol errors are
counted, not logged. An exception in the app is logged by uvicorn ("swarmd.web") and
answered 500; nothing here can stop the node.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, Final, cast

import h11
from uvicorn import Config, Server
from uvicorn.protocols.http.h11_impl import H11Protocol

from .http_head import host_name, is_loopback
from .web_guard import CORK, ErrorBody, Guard, plain_error

__all__ = [
    "Limits",
    "WebServer",
    "host_is_loopback",
    "presented_token",
    "token_matches",
    "token_matches_any",
]

LOG = logging.getLogger("swarmd.web")
# What a client can make uvicorn log at will: counted instead (see _Quiet).
_CLIENT_CAUSED = ("Invalid HTTP request received.", "Exceeded concurrency limit.")

ASGIApp = Any  # (scope, receive, send) -> awaitable; starlette's types need no import here


@dataclass(frozen=True)
class Limits:
    """What one HTTP port accepts; the defaults suit a small JSON API."""

    max_body_bytes: int = 1 << 20
    max_head_bytes: int = 8192
    max_headers: int = 64
    request_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    write_timeout_s: float = 10.0
    max_connections: int = 64
    graceful_s: float = 2.0


# ---------------------------------------------------------------- helpers for apps


def token_matches(given: str, expected: str) -> bool:
    """``given == expected`` in time independent of where they differ."""
    return hmac.compare_digest(given.encode(), expected.encode())


def token_matches_any(given: str, keys: Iterable[str]) -> bool:
    """True if ``given`` is one of ``keys``; every key is compared (no early exit)."""
    found = False
    for key in keys:
        found |= token_matches(given, key)
    return found


def presented_token(headers: Mapping[str, str], query: Mapping[str, str] | None = None) -> str:
    """The token a request carries: ``Authorization: Bearer X`` (wins), else the
    ``token`` query parameter when ``query`` is given, else ""."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    return (query or {}).get("token", "")


_ON_GONE: Final = "swarmd.on_client_gone"
_GONE: Final = "swarmd.client_gone"


def on_client_gone(scope: Mapping[str, Any], callback: Callable[[], object]) -> bool:
    """Have ``callback`` called (soon, once) when the client of this request (its ASGI
    ``scope``) drops the connection before the response is complete: without a task
    awaiting ``receive()`` for it. False, and no call, if it is gone already."""
    if scope.get(_GONE):
        return False
    cast(dict[str, Any], scope).setdefault(_ON_GONE, []).append(callback)
    return True


def host_is_loopback(host: str | None) -> bool:
    """The DNS-rebinding guard of a loopback-only port: a browser sends the name it
    resolved as ``Host``; a rebinding attacker's page sends its own name. No Host (an
    HTTP/1.0 client) passes."""
    return host is None or is_loopback(host_name(host))


# ---------------------------------------------------------------- the server


class WebServer:
    """One listening port serving one ASGI app; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        bind: str,
        port: int,
        limits: Limits | None = None,
        *,
        counters: Counter[str] | None = None,
        prefix: str = "http",
        headers: Iterable[tuple[str, str]] = (),
        error_body: ErrorBody = plain_error,
    ) -> None:
        self.app = app
        self.bind = bind
        self.requested_port = port
        self.limits = limits or Limits()
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.prefix = prefix
        self.error_body = error_body
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        self._server: Server | None = None
        self._socket: socket.socket | None = None
        self._port: int | None = None
        # Connections waiting for a request, oldest first: the ones shed when full.
        self.waiting: dict[_Connection, None] = {}

    def count(self, name: str) -> None:
        self.counters[f"{self.prefix}_{name}"] += 1

    async def start(self) -> None:
        limits = self.limits
        config = Config(
            Guard(self.app, self, self.error_body),
            http=cast(Any, type("Connection", (_Connection,), {"web": self})),
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=max(1, round(limits.keep_alive_s)),
            timeout_graceful_shutdown=max(1, round(limits.graceful_s)),
            h11_max_incomplete_event_size=limits.max_head_bytes,
        )
        config.load()
        server = Server(config)
        server.lifespan = config.lifespan_class(config)  # what serve() would set
        server.server_state.default_headers = self.headers
        sock = _listen(self.bind, self.requested_port)
        try:
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        self._server, self._socket = server, sock
        self._port = int(sock.getsockname()[1])

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        assert self._port is not None, "not started"
        return self._port

    async def stop(self) -> None:
        """Stop listening; answers in progress get ``graceful_s`` to finish."""
        server, self._server = self._server, None
        if server is None:
            return
        await server.shutdown(sockets=[self._socket] if self._socket else None)
        for connection in list(server.server_state.connections):
            connection.transport.close()  # what the graceful time left open


def _listen(bind: str, port: int) -> socket.socket:
    """A listening socket on the first address of ``bind`` (IPv4 first: "localhost")."""
    infos = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = min(infos, key=lambda info: info[0] != socket.AF_INET)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it (asyncio sets it only on sockets it makes):
        # without, each answer written in two parts waits ~40 ms for a delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# ---------------------------------------------------------------- one connection


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in _CLIENT_CAUSED


LOG.addFilter(_Quiet())


class _RecordingH11(h11.Connection):
    """h11's connection, remembering the status it suggests for a bad request."""

    error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error = exc
            raise


def _plain(status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole response for a connection that has no request to answer (or a bad one)."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
    lines += [b"content-type: text/plain; charset=utf-8", b"connection: close"]
    lines += [b"content-length: %d" % len(body)] + [k + b": " + v for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class _Corked:
    """A connection's transport that can hold writes: from a response's start until
    its first body part (:func:`swarmd.web_guard._yielding`), so that the head, the
    body and h11's end of message go out in one write. Written apart, each is a
    segment that wakes the client (on a small shared machine, a tenth of a
    millisecond each). Held at most until the loop's next turn; what the transport
    does besides writing is the transport's own."""

    __slots__ = ("_held", "_loop", "_raw")

    def __init__(self, raw: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._raw = raw
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._raw.write(data)
        elif data:
            self._held.append(data)

    def cork(self) -> None:
        if self._held is None:
            self._held = []
            self._loop.call_soon(self.uncork)  # whatever happens, not past this turn

    def uncork(self) -> None:
        held, self._held = self._held, None
        if held:
            self._raw.write(b"".join(held))

    def write_eof(self) -> None:
        self.uncork()
        self._raw.write_eof()

    def close(self) -> None:
        self.uncork()
        self._raw.close()

    def abort(self) -> None:
        self._held = None
        self._raw.abort()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading...
        return getattr(self._raw, name)


class _Connection(H11Protocol):
    """uvicorn's h11 protocol with the request deadline, shedding, write-stall timeout
    and status-accurate, counted errors of :class:`WebServer`."""

    web: ClassVar[WebServer]  # set on the per-server subclass

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = LOG
        self.conn = _RecordingH11(h11.SERVER, self.web.limits.max_head_bytes)
        self._deadline: asyncio.TimerHandle | None = None
        self._stalled: asyncio.TimerHandle | None = None
        self._peer_eof = False
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = cast(asyncio.Transport, _Corked(transport, self.loop))
        if len(self.connections) > self.web.limits.max_connections and not self._shed_oldest():
            self._refuse(transport)
            return
        self._await_request()

    def _refuse(self, transport: asyncio.Transport) -> None:
        """Every slot busy answering: say so at once, rather than hang up unanswered
        (and close a moment later: an immediate close would reset the connection under
        the request the client is sending, and lose the answer)."""
        self.web.count("refused")
        self.connections.discard(self)
        self._refused = True
        transport.write(_plain(503, b"busy: too many connections\n", self.web.headers))
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(1.0, transport.close)

    def _shed_oldest(self) -> bool:
        oldest = next(iter(self.web.waiting), None)
        if oldest is None:
            return False
        self.web.waiting.pop(oldest)
        self.web.count("shed")
        oldest.transport.close()
        return True

    def _await_request(self) -> None:
        """Idle until a request comes: sheddable, and on the request deadline."""
        self.web.waiting[self] = None
        self._cancel_deadline()
        self._deadline = self.loop.call_later(
            self.web.limits.request_timeout_s, self._request_timed_out
        )

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _request_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.web.count("timeouts")
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self.transport.write(_plain(408, b"request timeout\n", self.web.headers))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered 503 already
        super().data_received(data)
        state = self.conn.their_state
        if state is not h11.IDLE:
            self.web.waiting.pop(self, None)  # a request has come: answering now
            if state is not h11.SEND_BODY:
                self._cancel_deadline()  # ... and all of it

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle and self.cycle is not None:  # a new request
            cast(dict[str, Any], self.cycle.scope)[CORK] = self.transport

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """The client will send nothing more. A request cut short gets 400; a complete
        one still gets its answer, then the connection closes."""
        state = self.conn.their_state
        if self._refused:
            return None
        if state is h11.IDLE and self.conn.trailing_data[0]:
            self.conn.receive_data(b"")
            self.handle_events()  # h11: "peer unexpectedly closed" -> 400
            return None
        if state is h11.IDLE or state is h11.SEND_BODY:
            return None  # nothing to answer (or half a body): close
        self._peer_eof = True
        # Most clients close both ways when they give up: an app that asked to hear of
        # a client that went (on_client_gone) hears it now, not when its answer is due.
        self._client_gone()
        return True

    def on_response_complete(self) -> None:
        if self._peer_eof and not self.transport.is_closing():
            self.transport.close()
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_request()

    def send_400_response(self, msg: str) -> None:
        """A request h11 could not parse: its status (400, 431, 501) and reason."""
        self.web.count("bad_requests")
        error = getattr(self.conn, "error", None)
        status = error.error_status_hint if error is not None else 400
        reason = f"{str(error or msg)[:200]}\n".encode("ascii", "replace")
        self.transport.write(_plain(status, reason, self.web.headers))
        self.transport.close()

    def shutdown(self) -> None:
        """The server stops: close now if idle, else after the answer in progress."""
        try:
            super().shutdown()
        except h11.LocalProtocolError:  # h11 already in error (a refused request)
            self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stalled is None:
            self._stalled = self.loop.call_later(self.web.limits.write_timeout_s, self._stall)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def _stall(self) -> None:
        self._stalled = None
        self.web.count("timeouts")
        self.transport.abort()

    def _client_gone(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            scope = cast(dict[str, Any], cycle.scope)
            scope[_GONE] = True
            for callback in scope.pop(_ON_GONE, ()):
                self.loop.call_soon(callback)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client_gone()
        self.web.waiting.pop(self, None)
        self._cancel_deadline()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        super().connection_lost(exc)
