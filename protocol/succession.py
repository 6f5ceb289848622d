"""Succession messages (version 6): a coordinator's task replicas on its successor, and
the claims that tell workers and former coordinators who coordinates a task now
(swarmd/core/succession.py has the design)."""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta, Struct

from protocol.base import Count, Files, Message, NodeId, TaskId
from protocol.gossip import NodeRef

MAX_REPLICA_TASKS = 4096  # tasks in one replica_put (the frame limit bounds it too)
MAX_REPLICA_RECORDS = 100_000  # records of one task in one put (a task's subtasks + 2)
REPLICA_INPUTS_MAX = 4 * 1024 * 1024  # input bytes a replica carries; beyond: a reference
Epoch = Annotated[int, Meta(ge=1)]


class ReplicaRecord(Struct, array_like=True, frozen=True):
    """One journal snapshot: kind ("task", "task_state", "subtask", "forget") and data."""

    kind: Annotated[str, Meta(max_length=32)]
    data: dict[str, Any]


class ReplicaTask(Struct, kw_only=True, forbid_unknown_fields=False):
    """A task's records since the last put (``full``: all of them: what the successor
    held of it before is replaced). ``inputs``: its input files, in a full put when
    they total at most REPLICA_INPUTS_MAX; else ``inputs_at`` names the coordinator
    node that keeps them (a reference, not a copy)."""

    task: TaskId
    epoch: Epoch
    full: bool = False
    records: Annotated[list[ReplicaRecord], Meta(max_length=MAX_REPLICA_RECORDS)] = []
    inputs: Files = {}
    inputs_at: NodeId | None = None
    version: float = 0.0  # the coordinator's clock when sent: a replica's freshness
    # Artifacts of results committed since the last put (subtask -> name -> bytes):
    # those that travelled inline (at most 1 MiB each result); a result whose artifacts
    # came as a blob stays on its coordinator.
    artifacts: dict[Annotated[str, Meta(max_length=64)], Files] = {}


class ReplicaPut(Message, tag="replica_put"):
    """Coordinator -> its successor: replica records, acknowledged by ``replica_ack``
    with the same ``seq`` (sent again until then)."""

    seq: Count
    coordinator: NodeRef
    tasks: Annotated[list[ReplicaTask], Meta(min_length=1, max_length=MAX_REPLICA_TASKS)]


class ReplicaAck(Message, tag="replica_ack"):
    """Successor -> coordinator: the put ``seq`` is stored durably (``refused``: tasks
    it would not take: adopted here already, or of an older epoch)."""

    seq: Count
    refused: Annotated[list[TaskId], Meta(max_length=MAX_REPLICA_TASKS)] = []


class ReplicaDrop(Message, tag="replica_drop"):
    """Coordinator -> a former successor: forget these replicas (another node holds
    them now)."""

    tasks: Annotated[list[TaskId], Meta(min_length=1, max_length=MAX_REPLICA_TASKS)]


class TaskClaim(Struct, array_like=True, frozen=True):
    """``coordinator`` coordinates ``task`` at ``epoch`` (``adopted``: it took the task
    over; false: it only holds the replica of that epoch, not adopted)."""

    task: TaskId
    epoch: Epoch
    coordinator: NodeRef
    adopted: bool
    # A replica's freshness: the coordinator's clock when it last sent records of the
    # task (a holder that missed puts has an older one: it does not adopt).
    version: float = 0.0


class Succession(Message, tag="succession"):
    """Who coordinates these tasks now: from an adopting successor to every live node
    (workers re-point their attempts and outbox), to a former coordinator when it is
    back, as the answer to ``task_query``, and from a worker to a coordinator whose
    dispatch named a superseded epoch."""

    claims: Annotated[list[TaskClaim], Meta(min_length=1, max_length=MAX_REPLICA_TASKS)]


class TaskQuery(Message, tag="task_query"):
    """A restarted coordinator -> peers: did anyone take these tasks over? Answered by a
    ``succession`` for those the peer holds (adopted or only replicated)."""

    tasks: Annotated[list[TaskId], Meta(min_length=1, max_length=MAX_REPLICA_TASKS)]


SuccessionMessage = ReplicaPut | ReplicaAck | ReplicaDrop | Succession | TaskQuery
