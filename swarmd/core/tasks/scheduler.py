"""The schedule pass: walk the ready subtasks in order, price each against the live
view of the peers (:func:`swarmd.core.pricing.price`), dispatch it to the winner.
Small llm subtasks of one kind follow the first one priced to its node, up to the
profile's free concurrency there (:mod:`swarmd.core.tasks.grouping`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from swarmd.core.pricing import Demand, PeerCapacity, Placement, price, reprice
from swarmd.core.tasks.backlog import Kind
from swarmd.core.tasks.effects import Batch, Effect
from swarmd.core.tasks.grouping import Groups, group_key
from swarmd.core.tasks.lifecycle import Lifecycle
from swarmd.core.tasks.records import SubtaskRecord, TaskRecord

# (demand, nodes excluded) -> its placement in this pass, and the nodes changed since
_Priced = dict[tuple[Demand, frozenset[str]], tuple[Placement, set[str]]]


class Scheduler(Lifecycle):
    def ready_count(self) -> int:
        """Subtasks queued ready (backing off or not): a pass has work only then."""
        return len(self._backlog)

    def schedule(self, peers: Sequence[PeerCapacity], now: float) -> list[Effect]:
        """One placement pass: walk the ready queue in order, price each subtask that
        is not backing off against ``peers`` and dispatch it to the winner. What cannot
        be placed now stays ready (its placement is kept for explain). Within the pass
        each dispatch counts as one more busy slot (or model request) on its node.

        The pass stops early once every kind of queued demand (demand and failed
        nodes) has found no peer: dispatches only make peers busier, so nothing after
        that could be placed in this pass (and a queue of 10,000 subtasks costs a walk
        of the few first ones, not of all of them, each time a slot frees)."""
        batch = Batch()
        if not len(self._backlog):
            return []
        view = {p.node_id: p for p in peers}
        priced: _Priced = {}
        groups = Groups()
        blocked: set[Kind] = set()
        for key in self._backlog.walk(now):
            task = self._tasks[key[0]]
            rec = task.subtasks[key[1]]
            if rec.not_before > now or rec.demand is None:
                continue
            if not self._place(batch, task, rec, view, priced, groups, now):
                blocked.add(self._backlog.kind(key))
                if len(blocked) == self._backlog.kinds():
                    break
        if groups.joined:
            self.counters["grouped"] += groups.joined
        return self._finish(batch)

    def _place(
        self,
        batch: Batch,
        task: TaskRecord,
        rec: SubtaskRecord,
        view: dict[str, PeerCapacity],
        priced: _Priced,
        groups: Groups,
        now: float,
    ) -> bool:
        """Dispatch ``rec``: with the open group of its kind if it is a small llm
        subtask and one has room, else to the winner of its own pricing (opening a
        group there). False: no peer can take it now."""
        gkey = group_key(rec, self.config.group_max_tokens) if self.config.llm_grouping else None
        group = groups.join(gkey, rec) if gkey is not None else None
        if group is not None:
            rec.last_placement = group.placement
            placement, winner, rest = group.placement, group.winner, group.rest
        else:
            rec.group = None
            placement = self._price(rec, view, priced)
            if placement.winner is None:
                return False
            winner = placement.winner
            rest = tuple(
                c for c in placement.candidates if c.feasible and c.node_id != winner.node_id
            )
        self._backlog.take((task.id, rec.id))
        self._dispatch(batch, task, rec, "dispatch", winner, placement, rest, now)
        peer = view.get(winner.node_id)
        if peer is not None:
            view[winner.node_id] = _one_more(peer, winner.model)
            for _, changed in priced.values():
                changed.add(winner.node_id)
        if gkey is not None and group is None:
            groups.open(gkey, rec, placement, rest, view)
        return True

    def _price(
        self, rec: SubtaskRecord, view: dict[str, PeerCapacity], priced: _Priced
    ) -> Placement:
        """Each distinct demand is priced against every peer once per pass; after that
        only against the peers a dispatch has changed since."""
        demand = rec.demand
        assert demand is not None
        # Prefer peers this subtask has not failed on; fall back to them if none else fits.
        failed = rec.failed_nodes()
        tries = [failed, frozenset()] if failed else [frozenset()]
        placement: Placement | None = None
        for exclude in tries:
            known = priced.get((demand, exclude))
            if known is None:
                peers = list(view.values())
                placement = price(demand, peers, self.pricing, exclude, throughput=self.throughput)
            elif known[1] and (known[0].winner is not None):
                # Dispatches only make peers busier: an infeasible demand stays so.
                changed = [view[n] for n in known[1]]
                placement = reprice(
                    known[0], demand, changed, self.pricing, exclude, throughput=self.throughput
                )
            else:
                placement = known[0]
            priced[(demand, exclude)] = (placement, set())
            if placement.winner is not None:
                break
        assert placement is not None
        rec.last_placement = placement
        rec.priced += 1
        if placement.winner is None:
            self.counters["unplaceable"] += 1
        return placement


def _one_more(peer: PeerCapacity, model: str | None) -> PeerCapacity:
    """The peer with one more request on ``model`` (llm) or one more busy slot."""
    if model is not None:
        models = tuple(
            replace(m, in_flight=m.in_flight + 1) if m.name == model else m for m in peer.models
        )
        return replace(peer, models=models)
    return replace(peer, slots_busy=peer.slots_busy + 1)
