"""ZeroMQ transport (a :class:`~.base.Transport`): one CURVE ROUTER for everything that
comes in, one DEALER per peer.

Security (libzmq 4.3 facts, see DESIGN.md): a CURVE server with no ZAP handler accepts
any client, so the server socket sets ``ZAP_DOMAIN`` *and* ``ZAP_ENFORCE_DOMAIN=1`` and
the handler is registered under that same domain. The server key pair is the
cluster's (derived from the secret: only members can encrypt to it); each client uses
its node's own key pair and puts its credential in its routing id. ZAP refuses the keys
of revoked nodes; every message on the TCP socket is then attributed to the node id its
routing id proves for the client's CURVE public key (the ZAP User-Id), or dropped
(``dropped_unauthenticated``) unless it is a new node's ``enroll`` request
(:mod:`.enroll_gate`).

Robustness: every socket has ``MAXMSGSIZE`` (an oversized message disconnects its
sender), bounded queues and ``LINGER=0``. Every received frame is decoded by the
protocol codec; anything malformed is dropped and counted by reason in ``counters``.
On the owner-only control socket it is also answered with an ``ErrorReply``
(``bad_request``, saying what was wrong), so swarmctl fails at once instead of
waiting out its timeout; that socket reads up to ``CONTROL_MAX_BYTES`` so that a
request over ``MAX_FRAME_BYTES`` gets its answer too.
Handshake failures (garbage bytes, wrong keys) are counted from the socket monitor.
A link's drops and reconnects are told to ``link_events`` from a monitor of its own
(:mod:`.link_monitor`: a crashed peer's connection drops at once); the daemon opens
its transport with :func:`.zmq_listen.listening`.

I/O pattern: the asyncio socket is used only to *wait* (poll with a timeout, which
also covers pyzmq's historical lost-wakeup bugs); reading and writing go through a
synchronous shadow of the same socket with NOBLOCK, draining in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils.monitor import parse_monitor_message

from protocol import MAX_FRAME_BYTES, ProtocolError, codec
from protocol.messages import AnyMessage, ErrorReply, Message, WorkItem

from ..credentials import Credentials, Verifier
from ..identity import ClusterKeys
from .base import (
    EnrollHandler,
    LinkEvents,
    LinkHandler,
    ServerHandler,
    UndeliveredHandler,
)
from .bundler import Bundler
from .enroll_gate import EnrollGate
from .link_monitor import MONITOR_POLL_S, LinkMonitor, event_handler, open_monitor
from .readable import POLL_MS, _Every, _Readable

ZAP_DOMAIN = "swarmd"
LINK_IDLE_S = 60.0


_HANDSHAKE_EVENTS = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed_protocol",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake_failed_auth",
}


# The control socket reads requests up to this size so that one over MAX_FRAME_BYTES is
# answered with what the limit is (beyond it libzmq drops the connection, as elsewhere).
CONTROL_MAX_BYTES = 4 * MAX_FRAME_BYTES


def _bad_request(message: str) -> ErrorReply:
    return ErrorReply(code="bad_request", message=message[:4000])


def _refusal(exc: ProtocolError, size: int) -> str:
    """What was wrong with a control request, for the one who sent it."""
    if exc.reason == "oversized":
        limit = MAX_FRAME_BYTES
        return (
            f"request too large: {size} bytes, over the limit of {limit >> 20} MiB ({limit} bytes)"
        )
    return f"bad request ({exc.reason}): {exc.detail}"


def _common(sock: zmq.Socket[bytes]) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
    sock.setsockopt(zmq.HANDSHAKE_IVL, 5000)


def curve_client(sock: zmq.Socket[bytes], keys: ClusterKeys, credentials: Credentials) -> None:
    """A DEALER that speaks to a member as the node ``credentials`` names (before
    ``connect``): its own key pair, its credential in the routing id."""
    sock.curve_secretkey = credentials.keys.secret_z85
    sock.curve_publickey = credentials.keys.public_z85
    sock.curve_serverkey = keys.public_z85
    sock.setsockopt(zmq.ROUTING_ID, credentials.routing_id())


class _MemberCheck:
    """ZAP credentials provider: any key but a revoked node's (which node a key speaks
    for is checked per message, from the routing id)."""

    def __init__(self, denied: set[bytes], counters: Counter[str]) -> None:
        self._denied = denied
        self._counters = counters

    def callback(self, domain: str, key: bytes) -> bool:
        ok = domain == ZAP_DOMAIN and key not in self._denied
        if not ok:
            self._counters["zap_denied"] += 1
        return ok


@dataclass
class _Link:
    addr: str
    sock: zmq.asyncio.Socket
    sync: zmq.Socket[bytes]
    task: asyncio.Task[None] | None = None
    readable: _Readable = field(default_factory=_Readable)
    last_used: float = field(default_factory=time.monotonic)
    monitor: LinkMonitor | None = None


class ZmqTransport:
    def __init__(
        self,
        *,
        ctx: zmq.asyncio.Context,
        keys: ClusterKeys,
        on_server: ServerHandler,
        on_link: LinkHandler,
        log: logging.Logger,
        counters: Counter[str] | None = None,
        on_undelivered: UndeliveredHandler | None = None,
    ) -> None:
        self.ctx = ctx
        self.on_undelivered = on_undelivered
        self.keys = keys
        self.on_server = on_server
        self.on_link = on_link
        self.on_enroll: EnrollHandler | None = None
        # Set before the first link opens: links then report drops (link_monitor.py).
        self.link_events: LinkEvents | None = None
        self.log = log
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.gate = EnrollGate(self.counters, log)
        self._auth: AsyncioAuthenticator | None = None
        self.credentials: Credentials | None = None  # what our links present
        self.verifier = Verifier(keys.authority)
        self._denied: set[bytes] = set()  # public keys of revoked nodes
        self._servers: list[tuple[zmq.asyncio.Socket, zmq.Socket[bytes]]] = []
        self._links: dict[str, _Link] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._bundler = Bundler(self._send_to, self._undelivered, self.counters)
        self.endpoints: list[str] = []
        self.owns_context = False  # close() terminates ctx (set by listening())
        self._ipc_paths: list[str] = []  # removed on close()

    # ------------------------------------------------------------ setup

    def start_auth(self) -> None:
        auth = AsyncioAuthenticator(self.ctx, log=self.log.getChild("zap"))
        auth.start()
        auth.configure_curve_callback(
            domain=ZAP_DOMAIN, credentials_provider=_MemberCheck(self._denied, self.counters)
        )
        self._auth = auth

    def set_identity(self, credentials: Credentials) -> None:
        self.credentials = credentials
        for addr in list(self._links):
            self._close_link(addr)

    def shut_out(self, node_id: str) -> None:
        self._denied.update(self.verifier.keys_of.get(node_id, ()))

    def bind_tcp(self, host: str, port: int) -> str:
        """The cluster-facing socket: CURVE server, members only."""
        sock = self.ctx.socket(zmq.ROUTER)
        _common(sock)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.SNDHWM, 10000)
        sock.setsockopt(zmq.RCVHWM, 10000)
        sock.curve_server = True
        sock.curve_secretkey = self.keys.secret_z85
        sock.curve_publickey = self.keys.public_z85
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        monitor = sock.get_monitor_socket(sum(_HANDSHAKE_EVENTS))
        endpoint = f"tcp://{host}:{port}"
        sock.bind(endpoint)
        self._serve(sock, local=False)
        self._spawn(self._watch_monitor(monitor))
        self.endpoints.append(endpoint)
        return endpoint

    def bind_ipc(self, path: str) -> str:
        """The local control socket: a unix socket the caller makes owner-only."""
        sock = self.ctx.socket(zmq.ROUTER)
        _common(sock)
        sock.setsockopt(zmq.MAXMSGSIZE, CONTROL_MAX_BYTES)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        endpoint = f"ipc://{path}"
        sock.bind(endpoint)
        self._ipc_paths.append(path)
        self._serve(sock, local=True)
        self.endpoints.append(endpoint)
        return endpoint

    def _serve(self, sock: zmq.asyncio.Socket, local: bool) -> None:
        sync: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        self._servers.append((sock, sync))
        readable = _Readable()
        handle = self._server_frames(sync, local, readable)
        self._spawn(self._pump(sync, readable, handle, copy=False))

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A receive pump or monitor that stopped on an error: said, not left silent
        (a socket nobody reads would look like a node that does not answer)."""
        if not task.cancelled() and task.exception() is not None:
            self.counters["pump_crashed"] += 1
            self.log.error("a receive loop stopped", exc_info=task.exception())

    # ------------------------------------------------------------ receiving

    async def _pump(
        self,
        sync: zmq.Socket[bytes],
        readable: _Readable,
        handle: Callable[[list[Any]], None],
        copy: bool = True,
        every: float = POLL_MS / 1000,
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            readable.watch(loop, sync.getsockopt(zmq.FD))
        except (RuntimeError, OSError, zmq.ZMQError) as exc:  # the loop refused the FD
            self.counters["pump_fd_refused"] += 1
            self.log.warning("cannot watch a socket's FD (%s): polling it every 5 ms", exc)
            every = 0.005
        timer = _Every(loop, every, readable.kick)
        try:
            await self._receive(sync, readable, handle, copy)
        finally:
            timer.cancel()
            readable.release()

    async def _receive(
        self,
        sync: zmq.Socket[bytes],
        readable: _Readable,
        handle: Callable[[list[Any]], None],
        copy: bool,
    ) -> None:
        while True:
            try:
                readable.event.clear()
                if not sync.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    await readable.event.wait()
                    continue
                for _ in range(1000):  # a batch, then yield to the loop
                    try:
                        frames = sync.recv_multipart(zmq.NOBLOCK, copy=copy)
                    except zmq.Again:
                        break
                    handle(frames)
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError as exc:
                if exc.errno == zmq.ENOTSOCK:
                    return
                self.counters["socket_error"] += 1
                self.log.warning("socket error while receiving: %s", exc)
            except Exception:
                self.counters["handler_error"] += 1
                self.log.exception("error while handling a message (dropped)")

    def _decode(self, frame: bytes) -> AnyMessage | None:
        try:
            return codec.decode(frame)
        except ProtocolError as exc:
            self._count_drop(exc)
            return None

    def _count_drop(self, exc: ProtocolError) -> None:
        self.counters[f"dropped_{exc.reason}"] += 1
        self.log.debug("dropped a message: %s", exc)

    @staticmethod
    def _public_key(frame: zmq.Frame) -> bytes:
        """The CURVE public key (z85) that sent ``frame`` (ZAP's User-Id)."""
        try:
            return str(frame.get("User-Id")).encode()
        except zmq.ZMQError:
            return b""

    def _server_frames(
        self, sync: zmq.Socket[bytes], local: bool, readable: _Readable
    ) -> Callable[[list[zmq.Frame]], None]:
        def handle(frames: list[zmq.Frame]) -> None:
            route = frames[0].bytes

            def reply(answer: Message) -> bool:
                try:
                    sync.send_multipart([route, codec.encode(answer)], zmq.NOBLOCK)
                    return True
                except zmq.ZMQError as exc:  # peer gone (ROUTER_MANDATORY) or queue full
                    self.counters["reply_dropped"] += 1
                    self.log.debug("reply dropped: %s", exc)
                    return False
                finally:
                    readable.kick()

            if len(frames) != 2:
                self.counters["dropped_frames"] += 1
                if local:  # swarmctl is told at once rather than left to time out
                    reply(_bad_request(f"expected one frame, got {len(frames) - 1}"))
                return
            sender: str | None = None
            if not local:
                public = self._public_key(frames[1])
                sender = self.verifier.sender(route, public)
                if sender is None:  # no credential: an enroll request, or dropped
                    self.gate.take(self.on_enroll, frames[1].bytes, public, reply)
                    return
            payload = frames[1].bytes
            try:
                message = codec.decode(payload)
            except ProtocolError as exc:
                self._count_drop(exc)
                if local:  # members' sockets only count: no answers to gossip garbage
                    reply(_bad_request(_refusal(exc, len(payload))))
                return
            self.counters["received"] += 1
            self.on_server(message, reply, local, sender)

        return handle

    async def _watch_monitor(self, monitor: zmq.asyncio.Socket) -> None:
        try:
            while True:
                if not await monitor.poll(1000, zmq.POLLIN):
                    continue
                event = parse_monitor_message(await monitor.recv_multipart())
                reason = _HANDSHAKE_EVENTS.get(event["event"])
                if reason:
                    self.counters[reason] += 1
                    self.log.debug("%s from %s", reason, event.get("endpoint"))
        except (asyncio.CancelledError, zmq.ZMQError):
            pass
        finally:
            monitor.close(linger=0)

    # ------------------------------------------------------------ sending

    def send(self, addr: str, message: Message) -> bool:
        """Send to a peer's address over our link to it; drops (and counts) if full.

        Work messages are held until the end of this turn of the event loop, then all
        of a turn's for one peer go as one bundle (one frame, one wake-up of ZeroMQ's
        I/O thread and of the peer); what cannot go then is handed to
        ``on_undelivered``."""
        link = self._links.get(addr) or self._open_link(addr)
        link.last_used = time.monotonic()
        if isinstance(message, WorkItem):
            self._bundler.hold(addr, message)
            return True
        return self._send_frame(link, codec.encode(message))

    def _send_frame(self, link: _Link, frame: bytes) -> bool:
        try:
            link.sync.send(frame, zmq.NOBLOCK)
            self.counters["sent"] += 1
            return True
        except zmq.Again:
            self.counters["send_dropped"] += 1  # not connected yet or queue full
            return False
        finally:
            link.readable.kick()

    def _send_to(self, addr: str, frame: bytes) -> bool:
        return self._send_frame(self._links.get(addr) or self._open_link(addr), frame)

    def _undelivered(self, addr: str, items: list[WorkItem]) -> None:
        if self.on_undelivered is not None:
            self.on_undelivered(addr, items)

    def flush(self) -> None:
        """Send every link's held work messages (bundled)."""
        self._bundler.flush()

    def _open_link(self, addr: str) -> _Link:
        sock = self.ctx.socket(zmq.DEALER)
        _common(sock)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if self.credentials is None:
            raise RuntimeError("set_identity before sending: links present credentials")
        curve_client(sock, self.keys, self.credentials)
        monitor = self._monitor(sock, addr)
        sock.connect(f"tcp://{addr}")
        sync: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        link = _Link(addr, sock, sync, monitor=monitor)

        def handle(frames: list[bytes]) -> None:
            if len(frames) != 1:
                self.counters["dropped_frames"] += 1
                return
            message = self._decode(frames[0])
            if message is not None:
                self.counters["received"] += 1
                self.on_link(addr, message)

        link.task = asyncio.ensure_future(self._pump(sync, link.readable, handle))
        link.task.add_done_callback(self._ended)
        self._links[addr] = link
        return link

    def _monitor(self, sock: zmq.asyncio.Socket, addr: str) -> LinkMonitor | None:
        """Watch the link's drops and reconnects, if anybody listens (before connect)."""
        if self.link_events is None:
            return None
        monitor = open_monitor(sock)
        handle = event_handler(addr, self.link_events, self.counters, self.log)
        pump = self._pump(monitor.sync, monitor.readable, handle, every=MONITOR_POLL_S)
        monitor.task = asyncio.ensure_future(pump)
        monitor.task.add_done_callback(self._ended)
        return monitor

    def close_idle_links(self, keep: set[str]) -> None:
        now = time.monotonic()
        for addr, link in list(self._links.items()):
            if addr not in keep and now - link.last_used > LINK_IDLE_S:
                self._close_link(addr)

    def _close_link(self, addr: str) -> None:
        link = self._links.pop(addr, None)
        if link is None:
            return
        if link.monitor is not None:
            link.monitor.stop(link.sock)
        if link.task:
            link.task.cancel()
        link.readable.release()
        link.sock.close(linger=0)

    @property
    def links(self) -> list[str]:
        return list(self._links)

    # ------------------------------------------------------------ shutdown

    async def close(self) -> None:
        self.flush()
        for addr in list(self._links):
            self._close_link(addr)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 1.0)
        for sock, _ in self._servers:
            sock.close(linger=0)
        self._servers.clear()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        for path in self._ipc_paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._ipc_paths.clear()
        if self.owns_context:
            self.ctx.term()


Transport = ZmqTransport  # its name before transport/ was a package
