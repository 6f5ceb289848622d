"""What every message shares: the base struct, the protocol version, field types."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

# 7: succession (replicas, epochs), task_locate/task_forward; 6: doctor, reach;
# 5: stream_chunk (PROTOCOL.md)
PROTOCOL_VERSION = 7

NodeId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Address = Annotated[str, Meta(min_length=3, max_length=262)]  # host:port
Name = Annotated[str, Meta(max_length=128)]
Text = Annotated[str, Meta(max_length=4096)]
Count = Annotated[int, Meta(ge=0)]
LOG_CHUNK_BYTES = 256 * 1024  # output in one progress message, per stream
STREAM_CHUNK_BYTES = 256 * 1024  # a gateway answer's bytes in one stream_chunk
Bytes = Annotated[int, Meta(ge=0)]
CHUNK_BYTES = 1024 * 1024  # the most data one blob_chunk or artifact_reply carries
Sha256 = Annotated[bytes, Meta(min_length=32, max_length=32)]


class Message(Struct, tag_field="t", kw_only=True, forbid_unknown_fields=False):
    """Base of every wire message."""

    v: int = PROTOCOL_VERSION


TaskId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Files = Annotated[dict[str, bytes], Meta(max_length=10000)]
