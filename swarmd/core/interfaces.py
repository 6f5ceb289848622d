"""Which network interfaces mDNS runs on, and why each other one is left out.

Sans-I/O: the interface list (``psutil.net_if_addrs()`` / ``net_if_stats()`` shaped)
is passed in. :func:`swarmd.discovery.choose_interfaces` reads psutil and keeps the
addresses this module marks ``used``; ``swarmctl doctor`` shows every decision with
its reason, so a user whose LAN card was skipped, or whose docker bridge was not, can
see it in one line.

- a loopback bind (any ``127.x.y.z``, or ``localhost``) -> loopback only;
- a specific non-wildcard IP -> that IP only;
- a wildcard (``0.0.0.0``, ``::``, ``*`` or empty) -> the IPv4 addresses of real LAN
  interfaces that are up: loopback and link-local addresses are skipped, and so are
  virtual interfaces by name prefix (:data:`VIRTUAL_INTERFACE_PREFIXES`: containers,
  bridges, VPNs, tunnels). Interfaces without stats are treated as down. If nothing is
  left, mDNS falls back to loopback (:data:`FALLBACK`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Interface name prefixes that are virtual, each with what it usually is.
VIRTUAL_INTERFACE_KINDS: dict[str, str] = {
    "docker": "a Docker bridge",
    "br-": "a Docker network bridge",
    "veth": "a container's virtual ethernet",
    "virbr": "a libvirt bridge",
    "vmnet": "a VMware virtual network",
    "vboxnet": "a VirtualBox host-only network",
    "cni": "a Kubernetes CNI bridge",
    "flannel": "a Kubernetes overlay",
    "cali": "a Calico interface",
    "tun": "a VPN tunnel",
    "tap": "a VPN or VM tap device",
    "wg": "a WireGuard VPN",
    "zt": "a ZeroTier VPN",
    "tailscale": "a Tailscale VPN",
    "lxc": "an LXC bridge",
    "lxd": "an LXD bridge",
}
VIRTUAL_INTERFACE_PREFIXES: tuple[str, ...] = tuple(VIRTUAL_INTERFACE_KINDS)

WILDCARDS = frozenset({"", "0.0.0.0", "*", "::"})
FALLBACK = "127.0.0.1"


@dataclass(frozen=True)
class InterfaceDecision:
    """One interface address (or the bind address itself) and whether mDNS uses it."""

    interface: str  # the interface name ("" for a bind address taken as it is)
    address: str  # its IPv4 address ("" for an interface that has none)
    used: bool
    reason: str  # one sentence: why it is used or skipped


def bind_decision(bind: str) -> InterfaceDecision | None:
    """The decision for a non-wildcard bind (used as it is), or None for a wildcard.

    Raises ValueError if ``bind`` is neither an IP address, a wildcard nor ``localhost``.
    """
    bind = bind.strip()
    if bind == "localhost":
        return InterfaceDecision("", FALLBACK, True, "the bind address is localhost")
    if bind in WILDCARDS:
        return None
    try:
        ip = ipaddress.ip_address(bind)
    except ValueError:
        raise ValueError(f"bind address must be an IP address, got {bind!r}") from None
    if ip.is_loopback:
        why = f"the bind address {bind} is loopback: only nodes on this machine find it"
    else:
        why = f"the bind address is {bind}"
    return InterfaceDecision("", bind, True, why)


def virtual_kind(ifname: str) -> str | None:
    """What a virtual interface usually is, by its name; None for any other."""
    lower = ifname.lower()
    for prefix, kind in VIRTUAL_INTERFACE_KINDS.items():
        if lower.startswith(prefix):
            return kind
    return None


def _address_skip(address: str) -> str | None:
    """Why an IPv4 address is no LAN address mDNS can use; None if it is one."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return "not an IPv4 address"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local (169.254.x.x: no DHCP answer on that network?)"
    if ip.is_unspecified or ip.is_multicast:
        return "not a unicast address"
    return None


def interface_decisions(
    if_addrs: Mapping[str, list[Any]], if_stats: Mapping[str, Any]
) -> list[InterfaceDecision]:
    """For a wildcard bind: every interface (each IPv4 address of it) and whether mDNS
    uses it, with why. ``if_addrs`` / ``if_stats`` are shaped as psutil's (objects with
    ``.family`` and ``.address``, resp. ``.isup``)."""
    out: list[InterfaceDecision] = []
    for ifname in sorted(if_addrs):
        ipv4 = [
            str(getattr(a, "address", ""))
            for a in if_addrs[ifname]
            if getattr(a, "family", None) == socket.AF_INET
        ]
        kind = virtual_kind(ifname)
        stats = if_stats.get(ifname)
        if kind is not None:
            why = f"skipped: {kind} (peers on the LAN cannot reach it)"
        elif stats is None or not getattr(stats, "isup", False):
            why = "skipped: down"
        elif not ipv4:
            why = "skipped: no IPv4 address"
        else:
            why = ""
        if why:
            out.append(InterfaceDecision(ifname, ipv4[0] if ipv4 else "", False, why))
            continue
        out.extend(_address_decisions(ifname, ipv4, {d.address for d in out if d.used}))
    return out


def _address_decisions(ifname: str, ipv4: list[str], taken: set[str]) -> list[InterfaceDecision]:
    out: list[InterfaceDecision] = []
    for address in ipv4:
        skip = _address_skip(address)
        if skip is None and address in taken:
            skip = "already used on another interface"
        if skip is None:
            taken.add(address)
            out.append(InterfaceDecision(ifname, address, True, "a LAN interface that is up"))
        else:
            out.append(InterfaceDecision(ifname, address, False, f"skipped: {skip}"))
    return out


def decide(
    bind: str, if_addrs: Mapping[str, list[Any]], if_stats: Mapping[str, Any]
) -> list[InterfaceDecision]:
    """Every decision for a daemon bound to ``bind``: for a specific bind the bind
    address alone; for a wildcard each interface's (see :func:`interface_decisions`)."""
    taken = bind_decision(bind)
    return [taken] if taken is not None else interface_decisions(if_addrs, if_stats)


def chosen(decisions: list[InterfaceDecision]) -> list[str]:
    """The addresses mDNS runs on: those used, else the loopback fallback."""
    used = [d.address for d in decisions if d.used]
    return used or [FALLBACK]
