"""Control messages: swarmctl (and the MCP server, the dashboard) to a node."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct, field

from protocol.base import CHUNK_BYTES, Count, Files, Message, Sha256, TaskId, Text


class PeersRequest(Message, tag="peers"):
    pass


class PeerView(Struct):
    """One row of ``swarmctl peers --json`` (CONTRACT.md)."""

    id: str
    name: str
    address: str
    state: Literal["alive", "suspect", "dead", "left", "sleeping"]
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
    refusing: str | None = None  # why it takes no new work besides draining (disk full)
    power: dict[str, Any] | None = None  # {on_ac, battery_percent}; null: not said
    paused: str | None = None  # battery | user-active | draining | disk-full, or null
    pause_detail: str | None = None  # the reason in full, e.g. "battery 22 % < 30 %"
    # Slurm/Ray clusters it fronts: [{name, kind, cpus_idle, gpus_idle, queue, ...}]
    engines: list[dict[str, Any]] = []


class PeersReply(Message, tag="peers_reply"):
    peers: list[PeerView]


MAX_TOKEN_TTL_S = 365 * 86400.0


class JoinTokenRequest(Message, tag="join_token"):
    """A ``swarmd2-`` token for a new ticket: valid ``ttl_s`` seconds, once or often;
    ``admin``: the new node gets the cluster secret, not a membership."""

    ttl_s: Annotated[float, Meta(gt=0, le=MAX_TOKEN_TTL_S)] = 86400.0
    single_use: bool = False
    admin: bool = False


class JoinTokenReply(Message, tag="join_token_reply"):
    token: str
    expires: float = 0.0  # unix time the ticket expires at (0: not said)
    single_use: bool = False


class RevokeRequest(Message, tag="revoke"):
    """``swarmctl revoke NODE``: shut the node out of the cluster for good. Taken only on
    the local control socket (the node signs the entry with the cluster secret)."""

    node: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class RevokeReply(Message, tag="revoke_reply"):
    node: str
    added: bool  # False: it was revoked already
    revoked: list[str]  # every node id this node knows revoked


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
    # unavailable: the node cannot take or show this now (its state dir is full)
    code: Literal["bad_request", "not_allowed", "unsupported", "internal", "unavailable"]
    message: Text


# ---------------------------------------------------------------- tasks (swarmctl -> node)


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


class ArtifactRequest(Message, tag="artifact"):
    """Version 3: a subtask's committed artifacts, read in pieces: from the ``index``-th
    artifact (in name order) at byte ``offset`` on, at most ``max_bytes`` of data."""

    task: TaskId
    subtask: Annotated[str, Meta(max_length=64)]
    index: Count = 0
    offset: Count = 0
    max_bytes: Annotated[int, Meta(ge=1, le=CHUNK_BYTES)] = CHUNK_BYTES


class ArtifactPiece(Struct, array_like=True):
    name: str
    size: Count  # of the whole artifact
    sha256: Sha256  # of the whole artifact
    offset: Count  # where ``data`` starts in it
    data: bytes


class ArtifactReply(Message, tag="artifact_reply"):
    """Pieces in order; ``done``: none follow, else ask again from ``index``/``offset``."""

    pieces: list[ArtifactPiece]
    index: Count = 0
    offset: Count = 0
    done: bool = True


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
    """The tasks this node coordinates; with ``cluster``, every live node's, each row
    with its ``coordinator`` (name, as in ``status``) and ``coordinator_id``."""

    cluster: bool = False
    newest: Count = 0  # only the newest N rows (0: all); the others are counted in truncated


class TasksReply(Message, tag="tasks_reply"):
    tasks: list[dict[str, Any]]
    # cluster lists only: live nodes whose rows are not in it, and why
    missing: Annotated[list[Text], Meta(max_length=4096)] = []
    truncated: Count = 0  # rows left out (the oldest) to keep the reply within its limit
