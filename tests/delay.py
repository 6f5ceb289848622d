"""A userspace TCP forwarder that delays traffic: netem's ``delay`` where netem is missing.

``tc netem`` is not available on the machines the tests run on (DESIGN.md), so delay
is added in userspace: a :class:`DelayForwarder` listens on one address and forwards each
connection to a target, holding every chunk it reads for ``delay_s`` before writing it
on, in each direction independently. Order is kept (one FIFO per direction) and
throughput is not limited by the delay (chunks in flight overlap), as with a long
link. The delay of a route can be changed at any time (:meth:`DelayForwarder.set_delay`);
it applies to the chunks read from then on.

How a daemon's traffic goes through it: swarmd dials peers at the address they
*advertise* (``--advertise HOST:PORT``). A node started with ``--port 7946
--advertise IP:7947`` next to a route ``IP:7947 -> IP:7946`` receives everything other
nodes send it (gossip, dispatches, results and the replies on those connections)
through the forwarder; with a delay of D every request/reply exchange with that node
takes 2·D more. (Addresses learnt by mDNS name the real port and bypass it; they are
only used now and then for unknown contacts.)

Sockets come from factories, so a route can listen and dial inside network namespaces
(``tests.netns.Lan.new_socket``) while the forwarder itself runs in this process, on one
asyncio loop in a background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

SocketFactory = Callable[[], socket.socket]
CHUNK = 65536
CONNECT_TIMEOUT_S = 5.0


@dataclass
class RouteStats:
    connections: int = 0
    refused: int = 0  # the target did not accept (it is down)
    bytes_in: int = 0  # client -> target
    bytes_out: int = 0  # target -> client


@dataclass
class _Route:
    name: str
    listen: socket.socket
    dial: SocketFactory
    target: tuple[str, int]
    delay_s: float = 0.0
    stats: RouteStats = field(default_factory=RouteStats)
    server: asyncio.Server | None = None
    conns: set[asyncio.Task[None]] = field(default_factory=set)


class DelayForwarder:
    """Named TCP routes ``listen -> target``, each with its own (changeable) delay."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._routes: dict[str, _Route] = {}
        self._thread = threading.Thread(target=self._run, name="delay-forwarder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: object, timeout: float = 10.0) -> object:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        return future.result(timeout)

    # ------------------------------------------------------------ routes

    def add(
        self,
        name: str,
        listen: tuple[str, int],
        target: tuple[str, int],
        *,
        socket_factory: SocketFactory | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """Listen on ``listen`` and forward to ``target``; sockets come from
        ``socket_factory`` (default: a plain IPv4 TCP socket in this namespace)."""
        factory = socket_factory or (lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock = factory()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(listen)
        sock.listen(128)
        sock.setblocking(False)
        route = _Route(name, sock, factory, target, delay_s)
        self._routes[name] = route
        self._call(self._start(route))

    async def _start(self, route: _Route) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            route.conns.add(task)
            try:
                await self._forward(route, reader, writer)
            finally:
                route.conns.discard(task)

        route.server = await asyncio.start_server(handle, sock=route.listen)

    def set_delay(self, name: str, delay_s: float) -> None:
        """Hold each chunk read on route ``name`` from now on for ``delay_s`` per direction."""
        self._routes[name].delay_s = max(0.0, delay_s)

    def delay(self, name: str) -> float:
        return self._routes[name].delay_s

    def stats(self, name: str) -> RouteStats:
        return self._routes[name].stats

    @property
    def routes(self) -> list[str]:
        return list(self._routes)

    def address(self, name: str) -> tuple[str, int]:
        host, port = self._routes[name].listen.getsockname()[:2]
        return str(host), int(port)

    # ------------------------------------------------------------ forwarding

    async def _forward(
        self, route: _Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        upstream: socket.socket | None = None
        try:
            upstream = await loop.run_in_executor(None, route.dial)
            upstream.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(upstream, route.target), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            route.stats.refused += 1
            if upstream is not None:
                upstream.close()
            writer.close()
            return
        route.stats.connections += 1
        for s in (upstream, writer.get_extra_info("socket")):
            with contextlib.suppress(OSError, AttributeError):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up_reader, up_writer = await asyncio.open_connection(sock=upstream)

        def count_in(n: int) -> None:
            route.stats.bytes_in += n

        def count_out(n: int) -> None:
            route.stats.bytes_out += n

        pumps = [
            asyncio.ensure_future(self._pump(route, reader, up_writer, count_in)),
            asyncio.ensure_future(self._pump(route, up_reader, writer, count_out)),
        ]
        try:
            # Either side closing (or failing) ends the connection, like a TCP proxy.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for p in pumps:
                p.cancel()
            for w in (writer, up_writer):
                w.close()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(
        self,
        route: _Route,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        count: Callable[[int], None],
    ) -> None:
        """Read chunks, and write each one ``delay_s`` after it was read, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                count(len(data))  # before it can arrive: a reader of the stats never lags
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        reading: asyncio.Future[bytes] | None = None
        try:
            while True:
                reading = asyncio.ensure_future(reader.read(CHUNK))
                done, _ = await asyncio.wait({reading, sender}, return_when=asyncio.FIRST_COMPLETED)
                if sender in done:  # the writing side failed: stop
                    reading.cancel()
                    sender.result()
                    return
                data = reading.result()
                queue.put_nowait((loop.time() + route.delay_s, data))
                if not data:  # EOF: deliver what is queued, then end
                    await sender
                    return
        except (ConnectionError, OSError):
            return
        finally:
            if reading is not None:
                reading.cancel()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await sender

    # ------------------------------------------------------------ shutdown

    async def _close(self) -> None:
        for route in self._routes.values():
            if route.server is not None:
                route.server.close()
            for task in list(route.conns):
                task.cancel()
            await asyncio.gather(*route.conns, return_exceptions=True)
            route.listen.close()

    def close(self) -> None:
        if not self._loop.is_running():
            return
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> DelayForwarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def measure_rtt(address: tuple[str, int], sock: socket.socket | None = None) -> float:
    """Seconds for one small request/reply through ``address`` to an echo server."""
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.settimeout(10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect(address)
        start = time.monotonic()
        s.sendall(b"ping")
        got = b""
        while len(got) < 4:
            chunk = s.recv(4 - len(got))
            if not chunk:
                raise ConnectionError("closed before the echo came back")
            got += chunk
        return time.monotonic() - start
