"""Gateway requests: an OpenAI request body passed to this node's endpoint as it came,
the answer passed back as the endpoint gave it.

``POST {endpoint}{/chat/completions | /completions | /embeddings}`` with the client's
body, only ``model`` replaced by the profile's upstream model id. A streamed answer
(``"stream": true`` and an event stream back) is handed to ``relay`` while it arrives:
the bytes of whole server-sent events, each event's ``model`` set back to the name the
client asked for, one call per read from the endpoint (the worker sends each as a
``stream_chunk``). Otherwise the whole JSON body, ``model`` set back, is the result's
``output``. Either way the result's ``usage`` holds the tokens (the server's count, else
estimated as the llm executor does), ``seconds``, ``ttft_s`` (streams) and
``tokens_per_s``, so the coordinator measures this node like any llm subtask.

Failures are not retried here: a connect error, a timeout, HTTP 429 or 5xx, or a stream
that ends before ``[DONE]`` is a node failure (``app_failed=False``) that the coordinator
retries on the next-best node while nothing reached the client yet. Any other HTTP
error is the request's own (``app_failed=True``) and goes back to the client as it
came: ``usage.status`` the status, ``output`` the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from swarmd.core.gateway import API_PATHS, rewrite_model, text_chars
from swarmd.executors import ExecRequest, ExecResult
from swarmd.http_client import HttpError, HttpPool, HttpTimeout, Reply

Relay = Callable[[bytes], None]

CONNECT_TIMEOUT_S: Final = 10.0
READ_TIMEOUT_S: Final = 120.0  # between two reads: prompt processing of a big model is slow
DEFAULT_TIMEOUT_S: Final = 900.0  # the whole request, when its spec gives no timeout
MAX_BODY_BYTES: Final = 8 * 1024 * 1024  # a non-streamed answer (it travels in one result)
MAX_EVENT_BYTES: Final = 1024 * 1024  # one server-sent event
ERROR_SNIPPET: Final = 300

_pools: dict[int, HttpPool] = {}  # per event loop: connections are reused
_HEADERS: Final = {
    "Content-Type": "application/json",
    "Accept": "text/event-stream, application/json",
}


def _pool() -> HttpPool:
    loop = asyncio.get_running_loop()
    pool = _pools.get(id(loop))
    if pool is None or pool.closed:
        pool = HttpPool()
        _pools.clear()  # another loop's pool (a test's) is of no use here
        _pools[id(loop)] = pool
    return pool


@dataclass
class _Answer:
    """What came back so far."""

    started: float
    first_token_at: float | None = None
    chunks: int = 0  # events that carried content: ~ completion tokens
    usage: Mapping[str, Any] | None = None
    done: bool = False  # the stream's [DONE] arrived
    error: str | None = None  # an error event inside the stream
    pending: bytearray = field(default_factory=bytearray)


async def run(
    req: ExecRequest, relay: Relay | None = None, pool: HttpPool | None = None
) -> ExecResult:
    """One gateway request (on ``pool``: the worker's, whose connections are kept;
    else one per event loop); never raises (except cancellation, which closes the
    upstream connection: the endpoint sees the client go)."""
    started = time.monotonic()
    if req.api not in API_PATHS or req.request is None:
        return ExecResult.failure("gateway request without an api and a body", app_failed=True)
    if not req.endpoint or not req.model:
        return ExecResult.failure("gateway request without an endpoint", app_failed=False)
    body = dict(req.request)
    asked = str(body.get("model") or req.model)
    body["model"] = req.model
    stream = body.get("stream") is True and req.api != "embeddings"
    url = req.endpoint.rstrip("/") + API_PATHS[req.api]  # type: ignore[index]  # checked
    payload = json.dumps(body, ensure_ascii=False).encode()
    answer = _Answer(started)
    try:
        async with asyncio.timeout(req.timeout_s or DEFAULT_TIMEOUT_S):
            http = pool if pool is not None else _pool()
            post = http.post(
                url, payload, _HEADERS, connect_s=CONNECT_TIMEOUT_S, read_s=READ_TIMEOUT_S
            )
            async with post as resp:
                if resp.status >= 400:
                    return await _http_error(resp, url, started)
                events = "event-stream" in resp.headers.get("content-type", "")
                if stream and events:
                    return await _relay_stream(resp, req, asked, answer, relay)
                return await _whole_body(resp, req, asked, answer, url)
    except (TimeoutError, HttpTimeout):
        return ExecResult.failure(
            f"{url}: no answer in time", app_failed=False, seconds=_since(started)
        )
    except HttpError as exc:
        why = f"{type(exc).__name__} from {url}: {exc}".rstrip(": ")
        return ExecResult.failure(why, app_failed=False, seconds=_since(started))


def _since(started: float) -> float:
    return time.monotonic() - started


async def _http_error(resp: Reply, url: str, started: float) -> ExecResult:
    raw = bytearray()
    with contextlib.suppress(HttpError):
        async for piece in resp.chunks():
            raw += piece
            if len(raw) > MAX_BODY_BYTES:
                break
    text = bytes(raw[:MAX_BODY_BYTES]).decode("utf-8", errors="replace")
    status = resp.status
    node_failure = status == 429 or status >= 500
    snippet = " ".join(text[:ERROR_SNIPPET].split()) or "(empty body)"
    return ExecResult(
        exit_code=None,
        stdout="",
        stderr="",
        output=None if node_failure else text,
        usage={"status": status, "seconds": round(_since(started), 6)},
        artifacts={},
        error=f"HTTP {status} from {url}: {snippet}",
        app_failed=not node_failure,
        seconds=_since(started),
    )


async def _whole_body(
    resp: Reply, req: ExecRequest, asked: str, answer: _Answer, url: str
) -> ExecResult:
    raw = bytearray()
    async for piece in resp.chunks():
        raw += piece
        if len(raw) > MAX_BODY_BYTES:
            return ExecResult.failure(
                f"the answer from {url} is over {MAX_BODY_BYTES} bytes", app_failed=True
            )
    data = bytes(raw)
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        snippet = data[:ERROR_SNIPPET].decode("utf-8", errors="replace")
        return ExecResult.failure(f"the answer from {url} is not JSON: {snippet}", app_failed=False)
    if isinstance(doc, dict) and isinstance(doc.get("usage"), dict):
        answer.usage = doc["usage"]
    return _result(req, answer, _as_asked(doc, data, asked), streamed=False)


def _as_asked(doc: Any, raw: bytes, asked: str) -> str:
    """The answer with ``model`` set back to the name the client asked for: as it came
    when it says that name already (or no model at all), else written out again."""
    if not isinstance(doc, dict) or doc.get("model", asked) == asked:
        with contextlib.suppress(UnicodeDecodeError):
            return raw.decode()
    return json.dumps(rewrite_model(doc, asked), ensure_ascii=False)


async def _relay_stream(
    resp: Reply, req: ExecRequest, asked: str, answer: _Answer, relay: Relay | None
) -> ExecResult:
    buf = bytearray()
    async for piece in resp.chunks():
        buf += piece
        while (end := _event_end(buf)) is not None:
            event = bytes(buf[: end[0]])
            del buf[: end[1]]
            _take_event(event, asked, answer)
        if len(buf) > MAX_EVENT_BYTES:
            return ExecResult.failure("an event of the stream is over 1 MiB", app_failed=False)
        if answer.pending and relay is not None:
            relay(bytes(answer.pending))
        answer.pending.clear()
        if answer.done:
            resp.end_if_buffered()  # keeps the connection when the stream's end came too
            break
    if answer.error is not None:
        result = _result(req, answer, None, streamed=True)
        return _failed(result, f"the endpoint reported an error: {answer.error}", app_failed=True)
    if not answer.done:
        result = _result(req, answer, None, streamed=True)
        return _failed(result, "the event stream ended before [DONE]", app_failed=False)
    return _result(req, answer, None, streamed=True)


def _event_end(buf: bytearray) -> tuple[int, int] | None:
    """Where the first whole event of ``buf`` ends, and where the next one starts."""
    candidates = [(i, i + len(sep)) for sep in (b"\n\n", b"\r\n\r\n") if (i := buf.find(sep)) >= 0]
    return min(candidates) if candidates else None


def _take_event(event: bytes, asked: str, answer: _Answer) -> None:
    """One server-sent event: its data with ``model`` set back, for the client."""
    lines = event.decode("utf-8", errors="replace").splitlines()
    data = "\n".join(line[5:].removeprefix(" ") for line in lines if line.startswith("data:"))
    if not data:
        return  # a comment or keep-alive: nothing for the client
    if data.strip() == "[DONE]":
        answer.done = True  # the coordinator ends the client's stream itself
        return
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError):
        answer.pending += b"data: " + data.encode() + b"\n\n"
        return
    if isinstance(chunk, dict):
        if "error" in chunk:
            answer.error = _error_text(chunk["error"])
        if isinstance(chunk.get("usage"), dict):
            answer.usage = chunk["usage"]
        if _has_content(chunk):
            answer.chunks += 1
            if answer.first_token_at is None:
                answer.first_token_at = time.monotonic()
    if "\n" not in data and (not isinstance(chunk, dict) or chunk.get("model", asked) == asked):
        text = data  # as it came (one line)
    else:
        text = json.dumps(rewrite_model(chunk, asked), ensure_ascii=False)
    answer.pending += b"data: " + text.encode() + b"\n\n"


def _has_content(chunk: Mapping[str, Any]) -> bool:
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(
            delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content")
        )
    return bool(choice.get("text"))


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or json.dumps(error))[:ERROR_SNIPPET]
    return str(error)[:ERROR_SNIPPET]


def _result(req: ExecRequest, answer: _Answer, output: str | None, *, streamed: bool) -> ExecResult:
    now = time.monotonic()
    seconds = now - answer.started
    ttft = None if answer.first_token_at is None else answer.first_token_at - answer.started
    server = answer.usage or {}
    estimated = not all(
        isinstance(server.get(k), int) for k in ("prompt_tokens", "completion_tokens")
    )
    if estimated and req.api == "embeddings" and isinstance(server.get("prompt_tokens"), int):
        estimated = False
    if estimated:
        prompt_tokens = _prompt_chars(req.request or {}) // 4
        completion_tokens = answer.chunks if streamed else 0
    else:
        prompt_tokens = int(server["prompt_tokens"])
        completion_tokens = int(server.get("completion_tokens") or 0)
    decode_s = seconds - ttft if ttft is not None and seconds - ttft > 1e-3 else seconds
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "seconds": round(seconds, 6),
        "ttft_s": None if ttft is None else round(ttft, 6),
        "tokens_per_s": round(completion_tokens / decode_s, 3) if decode_s > 0 else 0.0,
        "estimated": estimated,
        "model": req.model,
        "status": 200,
    }
    return ExecResult(
        exit_code=None,
        stdout="",
        stderr="",
        output=output,
        usage=usage,
        artifacts={},
        error=None,
        app_failed=False,
        seconds=seconds,
    )


def _failed(result: ExecResult, error: str, *, app_failed: bool) -> ExecResult:
    return ExecResult(
        exit_code=None,
        stdout="",
        stderr="",
        output=None,
        usage=result.usage,
        artifacts={},
        error=error,
        app_failed=app_failed,
        seconds=result.seconds,
    )


def _prompt_chars(request: Mapping[str, Any]) -> int:
    return sum(text_chars(request.get(k), 0) for k in ("messages", "prompt", "input"))
