"""The swarmd wire protocol: message schemas and the codec (see PROTOCOL.md)."""

from .codec import DROP_REASONS, MAX_FRAME_BYTES, ProtocolError, decode, encode
from .messages import PROTOCOL_VERSION

__all__ = [
    "DROP_REASONS",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "decode",
    "encode",
]
