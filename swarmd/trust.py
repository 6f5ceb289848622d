"""Who may say what: every message from a peer is checked against the node id its
transport proved (:mod:`swarmd.credentials`) and against the revocation list.

- A message that names its sender (gossip's ``sender``, a dispatch's ``coordinator``, a
  progress or result's ``node``) must name the node that sent it, else it is dropped
  and counted (``dropped_forged_sender``).
- Nothing from a revoked node is taken (``dropped_revoked``); once a node learns of a
  revocation its transport refuses that node's keys at the handshake too.
- The revocation list travels as this node's gossiped key ``revoked``: each round the
  lists of the other members are merged (only entries with a valid MAC) and the union
  published, so a revocation made on one node reaches every node in a few rounds.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from protocol.messages import (
    Ack,
    AnyMessage,
    AttemptResult,
    Bundle,
    Dispatch,
    Progress,
    StreamChunk,
    Syn,
    SynAck,
)

from .core.gossip import Member
from .credentials import RevocationList


def claimed_sender(message: AnyMessage) -> str | None:
    """The node id ``message`` says sent it (None: it names none)."""
    if isinstance(message, Syn | SynAck | Ack):
        return message.sender.id
    if isinstance(message, Dispatch):
        return message.coordinator.id
    if isinstance(message, Progress | AttemptResult | StreamChunk):
        return message.node
    return None


class Trust:
    def __init__(
        self,
        revoked: RevocationList,
        counters: Counter[str],
        log: logging.Logger,
        on_revoked: Callable[[str], None],
        shut_out: Callable[[str], None],
    ) -> None:
        self.revoked = revoked
        self.counters = counters
        self.log = log
        self.on_revoked = on_revoked  # a node id newly learnt to be revoked
        self.shut_out = shut_out  # refuse a revoked node's keys (those seen so far)
        self.learnt_at: dict[str, float] = {}  # node id -> when this node learnt it

    def admit(self, message: AnyMessage, sender: str | None) -> bool:
        """Whether to handle ``message`` from the proven ``sender``."""
        if sender is None:
            self.counters["dropped_unauthenticated"] += 1
            return False
        if sender in self.revoked:
            self.counters["dropped_revoked"] += 1
            self.shut_out(sender)  # its keys: refused at the handshake from now on
            return False
        items = message.items if isinstance(message, Bundle) else [message]
        for item in items:
            claimed = claimed_sender(item)
            if claimed is not None and claimed != sender:
                self.counters["dropped_forged_sender"] += 1
                self.log.warning(
                    "dropped a %s from node %s that claims to be from %s",
                    type(item).__name__,
                    sender,
                    claimed,
                )
                return False
        return True

    def admit_answer(self, message: AnyMessage, addr_owner: str | None) -> bool:
        """An answer on our link to a peer (the server side proves only membership):
        refused if it names, or comes from the address of, a revoked node."""
        claimed = claimed_sender(message)
        if claimed in self.revoked or addr_owner in self.revoked:
            self.counters["dropped_revoked"] += 1
            return False
        return True

    def revoke(self, node_id: str) -> bool:
        added = self.revoked.revoke(node_id)
        if added:
            self._learnt([node_id])
        return added

    def sync(self, members: list[Member]) -> list[list[object]]:
        """Merge the members' gossiped lists; returns the union to publish."""
        for m in members:
            if not m.is_self and (items := m.state.get("revoked")):
                before = self.revoked.rejected
                self._learnt(self.revoked.merge(items))
                if self.revoked.rejected > before:
                    self.counters["revocations_rejected"] += self.revoked.rejected - before
        return self.revoked.wire()

    def _learnt(self, node_ids: list[str]) -> None:
        for node_id in node_ids:
            self.learnt_at[node_id] = time.time()
            self.counters["revoked_nodes"] = len(self.revoked.entries)
            self.log.warning("node %s is revoked: nothing from it is taken", node_id)
            self.shut_out(node_id)
            self.on_revoked(node_id)
