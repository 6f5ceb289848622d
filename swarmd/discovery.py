"""Finding peers on the LAN with mDNS / DNS-SD (python-zeroconf).

mDNS is only a *finder*: it tells the daemon "a node of this cluster listens at
host:port", and the gossip layer takes it from there (liveness, state, departure).
mDNS records live 120 s and know nothing about partitions, so Removed events are
ignored and nothing here decides whether a peer is alive.

Design choices:

* **Which interfaces.** mDNS runs on the interfaces of the bind address
  (:func:`choose_interfaces`, decided in :mod:`swarmd.core.interfaces`). A daemon
  bound to 127.0.0.1 advertises and browses on loopback only, which is how several
  nodes on one machine (and the tests) find each other without touching the LAN. A
  wildcard bind uses the real LAN interfaces that are up; container/VPN/bridge
  interfaces are skipped by name, since advertising a docker bridge address to the LAN
  only produces unreachable peers.
* **Unique names.** The instance name is ``<name>-<node_id[:12]>`` so that many nodes on
  one host, and parallel test runs sharing 224.0.0.251:5353, never collide. The SRV
  target host is the same unique label under ``.local.``, so one node's goodbye for its
  address records cannot knock out another node's that happen to share a hostname.
* **TXT record** (hints only, no secret): ``id``, ``name``, ``port``, ``pv`` (protocol
  version) and ``fp`` (a short public fingerprint of the cluster). Records of another
  cluster (``fp`` differs) or another protocol version are ignored and counted;
  malformed records are counted as ``bad_record``. Nothing a remote sends can raise out
  of a zeroconf callback: every handler catches, logs and counts.
* **Bounded.** Lookups use a 3 s timeout, at most one lookup per instance name is in
  flight (a later event for the same name re-runs it once), the number of concurrent
  lookups is capped, and :meth:`Discovery.stop` bounds every step with a timeout. Spawned
  tasks are kept referenced until they finish.
* **Goodbye.** ``async_unregister_service`` returns an awaitable that must itself be
  awaited, or no goodbye packet is sent; :meth:`Discovery.stop` awaits it.
* **Address choice.** The advertised A records are the addresses in ``interfaces``; a
  sighting uses the first IPv4 address of the peer's record. On a multi-homed peer that
  may be an address on another subnet; static ``--join`` seeds cover such setups.

Counters (``Discovery.counters``): ``sighting``, ``self``, ``foreign_cluster``,
``other_protocol``, ``bad_record``, ``lookup_timeout``, ``lookup_dropped``,
``handler_error``, ``callback_error``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from time import monotonic
from typing import Any

from zeroconf import IPVersion, ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from protocol.messages import PROTOCOL_VERSION

from .core import interfaces
from .core.interfaces import VIRTUAL_INTERFACE_PREFIXES, WILDCARDS

__all__ = ["VIRTUAL_INTERFACE_PREFIXES", "Discovery", "Sighting", "choose_interfaces"]

SERVICE_TYPE = "_swarmd._tcp.local."

LOOKUP_TIMEOUT_MS = 3000
REGISTER_TIMEOUT_S = 10.0
STOP_STEP_TIMEOUT_S = 3.0
MAX_CONCURRENT_LOOKUPS = 64
MAX_NAME_CHARS = 100
MAX_HEARD = 256  # records kept for swarmctl doctor (the oldest go first)

_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9-]+")

_module_log = logging.getLogger(__name__)


def choose_interfaces(
    bind: str,
    if_addrs: Mapping[str, list[Any]] | None = None,
    if_stats: Mapping[str, Any] | None = None,
) -> list[str]:
    """IPv4 addresses on which to run mDNS for a daemon bound to `bind`
    (:mod:`swarmd.core.interfaces` decides, and says why for each interface).

    A loopback or specific bind -> ``[that address]``; a wildcard -> the addresses of
    real LAN interfaces that are up, **falling back to** ``["127.0.0.1"]`` (with a
    warning) when there is none: the node then only finds peers on the same machine,
    or through ``--join`` seeds.

    `if_addrs` / `if_stats` default to ``psutil.net_if_addrs()`` /
    ``psutil.net_if_stats()``; tests inject fakes (any objects with ``.family`` and
    ``.address``, resp. ``.isup``).

    Raises ValueError if `bind` is neither an IP address, a wildcard, nor ``localhost``.
    """
    decisions = decide_interfaces(bind, if_addrs, if_stats)
    if not any(d.used for d in decisions):
        _module_log.warning(
            "no usable LAN interface for mDNS; falling back to loopback (127.0.0.1): "
            "only peers on this machine or --join seeds will be found"
        )
    return interfaces.chosen(decisions)


def decide_interfaces(
    bind: str,
    if_addrs: Mapping[str, list[Any]] | None = None,
    if_stats: Mapping[str, Any] | None = None,
) -> list[interfaces.InterfaceDecision]:
    """Each interface mDNS would use or skip for `bind`, and why (psutil by default)."""
    if interfaces.bind_decision(bind) is None and (if_addrs is None or if_stats is None):
        import psutil

        if if_addrs is None:
            if_addrs = psutil.net_if_addrs()
        if if_stats is None:
            if_stats = psutil.net_if_stats()
    return interfaces.decide(bind, if_addrs or {}, if_stats or {})


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def advertise_address(bind: str, port: int, interfaces: list[str]) -> str:
    """host:port peers should dial: `bind` if it is a specific address, else interfaces[0].

    With a wildcard bind and no interfaces at all, 127.0.0.1 is used.
    """
    bind = bind.strip()
    if bind == "localhost":
        host = "127.0.0.1"
    elif bind not in WILDCARDS:
        host = bind
    else:
        host = interfaces[0] if interfaces else "127.0.0.1"
    return _host_port(host, port)


@dataclass(frozen=True)
class Heard:
    """A valid swarmd record on the LAN, of any cluster (``swarmctl doctor`` reads
    these: nodes of another cluster, ids heard at two addresses, who answered)."""

    instance: str
    node_id: str
    name: str
    address: str  # "host:port"
    fingerprint: str
    protocol_version: int
    at: float  # time.monotonic() when last heard


@dataclass(frozen=True)
class Sighting:
    """A node of our cluster (same fingerprint and protocol version) seen by mDNS."""

    node_id: str
    name: str
    address: str  # "host:port"
    protocol_version: int


def instance_label(name: str, node_id: str) -> str:
    """DNS-label-safe ``<name>-<node_id[:12]>``, at most 63 characters."""
    id_part = _LABEL_UNSAFE.sub("-", node_id[:12]).strip("-") or "x"
    name_part = _LABEL_UNSAFE.sub("-", name).strip("-") or "node"
    name_part = name_part[: 63 - 1 - len(id_part)].rstrip("-") or "node"
    return f"{name_part}-{id_part}"


class _BadRecord(ValueError):
    """A TXT record that lacks a field or carries an invalid one."""


def _parse_txt(props: Mapping[str, str | None]) -> tuple[str, str, int, int, str]:
    """(node_id, name, port, protocol_version, fingerprint) or raise _BadRecord."""

    def field(key: str) -> str:
        value = props.get(key)
        if value is None or value == "":
            raise _BadRecord(f"missing {key!r}")
        return value

    node_id = field("id")
    name = field("name")[:MAX_NAME_CHARS]
    fingerprint = field("fp").strip().lower()
    try:
        port = int(field("port"))
        pv = int(field("pv"))
    except ValueError as e:
        raise _BadRecord(f"non-integer field: {e}") from None
    if not 0 < port < 65536:
        raise _BadRecord(f"port out of range: {port}")
    return node_id, name, port, pv, fingerprint


class Discovery:
    """Advertise this node and report other nodes of the same cluster.

    ``on_sighting`` is called from the event loop for every Added/Updated record of a
    node with our fingerprint and protocol version (repeats are possible; the caller
    de-duplicates). It must not block; exceptions from it are logged and counted.
    """

    def __init__(
        self,
        *,
        node_id: str,
        name: str,
        port: int,
        fingerprint: str,
        interfaces: list[str],
        on_sighting: Callable[[Sighting], None],
        protocol_version: int = PROTOCOL_VERSION,
        log: logging.Logger | None = None,
    ) -> None:
        if not interfaces:
            raise ValueError("Discovery needs at least one interface address")
        self.node_id = node_id
        self.name = name
        self.port = port
        self.fingerprint = fingerprint.strip().lower()
        self.interfaces = list(interfaces)
        self.on_sighting = on_sighting
        self.protocol_version = protocol_version
        self.log = log or _module_log
        self.counters: collections.Counter[str] = collections.Counter()
        #: Last sighting per node id (a node found again under a new address replaces it).
        self.sightings: dict[str, Sighting] = {}
        #: Every valid record heard, ours and other clusters', by instance name; a
        #: goodbye removes it (see :class:`Heard`).
        self.heard: dict[str, Heard] = {}

        label = instance_label(name, node_id)
        self.instance_name = f"{label}.{SERVICE_TYPE}"
        self._info = ServiceInfo(
            SERVICE_TYPE,
            self.instance_name,
            port=port,
            properties={
                "id": node_id,
                "name": name[:MAX_NAME_CHARS],
                "port": str(port),
                "pv": str(protocol_version),
                "fp": self.fingerprint,
            },
            server=f"{label}.local.",
            parsed_addresses=self.interfaces,
        )
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._registered = False
        self._stopping = False
        self._lookups: dict[str, asyncio.Task[None]] = {}
        self._rerun: set[str] = set()
        self._tasks: set[asyncio.Future[Any]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open mDNS sockets on `interfaces`, browse, and register our service.

        Waits for the name probe (about 1-1.5 s; at most REGISTER_TIMEOUT_S); the
        announcements continue in the background. On failure (sockets cannot be opened,
        ``NonUniqueNameException`` when another live node holds our instance name,
        TimeoutError) everything opened is closed again and the exception propagates.
        """
        if self._aiozc is not None:
            raise RuntimeError("Discovery already started")
        self._stopping = False
        self._aiozc = AsyncZeroconf(interfaces=self.interfaces)
        try:
            # Browse first: peers' records arrive while our own name is being probed.
            self._browser = AsyncServiceBrowser(
                self._aiozc.zeroconf, SERVICE_TYPE, handlers=[self._on_state_change]
            )
            announce = await asyncio.wait_for(
                self._aiozc.async_register_service(self._info), REGISTER_TIMEOUT_S
            )
            self._registered = True
            self._keep(asyncio.ensure_future(announce))
        except BaseException:
            await self.stop()
            raise
        self.log.info("mDNS: advertising %s on %s", self.instance_name, ", ".join(self.interfaces))

    async def stop(self) -> None:
        """Send a goodbye, stop browsing, close the sockets. Idempotent; never hangs."""
        aiozc = self._aiozc
        if aiozc is None:
            return
        self._stopping = True
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._browser.async_cancel(), STOP_STEP_TIMEOUT_S)
            self._browser = None
        pending = [*self._lookups.values(), *self._tasks]
        for task in pending:
            task.cancel()
        if self._registered:
            self._registered = False
            try:
                goodbye = await asyncio.wait_for(
                    aiozc.async_unregister_service(self._info), STOP_STEP_TIMEOUT_S
                )
                await asyncio.wait_for(goodbye, STOP_STEP_TIMEOUT_S)
            except Exception as e:
                self.log.warning("mDNS: goodbye for %s failed: %r", self.instance_name, e)
        if pending:
            await asyncio.wait(pending, timeout=STOP_STEP_TIMEOUT_S)
        try:
            await asyncio.wait_for(aiozc.async_close(), STOP_STEP_TIMEOUT_S)
        except Exception as e:
            self.log.warning("mDNS: close failed: %r", e)
        self._aiozc = None
        self._lookups.clear()
        self._rerun.clear()
        self._tasks.clear()

    # ------------------------------------------------------------------ browsing

    def _keep(self, fut: asyncio.Future[Any]) -> None:
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)

    def _on_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        """zeroconf browser handler (runs in the event loop); must never raise."""
        try:
            if state_change is ServiceStateChange.Removed:
                self.heard.pop(name, None)
                return
            if self._stopping:
                return
            if name in self._lookups:
                self._rerun.add(name)
                return
            if len(self._lookups) >= MAX_CONCURRENT_LOOKUPS:
                self.counters["lookup_dropped"] += 1
                return
            self._spawn_lookup(zeroconf, service_type, name)
        except Exception:
            self.counters["handler_error"] += 1
            self.log.exception("mDNS: error handling %s %s", state_change, name)

    def _spawn_lookup(self, zc: Zeroconf, service_type: str, name: str) -> None:
        task = asyncio.get_running_loop().create_task(self._lookup(zc, service_type, name))
        self._lookups[name] = task
        task.add_done_callback(lambda t: self._lookup_done(zc, service_type, name, t))

    def _lookup_done(
        self, zc: Zeroconf, service_type: str, name: str, task: asyncio.Task[None]
    ) -> None:
        if self._lookups.get(name) is task:
            del self._lookups[name]
        if name in self._rerun:
            self._rerun.discard(name)
            if not self._stopping and not zc.done:
                try:
                    self._spawn_lookup(zc, service_type, name)
                except Exception:
                    self.counters["handler_error"] += 1
                    self.log.exception("mDNS: could not re-run lookup of %s", name)

    async def _lookup(self, zc: Zeroconf, service_type: str, name: str) -> None:
        try:
            info = AsyncServiceInfo(service_type, name)
            if not await info.async_request(zc, LOOKUP_TIMEOUT_MS):
                self.counters["lookup_timeout"] += 1
                self.log.debug("mDNS: no complete record for %s", name)
                return
            self._consider(name, info)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.counters["handler_error"] += 1
            self.log.exception("mDNS: error resolving %s", name)

    def _remember(self, heard: Heard) -> None:
        self.heard.pop(heard.instance, None)
        self.heard[heard.instance] = heard
        while len(self.heard) > MAX_HEARD:
            del self.heard[next(iter(self.heard))]

    def _consider(self, name: str, info: ServiceInfo) -> None:
        """Validate one resolved record and report it if it is a peer of our cluster."""
        try:
            node_id, peer_name, port, pv, fp = _parse_txt(info.decoded_properties)
            ipv4 = [
                a
                for a in info.parsed_addresses(IPVersion.V4Only)
                if not ipaddress.IPv4Address(a).is_unspecified
            ]
            if not ipv4:
                raise _BadRecord("no IPv4 address")
        except Exception as e:
            self.counters["bad_record"] += 1
            self.log.debug("mDNS: ignoring %s: bad record (%s)", name, e)
            return
        if name == self.instance_name:
            self.counters["self"] += 1
            return
        self._remember(Heard(name, node_id, peer_name, f"{ipv4[0]}:{port}", fp, pv, monotonic()))
        # A record with our node id under another name is *not* dropped: it is a copied
        # state dir, and gossip with that address is how the conflict is detected.
        if fp != self.fingerprint:
            self.counters["foreign_cluster"] += 1
            self.log.debug("mDNS: ignoring %s: foreign cluster (fp %s)", name, fp)
            return
        if pv != self.protocol_version:
            self.counters["other_protocol"] += 1
            self.log.debug("mDNS: ignoring %s: protocol version %d", name, pv)
            return
        sighting = Sighting(
            node_id=node_id,
            name=peer_name,
            address=f"{ipv4[0]}:{port}",
            protocol_version=pv,
        )
        self.counters["sighting"] += 1
        self.sightings[node_id] = sighting
        self.log.debug("mDNS: sighted %s (%s) at %s", peer_name, node_id, sighting.address)
        try:
            self.on_sighting(sighting)
        except Exception:
            self.counters["callback_error"] += 1
            self.log.exception("mDNS: on_sighting failed for %s", sighting)
