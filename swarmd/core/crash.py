"""A crashed peer, noticed from its TCP connection: the decision, without the I/O.

When a peer's process dies, the kernel closes its sockets at once, so our link to it
drops (ZeroMQ's ``EVENT_DISCONNECTED``) within milliseconds. That alone proves nothing:
a link also drops when the peer closed it, on a handshake error, or for a blip. So a
dropped link opens a *case* on the peer's address and asks for a probe of the peer's
port (a TCP connect, done by the shell):

* **refused** (the host answered with a reset, or the connection closed before the
  peer said a word: nothing listens there any more) — the process is gone. One
  refusal is not enough (``probes`` refusals in a row, ``probe_gap_s`` apart, so a
  port that is being rebound or a one-off reset does not kill a peer); then the case
  is **confirmed**: the peer's generation as it was when the link
  dropped is dead (:meth:`swarmd.core.gossip.Gossip.crashed`).
* **answered** (the peer speaks on its port: itself, or its restarted self), the
  link coming **back up** (ZeroMQ reconnected by itself), or a **silent** probe (no
  answer within the timeout: a partition, a frozen machine, packet loss) — the case is
  closed and nothing is declared: the accrual detector judges the peer as before. (A
  frozen process's port still accepts connections, in the kernel, but nobody speaks:
  silent.)

A case that is not settled within ``window_s`` is dropped, and an address whose case
ended without a verdict is not probed again for ``cooldown_s`` (a peer that keeps
refusing our handshake would otherwise be probed every reconnect).

Sans-I/O: times are passed in, probes to make are returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    REFUSED = "refused"  # refused, or reset before a word: nothing listens on the port
    ANSWERED = "answered"  # the peer spoke (its ZeroMQ greeting) on a new connection
    SILENT = "silent"  # no word within the timeout (a frozen process), or unreachable


@dataclass(frozen=True, slots=True)
class CrashConfig:
    enabled: bool = True
    probes: int = 2  # refused probes in a row that confirm a crash
    probe_gap_s: float = 0.1  # between two probes of one case
    probe_timeout_s: float = 0.25  # a connect not answered by then is SILENT
    window_s: float = 1.0  # a case not confirmed by then is dropped
    cooldown_s: float = 5.0  # no new case on an address whose case ended unconfirmed
    quarantine_s: float = 3.0  # relayed old beats do not revive a confirmed crash


@dataclass(frozen=True, slots=True)
class Probe:
    """Connect to ``addr`` at ``at`` (on the caller's clock) and report the outcome."""

    addr: str
    at: float


@dataclass(frozen=True, slots=True)
class Confirmed:
    """The process of ``node_id`` generation ``generation`` is gone."""

    node_id: str
    generation: int
    addr: str
    refusals: int


@dataclass(slots=True)
class _Case:
    node_id: str
    generation: int
    opened: float
    refusals: int = 0
    probing: bool = False  # a probe is out; its outcome is awaited


@dataclass
class CrashCases:
    """Open cases by address; feed it link events and probe outcomes."""

    config: CrashConfig = field(default_factory=CrashConfig)
    _cases: dict[str, _Case] = field(default_factory=dict)
    _quiet_until: dict[str, float] = field(default_factory=dict)

    def link_lost(
        self, addr: str, node_id: str | None, generation: int, now: float
    ) -> Probe | None:
        """Our link to ``addr`` dropped; the node gossip knows there (None: nobody
        known, or not alive). A probe to make now, or None."""
        if not self.config.enabled or node_id is None:
            return None
        if self._quiet_until.get(addr, 0.0) > now:
            return None
        case = self._cases.get(addr)
        if case is not None and case.node_id == node_id and case.generation == generation:
            return None  # already on it
        self._cases[addr] = _Case(node_id, generation, now, probing=True)
        return Probe(addr, now)

    def link_up(self, addr: str, now: float) -> None:
        """The link is connected again: whatever dropped it, the peer answers."""
        if self._cases.pop(addr, None) is not None:
            self._quiet_until[addr] = now + self.config.cooldown_s

    def outcome(self, addr: str, outcome: Outcome, now: float) -> Probe | Confirmed | None:
        """A probe of ``addr`` ended: the next probe, the verdict, or None (closed)."""
        case = self._cases.get(addr)
        if case is None or not case.probing:
            return None  # closed meanwhile (the link came back)
        case.probing = False
        if outcome is not Outcome.REFUSED or now - case.opened > self.config.window_s:
            self._close(addr, now)
            return None
        case.refusals += 1
        if case.refusals >= self.config.probes:
            del self._cases[addr]
            return Confirmed(case.node_id, case.generation, addr, case.refusals)
        case.probing = True
        return Probe(addr, now + self.config.probe_gap_s)

    def _close(self, addr: str, now: float) -> None:
        self._cases.pop(addr, None)
        self._quiet_until[addr] = now + self.config.cooldown_s

    def expire(self, now: float) -> None:
        """Forget old cool-downs and cases left open past their window."""
        window = self.config.window_s
        for addr in [a for a, c in self._cases.items() if now - c.opened > window]:
            self._close(addr, now)
        for addr in [a for a, t in self._quiet_until.items() if t <= now]:
            del self._quiet_until[addr]

    def open_cases(self) -> list[str]:
        return list(self._cases)


@dataclass
class Quarantine:
    """Generations confirmed crashed, for ``seconds``: heartbeats of theirs heard then
    were sent before the crash and relayed late, and must not revive them."""

    seconds: float
    _until: dict[str, tuple[int, float]] = field(default_factory=dict)

    def hold(self, node_id: str, generation: int, now: float) -> None:
        self._until[node_id] = (generation, now + self.seconds)

    def covers(self, node_id: str, generation: int, now: float) -> bool:
        held = self._until.get(node_id)
        if held is None:
            return False
        if held[1] <= now:
            del self._until[node_id]
            return False
        return held[0] == generation

    def forget(self, node_id: str) -> None:
        self._until.pop(node_id, None)
