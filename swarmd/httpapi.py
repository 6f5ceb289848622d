"""The opt-in HTTP port (``[node] metrics_port``): ``/metrics`` and ``/healthz``.

A deliberately tiny HTTP/1.1 server on the daemon's event loop: one GET (or HEAD) per
connection, then ``Connection: close``. Every read is bounded in size and time; a
request it cannot parse gets 400 (or, when the peer is gone, nothing) and never
reaches the rest of the node. At most ``MAX_CONNECTIONS`` are open: a new one past
that closes the one that has waited longest for its request (idle or half-open
connections cannot starve ``/healthz``), or, when every one is already being
answered, gets a quick 503.

* ``/metrics``: Prometheus text exposition (:mod:`swarmd.metrics`).
* ``/healthz``: 200 ``{"status": "ok", ...}`` while the gossip loop ticks; 503 with
  ``"status": "stalled"`` when its last tick is older than the watchdog limit, or
  ``"stopping"`` once the node is shutting down. ``draining`` is reported, not failed:
  a draining node is healthy, it just takes no new work.

Access, as for the dashboard: bound to loopback (the default) it answers anyone on this
machine. ``metrics_bind`` anywhere else needs ``[node] metrics_token`` (refused at
config load without one, :func:`swarmd.http_head.check_access`), and then every request must carry
it — ``Authorization: Bearer TOKEN`` (Prometheus ``authorization.credentials``) or
``?token=TOKEN`` — else 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs

from .metrics import CONTENT_TYPE, MetricsNode, NodeMetrics

MAX_LINE_BYTES = 8192  # request line, and each header line
MAX_HEADER_LINES = 64
REQUEST_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 32
STALL_FACTOR = 10  # like the node's watchdog: this many gossip intervals without a tick

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"


_BUSY = b"busy: too many connections answering\n"


def _head(status: int, ctype: str, length: int) -> bytes:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
        f"Content-Type: {ctype}",
        f"Content-Length: {length}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    if status == 405:
        lines.append("Allow: GET, HEAD")
    if status == 401:
        lines.append("WWW-Authenticate: Bearer")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpApi:
    def __init__(self, node: Any, log: logging.Logger) -> None:
        self.node: MetricsNode = node
        self._node_any = node  # for what health reads beyond MetricsNode (last_tick, stopping)
        self.log = log
        self.metrics = NodeMetrics(node)
        self.token: str | None = getattr(getattr(node, "config", None), "metrics_token", None)
        self.started = time.monotonic()
        self.server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        # Those still reading their request, oldest first: shed first when full.
        self._reading: dict[asyncio.Task[Any], None] = {}

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(
            self._accept, host, port, limit=MAX_LINE_BYTES, reuse_address=True
        )
        where = f"[{host}]" if ":" in host else host
        self.log.info("metrics on http://%s:%d/metrics, health on /healthz", where, port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=2)
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    # ------------------------------------------------------------ health

    def health(self) -> tuple[int, dict[str, Any]]:
        node = self._node_any
        now = time.monotonic()
        interval = node.config.gossip.interval_s
        last_tick = now - node.last_tick
        stalled = last_tick > max(1.0, interval * STALL_FACTOR)
        stopping = node.stopping
        members = node.members()
        body = {
            "status": "stopping" if stopping else "stalled" if stalled else "ok",
            "node": node.node_id,
            "name": node.name,
            "peers_alive": sum(1 for m in members if m.liveness.value == "alive"),
            "peers": len(members),
            "draining": bool(node.draining),
            "running": len(node.worker.running),
            "uptime_s": round(now - self.started, 3),
            "last_tick_s": round(last_tick, 3),
        }
        return (503 if stopping or stalled else 200), body

    # ------------------------------------------------------------ HTTP

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= MAX_CONNECTIONS and not self._shed_oldest_reading():
            # Every slot is busy answering: say so at once rather than hang up unanswered.
            self.node.counters["http_refused"] += 1
            writer.write(_head(503, _TEXT, len(_BUSY)) + _BUSY)
            writer.close()
            return
        self._connections.add(task)
        self._reading[task] = None
        try:
            await self._serve(reader, writer)
        except Exception:  # a scrape must never take the node down
            self.node.counters["http_errors"] += 1
            self.log.debug("HTTP connection failed", exc_info=True)
        finally:
            self._connections.discard(task)
            self._reading.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    def _shed_oldest_reading(self) -> bool:
        """Make room by closing the connection that has waited longest for its request
        (idle, half-open or slow ones): they cannot starve a quick ``/healthz``."""
        if not self._reading:
            return False
        oldest = next(iter(self._reading))
        del self._reading[oldest]
        self._connections.discard(oldest)
        oldest.cancel()
        self.node.counters["http_shed"] += 1
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = False
        try:
            method, path, given = await asyncio.wait_for(
                self._read_request(reader), REQUEST_TIMEOUT_S
            )
            self._reading.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            head = method == "HEAD"
            if self._authorized(given):
                status, ctype, body = self._route(method, path)
            else:
                self.node.counters["http_unauthorized"] += 1
                status, ctype, body = 401, _TEXT, b"a metrics token is required\n"
        except BadRequest as exc:
            self.node.counters["http_bad_requests"] += 1
            status, ctype, body = exc.status, _TEXT, f"{exc}\n".encode()
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client went away: nobody to answer
        except TimeoutError:
            self.node.counters["http_bad_requests"] += 1
            status, ctype, body = 408, _TEXT, b"request timeout\n"
        self.node.counters["http_requests"] += 1
        writer.write(_head(status, ctype, len(body)))
        if not head:
            writer.write(body)
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)

    def _authorized(self, given: str) -> bool:
        token = self.token
        return token is None or hmac.compare_digest(given.encode(), token.encode())

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str, str]:
        """Method, path and the token the request carries ("" without one)."""
        line = await self._read_line(reader, 400)
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise BadRequest(400, "bad request line") from None
        parts = text.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest(400, "bad request line")
        method, target, _version = parts
        path, _, query = target.partition("?")
        given = parse_qs(query).get("token", [""])[-1]
        for _ in range(MAX_HEADER_LINES):
            header = (await self._read_line(reader, 431)).decode("latin-1").strip()
            if not header:
                break
            name, _, value = header.partition(":")
            scheme, _, credentials = value.strip().partition(" ")
            if name.strip().lower() == "authorization" and scheme.lower() == "bearer":
                given = credentials.strip()
        else:
            raise BadRequest(431, "too many header lines")
        if not method.isalpha() or not method.isupper():
            raise BadRequest(400, "bad method")
        if not target.startswith("/"):
            raise BadRequest(400, "bad request target")
        return method, path, given

    @staticmethod
    async def _read_line(reader: asyncio.StreamReader, status: int) -> bytes:
        try:
            return await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise BadRequest(status, "line too long") from None

    def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if path not in ("/metrics", "/healthz", "/"):
            return 404, _TEXT, b"not found: try /metrics or /healthz\n"
        if method not in ("GET", "HEAD"):
            return 405, _TEXT, b"method not allowed\n"
        if path == "/metrics":
            try:
                return 200, CONTENT_TYPE, self.metrics.render()
            except Exception:
                self.log.exception("collecting metrics failed")
                return 500, _TEXT, b"collecting metrics failed\n"
        if path == "/healthz":
            status, body = self.health()
            return status, _JSON, (json.dumps(body) + "\n").encode()
        return 200, _TEXT, b"swarmd: /metrics (Prometheus), /healthz\n"
