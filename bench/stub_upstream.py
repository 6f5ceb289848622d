"""A fast stand-in for an OpenAI-compatible server, for measuring what a gateway in
front of it can push through (bench/gateway.py's requests/s): it answers every
``POST .../chat/completions`` at once with a fixed one-word completion (as JSON, or
as server-sent events when the body asks for ``"stream": true``), ``GET .../models``
with one model, over HTTP/1.1 keep-alive on loopback. It runs no model: what a
client measures through a gateway to it is the gateway's own cost.

    python bench/stub_upstream.py PORT [MODEL]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def completion(model: str, stream: bool) -> bytes:
    base = {"id": "chatcmpl-stub", "created": int(time.time()), "model": model}
    usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    if not stream:
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"},
                  "finish_reason": "stop"}  # fmt: skip
        body = base | {"object": "chat.completion", "choices": [choice], "usage": usage}
        return _response("200 OK", "application/json", json.dumps(body).encode())
    chunk = base | {"object": "chat.completion.chunk"}
    events = [
        chunk | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"},
                              "finish_reason": None}]},
        chunk | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        chunk | {"choices": [], "usage": usage},
    ]  # fmt: skip
    data = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return _response("200 OK", "text/event-stream", data + b"data: [DONE]\n\n")


def models(model: str) -> bytes:
    body = {"object": "list", "data": [{"id": model, "object": "model", "owned_by": "stub"}]}
    return _response("200 OK", "application/json", json.dumps(body).encode())


async def _serve_one(reader: asyncio.StreamReader, model: str) -> bytes | None:
    """One request off the connection; its response (None: the connection is over)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path = [*lines[0].split(" "), "", ""][:2]
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip() or 0)
    if length > MAX_BODY:
        return None
    body = await reader.readexactly(length) if length else b""
    if method == "GET" and path.endswith("/models"):
        return models(model)
    if method == "POST" and path.endswith("/chat/completions"):
        try:
            stream = bool(json.loads(body or b"{}").get("stream"))
        except ValueError:
            return _response("400 Bad Request", "application/json", b'{"error": "bad json"}')
        return completion(model, stream)
    return _response("404 Not Found", "application/json", b'{"error": "not found"}')


async def serve(port: int, model: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (answer := await _serve_one(reader, model)) is not None:
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, limit=MAX_HEAD, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "stub-model"))
