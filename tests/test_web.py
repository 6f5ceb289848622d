"""swarmd.web: a starlette app on uvicorn in our event loop, with its limits, against
real sockets (bad requests, bodies, idle/half-open/slow clients, stop) and its helpers."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from swarmd import web
from swarmd.web import (
    Limits,
    WebServer,
    host_is_loopback,
    presented_token,
    token_matches,
    token_matches_any,
)

Check = Callable[[WebServer, dict[str, int]], Awaitable[None]]


def make_app(calls: dict[str, int], release: asyncio.Event) -> Starlette:
    async def echo(request: Request) -> Response:
        calls["echo"] = calls.get("echo", 0) + 1
        body = await request.body()
        return PlainTextResponse(f"{request.method} {len(body)}")

    async def block(request: Request) -> Response:
        calls["block"] = calls.get("block", 0) + 1
        await release.wait()
        return PlainTextResponse("released")

    async def flood(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            while True:  # never waits: only the server can end it
                calls["flood"] = calls.get("flood", 0) + 1
                yield b"x" * 65536

        return StreamingResponse(chunks())

    async def crash(request: Request) -> Response:
        raise RuntimeError("a bug in a handler")

    return Starlette(
        routes=[
            Route("/echo", echo, methods=["GET", "POST"]),
            Route("/block", block),
            Route("/flood", flood),
            Route("/crash", crash),
        ]
    )


def serve(check: Check, limits: Limits | None = None, **kwargs: Any) -> None:
    async def main() -> None:
        calls: dict[str, int] = {}
        release = asyncio.Event()
        server = WebServer(make_app(calls, release), "127.0.0.1", 0, limits, **kwargs)
        await server.start()
        try:
            await check(server, calls)
        finally:
            release.set()
            await asyncio.wait_for(server.stop(), 10)

    asyncio.run(main())


async def raw(port: int, data: bytes, eof: bool = True, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send ``data`` (then EOF); read to the server's close: (status, whole answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return (int(answer.split(b" ", 2)[1]) if answer else 0), answer


def get(path: str, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def test_serves_on_a_free_port_with_keep_alive_and_no_signal_handlers() -> None:
    async def main() -> None:
        handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        calls: dict[str, int] = {}
        server = WebServer(make_app(calls, asyncio.Event()), "127.0.0.1", 0)
        server.headers.append((b"x-test", b"yes"))
        await server.start()
        assert server.port > 0
        # uvicorn installed no signal handlers of its own
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            for _ in range(3):  # keep-alive: one connection, several requests
                answer = await client.post("/echo", content=b"hello")
                assert (answer.status_code, answer.text) == (200, "POST 5")
            assert answer.headers["x-test"] == "yes" and "server" not in answer.headers
        assert calls["echo"] == 3
        await server.stop()

    asyncio.run(main())


def test_a_taken_port_is_an_oserror_and_a_stopped_server_listens_no_more() -> None:
    async def main() -> None:
        first = WebServer(Starlette(), "127.0.0.1", 0)
        await first.start()
        port = first.port
        with pytest.raises(OSError):
            await WebServer(Starlette(), "127.0.0.1", port).start()
        await first.stop()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        await first.stop()  # twice is fine

    asyncio.run(main())


def test_bad_requests_never_reach_the_app(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cases = {
        b"garbage\r\n\r\n": 400,
        b"\x00\xff\xfe\r\n\r\n": 400,
        b"GET /echo HTTP/2.0\r\n\r\n": 505,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": 400,
        b"GET /echo HTTP/1.1\r\n\r\n": 400,  # no Host
        b"GET echo HTTP/1.1\r\nHost: x\r\n\r\n": 400,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n": 400,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n": 400,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n": 400,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n": 431,
        b"GET /echo HTTP/1.1\r\nHost: x\r\n" + b"X: 1\r\n" * 100 + b"\r\n": 431,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n": 501,
        b"GET /echo HTTP/1.1\r\nHost: lo": 400,  # cut short by EOF
    }

    async def check(server: WebServer, calls: dict[str, int]) -> None:
        for request, status in cases.items():
            got, answer = await raw(server.port, request)
            assert got == status, (request[:40], answer)
        assert calls == {}
        assert server.counters["web_bad_requests"] == len(cases)
        assert (await raw(server.port, get("/echo")))[0] == 200  # still serving

    serve(check, prefix="web")
    noise = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert noise == [], [r.getMessage() for r in noise]


def test_an_error_in_the_app_is_a_500_and_logged() -> None:
    async def check(server: WebServer, calls: dict[str, int]) -> None:
        assert (await raw(server.port, get("/crash")))[0] == 500
        assert (await raw(server.port, get("/echo")))[0] == 200

    serve(check)


def test_request_bodies_are_limited() -> None:
    async def check(server: WebServer, calls: dict[str, int]) -> None:
        post = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        assert await raw(server.port, post % (100, b"a" * 100)) == (200, _ok(b"POST 100"))
        # declared too large: refused before a byte of the body is read
        status, answer = await raw(server.port, post % (101, b""), eof=False)
        assert status == 413 and answer.endswith(b'{"error": "request body over 100 bytes"}')
        assert b"content-type: application/json" in answer
        # chunked: refused once past the limit
        chunked = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunked += b"40\r\n" + b"a" * 64 + b"\r\n" + b"40\r\n" + b"a" * 64 + b"\r\n0\r\n\r\n"
        assert (await raw(server.port, chunked))[0] == 413
        assert calls["echo"] == 1 and server.counters["http_bad_requests"] == 2

    def as_json(status: int, message: str) -> tuple[str, bytes]:
        return "application/json", json.dumps({"error": message}).encode()

    serve(check, Limits(max_body_bytes=100), error_body=as_json)


def _ok(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"\r\n%s" % (len(body), body)
    )


def test_idle_half_open_and_trickling_clients_are_closed_at_the_deadline() -> None:
    limits = Limits(request_timeout_s=0.5, keep_alive_s=60)

    async def check(server: WebServer, calls: dict[str, int]) -> None:
        started = time.monotonic()
        idle = await raw(server.port, b"", eof=False)  # sends nothing at all
        half = await raw(server.port, b"GET /echo HTTP/1.1\r\nHost:", eof=False)
        assert idle == (0, b"") and half[0] == 408
        # a byte every 0.1 s does not extend the deadline
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        closed_at = None
        for byte in b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
            writer.write(bytes([byte]))
            await asyncio.sleep(0.1)
            if reader.at_eof() or writer.is_closing():
                break
            with_answer = await _read_available(reader)
            if with_answer:
                closed_at = time.monotonic()
                assert with_answer.startswith(b"HTTP/1.1 408")
                break
        writer.close()
        assert closed_at is not None and closed_at - started < 5
        # an idle keep-alive connection after a response is on the same deadline
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/echo")).status_code == 200
        assert server.counters["http_timeouts"] >= 3 and calls["echo"] == 1

    serve(check, limits)


async def _read_available(reader: asyncio.StreamReader) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(65536), 0.01)
    except TimeoutError:
        return b""


def test_idle_connections_are_shed_for_a_new_request_and_a_busy_server_says_503() -> None:
    limits = Limits(max_connections=4, request_timeout_s=30)

    async def check(server: WebServer, calls: dict[str, int]) -> None:
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(8)]
        for i, (_, writer) in enumerate(idle):
            if i % 2:
                writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n")  # never finished
        await _until(lambda: server.counters["http_shed"] == 4)  # 8 idle, room for 4
        started = time.monotonic()
        assert (await raw(server.port, get("/echo")))[0] == 200
        assert time.monotonic() - started < 2
        assert server.counters["http_shed"] == 5
        for _, writer in idle:
            writer.close()
        # every slot answering (and not done): the next one hears 503 at once
        busy = []
        for _ in range(4):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(get("/block"))
            busy.append((reader, writer))
        await _until(lambda: calls.get("block", 0) == 4)
        assert (await raw(server.port, get("/echo")))[0] == 503
        assert server.counters["http_refused"] == 1

    serve(check, limits)


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_client_that_reads_nothing_is_dropped() -> None:
    limits = Limits(write_timeout_s=0.3)

    async def check(server: WebServer, calls: dict[str, int]) -> None:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(get("/flood"))
        await _until(lambda: server.counters["http_timeouts"] == 1, 10)
        await _settled(lambda: calls["flood"])  # the stream ended: no more chunks made
        sock.close()
        assert (await raw(server.port, get("/echo")))[0] == 200

    serve(check, limits)


async def _settled(value: Callable[[], int], timeout: float = 5.0) -> None:
    """Until ``value()`` stays the same for 0.1 s."""
    deadline = time.monotonic() + timeout
    last = value()
    while True:
        await asyncio.sleep(0.1)
        now = value()
        if now == last:
            return
        assert time.monotonic() < deadline, f"still changing: {now}"
        last = now


def test_stop_ends_a_response_that_would_never_finish() -> None:
    async def main() -> None:
        calls: dict[str, int] = {}
        server = WebServer(make_app(calls, asyncio.Event()), "127.0.0.1", 0, Limits(graceful_s=1))
        await server.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(get("/block"))
        await _until(lambda: calls.get("block", 0) == 1)
        started = time.monotonic()
        await asyncio.wait_for(server.stop(), 10)
        assert time.monotonic() - started < 5
        await asyncio.wait_for(reader.read(), 5)  # returns once the server closed it
        assert reader.at_eof()
        writer.close()

    asyncio.run(main())


def test_helpers() -> None:
    assert token_matches("s3cret", "s3cret") and not token_matches("s3cre", "s3cret")
    assert not token_matches("", "s3cret") and token_matches("ü", "ü")
    assert token_matches_any("b", ["a", "b", "c"]) and not token_matches_any("d", ["a", "b"])
    assert not token_matches_any("a", [])
    assert presented_token({"authorization": "Bearer abc "}, {"token": "q"}) == "abc"
    assert presented_token({"authorization": "bearer abc"}) == "abc"
    assert presented_token({"authorization": "Basic abc"}, {"token": "q"}) == "q"
    assert presented_token({}, None) == "" and presented_token({}, {"token": "q"}) == "q"
    for host in (None, "127.0.0.1", "localhost:8080", "[::1]:80", "LOCALHOST", "a.localhost"):
        assert host_is_loopback(host), host
    for host in ("evil.example", "evil.example:80", "10.0.0.1", "[2001:db8::1]:80", ""):
        assert not host_is_loopback(host), host


def test_a_response_leaves_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Head, body and end together: one segment, one wakeup of the client."""
    writes: list[bytes] = []
    corked_init = web._Corked.__init__

    class Spy:
        def __init__(self, raw: asyncio.Transport) -> None:
            self.raw = raw

        def write(self, data: bytes) -> None:
            writes.append(data)
            self.raw.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.raw, name)

    def spying(self: Any, raw: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        corked_init(self, Spy(raw), loop)  # type: ignore[arg-type]

    monkeypatch.setattr(web._Corked, "__init__", spying)

    async def check(server: WebServer, calls: dict[str, int]) -> None:
        status, answer = await raw(server.port, get("/echo"))
        assert status == 200 and answer.endswith(b"GET 0")
        assert writes == [answer]

    serve(check)


def test_held_writes_leave_by_the_next_turn_and_an_abort_drops_them() -> None:
    class Raw:
        def __init__(self) -> None:
            self.out: list[bytes] = []
            self.aborted = False

        def write(self, data: bytes) -> None:
            self.out.append(data)

        def abort(self) -> None:
            self.aborted = True

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sent = Raw()
        corked = web._Corked(sent, loop)  # type: ignore[arg-type]
        corked.cork()
        corked.write(b"head")
        assert sent.out == []
        await asyncio.sleep(0)  # no body came in this turn: the head goes anyway
        assert sent.out == [b"head"]
        corked.cork()
        corked.write(b"more")
        corked.abort()
        await asyncio.sleep(0)
        assert sent.out == [b"head"] and sent.aborted

    asyncio.run(main())
