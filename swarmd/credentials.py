"""Per-node identity under the cluster: each node's own CURVE key pair, the credential
the cluster authority signs for it, and the revocation list.

- ``node.key`` (state dir, 0600): the node's CURVE key pair, made on first start.
- The credential: the authority's Ed25519 signature over (node id, node public key)
  (:mod:`.authority`). An admin (a node holding the cluster secret) signs its own; a
  member enrolled without the secret got it from the admin that enrolled it
  (:mod:`.member_file`). A node presents it, with its id, in the ZeroMQ routing id of
  every connection it opens (:func:`Credentials.routing_id`); CURVE proves the public
  key, so the receiver knows the sender's node id from the transport
  (:class:`Verifier`, with the authority's *public* key), not from what a message
  claims. Speaking as another id takes another signature, which only the authority's
  private key, that is the cluster secret, can make.
- Revocations: ``(node id, when, signature by the authority over both)``, gossiped and
  kept in ``revoked`` (state dir). An entry is accepted only with a valid signature,
  and the list only grows, so no node can forge or drop one; only an admin can add one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from .authority import SIGNATURE_BYTES, Authority, AuthorityKey
from .identity import write_private

NODE_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_REVOKED = 1024
_SIGNATURE_B64 = (SIGNATURE_BYTES * 4 + 2) // 3  # 86 characters, unpadded


class NotAdmin(Exception):
    """Signing needs the cluster secret, which this node does not hold."""


def credential(authority: Authority, node_id: str, public_z85: bytes) -> bytes:
    """The authority's signature over (node id, public key)."""
    return authority.sign(b"node", node_id.encode(), public_z85)


def encode_signature(signature: bytes) -> str:
    return base64.urlsafe_b64encode(signature).decode().rstrip("=")


def decode_signature(text: bytes | str) -> bytes | None:
    if len(text) != _SIGNATURE_B64:
        return None
    try:
        raw = text.encode("ascii") if isinstance(text, str) else text
        return base64.urlsafe_b64decode(raw + b"==")
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None


@dataclass(frozen=True)
class NodeKeys:
    """This node's own CURVE key pair (z85)."""

    public_z85: bytes
    secret_z85: bytes

    @classmethod
    def generate(cls) -> NodeKeys:
        public, private = zmq.curve_keypair()
        return cls(public, private)


def load_or_create_node_keys(state_dir: Path) -> NodeKeys:
    """The key pair in ``node.key`` (made, 0600, if missing or unreadable)."""
    path = state_dir / "node.key"
    try:
        private = path.read_text().strip().encode()
        if len(private) == 40:
            return NodeKeys(zmq.curve_public(private), private)
    except (FileNotFoundError, ValueError, zmq.ZMQError):
        pass
    keys = NodeKeys.generate()
    write_private(path, keys.secret_z85.decode() + "\n")
    return keys


@dataclass(frozen=True)
class Credentials:
    """What a node presents: its id, its key pair, the authority's signature over both."""

    node_id: str
    keys: NodeKeys
    signature: bytes

    @classmethod
    def issue(cls, secret: bytes, node_id: str, keys: NodeKeys) -> Credentials:
        """Signed here with the authority key of the cluster secret ``secret``."""
        return cls.signed(Authority.from_secret(secret), node_id, keys)

    @classmethod
    def signed(cls, authority: Authority, node_id: str, keys: NodeKeys) -> Credentials:
        return cls(node_id, keys, credential(authority, node_id, keys.public_z85))

    def routing_id(self) -> bytes:
        """``ID SIGNATURE NONCE`` (ascii; the signature in unpadded base64url): the nonce
        makes each connection's route unique. At most 64 + 1 + 86 + 1 + 8 bytes."""
        return f"{self.node_id} {encode_signature(self.signature)} {secrets.token_hex(4)}".encode()


class Verifier:
    """Checks a route (routing id) against the CURVE-proven public key (ZAP User-Id),
    with the authority's public key; a route's answer is cached, so the per-message
    cost is a dict lookup."""

    def __init__(self, authority: bytes) -> None:
        self._authority = AuthorityKey(authority)
        self._cache: dict[tuple[bytes, bytes], str | None] = {}
        self.keys_of: dict[str, set[bytes]] = {}  # node id -> public keys seen for it

    def sender(self, route: bytes, public_z85: bytes) -> str | None:
        """The node id ``route`` proves for ``public_z85``; None if it proves none."""
        key = (route, public_z85)
        if key in self._cache:
            return self._cache[key]
        node_id = self._check(route, public_z85)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[key] = node_id
        if node_id is not None:
            self.keys_of.setdefault(node_id, set()).add(public_z85)
        return node_id

    def _check(self, route: bytes, public_z85: bytes) -> str | None:
        parts = route.split(b" ")
        if len(parts) != 3 or not public_z85:
            return None
        try:
            node_id = parts[0].decode("ascii")
        except UnicodeDecodeError:
            return None
        signature = decode_signature(parts[1])
        if signature is None or not NODE_ID_RE.match(node_id):
            return None
        ok = self._authority.verify(signature, b"node", node_id.encode(), public_z85)
        return node_id if ok else None


# ------------------------------------------------------------ revocation


def revocation_signature(authority: Authority, node_id: str, at: int) -> bytes:
    return authority.sign(b"revoke", node_id.encode(), str(at).encode())


def _legacy_mac(secret: bytes, node_id: str, at: int) -> bytes:
    """A revocation entry's MAC as protocol version 3 made it (read from an old
    ``revoked`` file by an admin, which signs the entry anew)."""
    key = hashlib.blake2b(secret, digest_size=32, person=b"swarmd-mac").digest()
    mac = hmac.new(key, b"revoke", hashlib.sha256)
    for part in (node_id.encode(), str(at).encode()):
        mac.update(len(part).to_bytes(4, "big") + part)
    return mac.digest()[:16]


class RevocationList:
    """The node ids shut out of the cluster: signed entries, kept in ``revoked``.
    ``secret`` (an admin's) lets this node add entries; without it, it only merges."""

    def __init__(self, authority: bytes, secret: bytes | None, path: Path | None) -> None:
        self._key = AuthorityKey(authority)
        self._secret = secret
        self._path = path
        self.entries: dict[str, tuple[int, bytes]] = {}  # node id -> (when, signature)
        self.rejected = 0  # entries with a bad signature (forged, or another cluster's)
        if path is not None:
            self._load(path)

    @property
    def signer(self) -> Authority | None:
        return None if self._secret is None else Authority.from_secret(self._secret)

    def _load(self, path: Path) -> None:
        try:
            raw = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return
        if isinstance(raw, list):
            self.merge(raw, persist=False)
            if self._upgrade(raw):
                write_private(path, json.dumps(self.wire()) + "\n")

    def _upgrade(self, raw: list[object]) -> bool:
        """An admin signs the entries an older version MACed (its ``revoked`` file)."""
        signer, added = self.signer, False
        if signer is None or self._secret is None:
            return False
        for item in raw[:MAX_REVOKED]:
            if not (isinstance(item, list) and len(item) == 3):
                continue
            node_id, at, mac_hex = item
            if not (isinstance(node_id, str) and NODE_ID_RE.match(node_id)):
                continue
            if (
                node_id in self.entries
                or not isinstance(at, int)
                or mac_hex != (_legacy_mac(self._secret, node_id, at).hex())
            ):
                continue
            self.entries[node_id] = (at, revocation_signature(signer, node_id, at))
            self.rejected -= 1  # counted by merge() as a bad signature
            added = True
        return added

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.entries

    def revoke(self, node_id: str) -> bool:
        """Add ``node_id`` (False if it was already revoked); NotAdmin without the
        cluster secret."""
        if not NODE_ID_RE.match(node_id):
            raise ValueError(f"not a node id: {node_id!r}")
        if node_id in self.entries:
            return False
        signer = self.signer
        if signer is None:
            raise NotAdmin("revoking a node needs the cluster secret")
        at = int(time.time())
        entry = [node_id, at, revocation_signature(signer, node_id, at).hex()]
        return bool(self.merge([entry]))

    def wire(self) -> list[list[object]]:
        """The entries as gossiped: ``[[node id, when, signature hex], ...]``, sorted."""
        return [[n, at, sig.hex()] for n, (at, sig) in sorted(self.entries.items())]

    def merge(self, items: object, persist: bool = True) -> list[str]:
        """Add the valid entries of ``items`` (a gossiped list); returns the new ids."""
        added: list[str] = []
        if not isinstance(items, list):
            return added
        for item in items[:MAX_REVOKED]:
            entry = self._valid(item)
            if entry is None:
                self.rejected += 1
            elif entry[0] not in self.entries and len(self.entries) < MAX_REVOKED:
                self.entries[entry[0]] = (entry[1], entry[2])
                added.append(entry[0])
        if added and persist and self._path is not None:
            write_private(self._path, json.dumps(self.wire()) + "\n")
        return added

    def _valid(self, item: object) -> tuple[str, int, bytes] | None:
        if not (isinstance(item, list | tuple) and len(item) == 3):
            return None
        node_id, at, sig_hex = item
        if not (isinstance(node_id, str) and NODE_ID_RE.match(node_id)):
            return None
        if not (isinstance(at, int) and isinstance(sig_hex, str) and len(sig_hex) <= 128):
            return None
        try:
            signature = bytes.fromhex(sig_hex)
        except ValueError:
            return None
        if not self._key.verify(signature, b"revoke", node_id.encode(), str(at).encode()):
            return None
        return node_id, at, signature
