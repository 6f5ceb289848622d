"""``swarmd2-`` join tokens with real daemons and real CURVE: a token joins a node
without carrying the cluster secret; single-use and expiring tokens are refused once
spent, with a clear error and exit code 77; an unreachable issuer ends in a clear
message; and a client without a credential can send nothing but a (rate-limited)
enrollment request."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import msgspec
import zmq
from zmq.utils import z85

from protocol import codec
from protocol.messages import EnrollReply, EnrollRequest, NodeRef, PeersRequest, Syn
from swarmd.credentials import Verifier, encode_signature
from swarmd.identity import ClusterKeys
from swarmd.join_tokens import TOKEN_V2_PREFIX, Invitation, enroll_proof, parse_token
from tests.harness import Daemon, swarmctl, wait_until

EXIT_TOKEN_REFUSED = 77


def _token(d: Daemon, *args: str) -> dict[str, Any]:
    out = swarmctl("--json", "join-token", *args, state_dir=d.state_dir)
    assert out.returncode == 0, out.stderr
    reply: dict[str, Any] = json.loads(out.stdout)
    return reply


def _issuer(tmp_path: Path, daemons: list[Daemon]) -> Daemon:
    a = Daemon(tmp_path, "a", args=("--no-mdns",))
    daemons.append(a)
    a.start().wait_ready()
    return a


def _joiner(tmp_path: Path, daemons: list[Daemon], name: str, token: str, *args: str) -> Daemon:
    d = Daemon(tmp_path, name, args=("--no-mdns", "--join-token", token, *args))
    daemons.append(d)
    return d.start()


def _refused(d: Daemon, message: str) -> None:
    """``d`` exits 77 saying ``message``, without a cluster secret or membership."""
    assert d.wait_exit(60) == EXIT_TOKEN_REFUSED, d.log()
    assert message in d.log(), d.log()
    assert "Traceback" not in d.log()
    assert not (d.state_dir / "cluster.secret").exists()
    assert not (d.state_dir / "membership").exists()


def test_a_token_joins_a_node_and_does_not_carry_the_secret(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    a = _issuer(tmp_path, daemons)
    reply = _token(a)
    token = reply["token"]
    assert token.startswith(TOKEN_V2_PREFIX) and reply["single_use"] is False
    assert 23.9 * 3600 < reply["expires"] - time.time() <= 24 * 3600, "default: 24 h"
    secret = bytes.fromhex((a.state_dir / "cluster.secret").read_text())
    body = token[len(TOKEN_V2_PREFIX) :]
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    assert secret not in raw and secret.hex() not in token
    decoded = msgspec.msgpack.decode(raw[:-4])  # everything it holds, and no secret
    assert decoded[0] == a.address and secret not in decoded
    invitation = parse_token(token)
    assert isinstance(invitation, Invitation) and invitation.issuer == a.address
    assert oct((a.state_dir / "tickets").stat().st_mode & 0o777) == "0o600"

    b = _joiner(tmp_path, daemons, "b", token).wait_ready(30)
    wait_until(lambda: a.states() == {"a": "alive", "b": "alive"}, 15, what="b to join a")
    # b is a member, not an admin: a membership, and no cluster secret.
    assert not (b.state_dir / "cluster.secret").exists()
    assert oct((b.state_dir / "membership").stat().st_mode & 0o777) == "0o600"
    assert secret.hex() not in (b.state_dir / "membership").read_text()
    assert a.counters().get("enroll_admitted") == 1
    # A restart with the token still given (install.sh's join.env) enrolls no more.
    assert b.term() == 0
    b.start().wait_ready(30)
    assert "already joined the cluster of the token" in b.log()
    wait_until(lambda: a.states().get("b") == "alive", 15, what="b back")
    assert a.counters().get("enroll_admitted") == 1


def test_a_single_use_token_joins_once(tmp_path: Path, daemons: list[Daemon]) -> None:
    a = _issuer(tmp_path, daemons)
    reply = _token(a, "--single-use", "--ttl", "1h")
    assert reply["single_use"] is True
    assert 3590 < reply["expires"] - time.time() <= 3600
    b = _joiner(tmp_path, daemons, "b", reply["token"]).wait_ready(30)
    wait_until(lambda: a.states().get("b") == "alive", 15, what="b to join a")

    c = _joiner(tmp_path, daemons, "c", reply["token"])
    _refused(c, "the join token was single-use and has been used already (by node")
    assert a.counters().get("enroll_refused_used") == 1
    # The use is durable: after a restart of the issuer the token is still spent.
    assert a.term() == 0
    a.start().wait_ready()
    c2 = _joiner(tmp_path, daemons, "c2", reply["token"])
    _refused(c2, "single-use and has been used already")
    assert b.proc is not None and b.proc.poll() is None


def test_an_expired_token_is_refused(tmp_path: Path, daemons: list[Daemon]) -> None:
    a = _issuer(tmp_path, daemons)
    reply = _token(a, "--ttl", "1s")
    wait_until(lambda: time.time() > reply["expires"] + 0.1, 10, what="the token to expire")
    b = _joiner(tmp_path, daemons, "b", reply["token"])
    _refused(b, "the join token expired at")
    assert a.counters().get("enroll_refused_expired") == 1
    assert a.states() == {"a": "alive"}


def test_an_unreachable_issuer_ends_in_a_clear_error(tmp_path: Path, daemons: list[Daemon]) -> None:
    a = _issuer(tmp_path, daemons)
    token = _token(a)["token"]
    assert a.term() == 0
    b = _joiner(tmp_path, daemons, "b", token, "--join-timeout", "2s")
    assert b.wait_exit(30) == 1, b.log()
    assert f"could not enroll with {a.address} (the node that issued the join token)" in b.log()
    assert "within 2 s: no answer" in b.log() and "Traceback" not in b.log()
    assert not (b.state_dir / "cluster.secret").exists()
    # The issuer back: the same token works (a timeout spends nothing).
    a.start().wait_ready()
    b.start().wait_ready(30)
    wait_until(lambda: a.states().get("b") == "alive", 15, what="b to join a")


def test_a_node_waiting_for_its_issuer_stops_at_once_on_sigterm(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    a = _issuer(tmp_path, daemons)
    token = _token(a)["token"]
    assert a.term() == 0
    b = _joiner(tmp_path, daemons, "b", token, "--join-timeout", "10m")
    wait_until(lambda: "enrolling with" in b.log(), 20, what="b to try its issuer")
    started = time.monotonic()
    assert b.term(timeout=10) == 0, b.log()
    assert time.monotonic() - started < 5
    assert "stopped before the node joined its cluster" in b.log()


def _uncredentialed(ctx: zmq.Context[zmq.Socket[bytes]], invitation: Invitation) -> Any:
    """A DEALER with a key pair of its own and no credential: what a new node has."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    public, private = zmq.curve_keypair()
    s.curve_publickey, s.curve_secretkey = public, private
    s.curve_serverkey = invitation.server_key
    s.connect(f"tcp://{invitation.issuer}")
    return s, public


def _b64(signature: bytes) -> bytes:
    return encode_signature(signature).encode()


def _answer(s: zmq.Socket[bytes]) -> EnrollReply:
    assert s.poll(10_000), "no answer to an enroll request"
    reply = codec.decode(s.recv())
    assert isinstance(reply, EnrollReply)
    return reply


def test_a_client_without_credential_may_only_enroll_and_slowly(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    a = _issuer(tmp_path, daemons)
    invitation = parse_token(_token(a)["token"])
    assert isinstance(invitation, Invitation)
    ctx = zmq.Context()
    try:
        s, public = _uncredentialed(ctx, invitation)
        garbage = [
            os.urandom(64),
            codec.encode(PeersRequest()),
            codec.encode(Syn(sender=NodeRef("intruder", 1, 1, "127.0.0.1:9"), seq=1, digest=[])),
            b"\x00" * 4096,  # bigger than any enroll request: never decoded
            msgspec.msgpack.encode({"t": "enroll", "v": 3, "ticket": b"x"}),
        ]
        for frame in garbage:
            s.send(frame)
        wait_until(
            lambda: a.counters().get("dropped_unauthenticated", 0) >= len(garbage),
            10,
            what="the garbage to be dropped and counted",
        )
        assert not s.poll(300), "garbage got an answer"
        unknown = EnrollRequest(ticket=b"\x01" * 16, node="newbie", proof=b"\x02" * 32)
        s.send(codec.encode(unknown))
        assert _answer(s).refused == "unknown"
        forged = EnrollRequest(ticket=invitation.ticket, node="newbie", proof=b"\x02" * 32)
        s.send(codec.encode(forged))
        reply = _answer(s)
        assert reply.refused == "bad_proof" and reply.secret == b""
        # Guessing fast: beyond the bucket (10, then 2 per second) requests are dropped.
        for _ in range(40):
            s.send(codec.encode(unknown))
        wait_until(lambda: a.counters().get("dropped_enroll_rate", 0) >= 20, 10, what="rate limit")
        counters = a.counters()
        assert counters.get("enroll_refused_unknown", 0) <= 1 + 10 + 2 * 10
        assert counters.get("enroll_admitted", 0) == 0
        # The real proof, from this very key, once the bucket refilled: the secret.
        proof = enroll_proof(invitation.ticket_secret, "newbie", public)
        good = EnrollRequest(ticket=invitation.ticket, node="newbie", proof=proof)

        def admitted() -> EnrollReply | None:
            s.send(codec.encode(good))
            while s.poll(500):
                reply = codec.decode(s.recv())
                if isinstance(reply, EnrollReply) and not reply.refused:
                    return reply
            return None

        reply = wait_until(admitted, 20, what="the real request to get through")
        # A membership: the listening key, the authority's key, a certificate for
        # "newbie" with this very key; no cluster secret.
        secret = bytes.fromhex((a.state_dir / "cluster.secret").read_text())
        keys = ClusterKeys.from_secret(secret)
        assert reply.secret == b"" and reply.authority == keys.authority
        assert z85.encode(reply.listening_key) == keys.secret_z85
        route = b"newbie " + _b64(reply.certificate) + b" 01"
        assert Verifier(keys.authority).sender(route, public) == "newbie"
        s.close()
    finally:
        ctx.term()
    assert a.proc is not None and a.proc.poll() is None
    assert a.states() == {"a": "alive"}  # still serving, and nobody joined
