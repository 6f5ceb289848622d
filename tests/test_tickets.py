"""``swarmd2-`` join tokens, the tickets behind them and the enrollment gate, without
daemons (those are in tests/test_enrollment.py)."""

from __future__ import annotations

import base64
import logging
import os
import re
import stat
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from protocol import codec
from protocol.messages import EnrollRequest, PeersRequest
from swarmd.identity import ClusterKeys, _token_checksum, make_join_token
from swarmd.join_tokens import (
    TOKEN_V2_PREFIX,
    Invitation,
    SecretToken,
    enroll_proof,
    make_invitation,
    parse_token,
)
from swarmd.tickets import KEEP_AFTER_EXPIRY_S, Refused, Ticket, TicketBook
from swarmd.transport.enroll_gate import ENROLL_BURST, EnrollGate, RateLimit

LOG = logging.getLogger("test")
SECRET = bytes(range(32))
KEYS = ClusterKeys.from_secret(SECRET)
PUBLIC = zmq.curve_keypair()[0]


def _invitation(seeds: tuple[str, ...] = ("10.0.0.2:7946",)) -> Invitation:
    return Invitation("10.0.0.1:7946", seeds, KEYS.public_z85, b"\x01" * 16, b"\x02" * 32)


# ---------------------------------------------------------------- the token


def test_an_invitation_round_trips_and_holds_no_secret() -> None:
    invitation = _invitation()
    token = make_invitation(invitation)
    assert re.fullmatch(r"swarmd2-[A-Za-z0-9_-]+", token), "copy-paste and shell safe"
    assert parse_token(token) == invitation
    assert parse_token(f"  {token}\n") == invitation
    raw = base64.urlsafe_b64decode(token[8:] + "=" * (-len(token[8:]) % 4))
    assert SECRET not in raw and KEYS.secret_z85 not in raw
    assert len(token) < 200, len(token)


def test_an_invitation_keeps_the_issuer_first_and_at_most_7_seeds() -> None:
    seeds = tuple(f"10.0.0.{i}:7946" for i in range(1, 12))  # the issuer among them
    parsed = parse_token(make_invitation(_invitation(seeds)))
    assert isinstance(parsed, Invitation)
    assert parsed.issuer == "10.0.0.1:7946" and parsed.seeds == seeds[1:8]


def test_old_tokens_still_parse_as_the_secret() -> None:
    token = make_join_token(SECRET, ["10.0.0.1:7946"])
    assert parse_token(token) == SecretToken(SECRET, ("10.0.0.1:7946",))


def _checksummed(obj: object) -> str:
    body = msgspec.msgpack.encode(obj)
    return TOKEN_V2_PREFIX + base64.urlsafe_b64encode(body + _token_checksum(body)).decode()


GOOD = make_invitation(_invitation())
RAW_KEY = bytes(32)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "not a swarmd join token"),
        ("swarmd3-" + GOOD[8:], "not a swarmd join token"),
        (TOKEN_V2_PREFIX, "damaged"),
        (GOOD[:-5], "damaged"),
        (GOOD + "AAAA", "damaged"),
        (GOOD[:20] + ("B" if GOOD[20] != "B" else "C") + GOOD[21:], "damaged"),
        (_checksummed(["10.0.0.1:1", [], RAW_KEY, b"\x01" * 15, b"\x02" * 32]), "ticket length"),
        (_checksummed(["10.0.0.1:1", [], RAW_KEY, b"\x01" * 16, b"\x02" * 31]), "secret length"),
        (_checksummed(["10.0.0.1:1", [], b"k", b"\x01" * 16, b"\x02" * 32]), "key or ticket"),
        (_checksummed(["nowhere", [], RAW_KEY, b"\x01" * 16, b"\x02" * 32]), "not HOST:PORT"),
        (_checksummed(["10.0.0.1:1", [7], RAW_KEY, b"\x01" * 16, b"\x02" * 32]), "damaged"),
    ],
)
def test_damaged_invitations_are_refused_with_a_clear_error(token: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_token(token)
    assert "\\x02" not in str(info.value)


# ---------------------------------------------------------------- the tickets


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _book(tmp_path: Path, clock: Clock) -> TicketBook:
    return TicketBook(tmp_path / "tickets", LOG, clock)


def _redeem(
    book: TicketBook, ticket: bytes, secret: bytes, node: str = "n1", key: bytes = PUBLIC
) -> Ticket:
    return book.redeem(ticket, enroll_proof(secret, node, key), node, key)


def test_a_ticket_admits_until_it_expires_and_is_stored_0600(tmp_path: Path) -> None:
    clock = Clock()
    book = _book(tmp_path, clock)
    ticket_id, secret, ticket = book.issue(3600, single_use=False)
    assert ticket.expires == clock.now + 3600
    assert stat.S_IMODE((tmp_path / "tickets").stat().st_mode) == 0o600
    assert _redeem(book, ticket_id, secret, "n1").uses == 1
    assert _redeem(book, ticket_id, secret, "n2").uses == 2  # multi-use
    clock.now += 3600
    with pytest.raises(Refused, match="expired at") as info:
        _redeem(book, ticket_id, secret, "n3")
    assert info.value.code == "expired"
    clock.now += KEEP_AFTER_EXPIRY_S + 1
    book.issue(60, False)  # issuing forgets long-expired tickets
    with pytest.raises(Refused) as info:
        _redeem(book, ticket_id, secret, "n3")
    assert info.value.code == "unknown"


def test_a_single_use_ticket_admits_one_node_durably(tmp_path: Path) -> None:
    clock = Clock()
    ticket_id, secret, _ = _book(tmp_path, clock).issue(3600, single_use=True)
    book = _book(tmp_path, clock)  # as after a restart
    _redeem(book, ticket_id, secret, "n1")
    _redeem(book, ticket_id, secret, "n1")  # the same node again: its answer was lost
    for again in (book, _book(tmp_path, clock)):
        with pytest.raises(Refused, match=r"used already \(by node n1\)") as info:
            _redeem(again, ticket_id, secret, "n2")
        assert info.value.code == "used"
        with pytest.raises(Refused):  # the same id with another key is another node
            _redeem(again, ticket_id, secret, "n1", zmq.curve_keypair()[0])


def test_a_wrong_proof_or_unknown_ticket_is_refused(tmp_path: Path) -> None:
    book = _book(tmp_path, Clock())
    ticket_id, secret, _ = book.issue(3600, single_use=True)
    other_key = zmq.curve_keypair()[0]
    proofs = {
        "another secret": enroll_proof(b"\x00" * 32, "n1", PUBLIC),
        "another node": enroll_proof(secret, "n2", PUBLIC),
        "another key": enroll_proof(secret, "n1", other_key),
    }
    for proof in proofs.values():
        with pytest.raises(Refused) as info:
            book.redeem(ticket_id, proof, "n1", PUBLIC)
        assert info.value.code == "bad_proof"
    with pytest.raises(Refused) as info:
        _redeem(book, os.urandom(16), secret)
    assert info.value.code == "unknown"
    assert _redeem(book, ticket_id, secret).uses == 1  # none of that spent it


def test_a_use_that_cannot_be_stored_admits_no_one(tmp_path: Path) -> None:
    clock = Clock()
    book = _book(tmp_path, clock)
    ticket_id, secret, _ = book.issue(3600, single_use=True)
    book.path = tmp_path / "gone" / "tickets"  # its directory vanished: writes fail
    with pytest.raises(Refused) as info:
        _redeem(book, ticket_id, secret)
    assert info.value.code == "unavailable"
    book.path = tmp_path / "tickets"
    assert _redeem(book, ticket_id, secret).uses == 1  # not spent by the failure


@pytest.mark.parametrize("content", ["{not json", '[{"id": "zz"}]', '[{"id": 1, "x": 2}]', "7"])
def test_a_damaged_ticket_file_refuses_its_tokens_and_never_crashes(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "tickets").write_text(content)
    book = _book(tmp_path, Clock())
    assert book.tickets == {}
    assert "damaged" in caplog.text
    ticket_id, secret, _ = book.issue(60, False)  # and new ones work
    assert _redeem(book, ticket_id, secret).uses == 1


# ---------------------------------------------------------------- the gate


def test_the_rate_limit_allows_a_burst_then_a_steady_rate() -> None:
    clock = Clock()
    limit = RateLimit(2.0, 10.0, clock)
    assert sum(limit.allow() for _ in range(50)) == 10
    clock.now += 1.0
    assert sum(limit.allow() for _ in range(50)) == 2
    clock.now += 3600.0
    assert sum(limit.allow() for _ in range(50)) == 10  # the bucket holds no more


def test_the_gate_passes_only_small_well_formed_enroll_requests() -> None:
    counters: Counter[str] = Counter()
    gate = EnrollGate(counters, LOG)
    taken: list[EnrollRequest] = []

    def handler(message: EnrollRequest, public: bytes, reply: Any) -> None:
        taken.append(message)

    request = EnrollRequest(ticket=b"\x01" * 16, node="n1", proof=b"\x02" * 32)
    frame = codec.encode(request)
    for bad in (b"\xc1", codec.encode(PeersRequest()), frame + b"\x00" * 2000):
        gate.take(handler, bad, PUBLIC, lambda _m: True)
    gate.take(None, frame, PUBLIC, lambda _m: True)  # a transport with no enrollment
    gate.take(handler, frame, b"", lambda _m: True)  # no CURVE key (cannot happen on TCP)
    assert counters["dropped_unauthenticated"] == 5 and taken == []
    for _ in range(int(ENROLL_BURST) + 5):
        gate.take(handler, frame, PUBLIC, lambda _m: True)
    assert taken == [request] * int(ENROLL_BURST)
    assert counters["enroll_requests"] == ENROLL_BURST
    assert counters["dropped_enroll_rate"] == 5
