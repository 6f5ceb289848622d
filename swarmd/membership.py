"""Membership in the asyncio shell: the gossip rounds, what they tell us, and leaving.

Drives :class:`swarmd.core.gossip.Gossip` (sans-I/O) through its public API only:
a timer -> ``tick`` -> messages out; a message in -> ``receive`` -> messages out;
then its events: a peer that died, left or restarted is handed to ``on_peer_gone``;
an identity conflict (a copied state dir) is resolved here — one of the two twins
keeps the id with a higher generation, the other takes a new id — and the gossip state
is rebuilt under the resulting identity (``on_new_identity`` tells the rest).
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol.messages import GossipMessage, Message, NodeRef, Syn, SynAck

from .core.crash import Confirmed
from .core.failure import Liveness
from .core.gossip import (
    Event,
    Gossip,
    GossipConfig,
    IdentityConflict,
    Member,
    MemberChanged,
    Send,
    keeps_identity,
)
from .identity import new_node_id, next_generation, write_node_id

WATCHDOG_FACTOR = 10  # a gossip tick this many intervals late is a stalled loop
HOUSEKEEPING_S = 5.0  # how often idle links to non-members are closed

_REACHABLE = (Liveness.ALIVE, Liveness.SUSPECT, Liveness.SLEEPING)

SendTo = Callable[[str, Message], bool]  # (address, message) -> queued?
Reply = Callable[[Message], bool]


def _ignore(*_args: Any) -> None:
    pass


class Membership:
    def __init__(
        self,
        *,
        node_id: str,
        generation: int,
        address: str,
        seeds: tuple[str, ...],
        state_dir: Path,
        config: GossipConfig,
        own_values: Callable[[], dict[str, Any]],
        send: SendTo,
        counters: Counter[str],
        log: logging.Logger,
        rng: random.Random | None = None,
        boot: int | None = None,
    ) -> None:
        self.address = address
        self.state_dir = state_dir
        self.config = config
        self.own_values = own_values
        self.send = send
        self.counters = counters
        self.log = log
        self.rng = rng or random.Random()
        self.boot = boot if boot is not None else secrets.randbits(48)
        self.generation = generation
        # Hooks, set by whoever wires the node: a peer is gone (dead, left, restarted);
        # this node took a new id or generation after an identity conflict.
        self.on_peer_gone: Callable[[str], None] = _ignore
        self.on_new_identity: Callable[[str, bool], None] = _ignore  # (id, renamed)
        self.last_tick = time.monotonic()
        self._known_generation: dict[str, int] = {}
        self._handled_conflicts: set[str] = set()
        self.seeds = seeds
        self.gossip = self._new_gossip(node_id)

    def _new_gossip(self, node_id: str) -> Gossip:
        gossip = Gossip(
            node_id=node_id,
            generation=self.generation,
            boot=self.boot,
            addr=self.address,
            now=time.monotonic(),
            config=self.config,
            seeds=self.seeds,
        )
        for key, value in self.own_values().items():
            gossip.set(key, value)
        return gossip

    # ------------------------------------------------------------ the view

    @property
    def node_id(self) -> str:
        return self.gossip.node_id

    @property
    def me(self) -> NodeRef:
        return self.gossip.me

    def set(self, key: str, value: Any) -> None:
        """Publish a key-value about this node (a no-op while unchanged)."""
        self.gossip.set(key, value)

    def add_contact(self, addr: str) -> None:
        if addr != self.address:
            self.gossip.add_contact(addr)

    def members(self) -> list[Member]:
        return self.gossip.members(time.monotonic())

    def alive_addresses(self) -> set[str]:
        """Addresses of the members now alive (this node too, until it leaves)."""
        return {
            a for m in self.members() if m.liveness is Liveness.ALIVE and (a := m.state.get("addr"))
        }

    def generation_of(self, node_id: str) -> int | None:
        """The member's generation as gossip knows it; None if unknown."""
        node = self.gossip.state.nodes.get(node_id)
        return None if node is None else node.generation

    def node_at(self, addr: str) -> str | None:
        """The member known to listen at ``addr`` (this node included), if any."""
        return self.gossip.node_at(addr)

    def address_of(self, node_id: str) -> str | None:
        """Where a live (or suspect, or sleeping) member listens; None if it is not one.
        A sleeping member still gets acknowledgements and cancels: it is awake while it
        prepares to sleep, and the rest waits in the link until it wakes."""
        node = self.gossip.state.nodes.get(node_id)
        if node is None or self.gossip.liveness(node_id) not in _REACHABLE:
            return None
        addr = node.get("addr")
        return addr if isinstance(addr, str) else None

    def healthy(self) -> bool:
        """The gossip loop ticked recently (systemd's watchdog and /healthz)."""
        return time.monotonic() - self.last_tick < self._stall_limit()

    def _stall_limit(self) -> float:
        return max(1.0, self.config.interval_s * WATCHDOG_FACTOR)

    # ------------------------------------------------------------ loops

    async def loop(
        self, before_round: Callable[[], None], keep_links: Callable[[set[str]], None]
    ) -> None:
        """Gossip rounds forever; every few seconds, links to non-members may close."""
        housekeeping = time.monotonic()
        while True:
            now = time.monotonic()
            self.last_tick = now
            before_round()
            self._send(self.gossip.tick(now, self.rng))
            self._handle_events()
            if now - housekeeping > HOUSEKEEPING_S:
                housekeeping = now
                keep_links({a for m in self.gossip.members(now) if (a := m.state.get("addr"))})
            await asyncio.sleep(self.config.interval_s * self.rng.uniform(0.9, 1.1))

    async def watchdog(self) -> None:
        limit = self._stall_limit()
        while True:
            await asyncio.sleep(limit / 2)
            late = time.monotonic() - self.last_tick
            if late > limit:
                self.counters["loop_stalls"] += 1
                self.log.warning("gossip loop stalled: last tick %.1f s ago", late)

    async def leave(self) -> None:
        """Tell every live peer we are leaving; wait (bounded) for them to hear it."""
        await self._announced(self.gossip.leave(time.monotonic()), 1.0)
        await asyncio.sleep(0.05)  # let the final Acks leave the socket queues

    async def announce(self, *, sleeping: bool, wait_s: float) -> None:
        """Tell every live peer (every known one, on waking) that this node sleeps or
        is awake again, now; wait up to ``wait_s`` for their answers (so our Acks,
        which carry the news, are on their way)."""
        now = time.monotonic()
        await self._announced(self.gossip.sleep(now) if sleeping else self.gossip.wake(now), wait_s)

    async def _announced(self, sends: list[Send], wait_s: float) -> None:
        self._send(sends)
        seqs = [s.message.seq for s in sends if isinstance(s.message, Syn)]
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and not all(self.gossip.answered(q) for q in seqs):
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------ messages

    def on_request(self, message: GossipMessage, reply: Reply) -> None:
        """A Syn or Ack that came in on our server socket."""
        self._send(self.gossip.receive(message, time.monotonic(), self.rng), reply=reply)
        self._handle_events()

    def on_answer(self, addr: str, message: SynAck) -> None:
        """A SynAck that came back on our link to ``addr``."""
        self._send(self.gossip.receive(message, time.monotonic(), self.rng), link=addr)
        self._handle_events()

    def _send(self, sends: list[Send], reply: Reply | None = None, link: str | None = None) -> None:
        for send in sends:
            if send.addr is not None:
                self.send(send.addr, send.message)
            elif reply is not None:
                reply(send.message)
            elif link is not None:
                self.send(link, send.message)

    def crashed(self, confirmed: Confirmed) -> None:
        """Our link to a member dropped and its port refused us (crash_watch.py)."""
        node_id, generation = confirmed.node_id, confirmed.generation
        if self.gossip.crashed(node_id, generation, time.monotonic()):
            self.log.warning(
                "peer %s at %s gen %d crashed: the link dropped and its port refused %d probes",
                node_id,
                confirmed.addr,
                generation,
                confirmed.refusals,
            )
        self._handle_events()

    # ------------------------------------------------------------ events

    def _handle_events(self) -> None:
        for event in self.gossip.drain_events():
            self._on_event(event)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, MemberChanged):
            self._on_member_changed(event)
        elif isinstance(event, IdentityConflict):
            self.on_identity_conflict(event)

    def _on_member_changed(self, event: MemberChanged) -> None:
        node = self.gossip.state.nodes.get(event.node_id)
        name = event.name or (node.get("name") if node else None)
        old = event.old.value if event.old else "new"
        new = event.new.value if event.new else "forgotten"
        # A sleeping peer handed its attempts back before it said so: any still out on
        # it (a lost hand-back) go elsewhere now, once; its later results are stale.
        gone = event.new in (Liveness.DEAD, Liveness.LEFT, Liveness.SLEEPING, None)
        known = self._known_generation.get(event.node_id)
        restarted = known is not None and event.generation > known
        self._known_generation[event.node_id] = event.generation
        if gone or restarted:
            self.on_peer_gone(event.node_id)
        level = logging.WARNING if event.new is Liveness.DEAD else logging.INFO
        self.log.log(
            level,
            "peer %s (%s) at %s gen %d: %s -> %s",
            name or "?",
            event.node_id,
            event.addr,
            event.generation,
            old,
            new,
        )

    def on_identity_conflict(self, event: IdentityConflict) -> None:
        """Another process uses our node id (gossip saw it, or mDNS at start-up)."""
        if event.other_addr == "?" or event.other_addr in self._handled_conflicts:
            return
        self._handled_conflicts.add(event.other_addr)
        self.counters["identity_conflicts"] += 1
        newcomer = event.other_addr == "(mDNS)"  # our name was taken at startup
        node_id = self.node_id
        if not newcomer and keeps_identity(self.address, event.other_addr):
            # Above the twin's generation: peers that merged its state drop it for ours.
            self.generation = next_generation(self.state_dir, event.other_generation)
            self.log.error(
                "IDENTITY CONFLICT: the node at %s also uses node id %s (was a state dir "
                "copied?). This node keeps the id with a new generation %d; the other "
                "takes a new id.",
                event.other_addr,
                node_id,
                self.generation,
            )
        else:
            node_id = new_node_id()
            write_node_id(self.state_dir, node_id)
            self.generation = next_generation(self.state_dir)
            self.log.error(
                "IDENTITY CONFLICT: the node at %s also uses node id %s (was a state dir "
                "copied?). This node takes the new id %s.",
                event.other_addr,
                self.node_id,
                node_id,
            )
        contacts = {m.state.get("addr") for m in self.members()}
        renamed = node_id != self.node_id
        self.on_new_identity(node_id, renamed)
        self.gossip = self._new_gossip(node_id)
        for addr in contacts:
            if addr:
                self.gossip.add_contact(addr)
