"""A lean HTTP/1.1 client for the gateway's hop to a model server: asyncio streams,
the wire format of :mod:`swarmd.http_wire`, connections kept alive per host.

The gateway passes each request to an endpoint on the same machine or LAN, where a
general client's machinery (httpx: pools, auth and redirect layers, anyio) cost about
0.6 ms of CPU per request on this project's reference machine, most of the gateway's
added latency. This does one thing: POST a body, hand back the status, headers and the
body as it arrives::

    pool = HttpPool()
    async with pool.post(url, body, {"Content-Type": "application/json"},
                         connect_s=10, read_s=120) as reply:
        reply.status, reply.headers["content-type"]
        async for piece in reply.chunks():  # as read (chunked, Content-Length or close)
            ...
    await pool.aclose()

A connection goes back to the pool only when its reply was read to the end and both
sides may go on (no ``Connection: close``); leaving the block early (an error, a
cancelled request: the server sees its client go) closes it. A kept connection that the
server closed while idle is noticed before reuse, or, when the request on it gets no
byte of an answer, the request is sent once more on a new connection (the server never
saw it). Every failure is an :class:`HttpError` (:class:`HttpTimeout` for the connect
and read deadlines). ``http`` and ``https`` (the system's CA store) URLs; no proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

from .http_wire import MAX_HEAD_BYTES, Answer, BodyReader, WireError, read_head, request_head

READ_BYTES: Final = 65536
_OURS: Final = ("host", "content-length")  # the fields this client writes itself


class HttpError(Exception):
    """The request failed before a whole answer came: connect, protocol or I/O."""


class HttpTimeout(HttpError):
    """No connection, or no byte of the answer, within the deadline."""


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int

    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


@functools.lru_cache(maxsize=256)
def _origin_and_target(url: str) -> tuple[_Origin, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpError(f"not an http(s) URL: {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise HttpError(f"bad port in {url!r}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Origin(parts.scheme, parts.hostname, port), target


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    buffer: bytearray = field(default_factory=bytearray)  # read, not yet parsed
    reused: bool = False
    received: int = 0  # bytes of answers read on this connection

    def usable(self) -> bool:
        """Still open at both ends, as far as this side can tell without reading."""
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    async def read(self, read_s: float) -> bytes:
        """What the server sends next (b"": it closed the connection)."""
        try:
            async with asyncio.timeout(read_s):
                data = await self.reader.read(READ_BYTES)
        except TimeoutError:
            raise HttpTimeout(f"no data from the server in {read_s:g} s") from None
        except OSError as exc:
            raise HttpError(f"reading the answer: {exc!r}") from None
        self.received += len(data)
        return data


@dataclass
class Reply:
    """An answer whose head has come; the body is read by :meth:`chunks`."""

    status: int
    headers: dict[str, str]  # lower-case names; a repeated field keeps its last value
    _conn: _Connection
    _read_s: float
    _body: BodyReader
    keep_alive: bool = True

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (at most ``read_s`` apart)."""
        conn, body = self._conn, self._body
        while not body.done:
            try:
                data = body.take(conn.buffer)
            except WireError as exc:
                raise HttpError(f"bad answer from the server: {exc}") from None
            if data:
                yield data
                continue
            if body.done:
                break
            more = await conn.read(self._read_s)
            if not more:
                try:
                    body.at_eof()
                except WireError as exc:
                    raise HttpError(str(exc)) from None
                self.keep_alive = False
                break
            conn.buffer += more

    @property
    def ended(self) -> bool:
        return self._body.done

    def end_if_buffered(self) -> bool:
        """Whether the body ended, reading nothing more: for a caller that has what it
        needs (an event stream's last event), so that the connection can be kept when
        the end came with it."""
        try:
            self._body.take(self._conn.buffer)
        except WireError:
            return False
        return self._body.done


@dataclass
class HttpPool:
    """Kept-alive connections per origin, for one event loop."""

    max_idle_per_origin: int = 64
    _idle: dict[_Origin, list[_Connection]] = field(default_factory=dict)
    _tls: ssl.SSLContext | None = None
    closed: bool = False

    @contextlib.asynccontextmanager
    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        connect_s: float,
        read_s: float,
    ) -> AsyncIterator[Reply]:
        """POST ``body`` to ``url``; the reply once its head has come."""
        origin, target = _origin_and_target(url)
        fields = [("Host", origin.host_header()), ("Content-Length", str(len(body)))]
        fields += [(k, v) for k, v in headers.items() if k.lower() not in _OURS]
        try:
            request = request_head("POST", target, fields) + body
        except WireError as exc:
            raise HttpError(f"cannot send this request: {exc}") from None
        conn, reply = await self._exchange(origin, request, connect_s, read_s)
        try:
            yield reply
            if not reply.ended:  # the caller stopped reading: the rest is of no use
                conn.close()
                return
        except BaseException:
            conn.close()
            raise
        self._release(origin, conn, reply)

    async def _exchange(
        self, origin: _Origin, request: bytes, connect_s: float, read_s: float
    ) -> tuple[_Connection, Reply]:
        conn = await self._connection(origin, connect_s)
        try:
            return conn, await _send(conn, request, read_s)
        except HttpError as exc:
            conn.close()
            if not conn.reused or not getattr(exc, "before_answer", False):
                raise
        # A kept connection the server had closed: the request never reached it.
        conn = await self._open(origin, connect_s)
        try:
            return conn, await _send(conn, request, read_s)
        except BaseException:
            conn.close()
            raise

    async def _connection(self, origin: _Origin, connect_s: float) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.usable():
                conn.reused = True
                return conn
            conn.close()
        return await self._open(origin, connect_s)

    async def _open(self, origin: _Origin, connect_s: float) -> _Connection:
        if self.closed:
            raise HttpError("the HTTP pool is closed")
        tls = self._tls_context() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(connect_s):
                reader, writer = await asyncio.open_connection(
                    origin.host, origin.port, ssl=tls, limit=MAX_HEAD_BYTES
                )
        except TimeoutError:
            where = f"{origin.host}:{origin.port}"
            raise HttpTimeout(f"no connection to {where} in {connect_s:g} s") from None
        except OSError as exc:
            raise HttpError(f"cannot connect to {origin.host}:{origin.port}: {exc}") from None
        return _Connection(reader, writer)

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def _release(self, origin: _Origin, conn: _Connection, reply: Reply) -> None:
        if self.closed or not reply.keep_alive or conn.buffer:  # (more than was asked)
            conn.close()
            return
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= self.max_idle_per_origin or not conn.usable():
            conn.close()
            return
        idle.append(conn)

    async def aclose(self) -> None:
        self.closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class _NoAnswer(HttpError):
    """The server closed or reset the connection before any byte of an answer."""

    before_answer = True


async def _send(conn: _Connection, request: bytes, read_s: float) -> Reply:
    before = conn.received
    try:
        conn.writer.write(request)
        await conn.writer.drain()
    except OSError as exc:
        raise _NoAnswer(f"sending the request: {exc!r}") from None
    while True:
        try:
            answer = read_head(conn.buffer)
        except WireError as exc:
            raise HttpError(f"bad answer from the server: {exc}") from None
        if answer is None:
            try:
                data = await conn.read(read_s)
            except HttpTimeout:
                raise  # the server may be working on it: never sent twice
            except HttpError as exc:
                if conn.received == before:
                    raise _NoAnswer(str(exc)) from None
                raise
            if not data:
                why = "the server closed the connection before the answer ended"
                raise (_NoAnswer if conn.received == before else HttpError)(why)
            conn.buffer += data
            continue
        if answer.status < 200:
            continue  # 100 Continue and the like: the real answer follows
        return _reply(conn, answer, read_s)


def _reply(conn: _Connection, answer: Answer, read_s: float) -> Reply:
    return Reply(answer.status, answer.headers, conn, read_s, BodyReader(answer), answer.keep_alive)


__all__ = ["HttpError", "HttpPool", "HttpTimeout", "Reply"]
