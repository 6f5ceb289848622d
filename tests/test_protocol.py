"""The wire protocol: every message round-trips, and bad input only ever raises ProtocolError."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import codec
from protocol.codec import DROP_REASONS, MAX_FRAME_BYTES, ProtocolError
from protocol.forward import TaskForward, TaskForwarded, TaskLocate, TaskLocated
from protocol.messages import (
    KV,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    STATE_SCHEMAS,
    Ack,
    ArtifactPiece,
    ArtifactReply,
    ArtifactRequest,
    AttemptResult,
    Battery,
    BlobChunk,
    BlobWant,
    Bundle,
    CancelAttempt,
    Cpu,
    DigestEntry,
    Dispatch,
    DispatchReply,
    DoctorReply,
    DoctorRequest,
    DrainReply,
    DrainRequest,
    EnrollReply,
    EnrollRequest,
    ErrorReply,
    Finding,
    Gpu,
    Hardware,
    JoinTokenReply,
    JoinTokenRequest,
    LogsReply,
    LogsRequest,
    MemberAddress,
    Memory,
    Message,
    ModelProfile,
    NodeDelta,
    NodeRef,
    PeersReply,
    PeersRequest,
    PeerView,
    Progress,
    ReachReply,
    ReachRequest,
    ReplicaAck,
    ReplicaDrop,
    ReplicaPut,
    ReplicaRecord,
    ReplicaTask,
    ResultAck,
    RevokeReply,
    RevokeRequest,
    StatsReply,
    StatsRequest,
    StreamChunk,
    SubmitReply,
    SubmitRequest,
    Succession,
    Syn,
    SynAck,
    TaskClaim,
    TaskQuery,
    TaskReply,
    TaskRequest,
    TasksReply,
    TasksRequest,
    UsageNode,
    UsageReply,
    UsageRequest,
    UsageRow,
    WatchReply,
    WatchRequest,
    validate_state_value,
)

GiB = 1 << 30
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- realistic values

SENDER = NodeRef("3f9a1c0de4b25a77", 4, 1_718_000_123_456, "192.168.1.20:7946")
DIGEST = [
    DigestEntry("3f9a1c0de4b25a77", 4, 1201, 9),
    DigestEntry("node-b.lan_2", 1, 77, 5),
]
HARDWARE = Hardware(
    cpu=Cpu(cores=16, model="AMD Ryzen 9 7950X", load=0.25),
    memory=Memory(total=64 * GiB, available=40 * GiB),
    battery=Battery(percent=87.5, plugged=True),
    gpus=[
        Gpu(
            "NVIDIA GeForce RTX 4090", 24 * GiB, 20 * GiB, "nvml", utilization=37.0, temperature=61
        ),
        Gpu("Radeon RX 7900 XTX", 24 * GiB, 24 * GiB, "declared"),
    ],
    nvml=True,
)
MODELS = [
    ModelProfile(
        name="fast",
        model="Qwen/Qwen3.5-1.5B",
        endpoint="http://localhost:8001/v1",
        capabilities=["syntax", "format", "lint"],
        max_concurrency=8,
        latency_ms=41.5,
    )
]
DELTA = [
    NodeDelta(
        "node-b.lan_2",
        1,
        77,
        [
            KV("addr", "192.168.1.21:7946", 1),
            KV("status", "alive", 2),
            KV("name", "laptop", 3),
            KV("hw", msgspec.to_builtins(HARDWARE), 4),
            KV("models", msgspec.to_builtins(MODELS), 5),
            KV("draining", False, 6),
            KV("queue", 3, 7),
        ],
    )
]
PEER = PeerView(
    id="3f9a1c0de4b25a77",
    name="desk",
    address="192.168.1.20:7946",
    state="alive",
    is_self=True,
    generation=4,
    draining=False,
    rtt_ms=None,
    last_seen_s=0.0,
    cpu={"cores": 16, "load": 0.25},
    memory={"total": 64 * GiB, "available": 40 * GiB},
    gpus=[{"name": "RTX 4090", "vram_total": 24 * GiB, "vram_free": 20 * GiB, "source": "nvml"}],
    models=[{"name": "fast", "model": "m", "endpoint": "http://x/v1", "capabilities": ["lint"]}],
    battery={"percent": 87.5, "plugged": True},
)

EXAMPLES: dict[type[Message], Message] = {
    Syn: Syn(sender=SENDER, seq=17, digest=DIGEST),
    SynAck: SynAck(sender=SENDER, seq=17, digest=DIGEST, delta=DELTA),
    Ack: Ack(sender=SENDER, delta=DELTA),
    PeersRequest: PeersRequest(),
    PeersReply: PeersReply(peers=[PEER]),
    JoinTokenRequest: JoinTokenRequest(ttl_s=3600.0, single_use=True),
    JoinTokenReply: JoinTokenReply(
        token="swarmd2-lbExOTIuMTY4LjEuMjA6Nzk0NpDEIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAxBAB",
        expires=1767225600.0,
        single_use=True,
    ),
    EnrollRequest: EnrollRequest(ticket=b"\x01" * 16, node="a1b2c3d4e5f60718", proof=b"\x02" * 32),
    EnrollReply: EnrollReply(secret=b"\x03" * 32, seeds=["192.168.1.20:7946"]),
    RevokeRequest: RevokeRequest(node="a1b2c3d4e5f60718"),
    RevokeReply: RevokeReply(node="a1b2c3d4e5f60718", added=True, revoked=["a1b2c3d4e5f60718"]),
    UsageRequest: UsageRequest(since=1.7e9, cluster=False, timeout_s=2.0, ref="ab12"),
    DoctorRequest: DoctorRequest(timeout_s=2.5),
    DoctorReply: DoctorReply(
        node="n1",
        name="desk",
        findings=[Finding("reachability", "fail", "n2 cannot reach 10.0.0.5:7946", "open it")],
    ),
    ReachRequest: ReachRequest(ref="cd34"),
    ReachReply: ReachReply(
        ref="cd34",
        address="10.0.0.5:7946",
        reachable=False,
        error="timed out after 2 s",
        received=1.7e9,
        answered=1.7e9 + 2,
        view=[MemberAddress("n1", 3, "10.0.0.5:7946")],
    ),
    TaskLocate: TaskLocate(ref="cd34", task="3f9a1c-0a1b2c3d4e"),
    TaskLocated: TaskLocated(ref="cd34", task="3f9a1c-0a1b2c3d4e", has=True),
    TaskForward: TaskForward(
        ref="cd34", request=LogsRequest(task="3f9a1c-0a1b2c3d4e", subtask="a", follow=True)
    ),
    TaskForwarded: TaskForwarded(
        ref="cd34", found=True, reply=TaskReply(body={"id": "3f9a1c-0a1b2c3d4e"})
    ),
    UsageReply: UsageReply(
        ref="ab12",
        since=1.7e9,
        until=1.7e9 + 60,
        rows=[UsageRow("fast", "qwen-7b", "a1b2c3d4e5f60718", "gpu1", "cli", 3, 1, 30, 70, 0.0002)],
        nodes=[UsageNode("a1b2c3d4e5f60718", "gpu1")],
        missing=[UsageNode("b1b2c3d4e5f60718", "gpu2", "no answer within 3 s")],
    ),
    StatsRequest: StatsRequest(),
    StatsReply: StatsReply(node="3f9a1c0de4b25a77", name="desk", counters={"received": 12}),
    DrainRequest: DrainRequest(draining=False),
    DrainReply: DrainReply(node="3f9a1c0de4b25a77", name="desk", draining=True, running=2),
    ErrorReply: ErrorReply(code="bad_request", message="job file line 3: unknown key 'runn'"),
    SubmitRequest: SubmitRequest(
        job={"name": "review", "subtasks": [{"id": "lint", "kind": "shell", "run": ["ruff"]}]},
        files={"pyproject.toml": b"[project]\n"},
    ),
    SubmitReply: SubmitReply(task="3f9a1c-000001"),
    TaskRequest: TaskRequest(task="3f9a1c-000001", what="result", artifacts=True),
    TaskReply: TaskReply(body={"id": "3f9a1c-000001"}, artifacts={"lint": {"r.txt": b"ok"}}),
    TasksRequest: TasksRequest(),
    TasksReply: TasksReply(tasks=[{"id": "3f9a1c-000001", "state": "done"}]),
    WatchRequest: WatchRequest(task="3f9a1c-000001", seen=3, timeout_s=5.0),
    WatchReply: WatchReply(task={"id": "3f9a1c-000001", "state": "running", "version": 4}),
    LogsRequest: LogsRequest(task="3f9a1c-000001", subtask="lint", out_at=10, follow=True),
    LogsReply: LogsReply(subtask="lint", state="running", out=b"ok\n", out_at=10),
    Dispatch: Dispatch(
        task="3f9a1c-000001",
        subtask="lint",
        attempt=2,
        coordinator=SENDER,
        lease_s=30.0,
        spec={"id": "lint", "kind": "shell", "run": ["ruff", "check", "."]},
        inputs={"src/a.py": b"x = 1\n"},
    ),
    DispatchReply: DispatchReply(
        task="3f9a1c-000001", subtask="lint", attempt=2, accepted=False, reason="full"
    ),
    Progress: Progress(
        task="3f9a1c-000001", subtask="lint", attempt=2, node="3f9a1c0de4b25a77", note="1.2s"
    ),
    AttemptResult: AttemptResult(
        task="3f9a1c-000001",
        subtask="lint",
        attempt=2,
        node="3f9a1c0de4b25a77",
        exit_code=0,
        stdout="All checks passed!\n",
        artifacts={"report.txt": b"ok"},
    ),
    ResultAck: ResultAck(task="3f9a1c-000001", subtask="lint", attempt=2, committed=True),
    CancelAttempt: CancelAttempt(task="3f9a1c-000001", subtask="lint", attempt=2),
    BlobWant: BlobWant(task="3f9a1c-000001", subtask="lint", attempt=2, offset=0, count=8),
    BlobChunk: BlobChunk(
        task="3f9a1c-000001",
        subtask="lint",
        attempt=2,
        offset=1048576,
        data=b"chunk",
        sha256=hashlib.sha256(b"chunk").digest(),
    ),
    StreamChunk: StreamChunk(
        task="3f9a1c-000001",
        subtask="main",
        attempt=1,
        node="3f9a1c0de4b25a77",
        seq=0,
        data=b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n',
    ),
    ArtifactRequest: ArtifactRequest(task="3f9a1c-000001", subtask="lint", index=1, offset=5),
    ArtifactReply: ArtifactReply(
        pieces=[ArtifactPiece("r.txt", 2, hashlib.sha256(b"ok").digest(), 0, b"ok")], done=True
    ),
    ReplicaPut: ReplicaPut(
        seq=3,
        coordinator=NodeRef("3f9a1c0de4b25a77", 2, 7, "10.0.0.5:7946"),
        tasks=[
            ReplicaTask(
                task="3f9a1c-000001",
                epoch=1,
                full=True,
                records=[
                    ReplicaRecord("task_state", {"task": "3f9a1c-000001", "state": "running"})
                ],
                inputs={"a.txt": b"x"},
            )
        ],
    ),
    ReplicaAck: ReplicaAck(seq=3, refused=["3f9a1c-000002"]),
    ReplicaDrop: ReplicaDrop(tasks=["3f9a1c-000001"]),
    Succession: Succession(
        claims=[TaskClaim("3f9a1c-000001", 2, NodeRef("77aa", 1, 1, "10.0.0.6:7946"), adopted=True)]
    ),
    TaskQuery: TaskQuery(tasks=["3f9a1c-000001"]),
    Bundle: Bundle(
        items=[
            CancelAttempt(task="3f9a1c-000001", subtask="lint", attempt=2),
            ResultAck(task="3f9a1c-000001", subtask="fmt", attempt=1, committed=True),
        ]
    ),
}
TAGS = {t: t.__struct_config__.tag for t in MESSAGE_TYPES}


def syn_map(**changes: Any) -> dict[str, Any]:
    """A valid Syn as a plain msgpack-able map, with some fields changed."""
    raw: dict[str, Any] = msgspec.to_builtins(EXAMPLES[Syn])
    raw.update(changes)
    return raw


def reason_of(frame: bytes, max_bytes: int = MAX_FRAME_BYTES) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        codec.decode(frame, max_bytes)
    assert info.value.reason in DROP_REASONS
    return info.value


# ---------------------------------------------------------------- round trips


def test_every_message_type_has_an_example() -> None:
    assert set(EXAMPLES) == set(MESSAGE_TYPES)
    assert len(set(TAGS.values())) == len(MESSAGE_TYPES), "tags must be unique"


@pytest.mark.parametrize("kind", MESSAGE_TYPES, ids=lambda t: TAGS[t])
def test_round_trip(kind: type[Message]) -> None:
    message = EXAMPLES[kind]
    frame = codec.encode(message)
    decoded = codec.decode(frame)
    assert type(decoded) is kind
    assert decoded == message
    assert codec.encode(decoded) == frame
    raw = msgspec.msgpack.decode(frame)
    assert isinstance(raw, dict)
    assert raw["t"] == TAGS[kind]
    assert raw["v"] == PROTOCOL_VERSION


def test_missing_version_means_current_version() -> None:
    raw = syn_map()
    del raw["v"]
    assert codec.decode(msgspec.msgpack.encode(raw)) == EXAMPLES[Syn]


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    frame = msgspec.msgpack.encode(syn_map(future_field={"x": [1, 2]}))
    assert codec.decode(frame) == EXAMPLES[Syn]


def test_gossip_structs_are_compact_arrays() -> None:
    raw = msgspec.msgpack.decode(codec.encode(EXAMPLES[Syn]))
    assert raw["sender"] == ["3f9a1c0de4b25a77", 4, 1_718_000_123_456, "192.168.1.20:7946"]
    assert raw["digest"][1] == ["node-b.lan_2", 1, 77, 5]


def test_peer_view_self_field_is_serialised_as_self() -> None:
    as_json = msgspec.json.decode(msgspec.json.encode(PEER))
    assert as_json["self"] is True
    assert "is_self" not in as_json
    builtins = codec.to_builtins(PEER)
    assert builtins["self"] is True and "is_self" not in builtins
    raw = msgspec.msgpack.decode(codec.encode(PeersReply(peers=[PEER])))
    assert raw["peers"][0]["self"] is True
    assert "is_self" not in raw["peers"][0]


# ---------------------------------------------------------------- drop reasons


def test_oversized_frame() -> None:
    error = reason_of(b"\x00" * (MAX_FRAME_BYTES + 1))
    assert error.reason == "oversized"
    assert str(MAX_FRAME_BYTES) in error.detail


def test_oversized_is_checked_before_decoding_with_a_custom_limit() -> None:
    frame = codec.encode(EXAMPLES[SynAck])
    assert codec.decode(frame, max_bytes=len(frame)) == EXAMPLES[SynAck]
    assert reason_of(frame, max_bytes=len(frame) - 1).reason == "oversized"


@pytest.mark.parametrize(
    "frame",
    [b"", b"\xc1", b"\x92\x01", b"not msgpack at all", msgspec.msgpack.encode(syn_map())[:-3]],
    ids=["empty", "reserved-byte", "truncated-array", "text", "truncated-syn"],
)
def test_not_msgpack_is_malformed(frame: bytes) -> None:
    assert reason_of(frame).reason == "malformed"


@pytest.mark.parametrize("value", [[1, "syn"], "syn", 7, None, b"\x81\xa1t\xa3syn"])
def test_msgpack_that_is_not_a_map_is_malformed(value: Any) -> None:
    assert reason_of(msgspec.msgpack.encode(value)).reason == "malformed"


def test_a_frame_nested_past_the_stack_is_malformed() -> None:
    """A submit whose job holds 200,000 nested arrays: dropped, not a RecursionError."""
    head = msgspec.msgpack.encode({"v": PROTOCOL_VERSION, "t": "submit", "files": {}})
    assert head[0] == 0x83  # a map of 3: one more entry, "job", follows
    job = b"\x81" + msgspec.msgpack.encode("a") + b"\x91" * 200_000 + b"\x90"
    frame = b"\x84" + head[1:] + msgspec.msgpack.encode("job") + job
    error = reason_of(frame)
    assert (error.reason, error.detail) == ("malformed", "nested too deeply")


def test_trailing_bytes_after_a_message_are_malformed() -> None:
    assert reason_of(codec.encode(EXAMPLES[Syn]) + b"\x00").reason == "malformed"


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 5, 6, 8, 99, "7", None])
def test_other_version_of_a_broken_message(version: Any) -> None:
    raw = syn_map(v=version)
    del raw["seq"]
    error = reason_of(msgspec.msgpack.encode(raw))
    assert error.reason == "version"
    assert repr(version) in error.detail


@pytest.mark.parametrize("version", [6, 8], ids=["previous", "next"])
@pytest.mark.parametrize("kind", [Syn, PeersRequest], ids=["syn", "peers"])
def test_well_formed_message_of_another_version_is_rejected(
    kind: type[Message], version: int
) -> None:
    """Version 6 (no replicas, dispatch epochs, task_locate / task_forward) and a future 8
    alike."""
    assert PROTOCOL_VERSION == 7
    raw: dict[str, Any] = msgspec.to_builtins(EXAMPLES[kind])
    raw["v"] = version
    assert reason_of(msgspec.msgpack.encode(raw)).reason == "version"


@pytest.mark.parametrize("tag", ["bogus", "SYN", "", 5, None, b"syn"])
def test_unknown_tag(tag: Any) -> None:
    error = reason_of(msgspec.msgpack.encode(syn_map(t=tag)))
    assert error.reason == "unknown_type"
    assert repr(tag) in error.detail


def test_missing_tag_is_unknown_type() -> None:
    raw = syn_map()
    del raw["t"]
    assert reason_of(msgspec.msgpack.encode(raw)).reason == "unknown_type"


@pytest.mark.parametrize(
    "tag", [[1], {"a": 1}, msgspec.msgpack.Ext(1, b"x")], ids=["list", "map", "ext"]
)
def test_unhashable_tag_is_unknown_type(tag: Any) -> None:
    assert reason_of(msgspec.msgpack.encode({"t": tag})).reason == "unknown_type"


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"seq": "seventeen"}, "$.seq"),
        ({"seq": -1}, "$.seq"),
        ({"sender": ["bad id!", 4, 1, "h:1"]}, "$.sender[0]"),
        ({"sender": ["a", 4, 1]}, "$.sender"),
        ({"digest": [["a", 1, 2, "three"]]}, "$.digest[0][3]"),
        ({"digest": {"a": 1}}, "$.digest"),
    ],
)
def test_wrong_field_is_invalid_and_says_where(changes: dict[str, Any], path: str) -> None:
    error = reason_of(msgspec.msgpack.encode(syn_map(**changes)))
    assert error.reason == "invalid"
    assert error.detail.startswith("syn: ")
    assert f"`{path}`" in error.detail


def test_missing_required_field_is_invalid() -> None:
    raw = syn_map()
    del raw["digest"]
    error = reason_of(msgspec.msgpack.encode(raw))
    assert error.reason == "invalid"
    assert "digest" in error.detail


def test_control_message_with_bad_literal_is_invalid() -> None:
    raw = {"t": "error", "v": PROTOCOL_VERSION, "code": "teapot", "message": "x"}
    error = reason_of(msgspec.msgpack.encode(raw))
    assert error.reason == "invalid"
    assert "$.code" in error.detail


def test_list_limits_are_enforced() -> None:
    digest = [["n", 0, 0, 0]] * 65537
    frame = msgspec.msgpack.encode(syn_map(digest=digest))
    assert len(frame) < MAX_FRAME_BYTES
    assert reason_of(frame).reason == "invalid"
    codec.decode(msgspec.msgpack.encode(syn_map(digest=digest[:65536])))

    kvs = [["k", 1, i + 1] for i in range(257)]
    ack = {"t": "ack", "sender": syn_map()["sender"], "delta": [["n", 0, 0, kvs]]}
    error = reason_of(msgspec.msgpack.encode(ack))
    assert error.reason == "invalid"
    assert "$.delta[0][3]" in error.detail
    ack["delta"] = [["n", 0, 0, kvs[:256]]]
    decoded = codec.decode(msgspec.msgpack.encode(ack))
    assert isinstance(decoded, Ack) and len(decoded.delta[0].kvs) == 256


@pytest.mark.parametrize(
    "claim",
    [["n", 1, 5, "zombie"], ["n", 1, -1, "suspect"], ["n", 1, 5, "dead", -3], ["", 1, 5, "dead"]],
)
def test_malformed_liveness_claims_are_invalid(claim: list[Any]) -> None:
    raw = {"t": "ack", "sender": syn_map()["sender"], "delta": [], "news": [claim]}
    error = reason_of(msgspec.msgpack.encode(raw))
    assert error.reason == "invalid"
    assert "$.news[0]" in error.detail


def test_liveness_claims_round_trip_and_default_to_none() -> None:
    raw = {"t": "ack", "sender": syn_map()["sender"], "delta": []}
    decoded = codec.decode(msgspec.msgpack.encode(raw))
    assert isinstance(decoded, Ack) and decoded.news == []
    raw["news"] = [["n", 1, 5, "suspect", 120], ["m", 2, 9, "alive"]]
    decoded = codec.decode(msgspec.msgpack.encode(raw))
    assert isinstance(decoded, Ack)
    assert [(c.id, c.verdict, c.age_ms) for c in decoded.news] == [
        ("n", "suspect", 120),
        ("m", "alive", 0),
    ]


def test_kv_version_must_be_positive() -> None:
    ack = {"t": "ack", "sender": syn_map()["sender"], "delta": [["n", 0, 0, [["k", 1, 0]]]]}
    assert reason_of(msgspec.msgpack.encode(ack)).reason == "invalid"


@pytest.mark.parametrize(
    "frame",
    [b"\xa2\x00\x80", b"\x81\xa1t\xa1\x80", b"\x82\xa1t\xa3syn\xa3seq\xa1\x80"],
    ids=["top-level-str", "tag", "field"],
)
def test_invalid_utf8_is_malformed(frame: bytes) -> None:
    assert reason_of(frame).reason == "malformed"


# ---------------------------------------------------------------- fuzz


def decode_or_drop(frame: bytes) -> Message | None:
    """decode(), asserting that anything but a message is a ProtocolError with a reason."""
    try:
        message = codec.decode(frame)
    except ProtocolError as exc:
        assert exc.reason in DROP_REASONS
        assert str(exc).startswith(f"{exc.reason}: ")
        return None
    assert isinstance(message, MESSAGE_TYPES)
    return message


msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=4))
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), children, max_size=5)
    ),
    max_leaves=25,
)


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_only_raise_protocol_error(frame: bytes) -> None:
    decode_or_drop(frame)


@FUZZ
@given(st.data())
def test_fuzz_tagged_maps_give_a_message_or_a_drop_reason(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(MESSAGE_TYPES))
    field_names = [f for f in kind.__struct_fields__ if f != "v"]
    known = data.draw(
        st.dictionaries(st.sampled_from(field_names), msgpack_values, max_size=len(field_names))
        if field_names
        else st.just({})
    )
    extra = data.draw(st.dictionaries(st.text(max_size=8), msgpack_values, max_size=3))
    raw: dict[Any, Any] = {**extra, **known, "t": TAGS[kind]}
    if data.draw(st.booleans()):
        raw["v"] = data.draw(st.sampled_from([PROTOCOL_VERSION]) | msgpack_values)
    frame = msgspec.msgpack.encode(raw)
    try:
        message = codec.decode(frame)
    except ProtocolError as exc:
        assert exc.reason in DROP_REASONS
        if exc.reason == "invalid":
            assert exc.detail.startswith(f"{TAGS[kind]}: ")
    else:
        assert type(message) is kind
        assert codec.decode(codec.encode(message)) == message


@FUZZ
@given(
    st.dictionaries(
        st.text(max_size=4) | st.integers(-3, 3),
        msgpack_values,
        max_size=6,
    ).map(lambda d: {k: v for k, v in d.items() if k != "t"}),
    st.sampled_from(sorted(str(tag) for tag in TAGS.values())) | msgpack_values,
)
def test_fuzz_any_tag(raw: dict[Any, Any], tag: Any) -> None:
    raw["t"] = tag
    decode_or_drop(msgspec.msgpack.encode(raw))


@FUZZ
@given(st.sampled_from(MESSAGE_TYPES), st.data())
def test_fuzz_mutated_valid_frames(kind: type[Message], data: st.DataObject) -> None:
    frame = bytearray(codec.encode(EXAMPLES[kind]))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    decode_or_drop(bytes(frame[:cut]))


# ---------------------------------------------------------------- gossiped state values


def test_state_schemas_cover_the_keys_a_node_publishes() -> None:
    assert set(STATE_SCHEMAS) == {
        *("name", "addr", "status", "hw", "models", "draining", "queue"),
        *("slots", "busy", "allow_shell", "cost_per_hour", "on_battery", "speed", "queue_max"),
        *("revoked", "refusing", "spend", "sleeping", "power", "paused", "pause_detail"),
        "engines",
    }


def test_power_and_paused_state_values_are_checked() -> None:
    power = validate_state_value("power", {"on_ac": False, "battery_percent": 22.0})
    assert (power.on_ac, power.battery_percent) == (False, 22.0)
    assert validate_state_value("power", {}).on_ac is None  # no battery: mains
    for bad in ({"battery_percent": 101}, {"battery_percent": -1}, {"on_ac": "yes"}, None):
        with pytest.raises(msgspec.ValidationError):
            validate_state_value("power", bad)
    for reason in ("battery", "user-active", "draining", "disk-full", None):
        assert validate_state_value("paused", reason) == reason
    for bad_reason in ("asleep", 1, ""):
        with pytest.raises(msgspec.ValidationError):
            validate_state_value("paused", bad_reason)


def test_spend_state_value_is_bounded_and_checked() -> None:
    ok = {"day": 19700, "keys": {"0123456789ab": [120, 0.5]}}
    assert validate_state_value("spend", ok).keys == {"0123456789ab": (120, 0.5)}
    for bad in ({"day": -1}, {"day": 1, "keys": {"k": [-5, 0.0]}}, {"keys": {}}):
        with pytest.raises(msgspec.ValidationError):
            validate_state_value("spend", bad)
    many = {"day": 1, "keys": {f"k{i}": [1, 0.0] for i in range(257)}}
    with pytest.raises(msgspec.ValidationError):
        validate_state_value("spend", many)


def test_validate_state_value_accepts_a_proper_hardware_dict() -> None:
    value = msgspec.to_builtins(HARDWARE)
    assert validate_state_value("hw", value) == HARDWARE
    minimal = {"cpu": {"cores": 1}, "memory": {"total": 1, "available": 0}}
    hw = validate_state_value("hw", minimal)
    assert hw.gpus == [] and hw.battery is None and hw.nvml is False


def _hw(**changes: Any) -> dict[str, Any]:
    value: dict[str, Any] = msgspec.to_builtins(HARDWARE)
    value.update(changes)
    return value


GPU = {"name": "g", "vram_total": 1, "vram_free": 1, "source": "nvml"}


@pytest.mark.parametrize(
    "value",
    [
        _hw(memory={"total": -1, "available": 0}),
        _hw(memory={"total": 1}),
        _hw(cpu={"cores": -2}),
        _hw(cpu={"cores": "16"}),
        _hw(gpus=[{**GPU, "vram_free": -5}]),
        _hw(gpus=[{**GPU, "source": "rocm"}]),
        _hw(gpus=[{**GPU, "name": "x" * 129}]),
        _hw(gpus=[GPU] * 65),
        _hw(battery={"percent": "full", "plugged": True}),
        "not a table",
        None,
    ],
    ids=[
        "negative-memory",
        "missing-available",
        "negative-cores",
        "string-cores",
        "negative-vram",
        "bad-source",
        "long-gpu-name",
        "65-gpus",
        "bad-battery",
        "string",
        "none",
    ],
)
def test_validate_state_value_rejects_bad_hardware(value: Any) -> None:
    with pytest.raises(msgspec.ValidationError):
        validate_state_value("hw", value)


def test_validate_state_value_gpu_list_limit_is_inclusive() -> None:
    assert len(validate_state_value("hw", _hw(gpus=[GPU] * 64)).gpus) == 64


@pytest.mark.parametrize(
    ("key", "good", "bad"),
    [
        ("name", "desk", "x" * 129),
        ("addr", "10.0.0.1:7946", "h:"),
        ("status", "left", "dead"),
        ("draining", True, "yes"),
        ("queue", 0, -1),
        ("models", msgspec.to_builtins(MODELS), [{"name": "fast"}]),
        ("models", [], [{**msgspec.to_builtins(MODELS[0]), "max_concurrency": 0}]),
        ("models", [], [msgspec.to_builtins(MODELS[0])] * 65),
    ],
)
def test_validate_state_value_other_keys(key: str, good: Any, bad: Any) -> None:
    validate_state_value(key, good)
    with pytest.raises(msgspec.ValidationError):
        validate_state_value(key, bad)


@pytest.mark.parametrize("value", [{"anything": [1, 2]}, -1, None, "x" * 10_000])
def test_unknown_state_keys_pass_through(value: Any) -> None:
    assert validate_state_value("future_key", value) is value


def test_a_bundle_holds_work_messages_only_and_not_too_many() -> None:
    inner = msgspec.to_builtins(EXAMPLES[Bundle])
    for bad in ([inner], [msgspec.to_builtins(EXAMPLES[Syn])], []):
        raw = {"t": "bundle", "v": PROTOCOL_VERSION, "items": bad}
        assert reason_of(msgspec.msgpack.encode(raw)).reason == "invalid"
    cancel = msgspec.to_builtins(EXAMPLES[CancelAttempt])
    raw = {"t": "bundle", "v": PROTOCOL_VERSION, "items": [cancel] * 4097}
    assert reason_of(msgspec.msgpack.encode(raw)).reason == "invalid"
    raw["items"] = [cancel] * 4096
    assert len(codec.decode(msgspec.msgpack.encode(raw)).items) == 4096  # type: ignore[union-attr]


def test_sleeping_state_value_is_a_bool() -> None:
    assert validate_state_value("sleeping", True) is True
    for bad in ("yes", 1, None):
        with pytest.raises(msgspec.ValidationError):
            validate_state_value("sleeping", bad)
