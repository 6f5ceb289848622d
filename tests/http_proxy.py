"""An HTTP reverse proxy in front of a real OpenAI-compatible server, for tests: it
counts the requests in flight at the server (and the most ever at once), sees a client
go away before the answer ended, and can be told to misbehave: hold a request before
passing it on, answer an error status instead, slow a stream down, or cut a stream off
after some events.

Faults apply only to requests that generate more than one token, so a node's 1-token
latency probes (what it gossips as ``latency_ms``) pass as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.harness import free_port


@dataclass
class Faults:
    hold_s: float = 0.0  # before passing a request on
    status: int | None = None  # answer this instead
    event_delay_s: float = 0.0  # between two events of a stream
    cut_after: int | None = None  # close the connection after this many events


class HttpProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")  # "http://127.0.0.1:PORT"
        self.port = free_port()
        self.faults = Faults()
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests = 0
        self.client_gone = 0  # answers the client stopped reading before their end
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/{path:path}", self._proxy, methods=["GET", "POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.02)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        """No faults, and the counts start over."""
        self.faults = Faults()
        with self._lock:
            self.max_in_flight = self.in_flight
            self.requests = self.client_gone = 0

    def close(self) -> None:
        self.faults = Faults()
        self.server.should_exit = self.server.force_exit = True  # held requests: dropped
        self.thread.join(10)

    def _count(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    async def _proxy(self, request: Request) -> Response:
        body = await request.body()
        url = f"{self.upstream}/{request.path_params['path']}"
        if request.method == "GET":
            async with httpx.AsyncClient(trust_env=False) as client:
                resp = await client.get(url)
            return Response(resp.content, resp.status_code, media_type="application/json")
        counted = _generates(body)  # a latency probe is neither faulted nor counted
        faults = self.faults if counted else Faults()
        self.requests += counted
        self._count(+counted)
        try:
            if faults.hold_s:
                await asyncio.sleep(faults.hold_s)
            if faults.status is not None:
                self._count(-counted)
                error = {"error": {"message": "injected", "type": "server_error"}}
                return Response(json.dumps(error), faults.status, media_type="application/json")
            client = httpx.AsyncClient(trust_env=False, timeout=60)
            upstream = await client.send(
                client.build_request(
                    "POST", url, content=body, headers={"content-type": "application/json"}
                ),
                stream=True,
            )
        except BaseException:
            self._count(-counted)
            raise
        if "event-stream" not in upstream.headers.get("content-type", ""):
            try:
                content = await upstream.aread()
            finally:
                self._count(-counted)
                await upstream.aclose()
                await client.aclose()
            return Response(content, upstream.status_code, media_type="application/json")
        return StreamingResponse(
            self._events(upstream, client, faults, counted), media_type="text/event-stream"
        )

    async def _events(
        self, upstream: httpx.Response, client: httpx.AsyncClient, faults: Faults, counted: bool
    ) -> AsyncIterator[bytes]:
        sent = 0
        ended = False
        try:
            async for line in upstream.aiter_lines():
                if not line:
                    continue
                if faults.cut_after is not None and sent >= faults.cut_after:
                    raise ConnectionAbortedError("injected: the stream is cut")
                if faults.event_delay_s:
                    await asyncio.sleep(faults.event_delay_s)
                yield (line + "\n\n").encode()
                sent += 1
            ended = True
        finally:  # counted first: a cancelled task's next await raises again
            if not ended:
                self.client_gone += faults.cut_after is None
            self._count(-counted)
            with contextlib.suppress(BaseException):
                await upstream.aclose()
                await client.aclose()


def _generates(body: bytes) -> bool:
    """Whether a request asks for more than one token (not a latency probe)."""
    with contextlib.suppress(ValueError):
        doc = json.loads(body)
        return isinstance(doc, dict) and doc.get("max_tokens") != 1
    return True
