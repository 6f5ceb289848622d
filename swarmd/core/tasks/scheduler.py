"""The schedule pass: walk the ready subtasks in order, price each against the live
view of the peers (:func:`swarmd.core.pricing.price`), dispatch it to the winner.
Small llm subtasks of one kind follow the first one priced to its node, up to the
profile's free concurrency there (:mod:`swarmd.core.tasks.grouping`).

Each peer's ``free_in_s`` is estimated first from the shell/python attempts this
coordinator holds there (:mod:`swarmd.core.pricing_eft`), and moved on by each dispatch
of the pass. A subtask whose placement says it would finish sooner on a busier peer
(``Placement.wait_for``, look-ahead) is held — not dispatched, that peer reserved for
the rest of the pass — for at most ``PricingConfig.lookahead_max_s`` since it was first
held; a peer that goes away simply stops being priced, which ends the wait.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from swarmd.core.locality import input_s
from swarmd.core.pricing import Candidate, Demand, PeerCapacity, Placement, price, reprice
from swarmd.core.pricing_eft import Held, after_dispatch, free_in
from swarmd.core.tasks.backlog import Kind
from swarmd.core.tasks.effects import Batch, Effect
from swarmd.core.tasks.grouping import Groups, group_key
from swarmd.core.tasks.lifecycle import Lifecycle
from swarmd.core.tasks.records import SubtaskRecord, TaskRecord

# (demand, nodes excluded) -> its placement in this pass, and the nodes changed since
_Priced = dict[tuple[Demand, frozenset[str]], tuple[Placement, set[str]]]


class Scheduler(Lifecycle):
    _pass_now: float = 0.0  # the current pass's time
    _pass_held: dict[str, list[Held]] | None = None  # its attempts out, once looked at
    _pass_free: dict[str, tuple[float, ...]] = {}  # noqa: RUF012 (set anew each pass)
    _pass_holds: Counter[str] = Counter()  # noqa: RUF012 (subtasks held per node, a pass)

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
        self._estimate_full(peers, now)
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
            placement = self._price(rec, self._located(task, rec, view), view, priced)
            if placement.winner is None:
                return False
            wait = placement.wait_for
            if wait is not None and self._may_wait_for(wait, view) and self._may_hold(rec, now):
                self._pass_holds[wait.node_id] += 1
                self._reserve(view, priced, wait, wait.model)
                self.counters["lookahead_held"] += 1
                return True
            winner = placement.winner
            rest = tuple(
                c for c in placement.candidates if c.feasible and c.node_id != winner.node_id
            )
        self._backlog.take((task.id, rec.id))
        rec.held_since = None
        self._dispatch(batch, task, rec, "dispatch", winner, placement, rest, now)
        self._reserve(view, priced, winner, winner.model, busy=True)
        if gkey is not None and group is None:
            groups.open(gkey, rec, placement, rest, view)
        return True

    def _may_wait_for(self, node: Candidate, view: dict[str, PeerCapacity]) -> bool:
        """A pass holds at most one round of subtasks for a busy node (as many as it has
        slots, each reserving the slot it waits for): deeper plans wait for the next
        pass, and a pass costs O(slots), not O(queue)."""
        peer = view.get(node.node_id)
        return peer is not None and self._pass_holds[node.node_id] < max(1, peer.slots_total)

    def _may_hold(self, rec: SubtaskRecord, now: float) -> bool:
        """Look-ahead may keep ``rec`` waiting: for at most lookahead_max_s in all."""
        if rec.held_since is None:
            rec.held_since = now
        return now - rec.held_since < self.pricing.lookahead_max_s

    def _reserve(
        self,
        view: dict[str, PeerCapacity],
        priced: _Priced,
        chosen: Candidate,
        model: str | None,
        *,
        busy: bool = False,
    ) -> None:
        """The peer with the subtask on it: one more attempt (``busy``: dispatched) or
        only its slot time reserved (held for it), so the next subtask sees it busier."""
        node = chosen.node_id
        peer = view.get(node)
        if peer is None:
            return
        if busy:
            peer = view[node] = _one_more(peer, model)
        if model is None and chosen.run_s is not None:
            free = self._pass_free.get(node)
            if free:
                self._pass_free[node] = after_dispatch(free, chosen.run_s, chosen.input_s)
            elif _full(peer):  # full now: its slots estimated from here on
                self._pass_free[node] = self._estimated(peer, self._held_now())
        for _, changed in priced.values():
            changed.add(node)

    def _estimate_full(self, peers: Sequence[PeerCapacity], now: float) -> None:
        """This pass's ``free_in`` of the peers with every slot taken, estimated from the
        shell/python attempts this coordinator holds there (the others have a slot
        free now: no wait, whatever they hold)."""
        self._pass_now, self._pass_held, self._pass_free = now, None, {}
        self._pass_holds = Counter()
        for p in peers:
            if _full(p):
                self._pass_free[p.node_id] = self._estimated(p, self._held_now())

    def _held_now(self) -> dict[str, list[Held]]:
        """This pass's shell/python attempts out per node, as estimated when sent (kept
        on each record for its attempt: one look per attempt out, per pass)."""
        if self._pass_held is not None:
            return self._pass_held
        held: dict[str, list[Held]] = {}
        for rec in self._in_flight.values():
            known = rec.held
            if known is None or known[0] != rec.attempt:
                known = rec.held = self._held_of(rec)
            if known[1]:
                held.setdefault(known[1], []).append(known[2])
        self._pass_held = held
        return held

    def _held_of(self, rec: SubtaskRecord) -> tuple[int, str, Held]:
        """(attempt, node id or "" if none or llm, its estimate)."""
        current = rec.current
        if current is None or rec.spec.kind == "llm":
            return (rec.attempt, "", Held(0.0, 0.0))
        chosen = rec.placements[-1].winner if rec.placements else None
        if chosen is None or chosen.node_id != current.node_id or chosen.run_s is None:
            return (
                rec.attempt,
                current.node_id,
                Held(current.started, self.pricing.default_shell_s),
            )
        return (rec.attempt, current.node_id, Held(current.started, chosen.run_s, chosen.input_s))

    def _estimated(self, peer: PeerCapacity, held: dict[str, list[Held]]) -> tuple[float, ...]:
        """``peer``'s slots: ours as estimated, the rest of what it holds at
        queue_slot_wait_s each."""
        mine = held.get(peer.node_id, ())
        others = peer.slots_busy + peer.queue - len(mine)
        wait = self.pricing.queue_slot_wait_s
        return free_in(peer.slots_total, mine, self._pass_now, others=others, other_s=wait)

    def _located(
        self, task: TaskRecord, rec: SubtaskRecord, view: dict[str, PeerCapacity]
    ) -> Demand:
        """``rec.demand`` with ``input_s``: the time to ship its input files and the
        upstream artifacts it takes in from this node (which holds them) to each other
        peer, at the measured bandwidth."""
        demand = rec.demand
        assert demand is not None
        shipped = rec.spec.inputs or rec.spec.upstream_inputs
        if self.input_bytes is None or not shipped or demand.kind == "llm":
            return demand
        if rec.input_bytes is None:
            rec.input_bytes = self.input_bytes(task.id, rec.spec)
        seconds = input_s(rec.input_bytes, self.node_id, view, self.bandwidth, self.node_id)
        return replace(demand, input_s=seconds) if seconds else demand

    def _price(
        self,
        rec: SubtaskRecord,
        demand: Demand,
        view: dict[str, PeerCapacity],
        priced: _Priced,
    ) -> Placement:
        """Each distinct demand is priced against every peer once per pass; after that
        only against the peers a dispatch has changed since."""
        # Prefer peers this subtask has not failed on; fall back to them if none else fits.
        failed = rec.failed_nodes()
        tries = [failed, frozenset()] if failed else [frozenset()]
        placement: Placement | None = None
        for exclude in tries:
            known = priced.get((demand, exclude))
            if known is None:
                peers = list(view.values())
                placement = price(
                    demand,
                    peers,
                    self.pricing,
                    exclude,
                    throughput=self.throughput,
                    free_in=self._pass_free,
                )
            elif known[1] and (known[0].winner is not None):
                # Dispatches only make peers busier: an infeasible demand stays so.
                changed = [view[n] for n in known[1]]
                placement = reprice(
                    known[0],
                    demand,
                    changed,
                    self.pricing,
                    exclude,
                    throughput=self.throughput,
                    free_in=self._pass_free,
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


def _full(peer: PeerCapacity) -> bool:
    """Every shell/python slot taken (a subtask sent there would wait)."""
    return 0 < peer.slots_total <= peer.slots_busy + peer.queue


def _one_more(peer: PeerCapacity, model: str | None) -> PeerCapacity:
    """The peer with one more request on ``model`` (llm) or one more busy slot."""
    if model is not None:
        models = tuple(
            replace(m, in_flight=m.in_flight + 1) if m.name == model else m for m in peer.models
        )
        return replace(peer, models=models)
    return replace(peer, slots_busy=peer.slots_busy + 1)
