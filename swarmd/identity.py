"""Who this node is and which cluster it belongs to, persisted in the state dir.

- ``node_id``: random, created on first start, kept across restarts and upgrades.
- ``generation``: a counter bumped at every start; a restarted node's higher
  generation supersedes its old gossiped state.
- ``cluster.secret``: 32 random bytes (file mode 0600). The cluster is defined by it:
  the listening CURVE key pair and the authority key pair (:mod:`.authority`, which
  signs credentials and revocations) are derived from it. A node that holds it is an
  *admin*; a node enrolled with an ordinary join token holds only a membership
  (:mod:`.member_file`: the listening key pair, the authority's public key and its own
  certificate). The mDNS fingerprint is a hash of the listening *public* key, so it
  says which cluster a record belongs to and nothing more.
- ``swarmd1-`` join tokens (:func:`make_join_token`, what older versions printed) carry
  the secret and a few seed addresses; they are still accepted. Today's ``swarmd2-``
  tokens carry no secret (:mod:`.join_tokens`, :mod:`.enrollment`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import msgspec
import zmq
from zmq.utils import z85

from .authority import authority_public

TOKEN_PREFIX = "swarmd1-"
SECRET_BYTES = 32


@dataclass(frozen=True)
class ClusterKeys:
    """The cluster as a node knows it: the listening CURVE key pair, the authority's
    public key, and the cluster secret if this node is an admin (else None)."""

    secret: bytes | None
    public_z85: bytes
    secret_z85: bytes
    fingerprint: str
    authority: bytes  # the authority's Ed25519 public key (32 bytes)

    @classmethod
    def from_secret(cls, secret: bytes) -> ClusterKeys:
        if len(secret) != SECRET_BYTES:
            raise ValueError(f"cluster secret must be {SECRET_BYTES} bytes, got {len(secret)}")
        curve_secret = hashlib.blake2b(secret, digest_size=32, person=b"swarmd-curve").digest()
        member = cls.of_member(z85.encode(curve_secret), authority_public(secret))
        return cls(
            secret, member.public_z85, member.secret_z85, member.fingerprint, member.authority
        )

    @classmethod
    def of_member(cls, secret_z85: bytes, authority: bytes) -> ClusterKeys:
        """The keys of a member that does not hold the cluster secret."""
        public_z85 = zmq.curve_public(secret_z85)
        fingerprint = hashlib.blake2b(public_z85, digest_size=8, person=b"swarmd-fp").hexdigest()
        return cls(None, public_z85, secret_z85, fingerprint, authority)

    @property
    def admin(self) -> bool:
        return self.secret is not None


def ensure_state_dir(state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)


def write_private(path: Path, data: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)  # a leftover tmp file keeps its old mode otherwise
    with os.fdopen(fd, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def new_node_id() -> str:
    return secrets.token_hex(8)


def load_or_create_node_id(state_dir: Path) -> tuple[str, bool]:
    """(node id, created?)"""
    path = state_dir / "node_id"
    if path.is_file():
        text = path.read_text().strip()
        if text and len(text) <= 64 and text.isascii() and text.isalnum():
            return text, False
    node_id = new_node_id()
    write_node_id(state_dir, node_id)
    return node_id, True


def write_node_id(state_dir: Path, node_id: str) -> None:
    write_private(state_dir / "node_id", node_id + "\n")


def next_generation(state_dir: Path, above: int = 0) -> int:
    """The next generation of this node, stored: one more than the last, and more than
    ``above`` (a twin's generation, which a copied state dir shares)."""
    path = state_dir / "generation"
    try:
        current = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        current = 0
    gen = max(current, above) + 1
    write_private(path, f"{gen}\n")
    return gen


def load_cluster_secret(state_dir: Path) -> bytes | None:
    path = state_dir / "cluster.secret"
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path}: not a hex cluster secret") from None
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"{path}: cluster secret must be {SECRET_BYTES} bytes")
    return secret


def store_cluster_secret(state_dir: Path, secret: bytes) -> None:
    write_private(state_dir / "cluster.secret", secret.hex() + "\n")


def create_cluster_secret(state_dir: Path) -> bytes:
    secret = secrets.token_bytes(SECRET_BYTES)
    store_cluster_secret(state_dir, secret)
    return secret


def _token_checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=4, person=b"swarmd-token").digest()


def make_join_token(secret: bytes, seeds: list[str]) -> str:
    """The secret and up to 8 seeds, with a checksum so a mistyped token is refused."""
    body = msgspec.msgpack.encode([secret, seeds[:8]])
    raw = body + _token_checksum(body)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_join_token(token: str) -> tuple[bytes, list[str]]:
    token = token.strip()
    if not token.startswith(TOKEN_PREFIX):
        raise ValueError(f"not a swarmd join token (expected it to start with {TOKEN_PREFIX!r})")
    body = token[len(TOKEN_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        payload, checksum = raw[:-4], raw[-4:]
        if len(raw) < 5 or _token_checksum(payload) != checksum:
            raise ValueError("checksum")
        secret, seeds = msgspec.msgpack.decode(payload, type=tuple[bytes, list[str]])
    except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise ValueError(
            "join token is damaged (copy it again from `swarmctl join-token`)"
        ) from None
    if len(secret) != SECRET_BYTES:
        raise ValueError("join token is damaged (wrong secret length)")
    return secret, seeds
