"""Enrollment: a new node redeems a ``swarmd2-`` join token with the node that issued it.

The new node has no cluster secret yet, so it has no credential: it opens a CURVE
connection to the issuer with a key pair of its own (the server key is in the token)
and sends :class:`EnrollRequest`, the only message the issuer's TCP socket takes from a
client without a credential. The issuer answers on that connection, encrypted to the
new node's key, with :class:`EnrollReply`: a membership (the listening key, the
authority's public key and a certificate for the new node), the cluster secret for an
admin token, or why not.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta

from protocol.base import Address, Message, NodeId, Text

TICKET_ID_BYTES = 16
PROOF_BYTES = 32
SECRET_BYTES = 32
AUTHORITY_BYTES = 32
CERTIFICATE_BYTES = 64

RefusalCode = Literal["", "unknown", "bad_proof", "expired", "used", "unavailable"]


class EnrollRequest(Message, tag="enroll"):
    """``proof`` = HMAC-SHA256(ticket secret, "swarmd-enroll" ‖ len‖node ‖ len‖public key
    z85), the public key being the one the CURVE handshake proved (PROTOCOL.md)."""

    ticket: Annotated[bytes, Meta(min_length=TICKET_ID_BYTES, max_length=TICKET_ID_BYTES)]
    node: NodeId
    proof: Annotated[bytes, Meta(min_length=PROOF_BYTES, max_length=PROOF_BYTES)]


class EnrollReply(Message, tag="enroll_reply"):
    """Admitted: ``seeds`` (members to gossip with) and either the cluster secret
    (``secret``, an admin token) or a membership: ``listening_key`` (the cluster's
    listening CURVE secret key, raw), ``authority`` (the authority's Ed25519 public key)
    and ``certificate`` (its signature over the new node's id and public key).
    Refused: ``refused`` says why (a code) and ``message`` says it to a person."""

    refused: RefusalCode = ""
    message: Text = ""
    secret: Annotated[bytes, Meta(max_length=SECRET_BYTES)] = b""
    seeds: Annotated[list[Address], Meta(max_length=8)] = []
    listening_key: Annotated[bytes, Meta(max_length=SECRET_BYTES)] = b""
    authority: Annotated[bytes, Meta(max_length=AUTHORITY_BYTES)] = b""
    certificate: Annotated[bytes, Meta(max_length=CERTIFICATE_BYTES)] = b""
