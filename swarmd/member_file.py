"""A member's membership: what a node enrolled with an ordinary ``swarmd2-`` join token
holds instead of the cluster secret, in ``STATE_DIR/membership`` (JSON, 0600).

- ``listening_key``: the cluster's listening CURVE secret key (z85), so the node can
  serve connections from the other members;
- ``authority``: the authority's Ed25519 public key (hex), to verify the others'
  credentials and the revocation entries;
- ``node`` and ``certificate``: the authority's signature over this node's id and the
  public key of its ``node.key`` (hex), made by the admin that enrolled it; it is the
  node's credential, valid for that id and key only;
- ``issuer``: that admin's address (where join tokens and revocations are made).

A member cannot sign: it cannot take another node id (after an identity conflict it
stops and must be enrolled again), issue join tokens or revoke.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import zmq

from .authority import PUBLIC_BYTES, SIGNATURE_BYTES, AuthorityKey
from .credentials import NODE_ID_RE, Credentials, NodeKeys
from .identity import ClusterKeys, load_cluster_secret, write_private

FILE_NAME = "membership"


@dataclass(frozen=True)
class Membership:
    node_id: str
    listening_key: bytes  # z85, 40 bytes
    authority: bytes  # PUBLIC_BYTES
    certificate: bytes  # SIGNATURE_BYTES
    issuer: str

    def keys(self) -> ClusterKeys:
        return ClusterKeys.of_member(self.listening_key, self.authority)

    def certifies(self, node_id: str, public_z85: bytes) -> bool:
        """Whether the certificate is the authority's for this node id and key."""
        key = AuthorityKey(self.authority)
        return node_id == self.node_id and key.verify(
            self.certificate, b"node", node_id.encode(), public_z85
        )

    def credentials(self, keys: NodeKeys) -> Credentials:
        return Credentials(self.node_id, keys, self.certificate)


def load_membership(state_dir: Path) -> Membership | None:
    """The membership in the state dir (None: there is none); ValueError if damaged."""
    path = state_dir / FILE_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a membership ({exc})") from None
    try:
        membership = Membership(
            str(raw["node"]),
            str(raw["listening_key"]).encode("ascii"),
            bytes.fromhex(raw["authority"]),
            bytes.fromhex(raw["certificate"]),
            str(raw.get("issuer", "")),
        )
        zmq.curve_public(membership.listening_key)
    except (KeyError, TypeError, ValueError, UnicodeEncodeError, zmq.ZMQError):
        raise ValueError(f"{path}: not a membership (damaged)") from None
    if not NODE_ID_RE.match(membership.node_id) or len(membership.authority) != PUBLIC_BYTES:
        raise ValueError(f"{path}: not a membership (damaged)")
    if len(membership.certificate) != SIGNATURE_BYTES:
        raise ValueError(f"{path}: not a membership (damaged)")
    return membership


def store_membership(state_dir: Path, membership: Membership) -> None:
    data = {
        "node": membership.node_id,
        "listening_key": membership.listening_key.decode("ascii"),
        "authority": membership.authority.hex(),
        "certificate": membership.certificate.hex(),
        "issuer": membership.issuer,
    }
    write_private(state_dir / FILE_NAME, json.dumps(data, indent=1) + "\n")


def remove_membership(state_dir: Path) -> None:
    (state_dir / FILE_NAME).unlink(missing_ok=True)


def load_cluster(state_dir: Path) -> ClusterKeys | Membership | None:
    """What makes this state dir's node a member: the cluster secret's keys (an admin),
    else its membership, else None. ValueError if the one there is damaged."""
    secret = load_cluster_secret(state_dir)
    if secret is not None:
        return ClusterKeys.from_secret(secret)
    return load_membership(state_dir)


def reenroll_message(state_dir: Path, why: str) -> str:
    return (
        f"{why}. This node is a member without the cluster secret, so it cannot sign a "
        "credential for itself: enroll it again with a new join token (`swarmctl "
        "join-token` on an admin node, one whose state dir holds cluster.secret; then "
        f"`swarmd --join-token TOKEN --state-dir {state_dir}`)"
    )
