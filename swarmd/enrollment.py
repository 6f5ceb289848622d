"""The issuing side of ``swarmd2-`` join tokens: ``swarmctl join-token`` makes a ticket
(:meth:`Enrollment.issue`), and a new node that proves it gets a membership (the
listening key, the authority's public key and a certificate the authority signs for its
node id and key), or the cluster secret with an admin ticket (:meth:`Enrollment.handle`,
reached through the transport's enrollment gate, the one way in for a client without a
credential). Only an admin (a node holding the cluster secret) issues tickets.

Counters: ``enroll_admitted``; ``enroll_refused_<code>`` (``unknown``, ``bad_proof``,
``expired``, ``used``, ``unavailable``); ``join_tokens_issued``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from zmq.utils import z85

from protocol.messages import (
    ControlReply,
    EnrollReply,
    EnrollRequest,
    ErrorReply,
    JoinTokenReply,
    JoinTokenRequest,
)

from .authority import Authority
from .core.failure import Liveness
from .core.gossip import Member
from .credentials import credential
from .identity import ClusterKeys
from .join_tokens import Invitation, make_invitation
from .tickets import Refused, TicketBook

Reply = Callable[[EnrollReply], object]


def seed_addresses(address: str, members: list[Member]) -> list[str]:
    """This node's address, then up to 4 live members' (what a new node dials)."""
    alive = [
        str(m.state.get("addr"))
        for m in members
        if not m.is_self and m.liveness is Liveness.ALIVE and m.state.get("addr")
    ]
    return [address, *alive[:4]]


class Enrollment:
    def __init__(
        self,
        state_dir: Path,
        keys: ClusterKeys,
        view: Callable[[], tuple[str, list[Member]]],
        counters: Counter[str],
        log: logging.Logger,
        issuer: str = "",
    ) -> None:
        self.book = TicketBook(state_dir / "tickets", log)
        self.keys = keys
        self.issuer = issuer  # a member's: the admin that enrolled it
        self.view = view  # (this node's address, the members it knows)
        self.counters = counters
        self.log = log

    def seeds(self) -> list[str]:
        return seed_addresses(*self.view())

    def issue(self, request: JoinTokenRequest) -> ControlReply:
        """A new ticket, and the token that names it (on an admin only)."""
        if not self.keys.admin:
            where = f" (such as {self.issuer}, which enrolled this one)" if self.issuer else ""
            return ErrorReply(
                code="not_allowed",
                message="this node is a member without the cluster secret, so it cannot "
                f"admit machines: run `swarmctl join-token` on an admin node{where}, "
                "one whose state dir holds cluster.secret",
            )
        try:
            ticket_id, secret, ticket = self.book.issue(
                request.ttl_s, request.single_use, request.admin
            )
        except OSError as exc:
            return ErrorReply(code="unavailable", message=f"cannot store the ticket: {exc}")
        seeds = self.seeds()
        token = make_invitation(
            Invitation(seeds[0], tuple(seeds[1:]), self.keys.public_z85, ticket_id, secret)
        )
        self.counters["join_tokens_issued"] += 1
        self.log.info(
            "issued a%s join token (ticket %s…, %s, valid %.0f s)",
            "n admin" if ticket.admin else "",
            ticket.id[:8],
            "single-use" if ticket.single_use else "multi-use",
            request.ttl_s,
        )
        return JoinTokenReply(token=token, expires=ticket.expires, single_use=ticket.single_use)

    def handle(self, request: EnrollRequest, public_z85: bytes, reply: Reply) -> None:
        """A new node's request (over CURVE, from key ``public_z85``): its membership
        (or the secret), or why not. The use of a single-use ticket is stored before the
        answer goes."""
        started = time.monotonic()
        if self.keys.secret is None:
            self.counters["enroll_refused_unknown"] += 1
            message = "this node is not an admin: it issues no join tokens"
            reply(EnrollReply(refused="unknown", message=message))
            return
        try:
            ticket = self.book.redeem(request.ticket, request.proof, request.node, public_z85)
        except Refused as exc:
            self.counters[f"enroll_refused_{exc.code}"] += 1
            self.log.warning(
                "refused to enroll node %s (ticket %s…): %s",
                request.node,
                request.ticket.hex()[:8],
                exc,
            )
            reply(EnrollReply(refused=exc.code, message=str(exc)[:4000]))  # type: ignore[arg-type]
            return
        self.counters["enroll_admitted"] += 1
        self.log.info(
            "enrolled node %s%s with ticket %s… (%s, used %d time(s)) in %.1f ms",
            request.node,
            " as an admin" if ticket.admin else "",
            ticket.id[:8],
            "single-use" if ticket.single_use else "multi-use",
            ticket.uses,
            (time.monotonic() - started) * 1000,
        )
        reply(self._admitted(request.node, public_z85, ticket.admin))

    def _admitted(self, node_id: str, public_z85: bytes, admin: bool) -> EnrollReply:
        assert self.keys.secret is not None
        seeds = self.seeds()[:8]
        if admin:
            return EnrollReply(secret=self.keys.secret, seeds=seeds)
        certificate = credential(Authority.from_secret(self.keys.secret), node_id, public_z85)
        return EnrollReply(
            seeds=seeds,
            listening_key=z85.decode(self.keys.secret_z85),
            authority=self.keys.authority,
            certificate=certificate,
        )
