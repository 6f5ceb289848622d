"""Every message swarmd and swarmctl exchange, declared once.

A message is a msgpack map with a type tag ``t`` and a protocol version ``v``. The
structs below are the schema: the decoder in :mod:`protocol.codec` validates every
field on receipt, so the daemon only ever sees well-formed objects.

The structs live in one module per family (:mod:`protocol.base`, :mod:`protocol.gossip`,
:mod:`protocol.state`, :mod:`protocol.control`, :mod:`protocol.work`); this module
gathers them, with the unions the codec decodes.

Gossiped node state is a set of versioned key-values; the value schema of each
known key is in :data:`STATE_SCHEMAS` and is checked when a delta is applied.
"""

from __future__ import annotations

from protocol.base import (
    CHUNK_BYTES,
    LOG_CHUNK_BYTES,
    PROTOCOL_VERSION,
    STREAM_CHUNK_BYTES,
    Address,
    Bytes,
    Count,
    Files,
    Message,
    Name,
    NodeId,
    TaskId,
    Text,
)
from protocol.control import (
    ArtifactPiece,
    ArtifactReply,
    ArtifactRequest,
    DrainReply,
    DrainRequest,
    ErrorReply,
    JoinTokenReply,
    JoinTokenRequest,
    LogsReply,
    LogsRequest,
    PeersReply,
    PeersRequest,
    PeerView,
    RevokeReply,
    RevokeRequest,
    StatsReply,
    StatsRequest,
    SubmitReply,
    SubmitRequest,
    TaskReply,
    TaskRequest,
    TasksReply,
    TasksRequest,
    WatchReply,
    WatchRequest,
)
from protocol.doctor import (
    DoctorReply,
    DoctorRequest,
    Finding,
    MemberAddress,
    ReachReply,
    ReachRequest,
)
from protocol.enroll import EnrollReply, EnrollRequest
from protocol.forward import TaskForward, TaskForwarded, TaskLocate, TaskLocated
from protocol.gossip import (
    KV,
    MAX_DIGEST,
    MAX_NEWS,
    MAX_NODE_KVS,
    Ack,
    Claim,
    Delta,
    Digest,
    DigestEntry,
    News,
    NodeDelta,
    NodeRef,
    Syn,
    SynAck,
    Verdict,
)
from protocol.state import (
    STATE_SCHEMAS,
    Battery,
    Cpu,
    Gpu,
    Hardware,
    Memory,
    ModelProfile,
    Models,
    validate_state_value,
)
from protocol.succession import (
    ReplicaAck,
    ReplicaDrop,
    ReplicaPut,
    ReplicaRecord,
    ReplicaTask,
    Succession,
    TaskClaim,
    TaskQuery,
)
from protocol.usage import UsageNode, UsageReply, UsageRequest, UsageRow
from protocol.work import (
    AttemptResult,
    BlobChunk,
    BlobRef,
    BlobWant,
    Bundle,
    CancelAttempt,
    Dispatch,
    DispatchReply,
    Progress,
    ResultAck,
    StreamChunk,
    WorkItem,
)

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
    | ArtifactRequest
    | RevokeRequest
    | UsageRequest
    | DoctorRequest
    | ReachRequest
)
ForwardMessage = TaskLocate | TaskLocated | TaskForward | TaskForwarded  # node -> node
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
    | ArtifactReply
    | RevokeReply
    | UsageReply
    | DoctorReply
    | ReachReply
)
WorkMessage = WorkItem | Bundle
EnrollMessage = EnrollRequest | EnrollReply
AnyMessage = (
    GossipMessage | ControlRequest | ControlReply | WorkMessage | EnrollMessage | ForwardMessage
)

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
    ArtifactRequest,
    ArtifactReply,
    RevokeRequest,
    RevokeReply,
    UsageRequest,
    UsageReply,
    DoctorRequest,
    DoctorReply,
    ReachRequest,
    ReachReply,
    Dispatch,
    DispatchReply,
    Progress,
    AttemptResult,
    ResultAck,
    CancelAttempt,
    BlobWant,
    BlobChunk,
    StreamChunk,
    ReplicaPut,
    ReplicaAck,
    ReplicaDrop,
    Succession,
    TaskQuery,
    Bundle,
    EnrollRequest,
    EnrollReply,
    TaskLocate,
    TaskLocated,
    TaskForward,
    TaskForwarded,
)

__all__ = [
    "CHUNK_BYTES",
    "KV",
    "LOG_CHUNK_BYTES",
    "MAX_DIGEST",
    "MAX_NEWS",
    "MAX_NODE_KVS",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "STATE_SCHEMAS",
    "STREAM_CHUNK_BYTES",
    "Ack",
    "Address",
    "AnyMessage",
    "ArtifactPiece",
    "ArtifactReply",
    "ArtifactRequest",
    "AttemptResult",
    "Battery",
    "BlobChunk",
    "BlobRef",
    "BlobWant",
    "Bundle",
    "Bytes",
    "CancelAttempt",
    "Claim",
    "ControlReply",
    "ControlRequest",
    "Count",
    "Cpu",
    "Delta",
    "Digest",
    "DigestEntry",
    "Dispatch",
    "DispatchReply",
    "DoctorReply",
    "DoctorRequest",
    "DrainReply",
    "DrainRequest",
    "EnrollMessage",
    "EnrollReply",
    "EnrollRequest",
    "ErrorReply",
    "Files",
    "Finding",
    "ForwardMessage",
    "GossipMessage",
    "Gpu",
    "Hardware",
    "JoinTokenReply",
    "JoinTokenRequest",
    "LogsReply",
    "LogsRequest",
    "MemberAddress",
    "Memory",
    "Message",
    "ModelProfile",
    "Models",
    "Name",
    "News",
    "NodeDelta",
    "NodeId",
    "NodeRef",
    "PeerView",
    "PeersReply",
    "PeersRequest",
    "Progress",
    "ReachReply",
    "ReachRequest",
    "ReplicaAck",
    "ReplicaDrop",
    "ReplicaPut",
    "ReplicaRecord",
    "ReplicaTask",
    "ResultAck",
    "RevokeReply",
    "RevokeRequest",
    "StatsReply",
    "StatsRequest",
    "StreamChunk",
    "SubmitReply",
    "SubmitRequest",
    "Succession",
    "Syn",
    "SynAck",
    "TaskClaim",
    "TaskForward",
    "TaskForwarded",
    "TaskId",
    "TaskLocate",
    "TaskLocated",
    "TaskQuery",
    "TaskReply",
    "TaskRequest",
    "TasksReply",
    "TasksRequest",
    "Text",
    "UsageNode",
    "UsageReply",
    "UsageRequest",
    "UsageRow",
    "Verdict",
    "WatchReply",
    "WatchRequest",
    "WorkItem",
    "WorkMessage",
    "validate_state_value",
]
