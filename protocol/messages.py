"""Every message swarmd and swarmctl exchange, declared once.

A message is a msgpack map with a type tag ``t`` and a protocol version ``v``. The
structs below are the schema: the decoder in :mod:`protocol.codec` validates every
field on receipt, so the daemon only ever sees well-formed objects.

Gossiped node state is a set of versioned key-values; the value schema of each
known key is in :data:`STATE_SCHEMAS` and is checked when a delta is applied.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct, field

PROTOCOL_VERSION = 2  # 2: partial digests, liveness claims, bundled work (PROTOCOL.md)

NodeId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Address = Annotated[str, Meta(min_length=3, max_length=262)]  # host:port
Name = Annotated[str, Meta(max_length=128)]
Text = Annotated[str, Meta(max_length=4096)]
Count = Annotated[int, Meta(ge=0)]
LOG_CHUNK_BYTES = 256 * 1024  # output in one progress message, per stream
Bytes = Annotated[int, Meta(ge=0)]


class Message(Struct, tag_field="t", kw_only=True, forbid_unknown_fields=False):
    """Base of every wire message."""

    v: int = PROTOCOL_VERSION


# ---------------------------------------------------------------- gossip


class NodeRef(Struct, array_like=True, frozen=True):
    """Who sent a gossip message: id, generation, a per-process nonce, address."""

    id: NodeId
    gen: Count
    boot: Count
    addr: Address


class DigestEntry(Struct, array_like=True, frozen=True):
    """What the sender knows of one node: its generation, heartbeat, max version."""

    id: NodeId
    gen: Count
    hb: Count
    maxv: Count


class KV(Struct, array_like=True, frozen=True):
    key: Annotated[str, Meta(min_length=1, max_length=64)]
    value: Any
    version: Annotated[int, Meta(ge=1)]


MAX_NODE_KVS = 256


class NodeDelta(Struct, array_like=True, frozen=True):
    """Key-values of one node newer than ``since``, the version the receiver had.

    ``since`` lets the receiver refuse a delta that would leave a gap (it holds less
    than ``since``), e.g. a late reply to an old digest: applying it would advance its
    max version past values it never received.
    """

    id: NodeId
    gen: Count
    hb: Count
    kvs: Annotated[list[KV], Meta(max_length=MAX_NODE_KVS)]
    since: Count = 0


Verdict = Literal["alive", "suspect", "dead"]


class Claim(Struct, array_like=True, frozen=True):
    """What the sender believes of one node's liveness, as of its heartbeat ``hb``.

    ``suspect``/``dead`` at hb h: nobody it trusts has seen the node beat past h.
    ``alive`` at hb h refutes any suspicion at a lower hb. ``age_ms``: how long ago
    the suspicion began, so every node times it out at about the same moment.
    """

    id: NodeId
    gen: Count
    hb: Count
    verdict: Verdict
    age_ms: Count = 0


MAX_DIGEST = 65536
MAX_NEWS = 1024
Digest = Annotated[list[DigestEntry], Meta(max_length=MAX_DIGEST)]
Delta = Annotated[list[NodeDelta], Meta(max_length=65536)]
News = Annotated[list[Claim], Meta(max_length=MAX_NEWS)]


class Syn(Message, tag="syn"):
    """``complete``: the digest lists every node the sender knows, so a node missing
    from it is one the sender lacks; otherwise it is a bounded sample. ``known``: how
    many nodes the sender knows (0: not said); one far behind sends complete digests."""

    sender: NodeRef
    seq: Count
    digest: Digest
    complete: bool = True
    news: News = []
    known: Count = 0


class SynAck(Message, tag="synack"):
    sender: NodeRef
    seq: Count
    digest: Digest
    delta: Delta
    complete: bool = True
    news: News = []
    known: Count = 0


class Ack(Message, tag="ack"):
    sender: NodeRef
    delta: Delta
    news: News = []


# ---------------------------------------------------------------- node state values


class Cpu(Struct):
    cores: Count
    model: Name = ""
    load: float = 0.0  # 1-minute load average divided by cores


class Memory(Struct):
    total: Bytes
    available: Bytes


class Battery(Struct):
    percent: float
    plugged: bool


class Gpu(Struct):
    name: Name
    vram_total: Bytes
    vram_free: Bytes
    source: Literal["nvml", "declared"]
    utilization: float | None = None  # percent
    temperature: float | None = None  # degrees C


class Hardware(Struct):
    cpu: Cpu
    memory: Memory
    battery: Battery | None = None
    gpus: Annotated[list[Gpu], Meta(max_length=64)] = []
    nvml: bool = False  # whether NVML was available on the node


class ModelProfile(Struct):
    name: Name
    model: Name
    endpoint: Annotated[str, Meta(max_length=1024)]
    capabilities: Annotated[list[Name], Meta(max_length=64)] = []
    max_concurrency: Annotated[int, Meta(ge=1)] = 1
    cost_per_mtok: Annotated[float, Meta(ge=0)] = 0.0
    latency_ms: float | None = None


Models = Annotated[list[ModelProfile], Meta(max_length=64)]

# The keys a node gossips about itself and the schema of each value.
STATE_SCHEMAS: dict[str, Any] = {
    "name": Name,
    "addr": Address,
    "status": Literal["alive", "left"],
    "hw": Hardware,
    "models": Models,
    "draining": bool,
    "queue": Count,  # shell/python attempts held here, queued for a slot
    "slots": Count,  # shell/python attempts this node runs at once
    "queue_max": Count,  # shell/python attempts it holds beyond its slots, at most
    "busy": Count,  # of which in use
    "allow_shell": bool,
    "cost_per_hour": Annotated[float, Meta(ge=0)],
    "on_battery": Literal["pause", "run"],
    "speed": Annotated[float, Meta(gt=0, le=1000)],  # [hardware] speed, for shell/python
}


def validate_state_value(key: str, value: Any) -> Any:
    """Check one gossiped value against its key's schema; unknown keys pass as-is.

    Raises msgspec.ValidationError when a known key carries a malformed value.
    """
    schema = STATE_SCHEMAS.get(key)
    if schema is None:
        return value
    return msgspec.convert(value, schema)


# ---------------------------------------------------------------- control (swarmctl)


class PeersRequest(Message, tag="peers"):
    pass


class PeerView(Struct):
    """One row of ``swarmctl peers --json`` (CONTRACT.md)."""

    id: str
    name: str
    address: str
    state: Literal["alive", "suspect", "dead", "left"]
    is_self: bool = field(name="self")
    generation: int
    draining: bool
    rtt_ms: float | None
    last_seen_s: float | None
    cpu: dict[str, Any]
    memory: dict[str, Any]
    gpus: list[dict[str, Any]]
    models: list[dict[str, Any]]
    battery: dict[str, Any] | None = None


class PeersReply(Message, tag="peers_reply"):
    peers: list[PeerView]


class JoinTokenRequest(Message, tag="join_token"):
    pass


class JoinTokenReply(Message, tag="join_token_reply"):
    token: str


class StatsRequest(Message, tag="stats"):
    pass


class StatsReply(Message, tag="stats_reply"):
    node: str
    name: str
    counters: dict[str, int]


class DrainRequest(Message, tag="drain"):
    """``swarmctl drain`` / ``undrain``: stop (or resume) taking new work on this node.

    Running attempts finish; the node gossips ``draining`` so coordinators stop
    placing work on it."""

    draining: bool = True


class DrainReply(Message, tag="drain_reply"):
    node: str  # id
    name: str
    draining: bool
    running: Count  # attempts still running on the node


class ErrorReply(Message, tag="error"):
    code: Literal["bad_request", "not_allowed", "unsupported", "internal"]
    message: Text


# ---------------------------------------------------------------- tasks (swarmctl -> node)

TaskId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Files = Annotated[dict[str, bytes], Meta(max_length=10000)]


class SubmitRequest(Message, tag="submit"):
    """A job (the JSON-able form of a job file) and the input files it ships."""

    job: dict[str, Any]
    files: Files = {}


class SubmitReply(Message, tag="submit_reply"):
    task: TaskId


class TaskRequest(Message, tag="task"):
    """status / result / cancel / explain of one task."""

    task: TaskId
    what: Literal["status", "result", "cancel", "explain"]
    artifacts: bool = False  # result: include artifact contents


class TaskReply(Message, tag="task_reply"):
    body: dict[str, Any]
    artifacts: dict[str, Files] = {}  # subtask id -> name -> bytes


class WatchRequest(Message, tag="watch"):
    """Answered (with a :class:`WatchReply`) as soon as the task has changed since
    version ``seen``, or is final, or ``timeout_s`` passed: push, not poll."""

    task: TaskId
    seen: Count = 0
    timeout_s: Annotated[float, Meta(ge=0, le=60)] = 10.0
    final_only: bool = False  # answer only when the task ends (or at the timeout)
    with_result: bool = False  # once it ended, the answer carries its result too


class WatchReply(Message, tag="watch_reply"):
    """The task's summary row (``swarmctl tasks``) with ``version``, its change count,
    and ``result`` (as ``swarmctl result --json``) once it ended, if asked."""

    task: dict[str, Any]


class LogsRequest(Message, tag="logs"):
    """A subtask's output from the given stream offsets on; with ``follow`` answered
    once there is more, or it ended, or ``timeout_s`` passed."""

    task: TaskId
    subtask: Annotated[str, Meta(max_length=64)] = ""  # "" for a task's only subtask
    out_at: Count = 0
    err_at: Count = 0
    follow: bool = False
    timeout_s: Annotated[float, Meta(ge=0, le=60)] = 10.0


class LogsReply(Message, tag="logs_reply"):
    subtask: str
    state: str
    out: bytes = b""
    out_at: Count = 0
    err: bytes = b""
    err_at: Count = 0
    final: bool = False  # the subtask ended: nothing more will come


class TasksRequest(Message, tag="tasks"):
    pass


class TasksReply(Message, tag="tasks_reply"):
    tasks: list[dict[str, Any]]


# ---------------------------------------------------------------- work (node <-> node)


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


class ResultAck(Message, tag="result_ack"):
    task: TaskId
    subtask: Annotated[str, Meta(max_length=64)]
    attempt: Annotated[int, Meta(ge=1)]
    committed: bool  # False: a stale attempt, fenced off


class CancelAttempt(Message, tag="cancel_attempt"):
    task: TaskId
    subtask: Annotated[str, Meta(max_length=64)]
    attempt: Annotated[int, Meta(ge=1)]


WorkItem = Dispatch | DispatchReply | Progress | AttemptResult | ResultAck | CancelAttempt


class Bundle(Message, tag="bundle"):
    """Several work messages for one peer in one frame: what a node queued for that peer
    in one turn of its event loop. Each item is handled as if it came alone."""

    items: Annotated[list[WorkItem], Meta(min_length=1, max_length=4096)]


GossipMessage = Syn | SynAck | Ack
ControlRequest = (
    PeersRequest
    | JoinTokenRequest
    | StatsRequest
    | SubmitRequest
    | TaskRequest
    | TasksRequest
    | DrainRequest
    | WatchRequest
    | LogsRequest
)
ControlReply = (
    PeersReply
    | JoinTokenReply
    | StatsReply
    | ErrorReply
    | SubmitReply
    | TaskReply
    | TasksReply
    | DrainReply
    | WatchReply
    | LogsReply
)
WorkMessage = WorkItem | Bundle
AnyMessage = GossipMessage | ControlRequest | ControlReply | WorkMessage

MESSAGE_TYPES: tuple[type[Message], ...] = (
    Syn,
    SynAck,
    Ack,
    PeersRequest,
    PeersReply,
    JoinTokenRequest,
    JoinTokenReply,
    StatsRequest,
    StatsReply,
    DrainRequest,
    DrainReply,
    ErrorReply,
    SubmitRequest,
    SubmitReply,
    TaskRequest,
    TaskReply,
    TasksRequest,
    TasksReply,
    WatchRequest,
    WatchReply,
    LogsRequest,
    LogsReply,
    Dispatch,
    DispatchReply,
    Progress,
    AttemptResult,
    ResultAck,
    CancelAttempt,
    Bundle,
)
