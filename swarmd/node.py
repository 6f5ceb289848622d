"""The daemon: wires identity, hardware, gossip, transport, discovery and control.

This is the asyncio shell around the sans-I/O core. It only moves bytes and timers:
messages in -> ``Gossip.receive`` -> messages out; a timer -> ``Gossip.tick``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import random
import secrets
import signal
import time
from collections import Counter
from typing import Any

import msgspec
import zmq
import zmq.asyncio
from zeroconf import NonUniqueNameException

from protocol.messages import (
    Ack,
    AnyMessage,
    Bundle,
    CancelAttempt,
    Dispatch,
    ErrorReply,
    ModelProfile,
    ResultAck,
    Syn,
    SynAck,
    WorkItem,
    WorkMessage,
)

from . import sdnotify
from .config import Config
from .control import Control
from .core.failure import Liveness
from .core.gossip import (
    Event,
    Gossip,
    IdentityConflict,
    Member,
    MemberChanged,
    Send,
    keeps_identity,
)
from .core.jobspec import PeerFacts
from .core.pricing import PeerCapacity, peer_from_gossip
from .core.tasks import CoordinatorConfig, NodeLoad
from .discovery import Discovery, Sighting, advertise_address, choose_interfaces
from .hardware import HardwareProbe
from .identity import (
    ClusterKeys,
    create_cluster_secret,
    ensure_state_dir,
    load_cluster_secret,
    load_or_create_node_id,
    make_join_token,
    new_node_id,
    next_generation,
    parse_join_token,
    store_cluster_secret,
    write_node_id,
)
from .store import Store
from .transport import Reply, Transport
from .work import Clock, Coordination
from .worker import Worker

WATCHDOG_FACTOR = 10
MODEL_PROBE_INTERVAL_S = 15.0
MODEL_PROBE_TIMEOUT_S = 10.0


REPORT_FRESH_S = 1.0  # a worker's own load report beats its gossip for this long


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _no_reply(_message: Any) -> bool:
    return True  # a gossip tick this many intervals late is a stalled loop


class StartupError(RuntimeError):
    """A reason the node cannot start that the operator can fix; exit 1, no traceback."""


class Node:
    def __init__(self, config: Config, log: logging.Logger | None = None) -> None:
        self.config = config
        self.log = log or logging.getLogger("swarmd")
        self.counters: Counter[str] = Counter()
        self.rng = random.Random()
        self.boot = secrets.randbits(48)
        self._stop = asyncio.Event()
        self._crashed = False
        self._lock_fd: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._handled_conflicts: set[str] = set()
        self._last_tick = time.monotonic()
        self.discovery: Discovery | None = None
        self.ready = asyncio.Event()
        self.draining = False  # swarmctl drain, or SIGTERM: no new work
        self._hurry = asyncio.Event()  # a second signal: stop draining, exit now
        self.http: Any = None  # swarmd.httpapi.HttpApi with [node] metrics_port
        self.dashboard: Any = None  # swarmd.dashboard.Dashboard with [node] dashboard_port

    # ------------------------------------------------------------ identity

    def _prepare_state(self) -> None:
        cfg = self.config
        ensure_state_dir(cfg.state_dir)
        self._lock_fd = os.open(cfg.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartupError(
                f"another swarmd is already running with state dir {cfg.state_dir}"
            ) from None
        self.node_id, created = load_or_create_node_id(cfg.state_dir)
        self.generation = next_generation(cfg.state_dir)
        self.seeds = list(cfg.join)
        secret = load_cluster_secret(cfg.state_dir)
        if cfg.join_token:
            try:
                token_secret, token_seeds = parse_join_token(cfg.join_token)
            except ValueError as exc:
                raise StartupError(f"--join-token: {exc}") from None
            if secret is not None and secret != token_secret:
                self.log.warning("the join token names another cluster: leaving the old one")
            secret = token_secret
            store_cluster_secret(cfg.state_dir, secret)
            self.seeds += [s for s in token_seeds if s not in self.seeds]
            self.log.info("joined the cluster of the token; seeds %s", ", ".join(token_seeds))
        elif secret is None:
            secret = create_cluster_secret(cfg.state_dir)
            self.log.info(
                "created a new cluster. To add a machine, run `swarmctl join-token` here "
                "and `swarmd --join-token TOKEN` there (machines on this LAN with the same "
                "token find each other by mDNS)"
            )
        self.keys = ClusterKeys.from_secret(secret)
        self.log.info(
            "node %s%s, generation %d, cluster %s",
            self.node_id,
            " (new)" if created else "",
            self.generation,
            self.keys.fingerprint,
        )

    # ------------------------------------------------------------ start / stop

    async def run(self) -> int:
        # Handlers first: a SIGTERM during start-up stops the node cleanly once it is up.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal)
        try:
            await self._start()
        except StartupError as exc:
            self.log.error("%s", exc)
            await self._shutdown(announce=False)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            return 1
        self.ready.set()
        sdnotify.notify(READY=1, STATUS=self._sd_status())
        try:
            await self._stop.wait()
            sdnotify.notify(STOPPING=1, STATUS=self._sd_status())
            await self._drain_before_exit()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        self.log.info("stopping: announcing left")
        await self._shutdown(announce=True)
        return 1 if self._crashed else 0

    def stop(self) -> None:
        self._stop.set()

    def _on_signal(self) -> None:
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    def set_draining(self, draining: bool) -> int:
        """Stop (or resume) taking new work; returns the attempts still running here."""
        if draining != self.draining:
            self.log.info("draining: no new work" if draining else "undrained: taking work")
        self.draining = self.worker.draining = draining
        self.gossip.set("draining", draining)
        return len(self.worker.running)

    async def _drain_before_exit(self) -> None:
        """SIGTERM: take no new work, let running attempts finish within drain_grace
        (a second signal cuts it short), hand back the rest, and let their results
        reach the coordinators before we announce left (else they rerun them)."""
        if not hasattr(self, "worker"):
            return
        self.set_draining(True)
        deadline = time.monotonic() + self.config.drain_grace_s
        if self.worker.running:
            self.log.info(
                "draining: up to %gs for %d running attempt(s); signal again to skip",
                self.config.drain_grace_s,
                len(self.worker.running),
            )
        while self.worker.running and time.monotonic() < deadline and not self._hurry.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), 0.05)
        if self.worker.running or self.worker.queued:
            self.log.warning(
                "handing back %d unfinished attempt(s)",
                len(self.worker.running) + self.worker.queued,
            )
            tasks = list(self.worker.running.values())
            self.worker.hand_back()
            if tasks:
                await asyncio.wait(tasks, timeout=5)
        self.worker.flush()
        live = {m.state.get("addr") for m in self.members() if m.liveness is Liveness.ALIVE}
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not self._hurry.is_set():
            if not any(addr in live for addr, _ in self.store.outbox()):
                break
            await asyncio.sleep(0.05)

    async def _start(self) -> None:
        cfg = self.config
        self._prepare_state()
        self.interfaces = choose_interfaces(cfg.bind)
        self.address = cfg.advertise or advertise_address(cfg.bind, cfg.port, self.interfaces)
        self.probe = HardwareProbe(cfg.gpus, log=self.log.getChild("hardware"))
        self.hardware = await asyncio.to_thread(self.probe.probe)
        self.gossip = self._new_gossip(self.node_id, self.generation)
        self.control = Control(self)
        self.store = Store(cfg.state_dir / "swarmd.db")
        self.clock = Clock()
        self._known_generation: dict[str, int] = {}
        self.coordination = Coordination(
            node_id=self.node_id,
            node_name=cfg.name,
            store=self.store,
            send=self._send_to,
            address_of=self._address_of,
            peers=self._capacities,
            me=lambda: self.gossip.me,
            clock=self.clock,
            log=self.log.getChild("tasks"),
            config=CoordinatorConfig(retention=cfg.retention),
        )
        self.worker = Worker(
            node_id=self.node_id,
            store=self.store,
            send=self._send_to,
            workdir_root=cfg.state_dir / "work",
            slots=cfg.max_concurrency,
            allow_shell=cfg.allow_shell,
            models={m.name: (m.endpoint, m.model, m.max_concurrency) for m in cfg.models},
            log=self.log.getChild("worker"),
        )
        self.coordination.restore()
        self.ctx = zmq.asyncio.Context()
        self.transport = Transport(
            ctx=self.ctx,
            keys=self.keys,
            on_server=self._on_server,
            on_link=self._on_link,
            log=self.log.getChild("transport"),
            counters=self.counters,
            on_undelivered=lambda _addr, messages: self.coordination.on_undelivered(messages),
        )
        self.transport.start_auth()
        try:
            self.transport.bind_tcp(cfg.bind, cfg.port)
        except zmq.ZMQError as exc:
            raise StartupError(f"cannot listen on {cfg.bind}:{cfg.port}: {exc}") from None
        control_path = cfg.control_path
        with contextlib.suppress(FileNotFoundError):
            control_path.unlink()  # stale: the state-dir lock proves no daemon owns it
        try:
            self.transport.bind_ipc(str(control_path))
        except zmq.ZMQError as exc:
            raise StartupError(f"cannot create control socket {control_path}: {exc}") from None
        os.chmod(control_path, 0o600)
        if cfg.metrics_port is not None:
            from .httpapi import HttpApi

            self.http = HttpApi(self, log=self.log.getChild("http"))
            try:
                await self.http.start(cfg.metrics_bind, cfg.metrics_port)
            except OSError as exc:
                where = f"{cfg.metrics_bind}:{cfg.metrics_port}"
                raise StartupError(f"cannot serve metrics on {where}: {exc}") from None

        self._spawn(self._gossip_loop())
        self._spawn(self._hardware_loop())
        self._spawn(self._watchdog())
        self._spawn(sdnotify.supervise(self._sd_status, self._loop_healthy))
        self._spawn(self.coordination.loop())
        if cfg.models:
            self._spawn(self._model_loop())
        self._spawn(self.worker.timer_loop())
        if cfg.dashboard_port is not None:
            await self._start_dashboard()
        if cfg.mdns:
            await self._start_discovery()
        self.log.info(
            "listening on %s as %s (%s); control socket %s; %s",
            f"{cfg.bind}:{cfg.port}",
            self.address,
            cfg.name,
            control_path,
            f"mDNS on {', '.join(self.interfaces)}" if cfg.mdns else "mDNS off",
        )

    def _new_gossip(self, node_id: str, generation: int) -> Gossip:
        cfg = self.config
        gossip = Gossip(
            node_id=node_id,
            generation=generation,
            boot=self.boot,
            addr=self.address,
            now=time.monotonic(),
            config=cfg.gossip,
            seeds=tuple(self.seeds),
        )
        gossip.set("name", cfg.name)
        gossip.set("hw", msgspec.to_builtins(self.hardware))
        gossip.set("models", [msgspec.to_builtins(p) for p in self.model_profiles()])
        gossip.set("draining", self.draining)
        gossip.set("queue", 0)
        gossip.set("slots", cfg.max_concurrency if cfg.allow_shell else 0)
        gossip.set("queue_max", cfg.max_concurrency)  # held beyond the slots, queued
        gossip.set("busy", 0)
        gossip.set("allow_shell", cfg.allow_shell)
        gossip.set("cost_per_hour", float(cfg.cost_per_hour))
        gossip.set("on_battery", cfg.on_battery)
        gossip.set("speed", float(cfg.speed))
        return gossip

    def model_profiles(self) -> list[ModelProfile]:
        latency = getattr(self, "model_latency_ms", {})
        return [
            ModelProfile(
                name=m.name,
                model=m.model,
                endpoint=m.endpoint,
                capabilities=list(m.capabilities),
                max_concurrency=m.max_concurrency,
                cost_per_mtok=m.cost_per_mtok,
                latency_ms=latency.get(m.name),
            )
            for m in self.config.models
        ]

    async def _model_loop(self) -> None:
        """Measure each local model endpoint (a 1-token completion) and publish it."""
        from .executors.llm import measure_latency

        self.model_latency_ms: dict[str, float | None] = {}
        while True:
            for m in self.config.models:
                seconds = await measure_latency(m.endpoint, m.model, timeout=MODEL_PROBE_TIMEOUT_S)
                if seconds is None and self.model_latency_ms.get(m.name) is not None:
                    self.log.warning("model %s at %s is not answering", m.name, m.endpoint)
                self.model_latency_ms[m.name] = (
                    None if seconds is None else round(seconds * 1000, 1)
                )
            self.gossip.set("models", [msgspec.to_builtins(p) for p in self.model_profiles()])
            await asyncio.sleep(MODEL_PROBE_INTERVAL_S)

    async def _start_dashboard(self) -> None:
        from .dashboard import Dashboard, DashboardError

        cfg = self.config
        try:
            self.dashboard = Dashboard(
                self,
                bind=cfg.dashboard_bind,
                port=cfg.dashboard_port or 0,
                token=cfg.dashboard_token,
                log=self.log.getChild("dashboard"),
            )
            await self.dashboard.start()
        except DashboardError as exc:
            raise StartupError(str(exc)) from None
        except OSError as exc:
            where = f"{cfg.dashboard_bind}:{cfg.dashboard_port}"
            raise StartupError(f"cannot serve the dashboard on {where}: {exc}") from None
        self.log.info("dashboard on %s", self.dashboard.url)

    async def _start_discovery(self) -> None:
        self.discovery = Discovery(
            node_id=self.node_id,
            name=self.config.name,
            port=self.config.port,
            fingerprint=self.keys.fingerprint,
            interfaces=self.interfaces,
            on_sighting=self._on_sighting,
            log=self.log.getChild("mdns"),
        )
        try:
            await asyncio.wait_for(self.discovery.start(), 10.0)
        except NonUniqueNameException:
            # Another live node advertises our name *and* node id: a copied state dir.
            self.discovery = None
            self._on_identity_conflict(IdentityConflict("(mDNS)", self.generation))
        except Exception as exc:
            self.log.warning("mDNS unavailable (%r); relying on --join seeds", exc)
            self.discovery = None

    async def _shutdown(self, announce: bool) -> None:
        sdnotify.notify(STOPPING=1, STATUS="stopping")
        if announce and hasattr(self, "gossip"):
            await self._leave()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 1.0)
        if self.http is not None:
            await self.http.close()
        if self.dashboard is not None:
            await self.dashboard.close()
        if self.discovery is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.discovery.stop(), 3.0)
        if hasattr(self, "worker"):
            await self.worker.close()
        if hasattr(self, "transport"):
            await self.transport.close()
            with contextlib.suppress(FileNotFoundError):
                self.config.control_path.unlink()
        if hasattr(self, "probe"):
            self.probe.close()
        if hasattr(self, "store"):
            self.store.close()
        if hasattr(self, "ctx"):
            self.ctx.term()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def _leave(self) -> None:
        """Tell every live peer we are leaving; wait (bounded) for them to hear it."""
        sends = self.gossip.leave(time.monotonic())
        self._send(sends)
        seqs = [s.message.seq for s in sends if isinstance(s.message, Syn)]
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not all(self.gossip.answered(q) for q in seqs):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # let the final Acks leave the socket queues

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("internal task failed", exc_info=task.exception())
            self._crashed = True  # exit non-zero: systemd's Restart=on-failure restarts it
            self._stop.set()

    # ------------------------------------------------------------ loops

    async def _gossip_loop(self) -> None:
        interval = self.config.gossip.interval_s
        housekeeping = time.monotonic()
        while True:
            now = time.monotonic()
            self._last_tick = now
            self._publish_load()
            self._send(self.gossip.tick(now, self.rng))
            self._handle_events()
            if now - housekeeping > 5.0:
                housekeeping = now
                keep = {m.state.get("addr") for m in self.gossip.members(now)}
                self.transport.close_idle_links({a for a in keep if a})
            await asyncio.sleep(interval * self.rng.uniform(0.9, 1.1))

    async def _hardware_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.hardware_interval_s)
            try:
                self.hardware = await asyncio.wait_for(asyncio.to_thread(self.probe.probe), 30.0)
            except TimeoutError:
                self.log.warning("hardware probe took over 30 s; keeping the last values")
                continue
            self.gossip.set("hw", msgspec.to_builtins(self.hardware))

    def _sd_status(self) -> str:
        alive = sum(1 for m in self.members() if not m.is_self and m.liveness is Liveness.ALIVE)
        status = f"{alive} peers alive, {len(self.worker.running)} subtasks running"
        return f"stopping: {status}" if self._stop.is_set() else status

    def _loop_healthy(self) -> bool:  # systemd's watchdog: the gossip loop ticks
        limit = max(1.0, self.config.gossip.interval_s * WATCHDOG_FACTOR)
        return time.monotonic() - self._last_tick < limit

    async def _watchdog(self) -> None:
        limit = max(1.0, self.config.gossip.interval_s * WATCHDOG_FACTOR)
        while True:
            await asyncio.sleep(limit / 2)
            late = time.monotonic() - self._last_tick
            if late > limit:
                self.counters["loop_stalls"] += 1
                self.log.warning("gossip loop stalled: last tick %.1f s ago", late)

    # ------------------------------------------------------------ messages

    def _send(self, sends: list[Send], reply: Reply | None = None, link: str | None = None) -> None:
        for send in sends:
            if send.addr is not None:
                self.transport.send(send.addr, send.message)
            elif reply is not None:
                reply(send.message)
            elif link is not None:
                self.transport.send(link, send.message)

    def _on_server(self, message: AnyMessage, reply: Reply, local: bool) -> None:
        if isinstance(message, Syn | Ack):
            if local:
                self.counters["dropped_gossip_on_control"] += 1
                return
            self._send(self.gossip.receive(message, time.monotonic(), self.rng), reply=reply)
            self._handle_events()
        elif local and isinstance(message, WorkMessage):
            self.counters["dropped_work_on_control"] += 1  # node-to-node only
        elif isinstance(message, Bundle):
            for item in message.items:
                self._on_work(item)
        elif isinstance(message, WorkItem):
            self._on_work(message)
        elif self.control.answers_later(message):
            self._spawn(self._answer_later(self.control.answer_later(message), reply))  # type: ignore[arg-type]
        elif self.control.handles(message):
            try:
                reply(self.control.handle(message, local))  # type: ignore[arg-type]
            except Exception as exc:
                self.log.exception("control request failed")
                reply(ErrorReply(code="internal", message=str(exc)[:4000]))
        else:
            self.counters["dropped_unexpected"] += 1
            reply(ErrorReply(code="bad_request", message=f"unexpected {type(message).__name__}"))

    async def _answer_later(self, answer: Any, reply: Reply) -> None:
        try:
            reply(await answer)
        except Exception as exc:
            self.log.exception("control request failed")
            reply(ErrorReply(code="internal", message=str(exc)[:4000]))

    def _on_work(self, message: WorkItem) -> None:
        if isinstance(message, Dispatch):
            self.worker.on_dispatch(message)
        elif isinstance(message, CancelAttempt):
            self.worker.on_cancel(message)
        elif isinstance(message, ResultAck):
            self.worker.on_ack(message)
        else:
            self.coordination.on_message(message)

    def _publish_load(self) -> None:
        self.gossip.set("busy", self.worker.busy)  # no-ops while unchanged
        self.gossip.set("queue", self.worker.queued)

    def _on_link(self, addr: str, message: AnyMessage) -> None:
        if isinstance(message, SynAck):
            self._send(self.gossip.receive(message, time.monotonic(), self.rng), link=addr)
            self._handle_events()
        else:
            self.counters["dropped_unexpected"] += 1

    def _on_sighting(self, sighting: Sighting) -> None:
        # Same node id at another address is a copied state dir: gossip detects it.
        if sighting.address != self.address:
            self.gossip.add_contact(sighting.address)

    # ------------------------------------------------------------ membership events

    def _handle_events(self) -> None:
        for event in self.gossip.drain_events():
            self._log_event(event)

    def _log_event(self, event: Event) -> None:
        if isinstance(event, MemberChanged):
            node = self.gossip.state.nodes.get(event.node_id)
            name = event.name or (node.get("name") if node else None)
            old = event.old.value if event.old else "new"
            new = event.new.value if event.new else "forgotten"
            gone = event.new in (Liveness.DEAD, Liveness.LEFT, None)
            known = self._known_generation.get(event.node_id)
            restarted = known is not None and event.generation > known
            self._known_generation[event.node_id] = event.generation
            if gone or restarted:
                self.coordination.on_peer_gone(event.node_id)
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
        elif isinstance(event, IdentityConflict):
            self._on_identity_conflict(event)

    def _on_identity_conflict(self, event: IdentityConflict) -> None:
        if event.other_addr == "?" or event.other_addr in self._handled_conflicts:
            return
        self._handled_conflicts.add(event.other_addr)
        self.counters["identity_conflicts"] += 1
        newcomer = event.other_addr == "(mDNS)"  # our name was taken at startup
        if not newcomer and keeps_identity(self.address, event.other_addr):
            # Above the twin's generation: peers that merged its state drop it for ours.
            self.generation = next_generation(self.config.state_dir, event.other_generation)
            self.log.error(
                "IDENTITY CONFLICT: the node at %s also uses node id %s (was a state dir "
                "copied?). This node keeps the id with a new generation %d; the other "
                "takes a new id.",
                event.other_addr,
                self.node_id,
                self.generation,
            )
        else:
            old = self.node_id
            self.node_id = new_node_id()
            write_node_id(self.config.state_dir, self.node_id)
            self.generation = next_generation(self.config.state_dir)
            self.log.error(
                "IDENTITY CONFLICT: the node at %s also uses node id %s (was a state dir "
                "copied?). This node takes the new id %s.",
                event.other_addr,
                old,
                self.node_id,
            )
            if self.config.mdns:
                self._spawn(self._restart_discovery())
        contacts = {m.state.get("addr") for m in self.gossip.members(time.monotonic())}
        self.worker.node_id = self.coordination.node_id = self.node_id
        self.gossip = self._new_gossip(self.node_id, self.generation)
        for addr in contacts:
            if addr:
                self.gossip.add_contact(addr)

    async def _restart_discovery(self) -> None:
        if self.discovery is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.discovery.stop(), 3.0)
        await self._start_discovery()

    # ------------------------------------------------------------ tasks

    def _send_to(self, addr: str, message: Any) -> bool:
        if addr == self.address:
            # To ourselves: handle it on the next loop turn, as if it came in.
            asyncio.get_running_loop().call_soon(self._on_server, message, _no_reply, False)
            return True
        return self.transport.send(addr, message)

    def _address_of(self, node_id: str) -> str | None:
        node = self.gossip.state.nodes.get(node_id)
        if node is None or self.gossip.liveness(node_id) not in (Liveness.ALIVE, Liveness.SUSPECT):
            return None
        addr = node.get("addr")
        return addr if isinstance(addr, str) else None

    def _capacities(self, loads: dict[str, NodeLoad]) -> list[PeerCapacity]:
        """The peers as pricing sees them, with the freshest count of each one's
        shell/python attempts held: our own exactly, for a peer that spoke in the last
        REPORT_FRESH_S ours now plus what it held of others' then, else the larger of
        ours and what it gossiped (up to a gossip round old)."""
        out = []
        now = time.monotonic()
        for m in self.members():
            values = {k: v.value for k, v in m.state.kvs.items()}
            load = loads.get(m.node_id)
            ours = 0 if load is None else load.slots
            report = self.coordination.reports.get(m.node_id)
            if m.is_self:
                held = max(ours, self.worker.load)
            elif report is not None and now - report.at < REPORT_FRESH_S:
                held = ours + report.others()
            else:
                held = max(ours, _count(values.get("busy")) + _count(values.get("queue")))
            values["queue"] = 0  # counted in held
            out.append(
                peer_from_gossip(
                    m.node_id,
                    values,
                    alive=m.liveness is Liveness.ALIVE,
                    rtt_s=0.0 if m.is_self else m.rtt_s,
                    slots_busy=held,
                    model_in_flight=None if load is None else load.models,
                )
            )
        return out

    def peer_facts(self) -> list[PeerFacts]:
        facts = []
        for m in self.members():
            if m.liveness is not Liveness.ALIVE:
                continue
            state = m.state
            hw = state.get("hw") or {}
            gpus = hw.get("gpus") or []
            models = state.get("models") or []
            facts.append(
                PeerFacts(
                    name=state.get("name") or m.node_id,
                    node_id=m.node_id,
                    capabilities=frozenset(c for p in models for c in p.get("capabilities", [])),
                    models=frozenset(p.get("name", "") for p in models),
                    max_vram_total=max((g.get("vram_total", 0) for g in gpus), default=0),
                    ram_total=(hw.get("memory") or {}).get("total", 0),
                    allow_shell=bool(state.get("allow_shell", True)),
                )
            )
        return facts

    # ------------------------------------------------------------ NodeFacade

    @property
    def name(self) -> str:
        return self.config.name

    def members(self) -> list[Member]:
        return self.gossip.members(time.monotonic())

    def join_token(self) -> str:
        alive = [
            m.state.get("addr")
            for m in self.members()
            if not m.is_self and m.liveness is Liveness.ALIVE and m.state.get("addr")
        ]
        return make_join_token(self.keys.secret, [self.address, *alive[:4]])

    def stats(self) -> dict[str, int]:
        out: Counter[str] = Counter(self.counters)
        out.update({f"gossip_{k}": v for k, v in self.gossip.counters.items()})
        if self.discovery is not None:
            out.update({f"mdns_{k}": v for k, v in self.discovery.counters.items()})
        out.update({f"worker_{k}": v for k, v in self.worker.counters.items()})
        out.update({f"tasks_{k}": v for k, v in self.coordination.counters.items()})
        out["journal_writes"] = self.coordination.journal_writes
        out["store_transactions"] = self.store.transactions
        for m in self.members():
            out[f"peers_{m.liveness.value}"] += 1
        out["links"] = len(self.transport.links)
        return dict(sorted(out.items()))
