"""The gateway's HTTP routes (starlette): ``GET /v1/models``, ``POST
/v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``.

A request is checked (API key, size, JSON, model, priority, feasibility, budget) and
becomes an llm subtask this node coordinates (:mod:`swarmd.core.gateway`); the answer
comes back through :mod:`.relay`: a streamed one is written as server-sent events as
its chunks arrive (the response starts with the first chunk, so a failover before it
is invisible), a whole one when the task ends. Either way it carries ``x-swarmd-node``
(the node whose endpoint answered) and ``x-swarmd-task``. A client that goes away
cancels the task, and with it the upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..core.gateway import (
    PRIORITY_HEADER,
    GatewayError,
    Target,
    gateway_job,
    job_data,
    parse_body,
    priority_of,
)
from ..core.jobspec import SINGLE_SUBTASK_ID, JobError
from ..core.jobspec.spec import Api
from ..core.pricing import Demand, PricingConfig, price
from ..journal_health import JournalUnavailable
from ..web import Limits, host_is_loopback, on_client_gone
from .auth import ApiKeys
from .catalog import ClusterView
from .errors import UNAUTHORIZED, error_event, error_response, too_large, unavailable
from .errors import upstream_failed as failed
from .relay import Event, Pending, Relay

MAX_BODY_BYTES: Final = 8 * 1024 * 1024  # a request travels in one dispatch frame
BODY_TIMEOUT_S: Final = 30.0  # the whole body, once the headers are in
# The HTTP server's (swarmd.web): a request (head and body) within 30 s of connecting or
# of the last answer, a reader that takes nothing for 30 s dropped, 1024 connections.
LIMITS: Final = Limits(
    max_body_bytes=MAX_BODY_BYTES,
    request_timeout_s=BODY_TIMEOUT_S,
    write_timeout_s=30.0,
    max_connections=1024,
)
DONE: Final = b"data: [DONE]\n\n"
_ANY_LOAD: Final = PricingConfig(max_queue=1 << 30)  # feasible at all, whatever the load

BudgetCheck = Callable[[str], str | None]  # key label -> why it is refused (429), or None


class Gateway:
    def __init__(
        self,
        node: Any,
        keys: ApiKeys,
        *,
        max_body: int = MAX_BODY_BYTES,
        budget: BudgetCheck | None = None,
        log: logging.Logger | None = None,
        bind: str = "127.0.0.1",
    ) -> None:
        self.node = node  # swarmd.node.Node: members(), coordination
        self.keys = keys
        self.max_body = max_body
        self.budget = budget  # the usage helper's per-key daily budget, when configured
        self.log = log or logging.getLogger("swarmd.gateway")
        self.counters: Counter[str] = Counter()
        # Bound to loopback: only a loopback Host (a web page that rebinds its name to
        # 127.0.0.1 must not use the swarm, nor read its answers).
        self.loopback_only = host_is_loopback(bind)
        self.view = ClusterView(node.members)
        coordination = node.coordination
        self.relay = Relay(coordination.coordinator, self._cancel, self.counters, self.log)
        coordination.watchers.listeners.append(self.relay.changed)

    def detach(self) -> None:
        """No server after all: stop following the coordinator."""
        listeners = self.node.coordination.watchers.listeners
        if self.relay.changed in listeners:
            listeners.remove(self.relay.changed)

    def app(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        routes = [
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
        ]
        app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
        posts = {r.path: r.endpoint for r in routes if r.methods and "POST" in r.methods}

        async def serve(scope: Scope, receive: Receive, send: Send) -> None:
            """A request's POST straight to its route (the path every completion takes:
            starlette's middleware and routing layers cost more than the route needs;
            an exception goes to the server, which logs it and answers 500 as they
            would); anything else through starlette."""
            http_post = scope["type"] == "http" and scope["method"] == "POST"
            route = posts.get(scope["path"]) if http_post else None
            if route is None:
                await app(scope, receive, send)
                return
            response = await route(Request(scope, receive, send))
            await response(scope, receive, send)

        return serve

    # ------------------------------------------------------------ routes

    def _admit(self, request: Request) -> str | Response:
        """The request's key label, or the answer refusing it: no valid key (401), or a
        foreign Host on a loopback-only gateway (403)."""
        if self.loopback_only and not host_is_loopback(request.headers.get("host")):
            self.counters["gateway_foreign_host"] += 1
            message = "This gateway serves only requests addressed to a loopback host."
            return error_response(GatewayError(403, message, "invalid_request_error", "host"))
        client = self.keys.check(request.headers.get("authorization"))
        return self._unauthorized() if client is None else client

    async def models(self, request: Request) -> Response:
        if isinstance(refused := self._admit(request), Response):
            return refused
        return _json(self.view.catalog().models_list())

    async def model(self, request: Request) -> Response:
        if isinstance(refused := self._admit(request), Response):
            return refused
        name = request.path_params["model"]
        catalog = self.view.catalog()
        for entry in catalog.models_list()["data"]:
            if entry["id"] == name:
                return _json(entry)
        return error_response(catalog._unknown(name, "chat", ()))

    async def chat(self, request: Request) -> Response:
        return await self.complete(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self.complete(request, "completions")

    async def embeddings(self, request: Request) -> Response:
        return await self.complete(request, "embeddings")

    # ------------------------------------------------------------ a request

    async def complete(self, request: Request, api: Api) -> Response:
        client = self._admit(request)
        if isinstance(client, Response):
            return client
        self.counters[f"gateway_requests_{api}"] += 1
        try:
            raw = await self._body(request)
            if raw is None:
                return Response(status_code=400)  # the client left mid-body: no one reads it
            task_id = self._submit(request, api, raw, client)
        except GatewayError as exc:
            self.counters[f"gateway_errors_{exc.status}"] += 1
            return error_response(exc)
        pending = self.relay.open(task_id)
        if not on_client_gone(request.scope, lambda: self.relay.client_gone(task_id)):
            pending.put(Event("gone"))
        try:
            first = await pending.next()
        except BaseException:
            self.relay.close(task_id)
            raise
        if first.kind == "gone":  # the client went: cancel the task (and the upstream request)
            self.counters["gateway_client_gone"] += 1
            self.relay.close(task_id)
            return Response(status_code=499)
        if first.kind == "chunk":
            headers = self._headers(task_id, stream=True)
            return _Events(self._stream(pending, first), headers=headers)
        self.relay.close(task_id)
        if first.kind == "error":
            answer = error_response(failed(first.message), self._headers(task_id))
        else:
            answer = self._final(task_id)
        # The answer is built: its body and answer go once it is sent (shedding them
        # costs more than writing the answer, so not before).
        asyncio.get_running_loop().call_soon(self.node.coordination.coordinator.shed, task_id)
        return answer

    async def _body(self, request: Request) -> bytes | None:
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise too_large(self.max_body)
        raw = bytearray()
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                async for piece in request.stream():
                    raw += piece
                    if len(raw) > self.max_body:
                        raise too_large(self.max_body)
        except TimeoutError:
            raise GatewayError(408, "The request body came too slowly.", "timeout") from None
        except ClientDisconnect:
            return None
        return bytes(raw)

    def _submit(self, request: Request, api: Api, raw: bytes, client: str) -> str:
        """The request as a task this node coordinates (its id)."""
        body = parse_body(raw)
        priority = priority_of(request.headers.get(PRIORITY_HEADER))
        target = self.view.catalog().resolve(body["model"], api)
        self.view.check_feasible(target, lambda: self._check_feasible(target))
        if self.budget is not None and (refused := self.budget(client)) is not None:
            raise GatewayError(429, refused, "insufficient_quota", "budget_exceeded")
        if self.relay.full():
            raise GatewayError(
                429, "Too many requests wait on this node; try again.", "rate_limit", "busy"
            )
        data = job_data(api, body, target, priority, client)  # what a journal would keep
        try:
            job = gateway_job(api, body, target, priority, client)
        except JobError as exc:
            raise GatewayError(400, str(exc), "invalid_request_error") from None
        try:
            task_id: str = self.node.coordination.submit(job, {}, data, ephemeral=True)
        except JournalUnavailable as exc:
            raise unavailable(f"This node cannot take requests now: {exc}") from None
        return task_id

    def _check_feasible(self, target: Target) -> None:
        """503 with each node's reason when no live node could ever serve ``target``."""
        coordination = self.node.coordination
        peers = coordination.peers(coordination.coordinator.load_by_node())
        demand = Demand(kind="llm", capability=target.capability, model=target.model)
        placement = price(demand, peers, _ANY_LOAD)
        if placement.winner is None:
            why = placement.reason or "no live node serves it"
            raise unavailable(f"No node can serve '{target.name}' now: {why}", "no_feasible_node")

    # ------------------------------------------------------------ the answer

    async def _stream(self, pending: Pending, first: Event) -> AsyncIterator[bytes]:
        try:
            yield first.data
            while True:
                event = await pending.next()
                if event.kind == "chunk":
                    yield event.data
                elif event.kind == "error":
                    yield error_event(event.message)
                    return
                elif event.kind == "gone":
                    return
                else:
                    yield self._stream_end(pending.task_id)
                    return
        finally:
            self.relay.close(pending.task_id)
            self.node.coordination.coordinator.shed(pending.task_id)

    def _stream_end(self, task_id: str) -> bytes:
        rec = self.node.coordination.coordinator.record(task_id).subtasks[SINGLE_SUBTASK_ID]
        if rec.state == "done":
            return _usage_chunk(task_id, rec) + DONE
        self.counters["gateway_broken_streams"] += 1
        return error_event(f"The answer broke off: {rec.error or rec.state}")

    def _final(self, task_id: str) -> Response:
        """The answer of a task that ended before any chunk was relayed."""
        rec = self.node.coordination.coordinator.record(task_id).subtasks[SINGLE_SUBTASK_ID]
        headers = self._headers(task_id)
        result = rec.result
        if result is not None and result.ok:
            if result.output is not None:  # (an endpoint that would not stream: as it came)
                return Response(result.output, media_type="application/json", headers=headers)
            headers = self._headers(task_id, stream=True)  # a stream without a chunk
            return _Events(_once(_usage_chunk(task_id, rec) + DONE), headers=headers)
        status = (result.usage or {}).get("status") if result is not None else None
        if result is not None and result.app_failed and isinstance(status, int) and result.output:
            # The endpoint's own answer to a request it refused (4xx): as it came.
            return Response(result.output, status, media_type="application/json", headers=headers)
        self.counters["gateway_failed"] += 1
        return error_response(failed(f"The request failed: {rec.error or rec.state}"), headers)

    def _headers(self, task_id: str, *, stream: bool = False) -> dict[str, str]:
        rec = self.node.coordination.coordinator.record(task_id).subtasks[SINGLE_SUBTASK_ID]
        headers = {"x-swarmd-task": task_id}
        if rec.attempts:
            headers["x-swarmd-node"] = rec.attempts[-1].peer
        if stream:
            headers |= {
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
                "x-accel-buffering": "no",
            }
        return headers

    def _cancel(self, task_id: str) -> None:
        coordination = self.node.coordination
        with contextlib.suppress(KeyError):
            coordination.run(coordination.coordinator.cancel(task_id, coordination.clock()))

    def _unauthorized(self) -> Response:
        self.counters["gateway_unauthorized"] += 1
        return error_response(UNAUTHORIZED, {"www-authenticate": "Bearer"})


def _usage_chunk(task_id: str, rec: Any) -> bytes:
    """The usage chunk a client asked for (``stream_options.include_usage``) when the
    endpoint did not send one: the worker's count (estimated, as for llm subtasks)."""
    request = rec.spec.request or {}
    options = request.get("stream_options")
    usage = (rec.result.usage or {}) if rec.result is not None else {}
    if not isinstance(options, dict) or options.get("include_usage") is not True:
        return b""
    if not usage.get("estimated"):
        return b""  # the endpoint's own went out with the stream
    chat = rec.spec.api == "chat"
    chunk: dict[str, Any] = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{task_id}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": request.get("model"),
        "choices": [],
        "usage": {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


class _Events(StreamingResponse):
    """Server-sent events written as its iterator gives them, without starlette's
    listener for the client's disconnect (a task group and a task per response, on the
    path of the first token): the gateway hears of a client that goes through
    ``on_client_gone``, which ends the iterator (and with it the task)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.stream_response(send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _json(body: Any) -> Response:
    return Response(json.dumps(body), media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return error_response(GatewayError(exc.status_code, message, kind))
