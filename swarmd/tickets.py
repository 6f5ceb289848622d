"""Tickets behind ``swarmd2-`` join tokens, kept by the node that issued them.

A ticket is a random id and secret with an expiry and a single-use flag, stored in
``STATE_DIR/tickets`` (JSON, mode 0600) so it survives a restart of the issuer. A new
node redeems it (:meth:`TicketBook.redeem`) by proving the secret; a single-use ticket
is marked used, durably, before the cluster secret is sent. The same node (same id and
key) may redeem its ticket again: its first answer may have been lost on the way.

Expired and used tickets are kept for ``KEEP_AFTER_EXPIRY_S`` after they expire (so a
late user is told "expired", not "unknown"), then forgotten; at most ``MAX_TICKETS``
are kept (the oldest go first).
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocol.enroll import TICKET_ID_BYTES

from .identity import write_private
from .join_tokens import TICKET_SECRET_BYTES, enroll_proof

KEEP_AFTER_EXPIRY_S = 7 * 86400.0
MAX_TICKETS = 1000
MAX_USERS = 64  # node ids remembered per ticket (all of a single-use ticket's: one)


class Refused(Exception):
    """A ticket that does not admit: ``code`` (EnrollReply.refused) and a message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Ticket:
    id: str  # hex
    secret: str  # hex
    created: float
    expires: float
    single_use: bool
    uses: int = 0
    used_by: list[str] = field(default_factory=list)  # "NODE_ID PUBLIC_KEY_Z85"
    admin: bool = False  # the new node gets the cluster secret, not a membership

    @classmethod
    def from_json(cls, raw: Any) -> Ticket:
        ticket = cls(**raw)
        if len(bytes.fromhex(ticket.id)) != TICKET_ID_BYTES:
            raise ValueError("ticket id length")
        if len(bytes.fromhex(ticket.secret)) != TICKET_SECRET_BYTES:
            raise ValueError("ticket secret length")
        if not all(isinstance(u, str) for u in ticket.used_by):
            raise ValueError("used_by")
        if not isinstance(ticket.admin, bool):
            raise ValueError("admin")
        return ticket


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))


class TicketBook:
    def __init__(
        self, path: Path, log: logging.Logger, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.log = log
        self.clock = clock
        self.tickets: dict[str, Ticket] = {}
        self._load()

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text())
            tickets = [Ticket.from_json(item) for item in raw]
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            # Fail closed: the tokens of these tickets are refused ("unknown ticket").
            self.log.warning("%s is damaged (%s): its join tokens no longer work", self.path, exc)
            return
        self.tickets = {t.id: t for t in tickets}

    def _save(self) -> None:
        write_private(self.path, json.dumps([asdict(t) for t in self.tickets.values()]) + "\n")

    def _prune(self, now: float) -> None:
        for key in [k for k, t in self.tickets.items() if t.expires + KEEP_AFTER_EXPIRY_S < now]:
            del self.tickets[key]
        while len(self.tickets) >= MAX_TICKETS:
            del self.tickets[min(self.tickets, key=lambda k: self.tickets[k].created)]

    def issue(
        self, ttl_s: float, single_use: bool, admin: bool = False
    ) -> tuple[bytes, bytes, Ticket]:
        """A new ticket, stored: (id, secret, ticket). OSError if it cannot be stored."""
        now = self.clock()
        self._prune(now)
        ticket_id, secret = secrets.token_bytes(TICKET_ID_BYTES), secrets.token_bytes(32)
        ticket = Ticket(ticket_id.hex(), secret.hex(), now, now + ttl_s, single_use, admin=admin)
        self.tickets[ticket.id] = ticket
        try:
            self._save()
        except OSError:
            del self.tickets[ticket.id]
            raise
        return ticket_id, secret, ticket

    def redeem(self, ticket_id: bytes, proof: bytes, node_id: str, public_z85: bytes) -> Ticket:
        """Admit ``node_id`` (with CURVE key ``public_z85``) on the ticket it proves, and
        record the use durably; :class:`Refused` if the ticket does not admit it."""
        ticket = self.tickets.get(ticket_id.hex())
        if ticket is None:
            raise Refused(
                "unknown",
                "the issuing node knows no such ticket (the token was made elsewhere, or "
                "so long ago that it was forgotten): get a new one with `swarmctl join-token`",
            )
        expected = enroll_proof(bytes.fromhex(ticket.secret), node_id, public_z85)
        if not hmac.compare_digest(proof, expected):
            raise Refused("bad_proof", "the token's ticket secret is wrong (a damaged token?)")
        user = f"{node_id} {public_z85.decode('ascii', 'replace')}"
        if user in ticket.used_by:
            return ticket  # this node again: its answer was lost
        now = self.clock()
        if now >= ticket.expires:
            raise Refused(
                "expired",
                f"the join token expired at {_when(ticket.expires)}: get a new one with "
                "`swarmctl join-token` on a member",
            )
        if ticket.single_use and ticket.uses:
            raise Refused(
                "used",
                "the join token was single-use and has been used already (by node "
                f"{ticket.used_by[0].split()[0] if ticket.used_by else '?'}): get a new "
                "one with `swarmctl join-token`",
            )
        self._record(ticket, user)
        return ticket

    def _record(self, ticket: Ticket, user: str) -> None:
        before = (ticket.uses, list(ticket.used_by))
        ticket.uses += 1
        ticket.used_by = [*ticket.used_by, user][-MAX_USERS:]
        try:
            self._save()
        except OSError as exc:
            ticket.uses, ticket.used_by = before
            raise Refused(
                "unavailable", f"the issuing node cannot record the use of the ticket: {exc}"
            ) from None
