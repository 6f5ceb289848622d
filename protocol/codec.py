"""Bytes <-> messages. Every received frame goes through :func:`decode`.

A frame that is too large, not msgpack, of another protocol version, of an unknown
type or not matching its type's schema raises :class:`ProtocolError` whose
``reason`` is one of :data:`DROP_REASONS`, so callers can drop and count it.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from .messages import MESSAGE_TYPES, PROTOCOL_VERSION, AnyMessage, Message

# Largest frame any socket accepts (ZMQ_MAXMSGSIZE) and the codec decodes.
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024

DROP_REASONS: Final = ("oversized", "malformed", "version", "unknown_type", "invalid")

_KNOWN_TAGS: Final = frozenset(t.__struct_config__.tag for t in MESSAGE_TYPES)
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyMessage)


class ProtocolError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(frame: bytes, max_bytes: int = MAX_FRAME_BYTES) -> AnyMessage:
    if len(frame) > max_bytes:
        raise ProtocolError("oversized", f"{len(frame)} bytes > {max_bytes}")
    try:
        message: AnyMessage = _decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise _classify(frame, exc) from None
    except RecursionError:  # arrays or maps nested deeper than the interpreter's stack
        raise ProtocolError("malformed", "nested too deeply") from None
    if message.v != PROTOCOL_VERSION:
        raise ProtocolError(
            "version", f"protocol version {message.v!r}, expected {PROTOCOL_VERSION}"
        )
    return message


def _classify(frame: bytes, exc: Exception) -> ProtocolError:
    """Say why a frame failed to decode: only on the error path, so the cost is fine."""
    try:
        raw: Any = msgspec.msgpack.decode(frame)
    except (msgspec.DecodeError, UnicodeDecodeError) as inner:
        return ProtocolError("malformed", str(inner))
    if not isinstance(raw, dict):
        return ProtocolError("malformed", f"expected a map, got {type(raw).__name__}")
    version = raw.get("v", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        return ProtocolError(
            "version", f"protocol version {version!r}, expected {PROTOCOL_VERSION}"
        )
    tag = raw.get("t")
    if not isinstance(tag, str) or tag not in _KNOWN_TAGS:
        return ProtocolError("unknown_type", f"message type {tag!r}")
    return ProtocolError("invalid", f"{tag}: {exc}")


def to_builtins(message: Any) -> Any:
    """A message (or part of one) as plain dicts/lists, for JSON output."""
    return msgspec.to_builtins(message)
