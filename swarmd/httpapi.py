"""The opt-in HTTP port (``[node] metrics_port``): ``/metrics`` and ``/healthz``.

A small starlette app served by :mod:`swarmd.web` (uvicorn in the daemon's event loop):
GET (or HEAD) only, no request bodies, every request bounded in size and time
(``REQUEST_TIMEOUT_S``); a request it cannot parse gets 400 and never reaches the rest
of the node. At most ``MAX_CONNECTIONS`` are open: a new one past that closes the one
that has waited longest for its request (idle or half-open connections cannot starve
``/healthz``: ``http_shed``), or, when every one is already being answered, gets a
quick 503 (``http_refused``).

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

import json
import logging
import time
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .metrics import CONTENT_TYPE, MetricsNode, NodeMetrics
from .web import Limits, WebServer, presented_token, token_matches

REQUEST_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 32
STALL_FACTOR = 10  # like the node's watchdog: this many gossip intervals without a tick
LIMITS = Limits(
    max_body_bytes=0,
    request_timeout_s=REQUEST_TIMEOUT_S,
    write_timeout_s=5.0,
    max_connections=MAX_CONNECTIONS,
)
_JSON = "application/json"


class HttpApi:
    def __init__(self, node: Any, log: logging.Logger) -> None:
        self.node: MetricsNode = node
        self._node_any = node  # for what health reads beyond MetricsNode (last_tick, stopping)
        self.log = log
        self.metrics = NodeMetrics(node)
        self.token: str | None = getattr(getattr(node, "config", None), "metrics_token", None)
        self.started = time.monotonic()
        self.web: WebServer | None = None

    async def start(self, host: str, port: int) -> None:
        web = WebServer(
            self._app(),
            host,
            port,
            LIMITS,
            counters=self.node.counters,
            prefix="http",
            headers=[("Cache-Control", "no-store")],
        )
        await web.start()
        self.web = web
        where = f"[{host}]" if ":" in host else host
        self.log.info("metrics on http://%s:%d/metrics, health on /healthz", where, web.port)

    async def close(self) -> None:
        if self.web is not None:
            await self.web.stop()

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

    def _app(self) -> Any:
        routes = [
            Route("/metrics", self._metrics),
            Route("/healthz", self._healthz),
            Route("/", self._index),
        ]
        app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})

        async def checked(scope: dict[str, Any], receive: Any, send: Any) -> None:
            """Every request carries the token when one is set; then the routes."""
            if scope["type"] == "http":
                self.node.counters["http_requests"] += 1
                if self.token is not None:
                    request = Request(scope)
                    given = presented_token(request.headers, request.query_params)
                    if not token_matches(given, self.token):
                        self.node.counters["http_unauthorized"] += 1
                        refusal = PlainTextResponse(
                            "a metrics token is required\n",
                            401,
                            headers={"WWW-Authenticate": "Bearer"},
                        )
                        await refusal(scope, receive, send)
                        return
            await app(scope, receive, send)

        return checked

    async def _metrics(self, request: Request) -> Response:
        try:
            return Response(self.metrics.render(), media_type=CONTENT_TYPE)
        except Exception:
            self.node.counters["http_errors"] += 1
            self.log.exception("collecting metrics failed")
            return PlainTextResponse("collecting metrics failed\n", 500)

    async def _healthz(self, request: Request) -> Response:
        status, body = self.health()
        return Response((json.dumps(body) + "\n").encode(), status, media_type=_JSON)

    async def _index(self, request: Request) -> Response:
        return PlainTextResponse("swarmd: /metrics (Prometheus), /healthz\n")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return PlainTextResponse("not found: try /metrics or /healthz\n", 404)
    return PlainTextResponse(f"{exc.detail.lower()}\n", exc.status_code, headers=exc.headers)
