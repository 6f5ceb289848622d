"""The schedule pass: walk the ready subtasks in order, price each against the live
view of the peers (:func:`swarmd.core.pricing.price`), dispatch it to the winner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from swarmd.core.pricing import Demand, PeerCapacity, Placement, price
from swarmd.core.tasks.backlog import Kind
from swarmd.core.tasks.effects import Batch, Effect
from swarmd.core.tasks.lifecycle import Lifecycle
from swarmd.core.tasks.records import SubtaskRecord


class Scheduler(Lifecycle):
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
        infeasible: dict[tuple[Demand, frozenset[str]], Placement] = {}
        blocked: set[Kind] = set()
        for key in self._backlog.walk(now):
            task = self._tasks[key[0]]
            rec = task.subtasks[key[1]]
            if rec.not_before > now or rec.demand is None:
                continue
            placement = self._price(rec, list(view.values()), infeasible)
            winner = placement.winner
            if winner is None:
                blocked.add(self._backlog.kind(key))
                if len(blocked) == self._backlog.kinds():
                    break
                continue
            self._backlog.take(key)
            rest = tuple(
                c for c in placement.candidates if c.feasible and c.node_id != winner.node_id
            )
            self._dispatch(batch, task, rec, "dispatch", winner, placement, rest, now)
            peer = view.get(winner.node_id)
            if peer is not None:
                view[winner.node_id] = _one_more(peer, winner.model)
        return self._finish(batch)

    def _price(
        self,
        rec: SubtaskRecord,
        peers: Sequence[PeerCapacity],
        infeasible: dict[tuple[Demand, frozenset[str]], Placement],
    ) -> Placement:
        assert rec.demand is not None
        # Prefer peers this subtask has not failed on; fall back to them if none else fits.
        failed = rec.failed_nodes()
        tries = [failed, frozenset()] if failed else [frozenset()]
        placement: Placement | None = None
        for exclude in tries:
            cache_key = (rec.demand, exclude)
            cached = infeasible.get(cache_key)
            if cached is not None:
                placement = cached
                continue
            placement = price(rec.demand, peers, self.pricing, exclude, throughput=self.throughput)
            if placement.winner is not None:
                break
            # Dispatches only make peers busier, so it stays infeasible in this pass.
            infeasible[cache_key] = placement
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
