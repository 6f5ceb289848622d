"""``swarmctl doctor``'s decisions from the peers' answers to ``reach``: can they reach
this node's cluster port, do their clocks agree with ours, does one node id live at two
addresses. Sans-I/O, like :mod:`.diagnosis` (whose :class:`Finding` helpers these use).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from protocol.doctor import Finding

from .diagnosis import (
    FIREWALL_ADVICE,
    SKEW_LIMIT_S,
    ClockSample,
    Reach,
    Record,
    fail,
    ok,
    warn,
)


def reachability(address: str, answers: list[Reach]) -> list[Finding]:
    """Could each live peer open a TCP connection to where it knows this node?"""
    port = address.rpartition(":")[2]
    if not answers:
        return [
            warn(
                "reachability",
                f"no live peer to test whether {address} is reachable from another machine",
                "run `swarmctl doctor` again once a peer is up",
            )
        ]
    out: list[Finding] = []
    blocked = [a for a in answers if a.reachable is False]
    silent = [a for a in answers if a.reachable is None]
    fine = [a for a in answers if a.reachable]
    if fine:
        names = ", ".join(sorted(a.peer for a in fine))
        out.append(ok("reachability", f"{names} reached this node at {address}"))
    for a in blocked:
        where = a.address or "(no address known)"
        out.append(
            fail(
                "reachability",
                f"{a.peer} cannot open a connection to this node at {where}: {a.error}; "
                "work and gossip from it never arrive",
                FIREWALL_ADVICE.format(port=port, address=where),
            )
        )
    if silent:
        names = ", ".join(sorted(a.peer for a in silent))
        out.append(
            warn(
                "reachability",
                f"{names} did not answer the reachability test in time",
                "it may run an older swarmd (upgrade it) or be overloaded; try again",
            )
        )
    return out


def clock_skew(samples: list[ClockSample], limit_s: float = SKEW_LIMIT_S) -> list[Finding]:
    """Peers whose clock is more than ``limit_s`` off ours, beyond the round trip's doubt."""
    if not samples:
        return []
    off = [s for s in samples if abs(s.offset) - s.doubt > limit_s]
    if not off:
        worst = max(samples, key=lambda s: abs(s.offset))
        largest = f"largest skew {worst.offset:+.3f} s"
        return [ok("clock", f"peers' clocks agree with this node's ({largest})")]
    return [
        fail(
            "clock",
            f"{s.peer}'s clock is {abs(s.offset):.1f} s "
            f"{'ahead of' if s.offset > 0 else 'behind'} this node's",
            "turn on time sync on both machines (`sudo timedatectl set-ntp true`, or "
            "chrony/ntpd): deadlines, leases and logs compare times across nodes",
        )
        for s in off
    ]


def duplicate_ids(
    views: Iterable[tuple[str, str, int]],
    records: list[Record],
    fingerprint: str,
    conflicts_resolved: int = 0,
) -> list[Finding]:
    """One node id at two addresses. ``views``: (id, address, generation) as this node
    and each peer know them (a restart shows a new generation and is fine);
    ``records``: mDNS records (two live records of one id at two addresses are twins);
    ``conflicts_resolved``: identity conflicts this node already settled."""
    places: dict[str, set[str]] = defaultdict(set)
    by_gen: dict[tuple[str, int], set[str]] = defaultdict(set)
    for node_id, address, generation in views:
        if address:
            by_gen[(node_id, generation)].add(address)
    for (node_id, _gen), addresses in by_gen.items():
        if len(addresses) > 1:
            places[node_id] |= addresses
    announced: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.fingerprint == fingerprint:
            announced[r.node_id].add(r.address)
    for node_id, addresses in announced.items():
        if len(addresses) > 1:
            places[node_id] |= addresses
    out = [
        fail(
            "node-id",
            f"node id {node_id} is used at {', '.join(sorted(addresses))}",
            "a state dir was copied: stop one of them, delete its state dir's node_id "
            "(and node.key), and start it again so that it takes a new id",
        )
        for node_id, addresses in sorted(places.items())
    ]
    if not out:
        out.append(ok("node-id", "every node id lives at one address"))
    if conflicts_resolved:
        out.append(
            warn(
                "node-id",
                f"this node met another process using its node id {conflicts_resolved} "
                "time(s) and one of them took a new id",
                "never copy a state dir to make a new node: give the new machine a join "
                "token (`swarmctl join-token`) instead",
            )
        )
    return out
