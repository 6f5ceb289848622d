"""Work messages between nodes: dispatch, refusal, progress, streamed answers, result, ack,
cancel, bundle."""

from __future__ import annotations

from typing import Annotated, Any

from msgspec import Meta, Struct

from protocol.base import (
    CHUNK_BYTES,
    LOG_CHUNK_BYTES,
    STREAM_CHUNK_BYTES,
    Count,
    Files,
    Message,
    Name,
    NodeId,
    Sha256,
    TaskId,
    Text,
)
from protocol.gossip import NodeRef
from protocol.succession import ReplicaAck, ReplicaDrop, ReplicaPut, Succession, TaskQuery


class Dispatch(Message, tag="dispatch"):
    """Coordinator -> worker: run this attempt (templates already rendered)."""

    task: TaskId
    subtask: Annotated[str, Meta(max_length=64)]
    attempt: Annotated[int, Meta(ge=1)]
    coordinator: NodeRef
    lease_s: Annotated[float, Meta(gt=0)]
    spec: dict[str, Any]
    inputs: Files = {}
    model: Name | None = None
    # The worker's generation when this attempt was first sent: a worker that restarted
    # since (another generation) refuses it, so a dispatch sent again after a lost
    # answer never runs an attempt twice on one node.
    generation: Count | None = None
    # The task's coordinator epoch (version 6): 1 until a successor adopts the task; a
    # worker that knows a newer one refuses the dispatch (swarmd/core/succession.py).
    epoch: Annotated[int, Meta(ge=1)] = 1


class DispatchReply(Message, tag="dispatch_reply"):
    """Worker -> coordinator: a refusal (full, draining, a kind it does not run). Since
    version 2 an accepted attempt gets no reply: its first ``progress`` says it started."""

    task: TaskId
    subtask: Annotated[str, Meta(max_length=64)]
    attempt: Annotated[int, Meta(ge=1)]
    accepted: bool
    reason: Text = ""
    load: Count | None = None  # the worker's attempts held (running + queued) when sent


class Progress(Message, tag="progress"):
    """Worker -> coordinator when an attempt starts, then while it is held (queued or
    running), every third of its lease: each one extends the lease."""

    task: TaskId
    subtask: Annotated[str, Meta(max_length=64)]
    attempt: Annotated[int, Meta(ge=1)]
    node: NodeId
    note: Text = ""
    load: Count | None = None
    # A shell attempt's output since the last progress (swarmctl logs -f): the bytes
    # and the stream offset they start at.
    out: Annotated[bytes, Meta(max_length=LOG_CHUNK_BYTES)] = b""
    out_at: Count = 0
    err: Annotated[bytes, Meta(max_length=LOG_CHUNK_BYTES)] = b""
    err_at: Count = 0


class BlobRef(Struct, kw_only=True, forbid_unknown_fields=False):
    """A result's artifacts kept on the worker's disk, fetched in chunks (``blob_want``
    / ``blob_chunk``): one byte stream, the manifest (msgpack ``[[name, size, sha256],
    ...]``, ``manifest_bytes`` long) then every artifact's bytes in manifest order."""

    size: Count  # the whole stream: manifest_bytes + the artifacts' sizes
    manifest_bytes: Annotated[int, Meta(ge=1)]
    manifest_sha256: Sha256
    files: Count  # artifacts in the manifest


class AttemptResult(Message, tag="result"):
    """Worker -> coordinator; kept in the worker's outbox until acknowledged."""

    task: TaskId
    subtask: Annotated[str, Meta(max_length=64)]
    attempt: Annotated[int, Meta(ge=1)]
    node: NodeId
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    output: str | None = None
    usage: dict[str, Any] | None = None
    artifacts: Files = {}
    error: str | None = None
    app_failed: bool = False
    load: Count | None = None
    blob: BlobRef | None = None  # version 3: artifacts too big to go inline (then {} above)


class BlobWant(Message, tag="blob_want"):
    """Coordinator -> worker: send ``count`` chunks of the attempt's blob from ``offset``
    (a multiple of CHUNK_BYTES). Each want acknowledges every chunk before ``offset``;
    the chunks between ``offset`` and its end are the transfer's window in flight."""

    task: TaskId
    subtask: Annotated[str, Meta(max_length=64)]
    attempt: Annotated[int, Meta(ge=1)]
    offset: Count
    count: Annotated[int, Meta(ge=1, le=16)]


class BlobChunk(Message, tag="blob_chunk"):
    """Worker -> coordinator: ``data`` at ``offset`` of the attempt's blob and its
    sha256, checked on receipt; or ``error`` (the worker cannot send it: no data)."""

    task: TaskId
    subtask: Annotated[str, Meta(max_length=64)]
    attempt: Annotated[int, Meta(ge=1)]
    offset: Count
    data: Annotated[bytes, Meta(max_length=CHUNK_BYTES)] = b""
    sha256: bytes = b""
    error: Text = ""


class StreamChunk(Message, tag="stream_chunk"):
    """Worker -> coordinator (version 5): the next bytes of a gateway request's answer
    as its endpoint streams them, ready to write to the client (server-sent events, the
    ``model`` of each event already set back to the name the client asked for).
    ``seq`` counts the attempt's chunks from 0: the coordinator takes them in order and
    ends the client's stream with an error at a gap. The stream's end (or its failure)
    is the attempt's ``result``."""

    task: TaskId
    subtask: Annotated[str, Meta(max_length=64)]
    attempt: Annotated[int, Meta(ge=1)]
    node: NodeId
    seq: Count
    data: Annotated[bytes, Meta(max_length=STREAM_CHUNK_BYTES)]


class ResultAck(Message, tag="result_ack"):
    task: TaskId
    subtask: Annotated[str, Meta(max_length=64)]
    attempt: Annotated[int, Meta(ge=1)]
    committed: bool  # False: a stale attempt, fenced off


class CancelAttempt(Message, tag="cancel_attempt"):
    task: TaskId
    subtask: Annotated[str, Meta(max_length=64)]
    attempt: Annotated[int, Meta(ge=1)]


WorkItem = (
    Dispatch
    | DispatchReply
    | Progress
    | AttemptResult
    | ResultAck
    | CancelAttempt
    | BlobWant
    | BlobChunk
    | StreamChunk
    | ReplicaPut
    | ReplicaAck
    | ReplicaDrop
    | Succession
    | TaskQuery
)


class Bundle(Message, tag="bundle"):
    """Several work messages for one peer in one frame: what a node queued for that peer
    in one turn of its event loop. Each item is handled as if it came alone."""

    items: Annotated[list[WorkItem], Meta(min_length=1, max_length=4096)]
