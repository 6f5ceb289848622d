"""Node id, generation, cluster secret and keys, join tokens."""

from __future__ import annotations

import base64
import os
import re
import stat
from pathlib import Path

import msgspec
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from zmq.utils import z85

from protocol.messages import NodeId
from swarmd import identity
from swarmd.identity import (
    SECRET_BYTES,
    TOKEN_PREFIX,
    ClusterKeys,
    _token_checksum,
    create_cluster_secret,
    ensure_state_dir,
    load_cluster_secret,
    load_or_create_node_id,
    make_join_token,
    next_generation,
    parse_join_token,
    store_cluster_secret,
    write_node_id,
)

SECRET_A = bytes(range(32))
SECRET_B = bytes(range(1, 33))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- node id, generation


def test_node_id_is_created_once_and_kept(tmp_path: Path) -> None:
    node_id, created = load_or_create_node_id(tmp_path)
    assert created is True
    assert re.fullmatch(r"[0-9a-f]{16}", node_id)
    msgspec.convert(node_id, NodeId)  # acceptable on the wire
    for _ in range(3):
        assert load_or_create_node_id(tmp_path) == (node_id, False)
    assert (tmp_path / "node_id").read_text() == node_id + "\n"
    assert mode(tmp_path / "node_id") == 0o600


def test_two_state_dirs_get_different_node_ids(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert load_or_create_node_id(tmp_path / "a")[0] != load_or_create_node_id(tmp_path / "b")[0]


def test_written_node_id_is_loaded(tmp_path: Path) -> None:
    write_node_id(tmp_path, "abcDEF123")
    assert load_or_create_node_id(tmp_path) == ("abcDEF123", False)


@pytest.mark.parametrize("content", ["", "\n", "bad id!\n", "x" * 65, "../etc\n"])
def test_unusable_node_id_file_is_replaced(tmp_path: Path, content: str) -> None:
    (tmp_path / "node_id").write_text(content)
    node_id, created = load_or_create_node_id(tmp_path)
    assert created is True
    assert re.fullmatch(r"[0-9a-f]{16}", node_id)
    assert load_or_create_node_id(tmp_path) == (node_id, False)


def test_node_id_file_the_protocol_would_reject_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "node_id").write_text("nodé\n")
    node_id, _ = load_or_create_node_id(tmp_path)
    assert re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", node_id), node_id


def test_generation_increments_per_call(tmp_path: Path) -> None:
    assert [next_generation(tmp_path) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert (tmp_path / "generation").read_text() == "5\n"
    assert mode(tmp_path / "generation") == 0o600


def test_generation_continues_from_the_stored_value(tmp_path: Path) -> None:
    (tmp_path / "generation").write_text("41\n")
    assert next_generation(tmp_path) == 42


def test_no_temporary_files_are_left(tmp_path: Path) -> None:
    load_or_create_node_id(tmp_path)
    next_generation(tmp_path)
    create_cluster_secret(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.secret", "generation", "node_id"]


# ---------------------------------------------------------------- state dir and secret


def test_state_dir_is_0700_and_secret_is_0600(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "state"
    ensure_state_dir(state)
    assert mode(state) == 0o700
    secret = create_cluster_secret(state)
    assert len(secret) == SECRET_BYTES
    assert mode(state / "cluster.secret") == 0o600
    assert load_cluster_secret(state) == secret


def test_ensure_state_dir_tightens_an_existing_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    ensure_state_dir(state)
    assert mode(state) == 0o700
    ensure_state_dir(state)  # idempotent
    assert mode(state) == 0o700


def test_secret_is_0600_even_with_a_lax_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store_cluster_secret(tmp_path, SECRET_A)
    finally:
        os.umask(old)
    assert mode(tmp_path / "cluster.secret") == 0o600


def test_replacing_a_world_readable_secret_makes_it_private(tmp_path: Path) -> None:
    path = tmp_path / "cluster.secret"
    path.write_text("00" * 32)
    os.chmod(path, 0o644)
    store_cluster_secret(tmp_path, SECRET_A)
    assert mode(path) == 0o600
    assert load_cluster_secret(tmp_path) == SECRET_A


def test_leftover_tmp_file_does_not_widen_the_secret_mode(tmp_path: Path) -> None:
    leftover = tmp_path / "cluster.secret.tmp"
    leftover.write_text("partial")
    os.chmod(leftover, 0o644)
    store_cluster_secret(tmp_path, SECRET_A)
    assert mode(tmp_path / "cluster.secret") == 0o600


def test_two_created_secrets_differ(tmp_path: Path) -> None:
    assert create_cluster_secret(tmp_path) != create_cluster_secret(tmp_path)


def test_no_secret_yet(tmp_path: Path) -> None:
    assert load_cluster_secret(tmp_path) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [("zz" * 32, "not a hex cluster secret"), ("ab" * 16, "must be 32 bytes"), ("", "32 bytes")],
)
def test_bad_secret_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "cluster.secret").write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_cluster_secret(tmp_path)
    assert "cluster.secret" in str(info.value)
    assert content not in str(info.value) or not content


# ---------------------------------------------------------------- cluster keys


def test_cluster_keys_are_deterministic() -> None:
    a1, a2 = ClusterKeys.from_secret(SECRET_A), ClusterKeys.from_secret(SECRET_A)
    assert a1 == a2
    assert a1.secret == SECRET_A


def test_different_secrets_give_different_keys() -> None:
    a, b = ClusterKeys.from_secret(SECRET_A), ClusterKeys.from_secret(SECRET_B)
    assert a.public_z85 != b.public_z85
    assert a.secret_z85 != b.secret_z85
    assert a.fingerprint != b.fingerprint


def test_derived_key_pair_is_valid_curve() -> None:
    keys = ClusterKeys.from_secret(SECRET_A)
    assert len(keys.public_z85) == 40 and len(keys.secret_z85) == 40
    assert zmq.curve_public(keys.secret_z85) == keys.public_z85
    # the CURVE secret is derived from, not equal to, the cluster secret
    assert z85.decode(keys.secret_z85) != SECRET_A


def test_fingerprint_reveals_neither_secret_nor_public_key() -> None:
    keys = ClusterKeys.from_secret(SECRET_A)
    fp = keys.fingerprint
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    for leak in (
        SECRET_A.hex(),
        keys.secret_z85.decode(),
        keys.public_z85.decode(),
        z85.decode(keys.public_z85).hex(),
        z85.decode(keys.secret_z85).hex(),
    ):
        assert fp not in leak
        assert leak not in fp
        # not even a sizeable piece of it
        assert not any(fp[i : i + 8] in leak for i in range(len(fp) - 7))


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_any_secret_gives_a_valid_key_pair(secret: bytes) -> None:
    keys = ClusterKeys.from_secret(secret)
    assert zmq.curve_public(keys.secret_z85) == keys.public_z85
    assert ClusterKeys.from_secret(secret) == keys


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_cluster_keys_need_32_bytes(size: int) -> None:
    with pytest.raises(ValueError, match=f"32 bytes, got {size}"):
        ClusterKeys.from_secret(b"\x01" * size)


# ---------------------------------------------------------------- join tokens


@pytest.mark.parametrize(
    "seeds",
    [[], ["192.168.1.20:7946"], ["desk.local:7946", "[::1]:7000", "10.0.0.3:1"]],
)
def test_join_token_round_trip(seeds: list[str]) -> None:
    token = make_join_token(SECRET_A, seeds)
    assert token.startswith(TOKEN_PREFIX)
    assert re.fullmatch(r"swarmd1-[A-Za-z0-9_-]+", token), "copy-paste and shell safe"
    assert parse_join_token(token) == (SECRET_A, seeds)
    assert parse_join_token(f"  {token}\n") == (SECRET_A, seeds)


@settings(max_examples=50, deadline=None)
@given(
    st.binary(min_size=32, max_size=32),
    st.lists(st.text(min_size=1, max_size=40), max_size=8),
)
def test_join_token_round_trip_property(secret: bytes, seeds: list[str]) -> None:
    assert parse_join_token(make_join_token(secret, seeds)) == (secret, seeds)


def test_join_token_keeps_at_most_8_seeds() -> None:
    seeds = [f"10.0.0.{i}:7946" for i in range(12)]
    assert parse_join_token(make_join_token(SECRET_A, seeds)) == (SECRET_A, seeds[:8])


def test_join_token_does_not_show_the_secret_in_hex() -> None:
    assert SECRET_A.hex() not in make_join_token(SECRET_A, [])


def _body(token: str) -> str:
    return token[len(TOKEN_PREFIX) :]


def _flip(text: str, index: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    value = alphabet.index(text[index]) ^ 0b100000
    return text[:index] + alphabet[value] + text[index + 1 :]


TOKEN = make_join_token(SECRET_A, ["192.168.1.20:7946", "192.168.1.21:7946"])


def _checksummed(obj: object) -> str:
    """A token whose checksum is right, so the content itself is what gets checked."""
    body = msgspec.msgpack.encode(obj)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(body + _token_checksum(body)).decode()


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "not a swarmd join token"),
        ("swarmd2-" + _body(TOKEN), "not a swarmd join token"),
        (_body(TOKEN), "not a swarmd join token"),
        ("SWARMD1-" + _body(TOKEN), "not a swarmd join token"),
        (TOKEN_PREFIX, "damaged"),
        (TOKEN[:-5], "damaged"),
        (TOKEN[: len(TOKEN_PREFIX) + 20], "damaged"),
        (TOKEN[: len(TOKEN_PREFIX) + 1], "damaged"),
        (TOKEN + "AAAA", "damaged"),  # trailing bytes
        (TOKEN_PREFIX + _flip(_body(TOKEN), 0), "damaged"),  # the array header
        (TOKEN_PREFIX + _flip(_body(TOKEN), 2), "damaged"),  # the secret's length byte
        (TOKEN[:20] + "é" + TOKEN[21:], "damaged"),
        (
            _checksummed([b"\x01" * 16, []]),
            "wrong secret length",
        ),
        (
            _checksummed([b"\x01" * 32, [7946]]),
            "damaged",
        ),
        (
            _checksummed({"a": 1}),
            "damaged",
        ),
    ],
    ids=[
        "empty",
        "wrong-version-prefix",
        "no-prefix",
        "upper-case-prefix",
        "prefix-only",
        "truncated-end",
        "truncated-middle",
        "one-char",
        "trailing-garbage",
        "flipped-header",
        "flipped-length",
        "non-ascii",
        "short-secret",
        "non-string-seed",
        "map",
    ],
)
def test_damaged_join_tokens(token: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_join_token(token)
    text = str(info.value)
    assert "swarmd" in text or "join token" in text
    assert SECRET_A.hex() not in text


def test_damaged_token_message_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="copy it again from `swarmctl join-token`"):
        parse_join_token(TOKEN[:-5])


def test_a_typo_in_the_secret_part_is_detected() -> None:
    # body chars 4..46 encode the 32 secret bytes (after the 3-byte msgpack header)
    with pytest.raises(ValueError, match="damaged"):
        parse_join_token(TOKEN_PREFIX + _flip(_body(TOKEN), 20))


def test_module_constants() -> None:
    assert identity.SECRET_BYTES == 32
    assert identity.TOKEN_PREFIX == "swarmd1-"
