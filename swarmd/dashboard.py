"""The web dashboard: a small read-only HTTP server in the daemon's event loop.

Opt-in (``[node] dashboard_port``), bound to loopback by default. Routes:

* ``GET /``                   the page (``dashboard.html``, static, no external assets)
* ``GET /api/state``          ``{node, peers, tasks, ...}``: the peers as ``swarmctl peers
  --json`` shows them, the recent tasks with their status (newest first)
* ``GET /api/explain/TASK``   ``swarmctl explain TASK --json``: per subtask the candidates
* ``GET /api/events``         server-sent events: the state, once a second

Access: with ``dashboard_token`` set every request carries it (``?token=`` or
``Authorization: Bearer``), else 401. Without a token the server must be bound to a
loopback address (the config refuses otherwise) and it answers only requests whose
``Host`` is a loopback name, so a web page cannot reach it through DNS rebinding.

Nothing secret is served: no cluster secret, no join token, model endpoints without
credentials or query. As a last guard every response is checked for the secret in the
encodings it is stored and carried in, and withheld (500) if it contains it.

The handler is deliberately tiny: one request per connection (``Connection: close``),
a bounded request head, no request bodies, a read deadline, a cap on connections. A
bad request gets 400 and never reaches the node; an error in a handler gets 500 and is
logged; nothing here can stop the node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from importlib import resources
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import msgspec
from zmq.utils import z85

from . import __version__
from .control import peers as peer_views
from .core.gossip import Member
from .core.tasks import UnknownTask
from .http_head import (
    BadRequest,
    Request,
    check_access,
    error_body,
    host_name,
    is_loopback,
    parse_head,
    response_head,
)
from .work import Coordination

MAX_HEAD = 8192  # request line + headers, bytes
READ_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64
EVENT_INTERVAL_S = 1.0  # a new state at least this often (peers' load, liveness)
EVENT_MIN_S = 0.2  # and when a task changes, but not more often than this
RECENT_TASKS = 25
STATE_CACHE_S = 0.2  # several viewers share one rendering of the state

_TASK_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _forbidden(keys: _Keys) -> list[bytes]:
    """What must never leave the server: not even half of the cluster secret as stored
    (hex) or as carried in a join token (base64 after a 3-byte msgpack header, so
    aligned), nor of the listening secret key (z85 as a member stores it, hex)."""
    listening = z85.decode(keys.secret_z85)
    out = [keys.secret_z85[:20], listening.hex()[:32].encode()]
    if keys.secret is not None:
        out += [
            keys.secret.hex()[:32].encode(),
            keys.secret.hex()[:32].upper().encode(),
            base64.urlsafe_b64encode(keys.secret)[:24],
            base64.b64encode(keys.secret)[:24],
        ]
    return out


class DashboardError(ValueError):
    """A dashboard setting the node cannot start with (the message says which)."""


class _Keys(Protocol):
    @property
    def secret(self) -> bytes | None: ...
    @property
    def secret_z85(self) -> bytes: ...


class DashboardNode(Protocol):
    """What the dashboard reads from the running node."""

    def members(self) -> list[Member]: ...
    @property
    def coordination(self) -> Coordination: ...
    @property
    def node_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def generation(self) -> int: ...
    @property
    def keys(self) -> _Keys: ...


def check_settings(bind: str, token: str | None) -> None:
    """Refuse a bind address beyond loopback without a token; refuse a weak token."""
    try:
        check_access("dashboard", bind, token)
    except ValueError as exc:
        raise DashboardError(str(exc)) from None


def safe_endpoint(url: str) -> str:
    """A model endpoint without user:password, query or fragment (they may hold keys)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host if parts.port is None else f"{host}:{parts.port}"
    except ValueError:
        return ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Dashboard:
    def __init__(
        self,
        node: DashboardNode,
        *,
        bind: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        log: logging.Logger | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_settings(bind, token)
        self.node = node
        self.bind = bind
        self.requested_port = port
        self.token = token
        self.log = log or logging.getLogger("swarmd.dashboard")
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self.page = resources.files("swarmd").joinpath("dashboard.html").read_bytes()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._closing = asyncio.Event()
        self._cache: tuple[float, bytes] | None = None
        self._forbidden = _forbidden(node.keys)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, self.bind, self.requested_port, limit=MAX_HEAD
        )

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}/"

    async def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        for task in list(self._conns):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 1.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    # ------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        node = self.node
        members = node.members()
        rows: list[dict[str, Any]] = msgspec.to_builtins(peer_views(members))
        coordinator = node.coordination.coordinator
        throughput = getattr(coordinator, "throughput", None)
        for row in rows:
            for model in row["models"]:
                model["endpoint"] = safe_endpoint(str(model.get("endpoint") or ""))
                # What pricing reads first: this coordinator's own measurement, else the
                # peer's (already in the row, as gossiped).
                tps = throughput.tokens_per_s(row["id"], model["name"]) if throughput else None
                if tps is not None:
                    model["tokens_per_s"] = round(float(tps), 1)
        summaries = coordinator.tasks()
        recent = summaries[-RECENT_TASKS:][::-1]
        for summary in recent:
            try:
                summary["status"] = coordinator.status(summary["id"])
            except UnknownTask:
                summary["status"] = None
        return {
            "node": {
                "id": node.node_id,
                "name": node.name,
                "address": node.address,
                "generation": node.generation,
                "version": __version__,
            },
            "time": self.clock(),
            "peers": rows,
            "tasks": recent,
            "task_count": len(summaries),
        }

    def _state_bytes(self) -> bytes:
        now = time.monotonic()
        if self._cache is not None and now - self._cache[0] < STATE_CACHE_S:
            return self._cache[1]
        body = self._encode(self.state())
        self._cache = (now, body)
        return body

    def _encode(self, value: Any) -> bytes:
        body = msgspec.json.encode(value)
        if any(f in body for f in self._forbidden):
            self.counters["dashboard_withheld"] += 1
            self.log.error("dashboard: a response contained the cluster secret; withheld")
            raise RuntimeError("response withheld: it contained a secret")
        return body

    # ------------------------------------------------------------ HTTP

    async def _on_connection(self, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        try:
            if task is not None:
                self._conns.add(task)
            if len(self._conns) > MAX_CONNECTIONS:
                self.counters["dashboard_busy"] += 1
                await self._respond(w, 503, error_body("too many connections"), head_only=False)
                return
            await self._serve(reader, w)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the server is closing; end quietly (3.11 logs a cancelled handler)
        except Exception:
            self.counters["dashboard_errors"] += 1
            self.log.exception("dashboard: request failed")
        finally:
            if task is not None:
                self._conns.discard(task)
            w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            self.counters["dashboard_bad_requests"] += 1
            await self._respond(w, 431, error_body("request head too large"))
            await _linger(reader, w)
            return
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                self.counters["dashboard_bad_requests"] += 1
                await self._respond(w, 400, error_body("incomplete request"))
            return
        except TimeoutError:
            await self._respond(w, 408, error_body("request timeout"))
            return
        try:
            request = parse_head(head)
        except BadRequest as exc:
            self.counters["dashboard_bad_requests"] += 1
            await self._respond(w, exc.status, error_body(exc.message))
            await _linger(reader, w)
            return
        self.counters["dashboard_requests"] += 1
        head_only = request.method == "HEAD"
        denied = self._access(request)
        if denied is not None:
            status, message, extra = denied
            await self._respond(w, status, error_body(message), headers=extra, head_only=head_only)
            return
        if request.method not in ("GET", "HEAD"):
            await self._respond(
                w,
                405,
                error_body("only GET"),
                headers=[("Allow", "GET, HEAD")],
                head_only=head_only,
            )
            return
        path = request.path
        if path in ("/", "/index.html"):
            await self._respond(w, 200, self.page, "text/html; charset=utf-8", head_only=head_only)
        elif path == "/api/state":
            try:
                body = self._state_bytes()
            except Exception:
                self.counters["dashboard_errors"] += 1
                self.log.exception("dashboard: cannot render the state")
                await self._respond(w, 500, error_body("cannot render the state"))
                return
            await self._respond(w, 200, body, head_only=head_only)
        elif path.startswith("/api/explain/"):
            await self._explain(w, path.removeprefix("/api/explain/"), head_only)
        elif path == "/api/events":
            await self._events(w, head_only)
        elif path == "/favicon.ico":
            await self._respond(w, 204, b"", "image/x-icon", head_only=head_only)
        else:
            await self._respond(
                w, 404, error_body(f"no such page: {path[:200]}"), head_only=head_only
            )

    def _access(self, request: Request) -> tuple[int, str, list[tuple[str, str]]] | None:
        if self.token is not None:
            given = request.query.get("token", [""])[-1]
            auth = request.headers.get("authorization", "")
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer":
                given = value.strip()
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                self.counters["dashboard_unauthorized"] += 1
                return 401, "a dashboard token is required", [("WWW-Authenticate", "Bearer")]
            return None
        # No token: loopback only. A browser sends the name it resolved in Host; a
        # rebinding attacker's page would send its own name, so refuse that.
        host = request.headers.get("host")
        if host is not None and not is_loopback(host_name(host)):
            self.counters["dashboard_forbidden_host"] += 1
            return 403, "open the dashboard as http://127.0.0.1 or http://localhost", []
        return None

    async def _explain(self, w: asyncio.StreamWriter, task: str, head_only: bool) -> None:
        if not _TASK_RE.match(task):
            await self._respond(w, 400, error_body("malformed task id"), head_only=head_only)
            return
        try:
            body = self._encode(self.node.coordination.coordinator.explain(task))
        except UnknownTask:
            await self._respond(
                w, 404, error_body(f"unknown task {task} on this node"), head_only=head_only
            )
            return
        await self._respond(w, 200, body, head_only=head_only)

    async def _events(self, w: asyncio.StreamWriter, head_only: bool) -> None:
        head = response_head(200, "text/event-stream", None)
        w.write(head)
        if head_only:
            await asyncio.wait_for(w.drain(), WRITE_TIMEOUT_S)
            return
        w.write(b"retry: 1000\n\n")
        while not self._closing.is_set():
            try:
                w.write(b"data: " + self._state_bytes() + b"\n\n")
            except Exception:
                self.counters["dashboard_errors"] += 1
                self.log.exception("dashboard: cannot render the state")
                w.write(b": state unavailable\n\n")
            await asyncio.wait_for(w.drain(), WRITE_TIMEOUT_S)
            await self._next_event()

    async def _next_event(self) -> None:
        """Until a task changes (pushed by the coordinator's watchers, as to `swarmctl
        --wait`), at most every EVENT_MIN_S, or EVENT_INTERVAL_S pass, or closing."""
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(closing), EVENT_MIN_S)
            if closing.done():
                return
            changed = asyncio.ensure_future(
                self.node.coordination.watchers.any_change(EVENT_INTERVAL_S - EVENT_MIN_S)
            )
            await asyncio.wait({closing, changed}, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
        finally:
            closing.cancel()

    async def _respond(
        self,
        w: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        *,
        headers: list[tuple[str, str]] | None = None,
        head_only: bool = False,
    ) -> None:
        w.write(response_head(status, content_type, len(body), headers))
        if not head_only:
            w.write(body)
        await asyncio.wait_for(w.drain(), WRITE_TIMEOUT_S)


async def _linger(reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """After an error answer to a request we did not read to its end: stop writing and
    discard what the client still sends (bounded), so that closing the socket does not
    reset the connection before the client has read the answer."""
    with contextlib.suppress(Exception):
        if w.can_write_eof():
            w.write_eof()
        deadline = time.monotonic() + 1.0
        discarded = 0
        while discarded < (1 << 20) and (left := deadline - time.monotonic()) > 0:
            chunk = await asyncio.wait_for(reader.read(65536), left)
            if not chunk:
                break
            discarded += len(chunk)
