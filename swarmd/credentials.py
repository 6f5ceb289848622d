"""Per-node identity under the cluster: each node's own CURVE key pair, the credential
the cluster secret gives it, and the revocation list.

- ``node.key`` (state dir, 0600): the node's CURVE key pair, made on first start.
- The credential: ``MAC(cluster secret; node id, node public key)``. A node presents
  it, with its id, in the ZeroMQ routing id of every connection it opens
  (:func:`routing_id`); CURVE proves the public key, so the receiver knows the sender's
  node id from the transport (:class:`Verifier`), not from what a message claims. A
  node's key pair and credential name that node alone: speaking as another id takes
  another credential, which only the cluster secret can make.
- Revocations: ``(node id, when, MAC(cluster secret; node id, when))``, gossiped and
  kept in ``revoked`` (state dir). An entry is accepted only with a valid MAC, and the
  list only grows, so no node can forge or drop one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from .identity import write_private

NODE_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAC_BYTES = 16
MAX_REVOKED = 1024


def _mac(secret: bytes, purpose: bytes, *parts: bytes) -> bytes:
    key = hashlib.blake2b(secret, digest_size=32, person=b"swarmd-mac").digest()
    mac = hmac.new(key, purpose, hashlib.sha256)
    for part in parts:
        mac.update(len(part).to_bytes(4, "big") + part)
    return mac.digest()[:MAC_BYTES]


def credential(secret: bytes, node_id: str, public_z85: bytes) -> bytes:
    return _mac(secret, b"node", node_id.encode(), public_z85)


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
    """What a node presents: its id, its key pair, the cluster's MAC over both."""

    node_id: str
    keys: NodeKeys
    mac: bytes

    @classmethod
    def issue(cls, secret: bytes, node_id: str, keys: NodeKeys) -> Credentials:
        return cls(node_id, keys, credential(secret, node_id, keys.public_z85))

    def routing_id(self) -> bytes:
        """``ID MAC NONCE`` (ascii): the nonce makes each connection's route unique."""
        return f"{self.node_id} {self.mac.hex()} {secrets.token_hex(4)}".encode()


class Verifier:
    """Checks a route (routing id) against the CURVE-proven public key (ZAP User-Id)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
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
            node_id, mac = parts[0].decode("ascii"), bytes.fromhex(parts[1].decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return None
        if not NODE_ID_RE.match(node_id):
            return None
        expected = credential(self._secret, node_id, public_z85)
        return node_id if hmac.compare_digest(mac, expected) else None


# ------------------------------------------------------------ revocation


def revocation_mac(secret: bytes, node_id: str, at: int) -> bytes:
    return _mac(secret, b"revoke", node_id.encode(), str(at).encode())


class RevocationList:
    """The node ids shut out of the cluster: MACed entries, kept in ``revoked``."""

    def __init__(self, secret: bytes, path: Path | None) -> None:
        self._secret = secret
        self._path = path
        self.entries: dict[str, tuple[int, bytes]] = {}  # node id -> (when, mac)
        self.rejected = 0  # entries with a bad MAC (forged, or another cluster's)
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            raw = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return
        if isinstance(raw, list):
            self.merge(raw, persist=False)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.entries

    def revoke(self, node_id: str) -> bool:
        """Add ``node_id`` (False if it was already revoked)."""
        if not NODE_ID_RE.match(node_id):
            raise ValueError(f"not a node id: {node_id!r}")
        if node_id in self.entries:
            return False
        at = int(time.time())
        return bool(self.merge([[node_id, at, revocation_mac(self._secret, node_id, at).hex()]]))

    def wire(self) -> list[list[object]]:
        """The entries as gossiped: ``[[node id, when, mac hex], ...]``, sorted."""
        return [[n, at, mac.hex()] for n, (at, mac) in sorted(self.entries.items())]

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
        node_id, at, mac_hex = item
        if not (isinstance(node_id, str) and NODE_ID_RE.match(node_id)):
            return None
        if not (isinstance(at, int) and isinstance(mac_hex, str) and len(mac_hex) <= 64):
            return None
        try:
            mac = bytes.fromhex(mac_hex)
        except ValueError:
            return None
        if not hmac.compare_digest(mac, revocation_mac(self._secret, node_id, at)):
            return None
        return node_id, at, mac
