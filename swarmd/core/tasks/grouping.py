"""Grouping small llm subtasks: several ready in one schedule pass, for the same model
profile, go to one node together, up to that profile's free concurrency.

A schedule pass (:mod:`swarmd.core.tasks.scheduler`) prices the first small llm subtask
of a kind as usual; its winner opens a *group* on that node with room for as many more
as the profile there can still run at once (``max_concurrency - in_flight`` after it).
The next ready subtasks of the same kind join the group without being priced again,
until the room is used up; the one after that is priced anew (the node is full now, so
another one may win) and opens the next group. The worker runs a group's attempts
concurrently against its endpoint, so a server that batches (vLLM, llama.cpp's
``--parallel``) decodes them together; the group's dispatches leave in one frame
(one turn's messages to one peer travel as one ``Bundle``).

*Small*: ``est_tokens`` (prompt estimate + ``max_tokens``) at most
``CoordinatorConfig.group_max_tokens``. A small request's time is mostly the fixed
cost of a round trip and of the first token, which a batch shares; a big one is
compute-bound, so big ones are priced one by one and may spread over nodes.

*Same kind*: the same demand apart from its token estimate (model or capability, pin,
memory), and the same nodes it failed on. Sans-I/O, plain data: the scheduler owns a
:class:`Groups` for one pass only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TypeAlias

from swarmd.core.pricing import Candidate, Demand, PeerCapacity, Placement
from swarmd.core.tasks.records import GroupNote, SubtaskRecord

GroupKey: TypeAlias = tuple[Demand, frozenset[str]]  # demand sans est_tokens, failed nodes


def group_key(rec: SubtaskRecord, max_tokens: int) -> GroupKey | None:
    """The kind ``rec`` groups with, or None when it is not a small llm subtask."""
    demand = rec.demand
    if demand is None or demand.kind != "llm" or demand.est_tokens > max_tokens:
        return None
    return (replace(demand, est_tokens=0), rec.failed_nodes())


def free_concurrency(peer: PeerCapacity | None, model: str | None) -> int:
    """How many more requests the ``model`` profile on ``peer`` runs at once now."""
    if peer is None or model is None:
        return 0
    for offer in peer.models:
        if offer.name == model:
            return max(1, offer.max_concurrency) - offer.in_flight
    return 0


@dataclass(slots=True)
class Group:
    """Small subtasks of one kind placed together on ``winner``'s node in this pass."""

    winner: Candidate
    placement: Placement  # the lead's pricing, shared by every member
    rest: tuple[Candidate, ...]  # where a member goes if the node refuses it
    room: int  # members it still takes (the profile's free concurrency)
    note: GroupNote  # shared by the members: what explain shows


class Groups:
    """The groups open in one schedule pass, by kind."""

    def __init__(self) -> None:
        self._open: dict[GroupKey, Group] = {}
        self.joined = 0  # subtasks placed by joining a group (not priced)

    def join(self, key: GroupKey, rec: SubtaskRecord) -> Group | None:
        """The open group of ``key`` with room, now with ``rec`` in it; None if none."""
        group = self._open.get(key)
        if group is None or group.room <= 0:
            return None
        group.room -= 1
        group.note.size += 1
        rec.group = group.note
        self.joined += 1
        return group

    def open(
        self,
        key: GroupKey,
        rec: SubtaskRecord,
        placement: Placement,
        rest: tuple[Candidate, ...],
        view: Mapping[str, PeerCapacity],
    ) -> None:
        """``rec`` was priced and placed (``view`` counts it already): the next ones of
        its kind may follow it while its node's profile has room."""
        winner = placement.winner
        assert winner is not None
        room = free_concurrency(view.get(winner.node_id), winner.model)
        note = GroupNote(rec.task_id, rec.id, winner.node_id, winner.name, winner.model)
        self._open[key] = Group(winner, placement, rest, room, note)
        rec.group = note
