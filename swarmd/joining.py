"""``swarmd --join-token TOKEN`` at start: what makes the node a member (the cluster
secret, or a :class:`~.member_file.Membership`) and the seeds the token gives.

- ``swarmd1-`` (older versions' tokens): the token is the secret.
- ``swarmd2-``: if the state dir already holds the secret of the token's cluster, or a
  membership of it for this node id and key (a restart with the token still in
  ``/etc/swarmd/join.env``), only its seeds are taken. Otherwise the node enrolls
  (:func:`enroll`): it opens a CURVE connection to the issuing node (the server key is
  in the token; the client key is this node's own), sends ``enroll`` with a proof of
  the token's ticket and gets its membership (the cluster secret, with an admin token)
  back on that connection. Until ``timeout_s`` it retries an issuer that does not answer;
  a refusal (expired, used, unknown ticket) is final: :class:`JoinError` with exit code
  ``EXIT_TOKEN_REFUSED``, which systemd does not restart on.
"""

from __future__ import annotations

import asyncio
import logging
import time

import zmq
import zmq.asyncio
from zmq.utils import z85

from protocol import ProtocolError, codec
from protocol.messages import EnrollReply, EnrollRequest

from .authority import PUBLIC_BYTES, AuthorityKey
from .credentials import NodeKeys
from .identity import SECRET_BYTES, ClusterKeys
from .join_tokens import Invitation, SecretToken, enroll_proof, parse_token
from .member_file import Membership

Joined = bytes | Membership  # the cluster secret (an admin), or a membership

EXIT_TOKEN_REFUSED = 77  # the issuer refused the token: a person must get a new one
RESEND_S = 3.0  # ask again if no answer came within this (an issuer that was not up)
POLL_S = 0.25
CONNECT_POLL_S = 0.02  # while the connection is not up: how often to try sending
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class JoinError(Exception):
    """The token did not give a secret; the message says why and what to do."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _stored_for(
    invitation: Invitation, stored: Joined | None, node_id: str, keys: NodeKeys
) -> Joined | None:
    """What the state dir holds, if it already makes this node a member of the
    invitation's cluster."""
    if isinstance(stored, bytes):
        same = ClusterKeys.from_secret(stored).public_z85 == invitation.server_key
    else:
        same = (
            stored is not None
            and stored.keys().public_z85 == invitation.server_key
            and stored.certifies(node_id, keys.public_z85)
        )
    return stored if same else None


async def secret_from_token(
    token: str,
    stored: Joined | None,
    node_id: str,
    keys: NodeKeys,
    timeout_s: float,
    log: logging.Logger,
    stopping: asyncio.Event | None = None,
) -> tuple[Joined, list[str]]:
    """(the cluster secret or a membership, seeds) for ``token``; ``stored`` is what
    the state dir holds."""
    try:
        parsed = parse_token(token)
    except ValueError as exc:
        raise JoinError(f"--join-token: {exc}") from None
    joined: Joined
    if isinstance(parsed, SecretToken):
        joined, seeds = parsed.secret, list(parsed.seeds)
    elif (kept := _stored_for(parsed, stored, node_id, keys)) is not None:
        seeds = [parsed.issuer, *parsed.seeds]
        log.info(
            "already joined the cluster of the token (nothing to enroll); seeds %s",
            ", ".join(seeds),
        )
        return kept, seeds
    else:
        joined, seeds = await enroll(parsed, node_id, keys, timeout_s, log, stopping)
    if stored is not None and stored != joined:
        log.warning("the join token names another cluster (or membership): leaving the old one")
    kind = "as a member" if isinstance(joined, Membership) else "as an admin"
    log.info("joined the cluster of the token %s; seeds %s", kind, ", ".join(seeds))
    return joined, seeds


async def enroll(
    invitation: Invitation,
    node_id: str,
    keys: NodeKeys,
    timeout_s: float,
    log: logging.Logger,
    stopping: asyncio.Event | None = None,
) -> tuple[Joined, list[str]]:
    """Redeem ``invitation`` with its issuer: (the cluster secret or a membership,
    seeds)."""
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
    sock.setsockopt(zmq.IMMEDIATE, 1)  # no queueing while not connected: resent instead
    sock.setsockopt(zmq.RECONNECT_IVL, 200)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    sock.curve_secretkey = keys.secret_z85
    sock.curve_publickey = keys.public_z85
    sock.curve_serverkey = invitation.server_key
    monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED)
    sock.connect(f"tcp://{invitation.issuer}")
    proof = enroll_proof(invitation.ticket_secret, node_id, keys.public_z85)
    frame = codec.encode(EnrollRequest(ticket=invitation.ticket, node=node_id, proof=proof))
    log.info("enrolling with %s (the node that issued the join token)", invitation.issuer)
    try:
        reply = await _exchange(sock, monitor, frame, invitation, timeout_s, stopping)
        return _admitted(reply, invitation, node_id, keys)
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        ctx.term()


async def _exchange(
    sock: zmq.asyncio.Socket,
    monitor: zmq.asyncio.Socket,
    frame: bytes,
    invitation: Invitation,
    timeout_s: float,
    stopping: asyncio.Event | None,
) -> EnrollReply:
    deadline = time.monotonic() + timeout_s
    next_send, handshake_failures, last_refusal = 0.0, 0, ""
    while (left := deadline - time.monotonic()) > 0:
        if stopping is not None and stopping.is_set():
            raise JoinError("stopped before the node joined its cluster", exit_code=0)
        if time.monotonic() >= next_send:
            try:
                await sock.send(frame, zmq.NOBLOCK)
                next_send = time.monotonic() + RESEND_S
            except zmq.Again:  # not connected (yet): try again shortly
                next_send = time.monotonic() + CONNECT_POLL_S
        while await monitor.poll(0):
            await monitor.recv_multipart()
            handshake_failures += 1
        wait_s = min(POLL_S, left, max(0.0, next_send - time.monotonic()))
        if not await sock.poll(int(wait_s * 1000) + 1, zmq.POLLIN):
            continue
        try:
            reply = codec.decode(await sock.recv())
        except ProtocolError:
            continue
        if not isinstance(reply, EnrollReply):
            continue
        if reply.refused == "unavailable":
            last_refusal = reply.message  # the issuer's disk: it may come back
            continue
        return reply
    raise JoinError(_timeout_message(invitation, timeout_s, handshake_failures, last_refusal))


def _admitted(
    reply: EnrollReply, invitation: Invitation, node_id: str, keys: NodeKeys
) -> tuple[Joined, list[str]]:
    if reply.refused:
        raise JoinError(
            f"{invitation.issuer} refused the join token: {reply.message}",
            exit_code=EXIT_TOKEN_REFUSED,
        )
    seeds = [invitation.issuer, *invitation.seeds]
    seeds += [s for s in reply.seeds if s not in seeds]
    if reply.secret:
        if len(reply.secret) != SECRET_BYTES or (
            ClusterKeys.from_secret(reply.secret).public_z85 != invitation.server_key
        ):
            raise JoinError(f"{invitation.issuer} answered with a secret of another cluster")
        return reply.secret, seeds
    return _membership(reply, invitation, node_id, keys), seeds


def _membership(
    reply: EnrollReply, invitation: Invitation, node_id: str, keys: NodeKeys
) -> Membership:
    bad = f"{invitation.issuer} answered with a membership that is not valid"
    if len(reply.listening_key) != SECRET_BYTES or len(reply.authority) != PUBLIC_BYTES:
        raise JoinError(f"{bad} (wrong key lengths)")
    listening = z85.encode(reply.listening_key)
    if zmq.curve_public(listening) != invitation.server_key:
        raise JoinError(f"{bad} (the listening key of another cluster)")
    if not AuthorityKey(reply.authority).verify(
        reply.certificate, b"node", node_id.encode(), keys.public_z85
    ):
        raise JoinError(f"{bad} (its certificate is not for this node)")
    return Membership(node_id, listening, reply.authority, reply.certificate, invitation.issuer)


def _timeout_message(
    invitation: Invitation, timeout_s: float, handshake_failures: int, last_refusal: str
) -> str:
    where = f"could not enroll with {invitation.issuer} (the node that issued the join token)"
    if last_refusal:
        why = last_refusal
    elif handshake_failures:
        why = (
            "the CURVE handshake failed: the node listening there is not in the token's "
            "cluster (any more)"
        )
    else:
        why = (
            "no answer: is swarmd running there, and can this machine reach that address? "
            "(the token names the issuer's advertised address)"
        )
    return f"{where} within {timeout_s:g} s: {why}; start swarmd again to retry"
