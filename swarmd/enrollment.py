"""The issuing side of ``swarmd2-`` join tokens: ``swarmctl join-token`` makes a ticket
(:meth:`Enrollment.issue`), and a new node that proves it gets the cluster secret
(:meth:`Enrollment.handle`, reached through the transport's enrollment gate, the one
way in for a client without a credential).

Counters: ``enroll_admitted``; ``enroll_refused_<code>`` (``unknown``, ``bad_proof``,
``expired``, ``used``, ``unavailable``); ``join_tokens_issued``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from protocol.messages import (
    ControlReply,
    EnrollReply,
    EnrollRequest,
    ErrorReply,
    JoinTokenReply,
    JoinTokenRequest,
)

from .core.failure import Liveness
from .core.gossip import Member
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
    ) -> None:
        self.book = TicketBook(state_dir / "tickets", log)
        self.keys = keys
        self.view = view  # (this node's address, the members it knows)
        self.counters = counters
        self.log = log

    def seeds(self) -> list[str]:
        return seed_addresses(*self.view())

    def issue(self, request: JoinTokenRequest) -> ControlReply:
        """A new ticket, and the token that names it."""
        try:
            ticket_id, secret, ticket = self.book.issue(request.ttl_s, request.single_use)
        except OSError as exc:
            return ErrorReply(code="unavailable", message=f"cannot store the ticket: {exc}")
        seeds = self.seeds()
        token = make_invitation(
            Invitation(seeds[0], tuple(seeds[1:]), self.keys.public_z85, ticket_id, secret)
        )
        self.counters["join_tokens_issued"] += 1
        self.log.info(
            "issued a join token (ticket %s…, %s, valid %.0f s)",
            ticket.id[:8],
            "single-use" if ticket.single_use else "multi-use",
            request.ttl_s,
        )
        return JoinTokenReply(token=token, expires=ticket.expires, single_use=ticket.single_use)

    def handle(self, request: EnrollRequest, public_z85: bytes, reply: Reply) -> None:
        """A new node's request (over CURVE, from key ``public_z85``): the secret, or
        why not. The use of a single-use ticket is stored before the answer goes."""
        started = time.monotonic()
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
            "enrolled node %s with ticket %s… (%s, used %d time(s)) in %.1f ms",
            request.node,
            ticket.id[:8],
            "single-use" if ticket.single_use else "multi-use",
            ticket.uses,
            (time.monotonic() - started) * 1000,
        )
        reply(EnrollReply(secret=self.keys.secret, seeds=self.seeds()[:8]))
