"""``swarmctl doctor``'s decisions: facts in, findings out — what is wrong (or fine), and
what to do, one sentence each.

Sans-I/O: the shell (:mod:`swarmd.doctor`, :mod:`swarmctl.doctor_command`) gathers the
facts (interface decisions, mDNS records heard, the peers' answers to ``reach``, clock
readings) and each function here turns one concern into :class:`Finding`s. A ``fail``
makes ``swarmctl doctor`` exit 1; a ``warn`` is worth knowing but may be intended.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from protocol.doctor import Finding

from .interfaces import InterfaceDecision

SKEW_LIMIT_S = 1.0  # a peer's clock further off than this (beyond the RTT's doubt) fails
NO_PEERS_ADVICE = (
    "start swarmd on another machine of this LAN; if one runs and is still not found, "
    "multicast is blocked between you: join it with `swarmd --join HOST:PORT`"
)
FIREWALL_ADVICE = (
    "allow TCP port {port} in on this machine (e.g. `sudo ufw allow {port}/tcp` or "
    "`sudo firewall-cmd --add-port={port}/tcp`), or if {address} is the wrong address "
    "set `--bind` to the LAN address peers should dial"
)


def ok(check: str, detail: str) -> Finding:
    return Finding(check, "ok", detail)


def warn(check: str, detail: str, advice: str) -> Finding:
    return Finding(check, "warn", detail, advice)


def fail(check: str, detail: str, advice: str) -> Finding:
    return Finding(check, "fail", detail, advice)


def healthy(findings: Iterable[Finding]) -> bool:
    """Nothing failed: ``swarmctl doctor`` exits 0."""
    return all(f.level != "fail" for f in findings)


@dataclass(frozen=True)
class Peer:
    """A member as this node's gossip sees it."""

    node_id: str
    name: str
    address: str
    alive: bool


@dataclass(frozen=True)
class Record:
    """An mDNS record of a swarmd node heard on the LAN (any cluster)."""

    node_id: str
    name: str
    address: str
    fingerprint: str
    protocol_version: int


@dataclass(frozen=True)
class Reach:
    """A peer's answer to ``reach`` (None ``reachable``: it did not answer in time)."""

    peer: str  # its name
    address: str  # where it dialled
    reachable: bool | None
    error: str = ""


@dataclass(frozen=True)
class ClockSample:
    """One ``reach`` round trip: our clock at send and receipt, the peer's at its
    receipt and answer (unix seconds)."""

    peer: str
    sent: float
    received: float
    answered: float
    back: float

    @property
    def offset(self) -> float:
        """How far the peer's clock is ahead of ours (NTP's estimate)."""
        return ((self.received - self.sent) + (self.answered - self.back)) / 2

    @property
    def doubt(self) -> float:
        """Half the network round trip: the estimate's error bound."""
        return max(0.0, (self.back - self.sent) - (self.answered - self.received)) / 2


# ---------------------------------------------------------------- the daemon


def daemon_unreachable(why: str) -> Finding:
    """The first finding when swarmctl reaches no daemon (``why``: the client's words)."""
    return fail(
        "daemon",
        f"swarmd is not answering: {why}",
        "start it (`swarmd`, or `sudo systemctl start swarmd` for the service) and see "
        "its log (`journalctl -u swarmd`) if it will not stay up; the checks below ran "
        "without it",
    )


# ---------------------------------------------------------------- interfaces


def interfaces(decisions: list[InterfaceDecision], bind: str, wsl: bool = False) -> list[Finding]:
    """Which interfaces mDNS uses and why the others are skipped."""
    used = [d for d in decisions if d.used]
    skipped = [d for d in decisions if not d.used and d.interface]
    out: list[Finding] = []
    if not used:
        out.append(
            fail(
                "interfaces",
                f"no LAN interface is up for mDNS (bind {bind or '0.0.0.0'}), so it falls "
                "back to loopback and finds only nodes on this machine",
                "connect this machine to the LAN (or bring its interface up), or add "
                "`--join HOST:PORT` seeds",
            )
        )
    else:
        where = ", ".join(f"{d.interface} {d.address}".strip() for d in used)
        reason = used[0].reason if len(used) == 1 and not used[0].interface else ""
        out.append(ok("interfaces", f"mDNS on {where}" + (f" ({reason})" if reason else "")))
    for d in skipped:
        what = f"{d.interface} ({d.address})" if d.address else d.interface
        out.append(ok("interfaces", f"{what} {d.reason}"))
    if wsl:
        out.append(
            warn(
                "interfaces",
                "this is WSL 2: in its default NAT networking, multicast and inbound "
                "connections from the LAN do not reach it",
                "set `networkingMode=mirrored` in %UserProfile%\\.wslconfig (Windows 11), "
                "or run swarmd on Windows' side, or use `--join` seeds with a port proxy",
            )
        )
    return out


def is_wsl(osrelease: str) -> bool:
    """WSL's kernel names itself (``/proc/sys/kernel/osrelease``)."""
    lowered = osrelease.lower()
    return "microsoft" in lowered or "wsl" in lowered


# ---------------------------------------------------------------- multicast


def _host(address: str) -> str:
    host = address.rpartition(":")[0]
    return host.strip("[]")


def same_subnet(address: str, mdns_addresses: Iterable[str], prefix: int = 24) -> bool:
    """Whether ``address``'s host is in the /``prefix`` of one of our mDNS addresses
    (the /8 for loopback): a peer multicast should reach."""
    try:
        ip = ipaddress.ip_address(_host(address))
    except ValueError:
        return False
    for own in mdns_addresses:
        try:
            mine = ipaddress.ip_address(own)
        except ValueError:
            continue
        bits = 8 if mine.is_loopback else prefix
        if ip.version == mine.version and ip in ipaddress.ip_network(f"{own}/{bits}", False):
            return True
    return False


def multicast(
    mdns: str, peers: list[Peer], heard_ids: set[str], mdns_addresses: list[str]
) -> list[Finding]:
    """Did the peers' mDNS announcements reach this node? ``mdns``: "running", "off",
    or why it failed to start; ``heard_ids``: ids of this cluster's records heard."""
    if mdns == "off":
        return [
            warn(
                "multicast",
                "mDNS is off (--no-mdns): only --join seeds find peers",
                "fine where multicast cannot work; else start swarmd without --no-mdns",
            )
        ]
    if mdns != "running":
        return [
            fail(
                "multicast",
                f"mDNS could not start: {mdns}",
                "see whether something holds UDP port 5353 exclusively (`ss -ulpn sport = "
                ":5353`); until then, join peers with `--join HOST:PORT`",
            )
        ]
    alive = [p for p in peers if p.alive]
    heard = [p for p in alive if p.node_id in heard_ids]
    unheard = [p for p in alive if p.node_id not in heard_ids]
    near = [p for p in unheard if same_subnet(p.address, mdns_addresses)]
    out: list[Finding] = []
    where = ", ".join(mdns_addresses)
    if heard:
        names = ", ".join(sorted(p.name for p in heard))
        out.append(ok("multicast", f"mDNS works: heard {names} on {where}"))
    if near:
        names = ", ".join(f"{p.name} ({p.address})" for p in near)
        out.append(
            fail(
                "multicast",
                f"{names} on this subnet {'is' if len(near) == 1 else 'are'} alive (through "
                "seeds) but no mDNS announcement of theirs arrived here: multicast is "
                "filtered between you",
                "look for Wi-Fi client isolation or IGMP snooping without a querier on the "
                "switch or access point, or a firewall dropping UDP 5353 (`sudo ufw allow "
                "5353/udp`); meanwhile --join seeds keep the cluster together",
            )
        )
    far = [p for p in unheard if p not in near]
    if far:
        names = ", ".join(f"{p.name} ({p.address})" for p in far)
        out.append(ok("multicast", f"{names}: another subnet, reached through seeds"))
    if not alive and not heard_ids:
        out.append(
            warn(
                "multicast",
                f"no other node of this cluster answered mDNS on {where}",
                NO_PEERS_ADVICE,
            )
        )
    return out


def heard_not_alive(peers: list[Peer], records: list[Record], fingerprint: str) -> list[Finding]:
    """Peers of this cluster that announce themselves by mDNS but gossip never reached."""
    alive = {p.node_id for p in peers if p.alive}
    out: list[Finding] = []
    for r in records:
        if r.fingerprint == fingerprint and r.node_id not in alive:
            out.append(
                fail(
                    "peers",
                    f"{r.name} announces itself at {r.address} by mDNS, but this node "
                    "cannot talk to it there",
                    f"open TCP port {r.address.rpartition(':')[2]} on {r.name}, or if "
                    f"{r.address} is not its LAN address, start it with `--bind` set to it",
                )
            )
    return out


# ---------------------------------------------------------------- other clusters


def other_clusters(records: list[Record], fingerprint: str, version: int) -> list[Finding]:
    """swarmd nodes on the LAN that this node ignores: another cluster, another version."""
    foreign = [r for r in records if r.fingerprint != fingerprint]
    other_version = [
        r for r in records if r.fingerprint == fingerprint and r.protocol_version != version
    ]
    out: list[Finding] = []
    if foreign:
        names = ", ".join(f"{r.name} ({r.address}, cluster {r.fingerprint})" for r in foreign)
        out.append(
            warn(
                "other-cluster",
                f"{len(foreign)} node(s) of another cluster on the LAN, ignored here: {names}",
                "if one should be in this cluster, run `swarmctl join-token` here and start "
                "it with `swarmd --join-token TOKEN` and a fresh state dir (its own cluster "
                "secret made it a cluster of its own)",
            )
        )
    else:
        out.append(ok("other-cluster", "no node of another cluster heard on the LAN"))
    if other_version:
        names = ", ".join(f"{r.name} (protocol {r.protocol_version})" for r in other_version)
        out.append(
            fail(
                "version",
                f"{names} of this cluster speak{'s' if len(other_version) == 1 else ''} "
                f"another protocol version than this node's {version}, so they are ignored",
                "upgrade every node of the cluster to the same swarmd version",
            )
        )
    return out
