"""What the gossip core takes and gives: its settings, the messages it wants sent,
membership events and the member view; and the cached check of gossiped values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from protocol.messages import GossipMessage, validate_state_value

from .crash import CrashConfig
from .failure import DetectorConfig, Liveness
from .membership import NodeState

# Gossiped values are checked on every receipt, and most are scalars that arrive again
# and again (addresses, names, status, counts): a scalar's verdict is remembered. The
# check is a pure function of (key, value), so this changes nothing but the time taken.
_SCALARS: frozenset[type] = frozenset({str, int, float, bool, type(None)})
_SCALAR_VERDICTS_MAX = 65536
_scalar_verdicts: dict[tuple[str, type, Any], bool] = {}


def _valid_value(key: str, value: Any) -> bool:
    """Whether ``validate_state_value(key, value)`` accepts the value."""
    kind = type(value)
    if kind in _SCALARS:
        cache_key = (key, kind, value)
        verdict = _scalar_verdicts.get(cache_key)
        if verdict is not None:
            return verdict
    try:
        validate_state_value(key, value)
        verdict = True
    except msgspec.ValidationError:
        verdict = False
    if kind in _SCALARS:
        if len(_scalar_verdicts) >= _SCALAR_VERDICTS_MAX:
            _scalar_verdicts.clear()
        _scalar_verdicts[cache_key] = verdict
    return verdict


@dataclass(frozen=True, slots=True)
class GossipConfig:
    interval_s: float = 0.2
    fanout: int = 3
    max_delta_kvs: int = 4096
    forget_after_s: float = 60.0
    contact_probability: float = 0.2  # chance per round to dial an address not yet a member
    rtt_alpha: float = 0.2
    watchers: int = 3  # ring successors each node beats to; they judge it
    full_digest_max: int = 16  # up to this many known nodes a digest lists them all
    digest_hot: int = 16  # lately changed nodes per digest
    digest_sample: int = 4  # further nodes per digest, in rotation
    news_max: int = 32  # liveness claims per message
    hot_rounds: float = 4.0  # news stays hot this many rounds + 2 log2(N)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    crash: CrashConfig = field(default_factory=CrashConfig)  # a dropped link, probed


@dataclass(frozen=True, slots=True)
class Send:
    """A message to send; ``addr`` None means reply on the channel it came in on."""

    addr: str | None
    message: GossipMessage


@dataclass(frozen=True, slots=True)
class MemberChanged:
    node_id: str
    addr: str | None
    generation: int
    old: Liveness | None  # None: first seen
    new: Liveness | None  # None: forgotten
    name: str | None = None


@dataclass(frozen=True, slots=True)
class IdentityConflict:
    """Another process claims this node's id: a copied state dir."""

    other_addr: str
    other_generation: int


Event = MemberChanged | IdentityConflict


@dataclass(frozen=True, slots=True)
class Member:
    state: NodeState
    liveness: Liveness
    is_self: bool
    rtt_s: float | None
    last_seen_s: float | None

    @property
    def node_id(self) -> str:
        return self.state.node_id


def keeps_identity(my_addr: str, other_addr: str) -> bool:
    """Which of two nodes sharing an id keeps it: both sides agree without talking."""
    return my_addr < other_addr
