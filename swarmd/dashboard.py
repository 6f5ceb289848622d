"""The web dashboard: a small read-only HTTP server in the daemon's event loop.

Opt-in (``[node] dashboard_port``), bound to loopback by default. Routes:

* ``GET /``                   the page (``dashboard.html``, static, no external assets)
* ``GET /api/state``          ``{node, peers, tasks, ...}``: the peers as ``swarmctl peers
  --json`` shows them, the recent tasks with their status (newest first)
* ``GET /api/explain/TASK``   ``swarmctl explain TASK --json``: per subtask the candidates
  (a task of another node: asked of it, as ``swarmctl explain`` does)
* ``GET /api/cluster-tasks``  ``swarmctl tasks --all --json``, newest first: every live
  node's tasks, each with its ``coordinator``; ``missing``: nodes that did not answer
* ``GET /api/events``         server-sent events: the state, once a second

Access: with ``dashboard_token`` set every request carries it (``?token=`` or
``Authorization: Bearer``), else 401. Without a token the server must be bound to a
loopback address (the config refuses otherwise) and it answers only requests whose
``Host`` is a loopback name, so a web page cannot reach it through DNS rebinding.

Nothing secret is served: no cluster secret, no join token, model endpoints without
credentials or query. As a last guard every response is checked for the secret in the
encodings it is stored and carried in, and withheld (500) if it contains it.

A starlette app served by :mod:`swarmd.web` (uvicorn in the daemon's event loop): a
bounded request head, no request bodies, a read deadline, a cap on connections, the
security headers on every answer. A bad request gets 400 and never reaches the node; an
error in a handler gets 500 and is logged; nothing here can stop the node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import msgspec
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from zmq.utils import z85

from protocol.messages import ErrorReply, TaskReply, TaskRequest, TasksReply, TasksRequest

from . import __version__
from .core.gossip import Member
from .core.tasks import UnknownTask
from .http_head import SECURITY_HEADERS, check_access
from .peer_rows import peers as peer_views
from .web import Limits, WebServer, host_is_loopback, presented_token, token_matches
from .work import Coordination

MAX_HEAD = 8192  # request line + headers, bytes
READ_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64
EVENT_INTERVAL_S = 1.0  # a new state at least this often (peers' load, liveness)
EVENT_MIN_S = 0.2  # and when a task changes, but not more often than this
RECENT_TASKS = 25
CLUSTER_TASKS = 100  # rows of the cluster's task list shown (newest first)
STATE_CACHE_S = 0.2  # several viewers share one rendering of the state
LIMITS = Limits(
    max_body_bytes=0,
    max_head_bytes=MAX_HEAD,
    request_timeout_s=READ_TIMEOUT_S,
    write_timeout_s=WRITE_TIMEOUT_S,
    max_connections=MAX_CONNECTIONS,
)

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
        self._web: WebServer | None = None
        self._closing = asyncio.Event()
        self._cache: tuple[float, bytes] | None = None
        self._forbidden = _forbidden(node.keys)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        web = WebServer(
            _Access(self._app(), self),
            self.bind,
            self.requested_port,
            LIMITS,
            counters=self.counters,
            prefix="dashboard",
            headers=SECURITY_HEADERS,
            error_body=lambda status, message: ("application/json", error_body(message)),
        )
        await web.start()
        self._web = web

    @property
    def port(self) -> int:
        assert self._web is not None
        return self._web.port

    @property
    def url(self) -> str:
        host = f"[{self.bind}]" if ":" in self.bind else self.bind
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}/"

    async def close(self) -> None:
        self._closing.set()  # ends the event streams
        web, self._web = self._web, None
        if web is not None:
            await web.stop()

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

    def _app(self) -> Starlette:
        routes = [
            Route("/", self._page),
            Route("/index.html", self._page),
            Route("/api/state", self._state),
            Route("/api/explain/{task:path}", self._explain),
            Route("/api/cluster-tasks", self._cluster_tasks),
            Route("/api/events", self._events),
            Route("/favicon.ico", lambda _: Response(b"", 204, media_type="image/x-icon")),
        ]
        return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})

    def access(self, request: Request) -> tuple[int, str, dict[str, str]] | None:
        """Why this request is refused (status, message, headers), or None."""
        if self.token is not None:
            given = presented_token(request.headers, request.query_params)
            if not token_matches(given, self.token):
                self.counters["dashboard_unauthorized"] += 1
                return 401, "a dashboard token is required", {"WWW-Authenticate": "Bearer"}
            return None
        # No token: loopback only. A browser sends the name it resolved in Host; a
        # rebinding attacker's page would send its own name, so refuse that.
        if not host_is_loopback(request.headers.get("host")):
            self.counters["dashboard_forbidden_host"] += 1
            return 403, "open the dashboard as http://127.0.0.1 or http://localhost", {}
        return None

    async def _page(self, request: Request) -> Response:
        return Response(self.page, media_type="text/html; charset=utf-8")

    async def _state(self, request: Request) -> Response:
        try:
            body = self._state_bytes()
        except Exception:
            self.counters["dashboard_errors"] += 1
            self.log.exception("dashboard: cannot render the state")
            return _json(500, "cannot render the state")
        return Response(body, media_type="application/json")

    async def _explain(self, request: Request) -> Response:
        task = request.path_params["task"]
        if not _TASK_RE.match(task):
            return _json(400, "malformed task id")
        try:
            try:
                body = self._encode(self.node.coordination.coordinator.explain(task))
            except UnknownTask:
                reply = await self._ask_cluster(TaskRequest(task=task, what="explain"))
                if not isinstance(reply, TaskReply):
                    return _json(404, reply.message if reply else f"unknown task {task}")
                body = self._encode(reply.body)
        except Exception:
            self.counters["dashboard_errors"] += 1
            self.log.exception("dashboard: cannot explain %s", task)
            return _json(500, "cannot explain the task")
        return Response(body, media_type="application/json")

    async def _ask_cluster(self, request: TaskRequest | TasksRequest) -> Any:
        """The answer of the node that has the task (or of every node), as ``swarmctl``
        gets it from this one; None where this node cannot ask its peers."""
        control = getattr(self.node, "control", None)
        if control is None or control.forwarder is None:
            return None
        return await control.answer_later(request)

    async def _cluster_tasks(self, request: Request) -> Response:
        try:
            reply = await self._ask_cluster(TasksRequest(cluster=True, newest=CLUSTER_TASKS))
            if not isinstance(reply, TasksReply):
                why = reply.message if isinstance(reply, ErrorReply) else "no cluster view"
                return _json(503, why)
            body = self._encode(
                {
                    "time": self.clock(),
                    "tasks": reply.tasks[::-1],
                    "task_count": len(reply.tasks) + reply.truncated,
                    "missing": reply.missing,
                }
            )
        except Exception:
            self.counters["dashboard_errors"] += 1
            self.log.exception("dashboard: cannot list the cluster's tasks")
            return _json(500, "cannot list the cluster's tasks")
        return Response(body, media_type="application/json")

    async def _events(self, request: Request) -> Response:
        return EventSourceResponse(self._event_stream(), sep="\n", send_timeout=WRITE_TIMEOUT_S)

    async def _event_stream(self) -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(retry=1000)
        while not self._closing.is_set():
            try:
                yield ServerSentEvent(data=self._state_bytes().decode())
            except Exception:
                self.counters["dashboard_errors"] += 1
                self.log.exception("dashboard: cannot render the state")
                yield ServerSentEvent(comment="state unavailable")
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


class _Access:
    """Counts each request and refuses those without access, before any route."""

    def __init__(self, app: Starlette, dashboard: Dashboard) -> None:
        self.app = app
        self.dashboard = dashboard

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.dashboard.counters["dashboard_requests"] += 1
            denied = self.dashboard.access(Request(scope))
            if denied is not None:
                status, message, headers = denied
                await _json(status, message, headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def error_body(message: str) -> bytes:
    return msgspec.json.encode({"error": message})


def _json(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(message), status, headers, media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405, as the dashboard's JSON errors."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _json(404, f"no such page: {request.url.path[:200]}")
    if exc.status_code == 405:
        return _json(405, "only GET", {"Allow": "GET, HEAD"})
    return _json(exc.status_code, str(exc.detail), dict(exc.headers or {}))
