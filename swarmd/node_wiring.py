"""How a :class:`swarmd.node.Node` builds its pieces at start: membership, the journal,
the coordinator, the worker, pricing's view of the peers, trust, enrollment and the
usage book, each handed the callbacks that connect it to the others. Every piece is
set as the node's attribute of the same name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .control import Control
from .core.budget import Budgets
from .core.failure import Liveness
from .core.pricing import PeerCapacity
from .core.tasks import CoordinatorConfig, NodeLoad
from .engine_host import EngineHost
from .enrollment import Enrollment
from .executors import Limits
from .forwarding import Forwarder
from .journal_open import open_store
from .membership import Membership
from .own_state import OwnState
from .peer_view import PricingView
from .replication import Replication
from .statedir import LocalIdentity, StartupError
from .store import Store
from .successor import Successor
from .trust import Trust
from .usage import Usage
from .work import Clock, Coordination
from .worker import Worker

if TYPE_CHECKING:
    from .node import Node


def build(
    node: Node, ident: LocalIdentity, own: OwnState
) -> tuple[Membership, Coordination, Worker]:
    """Every piece, wired; the three the node's loops run."""
    membership = _membership(node, ident, own)
    node.control = Control(node)
    node.store, node.journal_moved = store, _ = open_store(
        node.config.state_dir / "swarmd.db", node.log
    )
    store.start_checkpointer()
    node.health.on_change = node._on_journal_health
    coordination = _coordination(node, ident, store, membership)
    worker = _worker(node, ident, own, store, membership)
    own.serving = worker  # measurements and requests in flight, gossiped
    node.trust = Trust(ident.revoked, node.counters, node.log, node._on_revoked, node._shut_out)
    node.enrollment = Enrollment(
        node.config.state_dir,
        ident.keys,
        lambda: (node.address, node.members()),
        node.counters,
        node.log,
        ident.issuer,
    )
    node.pricing = PricingView(
        membership.members,
        coordination.reports,
        lambda: worker.load,
        ident.revoked,
        worker.model_use_by,
    )
    node.control.forwarder = forwarder = Forwarder(
        members=membership.members,
        send=node._send_to,
        counters=node.counters,
        log=node.log.getChild("forwarding"),
    )

    def peer_gone(node_id: str) -> None:
        coordination.on_peer_gone(node_id)
        forwarder.on_peer_gone(node_id)

    membership.on_peer_gone = peer_gone
    _succession(node, membership, coordination, worker)
    membership.on_new_identity = node._on_new_identity
    _usage(node, store, membership, coordination)
    return membership, coordination, worker


def _membership(node: Node, ident: LocalIdentity, own: OwnState) -> Membership:
    cfg = node.config
    node.membership = membership = Membership(
        node_id=ident.node_id,
        generation=ident.generation,
        address=node.address,
        seeds=ident.seeds,
        state_dir=cfg.state_dir,
        config=cfg.gossip,
        own_values=own.values,
        send=node._send_to,
        counters=node.counters,
        log=node.log,
    )
    return membership


def _coordination(
    node: Node, ident: LocalIdentity, store: Store, membership: Membership
) -> Coordination:
    cfg = node.config

    def peers(loads: dict[str, NodeLoad]) -> list[PeerCapacity]:
        assert node.pricing is not None  # built right after; used only once running
        return node.pricing.capacities(loads)

    node.coordination = coordination = Coordination(
        node_id=ident.node_id,
        node_name=cfg.name,
        store=store,
        send=node._send_to,
        address_of=membership.address_of,
        generation_of=membership.generation_of,
        peers=peers,
        me=lambda: membership.me,
        clock=Clock(),
        log=node.log.getChild("tasks"),
        config=CoordinatorConfig(
            retention=cfg.retention,
            llm_grouping=cfg.llm_grouping,
            group_max_tokens=cfg.llm_group_max_tokens,
            shares=cfg.queue_shares,
            patience_s=cfg.starved_after_s,
        ),
        health=node.health,
    )
    return coordination


def _worker(
    node: Node, ident: LocalIdentity, own: OwnState, store: Store, membership: Membership
) -> Worker:
    cfg = node.config
    if cfg.engines:
        try:
            node.engines = EngineHost(cfg.engines, cfg.state_dir, node.log.getChild("engines"))
        except ValueError as exc:  # an adapter refused its settings
            raise StartupError(f"[engines]: {exc}") from None
    node.worker = worker = Worker(
        node_id=ident.node_id,
        store=store,
        send=node._send_to,
        workdir_root=cfg.state_dir / "work",
        slots=cfg.max_concurrency,
        queue=cfg.max_queue,
        allow_shell=cfg.allow_shell,
        models={m.name: (m.endpoint, m.model, m.max_concurrency) for m in cfg.models},
        log=node.log.getChild("worker"),
        generation=membership.generation,
        resources=own.resources(),
        limits=Limits(max_artifact_bytes=cfg.max_artifact_bytes),
        health=node.health,
        engines=node.engines,
    )
    return worker


def _usage(node: Node, store: Store, membership: Membership, coordination: Coordination) -> None:
    """The usage book, read back from the store, fed by the coordinator's results
    and written with its group commits."""
    node.usage = usage = Usage(
        node_id=lambda: node.node_id,
        name=node.config.name,
        members=membership.members,
        send=node._send_to,
        budgets=Budgets(node.config.budgets),
        clock=coordination.clock,
        log=node.log.getChild("usage"),
        counters=node.counters,
    )
    usage.load(store.usage_rows())
    coordination.coordinator.usage = usage.book
    coordination.commits.usage = usage.book


def _succession(
    node: Node, membership: Membership, coordination: Coordination, worker: Worker
) -> None:
    """Tasks survive their coordinator: replicas to successors, adoption, fencing."""
    up = (Liveness.ALIVE, Liveness.SUSPECT)
    known = (Liveness.ALIVE, Liveness.SUSPECT, Liveness.DEAD, Liveness.SLEEPING)

    def live() -> list[str]:
        return [
            m.node_id
            for m in membership.members()
            if not m.is_self and m.liveness is Liveness.ALIVE
        ]

    def is_up(node_id: str) -> bool:
        return membership.gossip.liveness(node_id) in up

    def peers_known() -> int:
        """Other members known and not departed (alive, suspect, dead or sleeping)."""
        return sum(1 for m in membership.members() if not m.is_self and m.liveness in known)

    log = node.log.getChild("tasks")
    coordination.replication = replication = Replication(
        coordination=coordination,
        send=node._send_to,
        live=live,
        address_of=membership.address_of,
        me=lambda: membership.me,
        log=log,
    )
    coordination.successor = Successor(
        coordination=coordination,
        replication=replication,
        worker=worker,
        send=node._send_to,
        is_up=is_up,
        live_addresses=membership.alive_addresses,
        address_of=membership.address_of,
        peers_known=peers_known,
        me=lambda: membership.me,
        adopt_after_s=node.config.adopt_after_s,
        log=log,
    )
    coordination.commits.on_written = replication.on_written
