"""The gateway's upstream HTTP client (swarmd/http_client.py) against a real server on
loopback whose answers each test scripts: framing, keep-alive, a kept connection the
server closed, deadlines, a caller that leaves early."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from swarmd.http_client import HttpError, HttpPool, HttpTimeout

Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]  # False: close after


@dataclass
class Server:
    """Answers each request with ``answer``; counts connections and requests."""

    answer: Answer
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                if not await self.answer(body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            writer.close()


@contextlib.asynccontextmanager
async def serving(answer: Answer) -> AsyncIterator[tuple[Server, str]]:
    server = Server(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        yield server, f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        listener.close()
        for writer in server.writers:
            writer.close()


def fixed(body: bytes, extra: bytes = b"") -> Answer:
    async def answer(_: bytes, writer: asyncio.StreamWriter) -> bool:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        writer.write(head + b"Content-Length: %d\r\n" % len(body) + extra + b"\r\n" + body)
        await writer.drain()
        return b"close" not in extra.lower()

    return answer


async def post(pool: HttpPool, url: str, body: bytes = b"{}", read_s: float = 5.0) -> bytes:
    async with pool.post(url, body, {"Content-Type": "application/json"}, connect_s=5,
                         read_s=read_s) as reply:  # fmt: skip
        assert reply.status == 200
        return b"".join([piece async for piece in reply.chunks()])


def test_a_body_is_sent_as_given_and_connections_are_kept() -> None:
    async def main() -> None:
        async with serving(fixed(b'{"ok": true}')) as (server, url):
            pool = HttpPool()
            for i in range(5):
                assert await post(pool, url, b'{"n": %d}' % i) == b'{"ok": true}'
            assert server.connections == 1  # one kept connection for all five
            assert server.requests[3].endswith(b'{"n": 3}')
            assert b"host: 127.0.0.1:" in server.requests[0].lower()
            await pool.aclose()

    asyncio.run(main())


def test_a_chunked_answer_arrives_piece_by_piece() -> None:
    async def main() -> None:
        go_on = asyncio.Event()

        async def answer(_: bytes, writer: asyncio.StreamWriter) -> bool:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            await writer.drain()
            await go_on.wait()  # the client must have the first piece before the rest
            writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
            return True

        async with serving(answer) as (_, url):
            pool = HttpPool()
            async with pool.post(url, b"{}", {}, connect_s=5, read_s=5) as reply:
                pieces = reply.chunks()
                assert await anext(pieces) == b"first"
                go_on.set()
                assert [p async for p in pieces] == [b"second"]
                assert reply.ended
            await pool.aclose()

    asyncio.run(main())


def test_a_kept_connection_the_server_closed_is_not_a_failure() -> None:
    """The server drops the idle connection: the next request goes on a new one."""

    async def main() -> None:
        async with serving(fixed(b"{}")) as (server, url):
            pool = HttpPool()
            await post(pool, url)
            for writer in server.writers:  # the server's idle timeout, say
                writer.close()
            await server.closed.wait()
            assert await post(pool, url) == b"{}"
            assert server.connections == 2
            await pool.aclose()

    asyncio.run(main())


def test_a_request_on_a_connection_reset_before_any_answer_is_sent_once_more() -> None:
    """The server reads the request on a kept connection and closes it without a byte
    (a keep-alive race): the request is sent again on a new connection, once."""

    async def main() -> None:
        seen = 0

        async def answer(body: bytes, writer: asyncio.StreamWriter) -> bool:
            nonlocal seen
            seen += 1
            if seen == 2:
                return False  # closes without answering
            return await fixed(b"{}")(body, writer)

        async with serving(answer) as (server, url):
            pool = HttpPool()
            await post(pool, url)
            assert await post(pool, url) == b"{}"
            assert (seen, server.connections) == (3, 2)
            await pool.aclose()

    asyncio.run(main())


def test_a_new_connection_closed_without_an_answer_fails_and_is_not_resent() -> None:
    async def main() -> None:
        async def answer(_: bytes, writer: asyncio.StreamWriter) -> bool:
            return False

        async with serving(answer) as (server, url):
            with pytest.raises(HttpError, match=r"closed|unexpectedly"):
                await post(HttpPool(), url)
            assert len(server.requests) == 1

    asyncio.run(main())


def test_connection_close_is_obeyed() -> None:
    async def main() -> None:
        async with serving(fixed(b"{}", b"Connection: close\r\n")) as (server, url):
            pool = HttpPool()
            await post(pool, url)
            await post(pool, url)
            assert server.connections == 2
            await pool.aclose()

    asyncio.run(main())


def test_silence_past_the_read_deadline_is_a_timeout_and_is_never_resent() -> None:
    async def main() -> None:
        async def answer(_: bytes, writer: asyncio.StreamWriter) -> bool:
            await asyncio.sleep(30)  # never answers in the test's time
            return True

        async with serving(answer) as (server, url):
            with pytest.raises(HttpTimeout):
                await post(HttpPool(), url, read_s=0.2)
            assert len(server.requests) == 1

    asyncio.run(main())


def test_no_server_is_a_clear_error() -> None:
    async def main() -> None:
        async with serving(fixed(b"{}")) as (_, url):
            pass  # the port is free again
        with pytest.raises(HttpError, match="cannot connect"):
            await post(HttpPool(), url)
        with pytest.raises(HttpError, match="not an http"):
            await post(HttpPool(), "ftp://x/y")

    asyncio.run(main())


def test_a_caller_that_leaves_early_closes_the_connection() -> None:
    """Cancelled mid-answer: the server sees its client go (the endpoint stops work)."""

    async def main() -> None:
        async def answer(_: bytes, writer: asyncio.StreamWriter) -> bool:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n")
            await writer.drain()
            return True  # the rest never comes

        async with serving(answer) as (server, url):
            pool = HttpPool()

            async def read_all() -> None:
                await post(pool, url)

            reading = asyncio.ensure_future(read_all())
            await asyncio.wait_for(_until(lambda: len(server.requests) == 1), 5)
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
            await asyncio.wait_for(server.closed.wait(), 5)  # EOF reached the server
            assert all(not idle for idle in pool._idle.values())  # nothing kept
            await pool.aclose()

    asyncio.run(main())


def test_a_stream_whose_end_came_with_its_last_event_keeps_its_connection() -> None:
    async def main() -> None:
        body = b"data: [DONE]\n\n"
        async with serving(fixed(body)) as (server, url):
            pool = HttpPool()
            for _ in range(3):
                async with pool.post(url, b"{}", {}, connect_s=5, read_s=5) as reply:
                    async for piece in reply.chunks():
                        assert piece == body
                        assert reply.end_if_buffered()
                        break
            assert server.connections == 1
            await pool.aclose()

    asyncio.run(main())


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.01)


def test_an_answer_framed_by_the_close_and_an_interim_one_before_it() -> None:
    """HTTP/1.0 without a length: the body is what comes until the server closes (the
    connection is not kept); a 100 Continue before an answer is skipped."""

    async def main() -> None:
        async def answer(_: bytes, writer: asyncio.StreamWriter) -> bool:
            writer.write(b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\n\r\n{"a": 1}')
            await writer.drain()
            return False  # closes: the end of the body

        async with serving(answer) as (server, url):
            pool = HttpPool()
            assert await post(pool, url) == b'{"a": 1}'
            assert await post(pool, url) == b'{"a": 1}'
            assert server.connections == 2
            await pool.aclose()

    asyncio.run(main())
