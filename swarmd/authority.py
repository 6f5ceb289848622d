"""The cluster authority: an Ed25519 key pair that signs node credentials and
revocation entries.

The private key is derived from the cluster secret (``blake2b(secret, 32,
person="swarmd-authority")`` is the Ed25519 seed), so only an *admin* (a node holding
``cluster.secret``) can sign. Every member knows the public key (:class:`AuthorityKey`)
and verifies with it: a member that does not hold the secret can check credentials but
cannot make one, so a copy of its state dir cannot mint a new node id.

What is signed: ``"swarmd-authority" ‖ purpose ‖ (len‖part)*`` (4-byte big-endian
lengths), purposes ``node`` (node id, public key z85) and ``revoke`` (node id,
str(time)).
"""

from __future__ import annotations

import functools
import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PUBLIC_BYTES = 32
SIGNATURE_BYTES = 64


def _signed_bytes(purpose: bytes, parts: tuple[bytes, ...]) -> bytes:
    out = [b"swarmd-authority", len(purpose).to_bytes(4, "big"), purpose]
    for part in parts:
        out += [len(part).to_bytes(4, "big"), part]
    return b"".join(out)


class AuthorityKey:
    """The authority's public key: verifies what the authority signed."""

    def __init__(self, public: bytes) -> None:
        if len(public) != PUBLIC_BYTES:
            raise ValueError(f"authority public key must be {PUBLIC_BYTES} bytes")
        self.public = public
        self._key = Ed25519PublicKey.from_public_bytes(public)

    def verify(self, signature: bytes, purpose: bytes, *parts: bytes) -> bool:
        if len(signature) != SIGNATURE_BYTES:
            return False
        try:
            self._key.verify(signature, _signed_bytes(purpose, parts))
        except InvalidSignature:
            return False
        return True


class Authority(AuthorityKey):
    """The authority's key pair (an admin's): signs as well as verifies."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        super().__init__(public)

    @classmethod
    def from_secret(cls, secret: bytes) -> Authority:
        return _authority(secret)

    def sign(self, purpose: bytes, *parts: bytes) -> bytes:
        return self._private.sign(_signed_bytes(purpose, parts))


@functools.lru_cache(maxsize=8)
def _authority(secret: bytes) -> Authority:
    seed = hashlib.blake2b(secret, digest_size=32, person=b"swarmd-authority").digest()
    return Authority(Ed25519PrivateKey.from_private_bytes(seed))


def authority_public(secret: bytes) -> bytes:
    """The authority public key of the cluster whose secret is ``secret``."""
    return _authority(secret).public
