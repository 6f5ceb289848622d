"""Join tokens, as ``swarmctl join-token`` prints them and ``swarmd --join-token`` takes
them.

- ``swarmd2-`` (made now): an invitation, not the secret. It names the issuing node
  (its address first, then up to 7 other members as seeds), the cluster's listening
  CURVE public key (so a new node can open an encrypted connection to a member before it
  is one), and a ticket (16-byte id, 32-byte secret) that the issuer keeps in its state
  dir with an expiry and a single-use flag (:mod:`.tickets`). The new node proves the
  ticket to the issuer (:func:`enroll_proof`), which answers with the cluster secret
  (:mod:`.enrollment`).
- ``swarmd1-`` (made by older versions): the cluster secret itself and seeds
  (:func:`.identity.parse_join_token`); still accepted, so old install commands work.

Both are ``PREFIX`` + unpadded urlsafe base64 of ``msgpack body ‖ 4-byte checksum``, so
a token survives copy and paste and a mistyped one is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

import msgspec
from zmq.utils import z85

from protocol.enroll import PROOF_BYTES, TICKET_ID_BYTES

from .config import split_host_port
from .identity import TOKEN_PREFIX as TOKEN_V1_PREFIX
from .identity import _token_checksum, parse_join_token

TOKEN_V2_PREFIX = "swarmd2-"
TICKET_SECRET_BYTES = 32
MAX_SEEDS = 8
DAMAGED = "join token is damaged (copy it again from `swarmctl join-token`)"


@dataclass(frozen=True)
class Invitation:
    """What a ``swarmd2-`` token says."""

    issuer: str  # host:port of the node that holds the ticket
    seeds: tuple[str, ...]  # other members, for gossip
    server_key: bytes  # the cluster's listening CURVE public key, z85 (40 bytes)
    ticket: bytes  # TICKET_ID_BYTES
    ticket_secret: bytes  # TICKET_SECRET_BYTES


@dataclass(frozen=True)
class SecretToken:
    """What a ``swarmd1-`` token says: the cluster secret itself."""

    secret: bytes
    seeds: tuple[str, ...]


def make_invitation(invitation: Invitation) -> str:
    raw_key = z85.decode(invitation.server_key)
    seeds = [s for s in invitation.seeds if s != invitation.issuer][: MAX_SEEDS - 1]
    body = msgspec.msgpack.encode(
        [invitation.issuer, seeds, raw_key, invitation.ticket, invitation.ticket_secret]
    )
    raw = body + _token_checksum(body)
    return TOKEN_V2_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_token(token: str) -> Invitation | SecretToken:
    """Either kind of token; ValueError (saying what is wrong, never the token's
    content) if it is neither or is damaged."""
    token = token.strip()
    if token.startswith(TOKEN_V1_PREFIX):
        secret, seeds = parse_join_token(token)
        return SecretToken(secret, tuple(seeds))
    if not token.startswith(TOKEN_V2_PREFIX):
        raise ValueError(f"not a swarmd join token (expected it to start with {TOKEN_V2_PREFIX!r})")
    return _parse_v2(token[len(TOKEN_V2_PREFIX) :])


def _parse_v2(body: str) -> Invitation:
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        payload, checksum = raw[:-4], raw[-4:]
        if len(raw) < 5 or _token_checksum(payload) != checksum:
            raise ValueError("checksum")
        issuer, seeds, raw_key, ticket, secret = msgspec.msgpack.decode(
            payload, type=tuple[str, list[str], bytes, bytes, bytes]
        )
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise ValueError(DAMAGED) from None
    if len(raw_key) != 32 or len(ticket) != TICKET_ID_BYTES:
        raise ValueError(f"{DAMAGED}: wrong key or ticket length")
    if len(secret) != TICKET_SECRET_BYTES:
        raise ValueError(f"{DAMAGED}: wrong ticket secret length")
    for address in (issuer, *seeds):
        try:
            split_host_port(address)
        except ValueError:
            raise ValueError(f"{DAMAGED}: {address!r} is not HOST:PORT") from None
    return Invitation(issuer, tuple(seeds[: MAX_SEEDS - 1]), z85.encode(raw_key), ticket, secret)


def enroll_proof(ticket_secret: bytes, node_id: str, public_z85: bytes) -> bytes:
    """What proves the ticket: HMAC-SHA256(ticket secret, "swarmd-enroll" ‖ len‖node id ‖
    len‖public key z85), bound to the key the CURVE handshake proves."""
    mac = hmac.new(ticket_secret, b"swarmd-enroll", hashlib.sha256)
    for part in (node_id.encode(), public_z85):
        mac.update(len(part).to_bytes(4, "big") + part)
    digest = mac.digest()
    assert len(digest) == PROOF_BYTES
    return digest
