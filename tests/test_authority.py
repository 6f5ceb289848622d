"""The cluster authority (unit): credentials and revocation entries are Ed25519
signatures by a key derived from the cluster secret, verified with its public key; a
member's membership file; an admin upgrades an older version's MACed revocations."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
import zmq

from swarmd.authority import Authority, AuthorityKey, authority_public
from swarmd.credentials import (
    Credentials,
    NodeKeys,
    NotAdmin,
    RevocationList,
    Verifier,
    encode_signature,
)
from swarmd.identity import ClusterKeys
from swarmd.member_file import Membership, load_membership, store_membership

SECRET = bytes(range(32))
OTHER = bytes(range(1, 33))


def _route(node_id: str, signature: bytes) -> bytes:
    return f"{node_id} {encode_signature(signature)} 00c0ffee".encode()


def test_the_authority_is_derived_from_the_secret_and_only_its_public_key_is_needed() -> None:
    a = Authority.from_secret(SECRET)
    assert a.public == authority_public(SECRET) == ClusterKeys.from_secret(SECRET).authority
    assert len(a.public) == 32 and a.public != authority_public(OTHER)
    keys = NodeKeys.generate()
    creds = Credentials.issue(SECRET, "laptop", keys)
    verifier = Verifier(a.public)  # the public key alone
    assert verifier.sender(creds.routing_id(), keys.public_z85) == "laptop"
    assert AuthorityKey(a.public).verify(creds.signature, b"node", b"laptop", keys.public_z85), (
        "a signature over (node id, public key)"
    )


def test_a_routing_id_with_the_longest_node_id_fits_in_255_bytes() -> None:
    node_id = "n" * 64
    route = Credentials.issue(SECRET, node_id, NodeKeys.generate()).routing_id()
    assert len(route) <= 255, len(route)
    assert route.startswith(node_id.encode() + b" ")


def test_a_tampered_signature_or_another_id_or_key_proves_nothing() -> None:
    keys = NodeKeys.generate()
    creds = Credentials.issue(SECRET, "laptop", keys)
    verifier = Verifier(authority_public(SECRET))
    flipped = bytes([creds.signature[0] ^ 1]) + creds.signature[1:]
    assert verifier.sender(_route("laptop", flipped), keys.public_z85) is None
    assert verifier.sender(_route("desk", creds.signature), keys.public_z85) is None
    other_key = NodeKeys.generate().public_z85
    assert verifier.sender(_route("laptop", creds.signature), other_key) is None
    for bad in (b"laptop", b"laptop !!! 00", b"laptop " + b"A" * 86 + b" 00", b"\xff x y"):
        assert verifier.sender(bad, keys.public_z85) is None
    assert verifier.keys_of == {}


def test_another_authority_s_credential_is_refused() -> None:
    keys = NodeKeys.generate()
    foreign = Credentials.issue(OTHER, "laptop", keys)
    assert Verifier(authority_public(SECRET)).sender(foreign.routing_id(), keys.public_z85) is None


def test_a_self_made_key_cannot_sign_for_the_cluster() -> None:
    """What a thief holding a member's state dir can do: sign with a key of its own."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    keys = NodeKeys.generate()
    own = Authority(Ed25519PrivateKey.generate())
    forged = Credentials.signed(own, "thief", keys)
    assert Verifier(authority_public(SECRET)).sender(forged.routing_id(), keys.public_z85) is None


def test_revocations_are_signed_by_an_admin_and_verified_by_members(tmp_path: Path) -> None:
    public = authority_public(SECRET)
    admin = RevocationList(public, SECRET, tmp_path / "revoked")
    assert admin.revoke("laptop") and not admin.revoke("laptop")
    entries = admin.wire()
    assert len(entries) == 1 and entries[0][0] == "laptop" and len(str(entries[0][2])) == 128
    member = RevocationList(public, None, None)
    assert member.merge(entries) == ["laptop"] and member.rejected == 0
    with pytest.raises(NotAdmin):
        member.revoke("desk")
    # Tampered (another node id, another time, a flipped bit) or another cluster's: no.
    node_id, at, sig = entries[0]
    assert isinstance(sig, str) and isinstance(at, int)
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    foreign = RevocationList(authority_public(OTHER), OTHER, None)
    foreign.revoke("desk")
    fresh = RevocationList(public, None, None)
    bad = [["desk", at, sig], [node_id, at + 1, sig], [node_id, at, flipped], *foreign.wire()]
    assert fresh.merge(bad) == [] and fresh.rejected == 4
    # Kept on disk, and read back as valid.
    assert RevocationList(public, None, tmp_path / "revoked").entries == admin.entries


def test_an_admin_signs_an_older_version_s_maced_revocations(tmp_path: Path) -> None:
    key = hashlib.blake2b(SECRET, digest_size=32, person=b"swarmd-mac").digest()
    mac = hmac.new(key, b"revoke", hashlib.sha256)
    for part in (b"laptop", b"1700000000"):
        mac.update(len(part).to_bytes(4, "big") + part)
    old = [["laptop", 1700000000, mac.digest()[:16].hex()], ["forged", 1, "00" * 16]]
    (tmp_path / "revoked").write_text(json.dumps(old))
    public = authority_public(SECRET)
    assert "laptop" not in RevocationList(public, None, tmp_path / "revoked")  # no secret
    admin = RevocationList(public, SECRET, tmp_path / "revoked")
    assert list(admin.entries) == ["laptop"]
    # Rewritten signed: a member now takes it.
    assert "laptop" in RevocationList(public, None, tmp_path / "revoked")


def test_a_membership_is_stored_privately_and_certifies_one_id_and_key(tmp_path: Path) -> None:
    cluster = ClusterKeys.from_secret(SECRET)
    keys = NodeKeys.generate()
    cert = Credentials.issue(SECRET, "laptop", keys).signature
    m = Membership("laptop", cluster.secret_z85, cluster.authority, cert, "10.0.0.1:7946")
    store_membership(tmp_path, m)
    assert oct((tmp_path / "membership").stat().st_mode & 0o777) == "0o600"
    loaded = load_membership(tmp_path)
    assert loaded == m and SECRET.hex() not in (tmp_path / "membership").read_text()
    member_keys = loaded.keys()
    assert member_keys.secret is None and not member_keys.admin
    assert (member_keys.public_z85, member_keys.fingerprint) == (
        cluster.public_z85,
        cluster.fingerprint,
    )
    assert loaded.certifies("laptop", keys.public_z85)
    assert not loaded.certifies("thief", keys.public_z85)
    assert not loaded.certifies("laptop", zmq.curve_keypair()[0])
    creds = loaded.credentials(keys)
    assert Verifier(cluster.authority).sender(creds.routing_id(), keys.public_z85) == "laptop"
    for damaged in ("{", "[]", json.dumps({"node": "x"})):
        (tmp_path / "membership").write_text(damaged)
        with pytest.raises(ValueError, match="not a membership"):
            load_membership(tmp_path)
    assert load_membership(tmp_path / "nowhere") is None
