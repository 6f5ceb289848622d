"""Request/reply to a swarmd node: the local unix socket, or a member's port with CURVE."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from protocol import ProtocolError, codec
from protocol.messages import ControlReply, ControlRequest, ErrorReply, WatchReply, WatchRequest
from swarmd.config import split_host_port
from swarmd.credentials import NODE_ID_RE, Credentials, NodeKeys
from swarmd.identity import ClusterKeys
from swarmd.member_file import Membership, load_cluster
from swarmd.transport import curve_client


def _credentials(state_dir: Path, cluster: ClusterKeys | Membership) -> Credentials:
    """swarmctl speaks as this machine's node: a revoked node's swarmctl is shut out
    with it. On an admin with a key pair of its own for the call, signed here; on a
    member with the node's key pair (``node.key``) and its certificate."""
    if isinstance(cluster, Membership):
        try:
            private = (state_dir / "node.key").read_text().strip().encode()
            keys = NodeKeys(zmq.curve_public(private), private)
        except (OSError, ValueError, zmq.ZMQError):
            raise Unreachable(f"cannot read this node's key ({state_dir / 'node.key'})") from None
        return cluster.credentials(keys)
    try:
        node_id = (state_dir / "node_id").read_text().strip()
    except OSError:
        node_id = ""
    if not NODE_ID_RE.match(node_id):
        node_id = "swarmctl"
    assert cluster.secret is not None
    return Credentials.issue(cluster.secret, node_id, NodeKeys.generate())


class Unreachable(Exception):
    """No daemon answered, or it refused us (exit code 3)."""


class RequestFailed(Exception):
    """The daemon answered with an error."""


class UsageError(Exception):
    """Bad arguments (exit code 2)."""


def _checked(message: ControlRequest) -> bytes:
    """The request's frame, if the daemon would take it; else the daemon's refusal now
    (a member's CURVE socket drops bad frames unanswered, like any node's)."""
    frame = codec.encode(message)
    limit = codec.MAX_FRAME_BYTES
    if len(frame) > limit:
        raise RequestFailed(
            f"bad_request: request too large: {len(frame)} bytes, over the limit of "
            f"{limit >> 20} MiB ({limit} bytes)"
        )
    try:
        codec.decode(frame)
    except ProtocolError as exc:
        raise RequestFailed(f"bad_request: bad request ({exc.reason}): {exc.detail}") from None
    return frame


class Client:
    def __init__(self, state_dir: Path, node: str | None = None, timeout_s: float = 3.0) -> None:
        self.state_dir = state_dir
        self.node = node
        self.timeout_s = timeout_s
        self.ctx = zmq.Context.instance()
        self.sock: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, codec.MAX_FRAME_BYTES)
        self.monitor: zmq.Socket[bytes] | None = None
        if node is None:
            path = state_dir / "control.sock"
            if not path.exists():
                raise Unreachable(
                    f"no swarmd control socket at {path} (is swarmd running with this "
                    "state dir? start it with `swarmd`, or pass --state-dir)"
                )
            self.where = str(path)
            self.sock.connect(f"ipc://{path}")
        else:
            try:
                host, port = split_host_port(node)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            try:
                cluster = load_cluster(state_dir)
            except ValueError as exc:
                raise Unreachable(str(exc)) from None
            if cluster is None:
                raise Unreachable(
                    f"no cluster secret or membership in {state_dir}: --node needs this "
                    "machine to be a member (run swarmd with --join-token first, or pass "
                    "--state-dir)"
                )
            keys = cluster.keys() if isinstance(cluster, Membership) else cluster
            curve_client(self.sock, keys, _credentials(state_dir, cluster))
            self.monitor = self.sock.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_FAILED_AUTH
                | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            )
            self.where = node
            self.sock.connect(f"tcp://{host}:{port}")

    def request(self, message: ControlRequest, timeout_s: float | None = None) -> ControlReply:
        """Send one request and wait (``timeout_s``, else the client's) for its reply."""
        self.sock.send(_checked(message))
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        if self.monitor is not None:
            poller.register(self.monitor, zmq.POLLIN)
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            events = dict(poller.poll(int(left * 1000) + 1))
            if self.monitor is not None and self.monitor in events:
                recv_monitor_message(self.monitor)
                raise Unreachable(
                    f"{self.where} refused the connection: this machine's cluster secret is "
                    "not the node's cluster"
                )
            if self.sock in events:
                try:
                    reply = codec.decode(self.sock.recv())
                except ProtocolError as exc:
                    raise RequestFailed(f"bad reply from {self.where}: {exc}") from None
                if isinstance(reply, ErrorReply):
                    raise RequestFailed(f"{reply.code}: {reply.message}")
                return reply  # type: ignore[return-value]
        hint = (
            "not running, not reachable, or this machine is not a member of its cluster"
            if self.node
            else "the daemon is not answering"
        )
        raise Unreachable(f"no answer from {self.where} within {wait_s:g} s ({hint})")

    def watch(
        self,
        task: str,
        seen: int = 0,
        timeout_s: float = 10.0,
        final_only: bool = False,
        with_result: bool = False,
    ) -> dict[str, Any]:
        """The task's summary once it changed after version ``seen`` (or is final, or
        ``timeout_s`` passed; only the end with ``final_only``; with its ``result`` once
        it ended with ``with_result``): the node pushes."""
        request = WatchRequest(
            task=task,
            seen=seen,
            timeout_s=timeout_s,
            final_only=final_only,
            with_result=with_result,
        )
        reply = self.request(request, timeout_s + self.timeout_s)
        if not isinstance(reply, WatchReply):
            raise RequestFailed(f"unexpected reply from {self.where}: {type(reply).__name__}")
        return reply.task

    def close(self) -> None:
        if self.monitor is not None:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
        self.sock.close(linger=0)
