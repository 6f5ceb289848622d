"""LLM subtasks: one chat completion from an OpenAI-compatible endpoint.

``POST {endpoint}/chat/completions`` with the profile's ``model``, the (optional) system
prompt and the rendered user prompt, ``max_tokens`` always sent (llama.cpp-style servers
never stop on their own otherwise), streamed by default: the SSE ``data:`` lines are
parsed as they come, ``choices[0].delta.content`` accumulated, the time to the first
token and the tokens per second measured, and ``progress`` told about once a second.
Usage comes from the server's final chunk (``stream_options.include_usage``) when it
sends one, else it is counted (one content chunk = one token) and estimated
(prompt tokens ≈ characters / 4), and marked ``estimated``.

A server that refuses ``stream_options`` (a 4xx naming it) is asked again without it.
The client made here ignores proxy variables (``trust_env=False``): endpoints are
normally on the LAN; pass your own ``httpx.AsyncClient`` to change that.

Failures: HTTP 429, 5xx, connection errors and stalls are retried with exponential
backoff (0.5 s, ×2, 3 tries; ``Retry-After`` honoured up to 10 s) and, when the tries
are used up, reported as a node failure (``app_failed=False``: another node may do
better). Any other HTTP error (4xx) is the subtask's own (``app_failed=True``), with
the status and the start of the body. Every wait is bounded: connect and per-chunk
read timeouts, and an overall timeout (the subtask's, else ``DEFAULT_TIMEOUT_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

from swarmd.executors import ExecRequest, ExecResult, Limits, Progress, report

CONNECT_TIMEOUT_S: Final = 10.0
READ_TIMEOUT_S: Final = 120.0  # between two chunks; prompt processing of a big model is slow
DEFAULT_TIMEOUT_S: Final = 900.0  # the whole subtask, when its spec gives no timeout
PROGRESS_INTERVAL_S: Final = 1.0
ERROR_SNIPPET_BYTES: Final = 500
MAX_LINE_BYTES: Final = 1024 * 1024  # one SSE line; a stream that never sends "\n" is cut
MAX_BODY_BYTES: Final = 16 * 1024 * 1024  # a non-streamed response


@dataclass(frozen=True)
class RetryPolicy:
    tries: int = 3
    backoff_s: float = 0.5
    factor: float = 2.0
    max_retry_after_s: float = 10.0

    def delay(self, tried: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after_s)
        return float(self.backoff_s * self.factor ** (tried - 1))


class LlmError(Exception):
    """An endpoint did not answer as an OpenAI-compatible server should."""


@dataclass
class _Retry:
    reason: str
    retry_after: float | None = None


@dataclass
class _Progress:
    """What the attempt in flight has received so far."""

    parts: list[str] = field(default_factory=list)
    size: int = 0
    chunks: int = 0  # chunks that carried content (or reasoning): ~ tokens
    sent_at: float = 0.0
    first_token_at: float | None = None
    usage: Mapping[str, Any] | None = None
    finish_reason: str | None = None
    model: str | None = None
    truncated: bool = False
    streamed: bool = False  # an event stream (else one JSON body: no ttft, no chunk count)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream, application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _timeout(connect_s: float, read_s: float) -> httpx.Timeout:
    return httpx.Timeout(connect=connect_s, read=read_s, write=connect_s, pool=connect_s)


def _url(endpoint: str, path: str) -> str:
    return endpoint.rstrip("/") + path


def _refusal(req: ExecRequest) -> ExecResult | None:
    """Why ``req`` cannot be sent at all, as its result; None if it can."""
    if not req.endpoint or not req.model:
        return ExecResult.failure(
            "llm subtask without an endpoint and model (no [models.NAME] profile chosen)",
            app_failed=False,
        )
    if req.prompt is None:
        return ExecResult.failure("llm subtask without a prompt", app_failed=True)
    if req.max_tokens < 1:
        return ExecResult.failure(f"max_tokens {req.max_tokens} is not positive", app_failed=True)
    return None


def _chat_body(req: ExecRequest, stream: bool) -> dict[str, Any]:
    """The chat completion's request body (``req.prompt`` is set)."""
    messages = []
    if req.system:
        messages.append({"role": "system", "content": req.system})
    messages.append({"role": "user", "content": req.prompt})
    body: dict[str, Any] = {"model": req.model, "messages": messages, "max_tokens": req.max_tokens}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


async def run(
    req: ExecRequest,
    *,
    limits: Limits | None = None,
    progress: Progress | None = None,
    client: httpx.AsyncClient | None = None,
    stream: bool = True,
    retry: RetryPolicy | None = None,
    api_key: str | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    read_timeout_s: float = READ_TIMEOUT_S,
    default_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ExecResult:
    """One chat completion; never raises (except cancellation)."""
    limits = limits or Limits()
    retry = retry or RetryPolicy()
    started = time.monotonic()
    refused = _refusal(req)
    if refused is not None:
        return refused
    body = _chat_body(req, stream)
    total_s = req.timeout_s if req.timeout_s is not None else default_timeout_s
    call = _Completion(
        req=req,
        url=_url(req.endpoint, "/chat/completions"),
        body=body,
        headers=_headers(api_key),
        timeout=_timeout(connect_timeout_s, read_timeout_s),
        limits=limits,
        progress=progress,
        retry=retry,
        stream=stream,
    )
    ticker = asyncio.create_task(call.tick(started)) if progress else None
    try:
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                client = await stack.enter_async_context(httpx.AsyncClient(trust_env=False))
            async with asyncio.timeout(total_s):
                result = await call.tries(client)
    except TimeoutError:
        return call.result(
            started, error=f"timed out after {total_s:g}s", app_failed=True, partial=True
        )
    finally:
        if ticker is not None:
            ticker.cancel()
    return result if isinstance(result, ExecResult) else call.result(started)


@dataclass
class _Completion:
    req: ExecRequest
    url: str
    body: dict[str, Any]
    headers: dict[str, str]
    timeout: httpx.Timeout
    limits: Limits
    progress: Progress | None
    retry: RetryPolicy
    stream: bool
    state: _Progress = field(default_factory=_Progress)
    tried: int = 0

    async def tries(self, client: httpx.AsyncClient) -> ExecResult | None:
        """Retry until one attempt completes (None: ``self.state`` has the answer) or
        fails for good (an error result)."""
        while True:
            self.tried += 1
            self.state = _Progress(sent_at=time.monotonic())
            outcome = await self.attempt(client)
            if (
                isinstance(outcome, ExecResult)
                and "stream_options" in (outcome.error or "")
                and self.body.pop("stream_options", None) is not None
            ):
                self.tried -= 1  # a server that does not know stream_options: ask without
                continue
            if not isinstance(outcome, _Retry):
                return outcome
            if self.tried >= self.retry.tries:
                return ExecResult.failure(
                    f"{outcome.reason} (gave up after {self.tried} tries)", app_failed=False
                )
            delay = self.retry.delay(self.tried, outcome.retry_after)
            report(self.progress, f"{outcome.reason}; retrying in {delay:.1f}s")
            await asyncio.sleep(delay)

    async def attempt(self, client: httpx.AsyncClient) -> ExecResult | _Retry | None:
        try:
            async with client.stream(
                "POST", self.url, json=self.body, headers=self.headers, timeout=self.timeout
            ) as resp:
                if resp.status_code >= 300:
                    return await _http_error(resp)
                if self.stream and "event-stream" in resp.headers.get("content-type", ""):
                    return await self.read_stream(resp)
                return await self.read_body(resp)
        except httpx.TimeoutException as exc:
            return _Retry(f"{type(exc).__name__} from {self.url}")
        except httpx.TransportError as exc:
            return _Retry(f"{type(exc).__name__} from {self.url}: {exc}")

    async def read_stream(self, resp: httpx.Response) -> ExecResult | _Retry | None:
        self.state.streamed = True
        complete = False
        async for data in _sse_data(resp):
            if data == "[DONE]":
                complete = True
                break
            try:
                chunk = json.loads(data)
            except (json.JSONDecodeError, RecursionError):  # nested too deeply: as garbage
                continue
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:
                return _stream_error(chunk["error"])
            self.take(chunk, delta_key="delta")
            if self.state.truncated:
                complete = True
                break
        if not complete and self.state.finish_reason is None:
            # e.g. llama-cpp-python fails inside the stream after its 200 (prompt too long)
            return _Retry(f"the event stream from {self.url} ended before it was complete")
        return None

    async def read_body(self, resp: httpx.Response) -> ExecResult | _Retry | None:
        raw = bytearray()
        async for piece in resp.aiter_bytes():
            raw += piece
            if len(raw) > MAX_BODY_BYTES:
                return ExecResult.failure(
                    f"response from {self.url} over {MAX_BODY_BYTES} bytes", app_failed=True
                )
        try:
            doc = json.loads(bytes(raw))
        except (json.JSONDecodeError, RecursionError):
            return ExecResult.failure(
                f"response from {self.url} is not JSON: {_snippet(bytes(raw))}", app_failed=True
            )
        if not isinstance(doc, dict):
            return ExecResult.failure(f"response from {self.url} is not an object", app_failed=True)
        if "error" in doc:
            return _stream_error(doc["error"])
        self.take(doc, delta_key="message")
        return None

    def take(self, chunk: Mapping[str, Any], *, delta_key: str) -> None:
        """Add one streamed chunk (or the whole non-streamed response) to the state."""
        s = self.state
        if isinstance(chunk.get("model"), str):
            s.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            s.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        choice = choices[0]
        if choice.get("finish_reason"):
            s.finish_reason = str(choice["finish_reason"])
        delta = choice.get(delta_key)
        if not isinstance(delta, dict):
            return
        content = delta.get("content")
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if not content and not reasoning:
            return
        if s.first_token_at is None and s.streamed:
            s.first_token_at = time.monotonic()
        s.chunks += 1
        if isinstance(content, str) and content:
            room = self.limits.max_output_bytes - s.size
            encoded = content.encode()
            if len(encoded) > room:
                content = encoded[: max(room, 0)].decode("utf-8", errors="ignore")
                s.truncated = True
            s.parts.append(content)
            s.size += len(content.encode())

    async def tick(self, started: float) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL_S)
            s = self.state
            elapsed = time.monotonic() - started
            if s.first_token_at is None:
                line = f"waiting for the first token, {elapsed:.0f}s"
            else:
                line = f"{s.chunks} tokens, {elapsed:.0f}s"
            report(self.progress, line if self.tried <= 1 else f"{line} (try {self.tried})")

    def result(
        self,
        started: float,
        *,
        error: str | None = None,
        app_failed: bool = False,
        partial: bool = False,
    ) -> ExecResult:
        s = self.state
        now = time.monotonic()
        seconds = now - s.sent_at if s.sent_at else 0.0
        ttft = s.first_token_at - s.sent_at if s.first_token_at is not None else None
        prompt_text = (self.req.system or "") + (self.req.prompt or "")
        server = s.usage or {}
        estimated = not all(
            isinstance(server.get(k), int) for k in ("prompt_tokens", "completion_tokens")
        )
        if estimated:
            prompt_tokens = len(prompt_text) // 4
            completion_tokens = s.chunks if s.streamed else (len(s.text) + 3) // 4
        else:
            prompt_tokens = int(server["prompt_tokens"])
            completion_tokens = int(server["completion_tokens"])
        decode_s = seconds - ttft if ttft is not None and seconds - ttft > 1e-3 else seconds
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "seconds": round(seconds, 6),
            "ttft_s": None if ttft is None else round(ttft, 6),
            "tokens_per_s": round(completion_tokens / decode_s, 3) if decode_s > 0 else 0.0,
            "estimated": estimated,
            "finish_reason": s.finish_reason,
            "model": s.model,
            "tries": self.tried,
        }
        return ExecResult(
            exit_code=None,
            stdout="",
            stderr="",
            output=s.text if (error is None or partial) else None,
            usage=usage,
            artifacts={},
            error=error,
            app_failed=app_failed,
            truncated=s.truncated,
            seconds=now - started,
        )


async def _sse_data(resp: httpx.Response) -> AsyncIterator[str]:
    """The payloads of the ``data:`` lines of a server-sent-events response (a
    multi-line event is joined with newlines), each line bounded in size."""
    buf = bytearray()
    event: list[str] = []
    async for piece in resp.aiter_bytes():
        buf += piece
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > MAX_LINE_BYTES:
                    raise httpx.RemoteProtocolError("an event-stream line is over 1 MiB")
                break
            line = bytes(buf[:nl]).rstrip(b"\r").decode("utf-8", errors="replace")
            del buf[: nl + 1]
            if not line:
                if event:
                    yield "\n".join(event)
                    event = []
            elif line.startswith("data:"):
                event.append(line[5:].removeprefix(" "))
    if buf.startswith(b"data:"):
        event.append(bytes(buf[5:]).decode("utf-8", errors="replace").strip())
    if event:
        yield "\n".join(event)


async def _http_error(resp: httpx.Response) -> ExecResult | _Retry:
    snippet = await _read_snippet(resp)
    reason = f"HTTP {resp.status_code} from {resp.request.url}: {snippet}"
    if resp.status_code == 429 or resp.status_code >= 500:
        return _Retry(reason, _retry_after(resp.headers.get("retry-after")))
    return ExecResult.failure(reason, app_failed=True)


async def _read_snippet(resp: httpx.Response) -> str:
    raw = bytearray()
    with contextlib.suppress(httpx.HTTPError):
        async for piece in resp.aiter_bytes():
            raw += piece
            if len(raw) >= ERROR_SNIPPET_BYTES:
                break
    return _snippet(bytes(raw))


def _snippet(raw: bytes) -> str:
    text = raw[:ERROR_SNIPPET_BYTES].decode("utf-8", errors="replace").strip()
    text = " ".join(text.split())
    return text + (" …" if len(raw) > ERROR_SNIPPET_BYTES else "") if text else "(empty body)"


def _retry_after(value: str | None) -> float | None:
    """``Retry-After``: delay-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _stream_error(error: Any) -> ExecResult:
    if isinstance(error, dict):
        message = error.get("message") or json.dumps(error)[:ERROR_SNIPPET_BYTES]
    else:
        message = str(error)[:ERROR_SNIPPET_BYTES]
    return ExecResult.failure(f"the endpoint reported an error: {message}", app_failed=True)


async def measure_latency(
    endpoint: str,
    model: str,
    timeout: float = 10.0,
    *,
    client: httpx.AsyncClient | None = None,
    api_key: str | None = None,
) -> float | None:
    """Seconds for a 1-token chat completion (what the daemon publishes as
    ``latency_ms`` after × 1000), or None if the endpoint did not answer in time."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "ping"}],
        "max_tokens": 1,
    }
    try:
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                client = await stack.enter_async_context(httpx.AsyncClient(trust_env=False))
            async with asyncio.timeout(timeout):
                started = time.monotonic()
                resp = await client.post(
                    _url(endpoint, "/chat/completions"),
                    json=body,
                    headers=_headers(api_key),
                    timeout=_timeout(timeout, timeout),
                )
                elapsed = time.monotonic() - started
    except (TimeoutError, httpx.HTTPError):
        return None
    return elapsed if resp.status_code == 200 else None


async def list_models(
    endpoint: str,
    timeout: float = 10.0,
    *,
    client: httpx.AsyncClient | None = None,
    api_key: str | None = None,
) -> list[str]:
    """The model ids an endpoint serves (``GET {endpoint}/models``); :class:`LlmError`
    if it cannot be reached or does not answer as expected."""
    url = _url(endpoint, "/models")
    try:
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                client = await stack.enter_async_context(httpx.AsyncClient(trust_env=False))
            async with asyncio.timeout(timeout):
                resp = await client.get(
                    url, headers=_headers(api_key), timeout=_timeout(timeout, timeout)
                )
    except TimeoutError as exc:
        raise LlmError(f"{url}: no answer in {timeout:g}s") from exc
    except httpx.HTTPError as exc:
        raise LlmError(f"{url}: {type(exc).__name__}: {exc}") from exc
    if resp.status_code != 200:
        raise LlmError(f"{url}: HTTP {resp.status_code}: {_snippet(resp.content)}")
    try:
        data = resp.json()["data"]
        return [str(item["id"]) for item in data]
    except (ValueError, KeyError, TypeError) as exc:
        raise LlmError(f"{url}: not an OpenAI model list: {_snippet(resp.content)}") from exc
