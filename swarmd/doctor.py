"""``swarmctl doctor`` in the daemon: gather the facts, ask the peers, hand the facts to
:mod:`swarmd.core.diagnosis` and :mod:`swarmd.core.diagnosis_peers`, answer findings.

- ``doctor`` (control socket, or a member over CURVE): this node's interface decisions
  (psutil now), its mDNS state and the records it heard (:attr:`Discovery.heard`), and a
  ``reach`` to every alive peer, all at once, answered within ``timeout_s``.
- ``reach`` (from a peer, proven sender only): open a TCP connection to the address this
  node's membership holds for the sender — never one the message names, so no member can
  make others dial elsewhere — and answer whether it connected, this node's clock
  before and after, and where it knows every member.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from pathlib import Path
from typing import Any

from protocol.doctor import (
    MAX_VIEW,
    DoctorReply,
    DoctorRequest,
    MemberAddress,
    ReachReply,
    ReachRequest,
)
from protocol.messages import PROTOCOL_VERSION, ErrorReply, Message

from .config import split_host_port
from .core import diagnosis, diagnosis_peers
from .core.diagnosis import ClockSample, Peer, Reach, Record
from .core.failure import Liveness
from .discovery import decide_interfaces
from .transport import Reply

DIAL_TIMEOUT_S = 2.0
OSRELEASE = Path("/proc/sys/kernel/osrelease")


def is_wsl() -> bool:
    try:
        return diagnosis.is_wsl(OSRELEASE.read_text())
    except OSError:
        return False


async def dial(address: str, timeout_s: float = DIAL_TIMEOUT_S) -> str:
    """ "" if a TCP connection to ``address`` opens within ``timeout_s``, else why not."""
    try:
        host, port = split_host_port(address)
    except ValueError as exc:
        return f"bad address: {exc}"
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), port), timeout_s
        )
    except TimeoutError:
        return f"timed out after {timeout_s:g} s (a firewall dropping the packets?)"
    except OSError as exc:  # asyncio's strerror names the call: say the errno's words
        return os.strerror(exc.errno) if exc.errno else str(exc)
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), timeout_s)
    return ""


class Doctor:
    def __init__(self, node: Any) -> None:
        self.node = node  # swarmd.node.Node
        self._waiting: dict[tuple[str, str], asyncio.Future[tuple[ReachReply, float]]] = {}

    # ------------------------------------------------------------ messages in

    def serve(self, message: Message, reply: Reply, local: bool, sender: str | None) -> None:
        if isinstance(message, ReachRequest):
            if sender is None:
                reply(ErrorReply(code="not_allowed", message="reach is node to node only"))
                return
            self.node.lifecycle.spawn(self._reach(message, reply, sender))
        elif isinstance(message, DoctorRequest):
            self.node.lifecycle.spawn(self._answer(message, reply))

    async def _answer(self, request: DoctorRequest, reply: Reply) -> None:
        try:
            reply(await self.examine(request.timeout_s))
        except Exception as exc:
            self.node.log.exception("doctor failed")
            reply(ErrorReply(code="internal", message=str(exc)[:4000]))

    async def _reach(self, request: ReachRequest, reply: Reply, sender: str) -> None:
        received = time.time()
        node = self.node.membership.gossip.state.nodes.get(sender)
        address = node.get("addr") if node is not None else None
        if not isinstance(address, str):
            address, error = "", "this node knows no address of yours"
        else:
            error = await dial(address)
        self.node.counters["doctor_reach_dials"] += 1
        reply(
            ReachReply(
                ref=request.ref,
                address=address,
                reachable=bool(address) and not error,
                error=error[:4000],
                received=received,
                answered=time.time(),
                view=self._view()[:MAX_VIEW],
            )
        )

    def on_reach_reply(self, owner: str | None, message: ReachReply) -> None:
        future = self._waiting.get((message.ref, owner or ""))
        if future is None or future.done():
            self.node.counters["doctor_replies_unexpected"] += 1
            return
        future.set_result((message, time.time()))

    # ------------------------------------------------------------ facts

    def _view(self) -> list[MemberAddress]:
        out = []
        for m in self.node.members():
            addr = m.state.get("addr")
            if isinstance(addr, str) and len(addr) <= 262:
                out.append(MemberAddress(m.node_id, m.state.generation, addr))
        return out

    def _mdns_state(self) -> str:
        if not self.node.config.mdns:
            return "off"
        if self.node.discovery is not None:
            return "running"
        return self.node.discovery_error or "it did not start (see the daemon's log)"

    def _records(self) -> list[Record]:
        discovery = self.node.discovery
        heard = [] if discovery is None else list(discovery.heard.values())
        return [
            Record(h.node_id, h.name, h.address, h.fingerprint, h.protocol_version) for h in heard
        ]

    def _peers(self) -> list[Peer]:
        return [
            Peer(
                m.node_id,
                str(m.state.get("name") or m.node_id),
                str(m.state.get("addr") or ""),
                m.liveness is Liveness.ALIVE,
            )
            for m in self.node.members()
            if not m.is_self
        ]

    async def _ask_peers(
        self, peers: list[Peer], timeout_s: float
    ) -> tuple[list[Reach], list[ClockSample], list[MemberAddress]]:
        ref = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        asked: list[tuple[Peer, float, asyncio.Future[tuple[ReachReply, float]]]] = []
        reaches: list[Reach] = []
        for p in peers:
            if not p.alive:
                continue
            sent = time.time()
            if not self.node._send_to(p.address, ReachRequest(ref=ref)):
                reaches.append(Reach(p.name, p.address, None))
                continue
            future: asyncio.Future[tuple[ReachReply, float]] = loop.create_future()
            self._waiting[(ref, p.node_id)] = future
            asked.append((p, sent, future))
        try:
            if asked:
                await asyncio.wait([f for _, _, f in asked], timeout=timeout_s)
        finally:
            for p, _, _ in asked:
                self._waiting.pop((ref, p.node_id), None)
        samples: list[ClockSample] = []
        views: list[MemberAddress] = []
        for p, sent, future in asked:
            if not future.done():
                reaches.append(Reach(p.name, p.address, None))
                continue
            answer, back = future.result()
            reaches.append(Reach(p.name, answer.address, answer.reachable, answer.error))
            samples.append(ClockSample(p.name, sent, answer.received, answer.answered, back))
            views.extend(answer.view)
        return reaches, samples, views

    async def examine(self, timeout_s: float) -> DoctorReply:
        node = self.node
        cfg = node.config
        fingerprint = node.identity.keys.fingerprint.strip().lower()
        peers = self._peers()
        records = self._records()
        reaches, samples, views = await self._ask_peers(peers, timeout_s)
        heard_ids = {r.node_id for r in records if r.fingerprint == fingerprint}
        own = [(v.id, v.addr, v.gen) for v in self._view()]
        findings = [
            *diagnosis.interfaces(decide_interfaces(cfg.bind), cfg.bind, is_wsl()),
            *diagnosis.multicast(self._mdns_state(), peers, heard_ids, node.interfaces),
            *diagnosis.heard_not_alive(peers, records, fingerprint),
            *diagnosis.other_clusters(records, fingerprint, PROTOCOL_VERSION),
            *diagnosis_peers.reachability(node.address, reaches),
            *diagnosis_peers.clock_skew(samples),
            *diagnosis_peers.duplicate_ids(
                [*own, *((v.id, v.addr, v.gen) for v in views)],
                records,
                fingerprint,
                node.counters.get("identity_conflicts", 0),
            ),
        ]
        return DoctorReply(node=node.node_id, name=node.name, findings=findings)
