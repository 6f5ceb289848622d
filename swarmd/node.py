"""The daemon: wiring only. It builds the pieces, routes messages by type to their
handlers, and starts and stops them.

The pieces: the state dir (:mod:`.statedir`), what this node says about itself
(:mod:`.own_state`), membership (:mod:`.membership`), pricing's view of the peers
(:mod:`.peer_view`), the coordinator (:mod:`.work`), the worker (:mod:`.worker`), the
control API (:mod:`.control`), the transport, discovery and the HTTP ports
(:mod:`.node_services`), and the stop and drain sequence (:mod:`.lifecycle`). Every
attribute exists from ``__init__``; those built at start are None until then.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from protocol.messages import (
    ControlReply,
    Hardware,
    JoinTokenRequest,
    ModelProfile,
)

from . import node_services as services
from . import node_wiring as wiring
from . import sdnotify, statedir
from .config import Config
from .control import Control
from .core.failure import Liveness
from .core.gossip import Member
from .core.jobspec import PeerFacts
from .crash_watch import CrashWatch
from .credentials import NotAdmin
from .discovery import Discovery, Sighting, advertise_address, choose_interfaces
from .doctor import Doctor
from .engine_host import EngineHost
from .enrollment import Enrollment
from .hardware import HardwareProbe
from .identity import ClusterKeys
from .joining import EXIT_TOKEN_REFUSED
from .journal_health import JournalHealth
from .lifecycle import Lifecycle
from .member_file import reenroll_message
from .membership import Membership
from .model_probe import ModelProbe
from .own_state import OwnState
from .peer_view import PricingView, peer_facts
from .presence import Presence
from .presence import build as build_presence
from .routing import Router
from .sleep import Sleep
from .statedir import LocalIdentity, StartupError
from .statewatch import StateDirWatch
from .store import Store
from .transport import BindError, TransportFactory, listening
from .transport.base import Transport
from .trust import Trust
from .usage import Usage
from .work import Coordination
from .worker import Worker

__all__ = ["Node", "StartupError"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The same preparation as logind's PrepareForSleep(true) / (false): tests, and machines
# without logind whose suspend hook can signal the daemon (swarmd/sleep.py).
_SLEEP_SIGNALS = ((signal.SIGUSR1, True), (signal.SIGUSR2, False))


def _no_reply(_message: Any) -> bool:
    return True


class Node:
    def __init__(
        self,
        config: Config,
        log: logging.Logger | None = None,
        *,
        transport: TransportFactory | None = None,
    ) -> None:
        """``transport`` builds the node's transport (default: ZeroMQ with CURVE on
        ``bind:port`` and the control socket; tests pass a memory hub's ``open``)."""
        self.config = config
        self._open_transport = transport or listening(config.bind, config.port, config.control_path)
        self.log = log or logging.getLogger("swarmd")
        self.counters: Counter[str] = Counter()
        self.lifecycle = Lifecycle(self.log)
        self.ready = asyncio.Event()
        self.address = ""  # host:port peers dial (known at start)
        self.interfaces: list[str] = []  # where mDNS runs
        # Built at start, in this order; None until then (or if start failed before).
        self.identity: LocalIdentity | None = None
        self.own: OwnState | None = None
        self.presence: Presence | None = None  # battery and user activity (swarmd.presence)
        self.membership: Membership | None = None
        self.store: Store | None = None
        self.coordination: Coordination | None = None
        self.worker: Worker | None = None
        self.engines: EngineHost | None = None  # [engines.NAME]: clusters this node fronts
        self.pricing: PricingView | None = None
        self.control: Control | None = None
        self.transport: Transport | None = None
        self.crash_watch: CrashWatch | None = None
        self.http: Any = None  # swarmd.httpapi.HttpApi with [node] metrics_port
        self.dashboard: Any = None  # swarmd.dashboard.Dashboard with [node] dashboard_port
        self.gateway: Any = None  # swarmd.gateway.app.Gateway unless [gateway] port = 0
        self.gateway_server: Any = None  # and its HTTP server
        self.discovery: Discovery | None = None
        self.discovery_error = ""  # why mDNS did not start (swarmctl doctor says it)
        self.doctor = Doctor(self)  # swarmctl doctor and peers' reach tests
        self.router = Router(self)
        self.trust: Trust | None = None
        self.enrollment: Enrollment | None = None  # join tokens: tickets issued, redeemed
        self.health = JournalHealth(config.state_dir, self.log)  # can we write the state dir?
        self.journal_moved: Path | None = None  # a damaged journal, moved aside at start
        self.usage: Usage | None = None  # the llm usage book and budgets (swarmd/usage.py)
        self.sleep = Sleep(self, self.log.getChild("sleep"))  # logind: sleep is not death

    # ------------------------------------------------------------ start / stop

    async def run(self) -> int:
        # Handlers first: a SIGTERM during start-up stops the node cleanly once it is up.
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, self.lifecycle.on_signal)
        for sig, start in _SLEEP_SIGNALS:  # ignored until the node is up
            loop.add_signal_handler(sig, self.sleep.on_prepare_for_sleep, start)
        try:
            await self._start()
        except StartupError as exc:
            self.log.error("%s", exc)
            await self._shutdown(announce=False)
            for sig in (*_SIGNALS, *(s for s, _ in _SLEEP_SIGNALS)):
                loop.remove_signal_handler(sig)
            return exc.exit_code
        self.ready.set()
        sdnotify.notify(READY=1, STATUS=self._sd_status())
        try:
            await self.lifecycle.stop_requested.wait()
            sdnotify.notify(STOPPING=1, STATUS=self._sd_status())
            await self._drain_before_exit()
        finally:
            for sig in (*_SIGNALS, *(s for s, _ in _SLEEP_SIGNALS)):
                loop.remove_signal_handler(sig)
        self.log.info("stopping: announcing left")
        await self._shutdown(announce=True)
        return self.lifecycle.exit_code if self.lifecycle.crashed else 0

    def stop(self) -> None:
        self.lifecycle.stop()

    async def _start(self) -> None:
        cfg = self.config
        self.identity = ident = await statedir.prepare(cfg, self.log, self.lifecycle.stop_requested)
        self.interfaces = choose_interfaces(cfg.bind)
        self.address = cfg.advertise or advertise_address(cfg.bind, cfg.port, self.interfaces)
        self.own = own = OwnState(
            cfg, HardwareProbe(cfg.gpus, log=self.log.getChild("hardware")), self.log
        )
        await own.measure_hardware()
        self.presence = build_presence(cfg, own, self.log.getChild("presence"))
        self.presence.apply(await self.presence.read())  # paused from the first gossip on
        membership, coordination, worker = wiring.build(self, ident, own)
        self._publish_availability()  # a node that starts paused takes no work
        coordination.restore()
        try:
            self.transport = await self._open_transport(
                address=self.address,
                keys=ident.keys,
                on_server=self.router.on_server,
                on_link=self.router.on_link,
                on_undelivered=lambda _addr, messages: coordination.on_undelivered(messages),
                counters=self.counters,
                log=self.log.getChild("transport"),
            )
        except BindError as exc:
            raise StartupError(str(exc)) from None
        self.transport.set_identity(ident.credentials)
        self.transport.on_enroll = self.enrollment.handle  # type: ignore[union-attr]
        if cfg.gossip.crash.enabled:  # a dropped link is probed: a crash is dead in < 1 s
            self.crash_watch = CrashWatch(membership, cfg.gossip.crash, self.counters, self.log)
            self.transport.link_events = self.crash_watch.events()
        if cfg.metrics_port is not None:
            self.http = await services.serve_http(self)
        self._start_loops(own, membership, coordination, worker)
        if cfg.dashboard_port is not None:
            self.dashboard = await services.serve_dashboard(self)
        self.gateway, self.gateway_server = await services.serve_gateway(self) or (None, None)
        if cfg.mdns:
            await self._start_discovery()
        self.log.info(
            "listening on %s as %s (%s); control socket %s; %s",
            f"{cfg.bind}:{cfg.port}",
            self.address,
            cfg.name,
            cfg.control_path,
            f"mDNS on {', '.join(self.interfaces)}" if cfg.mdns else "mDNS off",
        )

    def _start_loops(
        self, own: OwnState, membership: Membership, coordination: Coordination, worker: Worker
    ) -> None:
        spawn = self.lifecycle.spawn
        spawn(membership.loop(self._publish_load, self._keep_links))
        spawn(own.hardware_loop(membership.set))
        if self.presence is not None:
            spawn(self.presence.loop(membership.set, self._publish_availability))
        spawn(membership.watchdog())
        spawn(sdnotify.supervise(self._sd_status, membership.healthy))
        spawn(coordination.loop())
        if self.usage is not None:
            spawn(self.usage.loop(membership.set, coordination.flush))
        if self.config.models:
            spawn(own.model_loop(membership.set))
        spawn(own.models_loop(membership.set))
        if self.config.probe.urls:  # local model servers, found and kept current
            found = functools.partial(own.set_probed, publish=membership.set)
            log = self.log.getChild("models")
            spawn(ModelProbe(self.config.probe, self.config.models, found, log).loop())
        spawn(worker.timer_loop())
        if self.engines is not None:  # their capacity, gossiped as ``engines``
            spawn(self.engines.loop(membership.set))
        spawn(StateDirWatch(self.config.state_dir).loop(self.lifecycle.fail, self.log))
        spawn(self.sleep.watch_logind())

    async def _start_discovery(self) -> None:
        assert self.identity is not None and self.membership is not None
        self.discovery = await services.discover(
            self.config,
            self.identity,
            self.membership,
            self.interfaces,
            self._on_sighting,
            self.log,
            self._on_discovery_error,
        )

    def _on_discovery_error(self, why: str) -> None:
        self.discovery_error = why

    async def _restart_discovery(self) -> None:
        await services.stop_discovery(self.discovery)
        await self._start_discovery()

    async def _drain_before_exit(self) -> None:
        if self.worker is None or self.store is None or self.membership is None:
            return
        self.set_draining(True)
        await self.lifecycle.drain_before_exit(
            self.worker, self.store, self.config.drain_grace_s, self.membership.alive_addresses
        )

    async def _shutdown(self, announce: bool) -> None:
        sdnotify.notify(STOPPING=1, STATUS="stopping")
        if announce and self.membership is not None:
            await self.membership.leave()
        await self.lifecycle.cancel_tasks()
        if self.http is not None:
            await self.http.close()
        if self.dashboard is not None:
            await self.dashboard.close()
        if self.gateway_server is not None:
            await self.gateway_server.stop()
        await services.stop_discovery(self.discovery)
        if self.worker is not None:
            await self.worker.close()
        if self.engines is not None:
            await self.engines.close()
        if self.coordination is not None:
            self.coordination.flush(all_usage=True)  # usage rows that waited for a commit
        if self.transport is not None:
            await self.transport.close()
        if self.crash_watch is not None:
            await self.crash_watch.close()
        if self.own is not None:
            self.own.probe.close()
        if self.store is not None:
            self.store.close()
        if self.identity is not None:
            self.identity.release()

    # ------------------------------------------------------------ messages

    def _send_to(self, addr: str, message: Any) -> bool:
        if addr == self.address:
            # To ourselves: handle it on the next loop turn, as if it came in.
            asyncio.get_running_loop().call_soon(
                self.router.on_server, message, _no_reply, False, self.node_id
            )
            return True
        if self.transport is None:
            return False
        return self.transport.send(addr, message)

    def _shut_out(self, node_id: str) -> None:
        if self.transport is not None:
            self.transport.shut_out(node_id)

    def _on_revoked(self, node_id: str) -> None:
        """A node newly known revoked: its attempts go elsewhere."""
        if self.coordination is not None and node_id != self.node_id:
            self.coordination.on_peer_gone(node_id)

    def revoke(self, node_id: str) -> bool:
        """``swarmctl revoke``: add ``node_id`` to the cluster's revocation list
        (NotAdmin, saying where to run it, on a member without the cluster secret)."""
        assert self.trust is not None and self.membership is not None
        try:
            added = self.trust.revoke(node_id)
        except NotAdmin:
            issuer = "" if self.identity is None else self.identity.issuer
            where = f" (such as {issuer}, which enrolled this one)" if issuer else ""
            raise NotAdmin(
                "this node is a member without the cluster secret, so it cannot sign a "
                f"revocation: run `swarmctl revoke` on an admin node{where}, one whose "
                "state dir holds cluster.secret"
            ) from None
        self.membership.set("revoked", self.trust.revoked.wire())
        return added

    def revoked(self) -> list[str]:
        return [] if self.trust is None else sorted(self.trust.revoked.entries)

    def _on_sighting(self, sighting: Sighting) -> None:
        # Same node id at another address is a copied state dir: gossip detects it.
        if sighting.address != self.address and self.membership is not None:
            self.membership.add_contact(sighting.address)

    # ------------------------------------------------------------ wiring hooks

    def _publish_load(self) -> None:
        if self.worker is not None and self.membership is not None:
            self.membership.set("busy", self.worker.busy)  # no-ops while unchanged
            self.membership.set("queue", self.worker.queued)
            self.membership.set("queue_max", self.worker.queue_limit)  # the worker's own
        if self.trust is not None and self.membership is not None:
            self.membership.set("revoked", self.trust.sync(self.members()))

    def _keep_links(self, addresses: set[str]) -> None:
        if self.transport is not None:
            self.transport.close_idle_links(addresses)

    def _on_new_identity(self, node_id: str, renamed: bool) -> None:
        """After an identity conflict: the worker and coordinator speak as ``node_id``."""
        if self.worker is not None:
            self.worker.node_id = node_id
            if self.membership is not None:
                self.worker.core.generation = self.membership.generation
        if self.coordination is not None:
            self.coordination.node_id = node_id
        if renamed and self.identity is not None and self.transport is not None:
            credentials = self.identity.reissue(node_id)
            if credentials is None:  # a member cannot sign for its new id
                why = f"another node uses this node's id, so it must take the new id {node_id}"
                self.log.error("%s; stopping", reenroll_message(self.config.state_dir, why))
                self.lifecycle.fail(EXIT_TOKEN_REFUSED)
                return
            self.transport.set_identity(credentials)
        if renamed and self.config.mdns:
            self.lifecycle.spawn(self._restart_discovery())

    def _sd_status(self) -> str:
        alive = sum(1 for m in self.members() if not m.is_self and m.liveness is Liveness.ALIVE)
        running = 0 if self.worker is None else len(self.worker.running)
        status = f"{alive} peers alive, {running} subtasks running"
        return f"stopping: {status}" if self.lifecycle.stopping else status

    # ------------------------------------------------------------ NodeFacade

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def node_id(self) -> str:
        if self.membership is not None:
            return self.membership.node_id
        return "" if self.identity is None else self.identity.node_id

    @property
    def generation(self) -> int:
        return 0 if self.membership is None else self.membership.generation

    @property
    def keys(self) -> ClusterKeys | None:
        return None if self.identity is None else self.identity.keys

    @property
    def draining(self) -> bool:
        return self.own is not None and self.own.draining

    @property
    def paused(self) -> str | None:
        """Why this node takes no new work now (swarmd.core.presence), or None."""
        return None if self.own is None else self.own.paused()[0]

    @property
    def hardware(self) -> Hardware | None:
        return None if self.own is None else self.own.hardware

    @property
    def model_latency_ms(self) -> dict[str, float | None]:
        return {} if self.own is None else self.own.model_latency_ms

    @property
    def last_tick(self) -> float:
        """When the gossip loop last ticked (monotonic; 0.0 before start)."""
        return 0.0 if self.membership is None else self.membership.last_tick

    @property
    def stopping(self) -> bool:
        return self.lifecycle.stopping

    def model_profiles(self) -> list[ModelProfile]:
        return [] if self.own is None else self.own.model_profiles()

    def members(self) -> list[Member]:
        return [] if self.membership is None else self.membership.members()

    def peer_facts(self) -> list[PeerFacts]:
        return peer_facts(self.members())

    def set_draining(self, draining: bool) -> int:
        """Stop (or resume) taking new work; returns the attempts still running here."""
        own, worker = self.own, self.worker
        assert own is not None and worker is not None
        if draining != own.draining:
            self.log.info("draining: no new work" if draining else "undrained: taking work")
        own.draining = draining
        self._publish_availability()
        return len(worker.running)

    def set_sleeping(self, sleeping: bool) -> None:
        """The machine suspends (no new work here) or resumed (swarmd/sleep.py; the
        gossiped ``sleeping`` is its announcement's)."""
        if self.own is not None:
            self.own.sleeping = sleeping
            self._publish_availability()

    async def before_sleep(self) -> None:
        """Hook: the last step before the machine suspends, after the running work was
        handed back and before the journal is checkpointed and the inhibitor released
        (bounded by swarmd.sleep.PREPARE_WITHIN_S with the rest): e.g. replicate what
        this node coordinates to its successor."""

    def _on_journal_health(self, reason: str | None) -> None:
        """The state dir cannot be written (a reason), or can again (None): no new work
        here meanwhile, and peers are told why (``swarmctl peers``)."""
        if self.own is not None:
            self.own.refusing = reason
            self._publish_availability()

    def _publish_availability(self) -> None:
        """The worker takes no new work while drained, refusing, paused by the power
        and presence policy or sleeping; peers are told why (``paused``)."""
        own, worker, membership = self.own, self.worker, self.membership
        if own is None or worker is None or membership is None:
            return
        paused, detail = own.paused()
        worker.draining = paused is not None or own.sleeping
        membership.set("draining", own.draining or own.refusing is not None)
        membership.set("refusing", own.refusing)
        membership.set("paused", paused)
        membership.set("pause_detail", detail)

    def join_token(self, request: JoinTokenRequest) -> ControlReply:
        assert self.enrollment is not None
        return self.enrollment.issue(request)

    def stats(self) -> dict[str, int]:
        out: Counter[str] = Counter(self.counters)
        if self.membership is not None:
            out.update({f"gossip_{k}": v for k, v in self.membership.gossip.counters.items()})
        if self.discovery is not None:
            out.update({f"mdns_{k}": v for k, v in self.discovery.counters.items()})
        if self.worker is not None:
            out.update({f"worker_{k}": v for k, v in self.worker.counters.items()})
        if self.gateway is not None:
            out.update(self.gateway.counters)
        if self.coordination is not None:
            out.update({f"tasks_{k}": v for k, v in self.coordination.counters.items()})
            out["journal_writes"] = self.coordination.journal_writes
        if self.usage is not None:
            out.update({f"usage_{k}": v for k, v in self.usage.book.counters.items()})
        if self.presence is not None:
            out.update({f"presence_{k}": v for k, v in self.presence.counters().items()})
        if self.store is not None:
            out["store_transactions"] = self.store.transactions
            out.update(self.health.stats(self.store, self.journal_moved))
        for m in self.members():
            out[f"peers_{m.liveness.value}"] += 1
        out["links"] = 0 if self.transport is None else len(self.transport.links)
        return dict(sorted(out.items()))
