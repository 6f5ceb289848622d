"""Members without the cluster secret, with real daemons and real CURVE: a node enrolled
with an ordinary join token holds a membership, not the secret; it gets and runs work;
it can neither admit machines nor revoke; and once revoked, nothing in its state dir
gets anyone back in, under its own id or any other. An ``--admin`` token still hands
over the secret. A member whose copied state dir must take a new id stops."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import zmq

from protocol import codec
from protocol.messages import NodeRef, Syn
from swarmd.credentials import Credentials, NodeKeys, load_or_create_node_keys
from swarmd.member_file import load_membership
from swarmd.transport import curve_client
from tests.harness import Daemon, new_secret, swarmctl, wait_until

EXIT_REENROLL = 77


def _token(d: Daemon, *args: str) -> str:
    out = swarmctl("--json", "join-token", *args, state_dir=d.state_dir)
    assert out.returncode == 0, out.stderr
    token: str = json.loads(out.stdout)["token"]
    return token


def _admin(tmp_path: Path, daemons: list[Daemon]) -> Daemon:
    a = Daemon(tmp_path, "a", secret=new_secret(), args=("--no-mdns",))
    daemons.append(a)
    return a.start().wait_ready()


def _joined(tmp_path: Path, daemons: list[Daemon], name: str, token: str) -> Daemon:
    d = Daemon(tmp_path, name, args=("--no-mdns", "--join-token", token))
    daemons.append(d)
    return d.start().wait_ready(30)


def _run_on(a: Daemon, tmp_path: Path, node: str) -> dict[str, Any]:
    """A shell subtask pinned to ``node``, submitted on ``a``: its final status."""
    job = tmp_path / "job.toml"
    job.write_text(f'[[subtask]]\nid = "s"\nkind = "shell"\nrun = ["true"]\nnode = "{node}"\n')
    out = swarmctl("--json", "submit", "-f", str(job), state_dir=a.state_dir)
    assert out.returncode == 0, out.stderr + out.stdout
    task = json.loads(out.stdout)["task"]

    def final() -> dict[str, Any] | None:
        status = swarmctl("--json", "status", task, state_dir=a.state_dir)
        body: dict[str, Any] = json.loads(status.stdout)
        return body if body["state"] in ("done", "failed") else None

    return wait_until(final, 30, what="the pinned task to end")


def _send_until(
    sock: zmq.Socket[bytes], d: Daemon, frame: bytes, counter: str, before: int
) -> None:
    """Send ``frame`` until ``d`` counts ``counter`` above ``before``."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(zmq.Again):  # not connected yet
            sock.send(frame, zmq.NOBLOCK)
        if d.counters().get(counter, 0) > before:
            return
        sock.poll(200)  # a pause between tries, not a synchronisation
    raise AssertionError(f"{counter} never counted: {d.counters()}")


def test_a_member_works_cannot_admit_or_revoke_and_once_revoked_stays_out(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    a = _admin(tmp_path, daemons)
    b = _joined(tmp_path, daemons, "b", _token(a))
    wait_until(lambda: a.states() == {"a": "alive", "b": "alive"}, 20, what="b to join a")
    assert not (b.state_dir / "cluster.secret").exists(), "a member holds no cluster secret"
    membership = load_membership(b.state_dir)
    assert membership is not None and membership.node_id == b.node_id()
    assert oct((b.state_dir / "membership").stat().st_mode & 0o777) == "0o600"
    assert membership.issuer == a.address
    # It gets and runs work (pinned to it, submitted on the admin).
    body = _run_on(a, tmp_path, "b")
    assert body["state"] == "done" and body["subtasks"][0]["peer"] == "b", body
    # It cannot admit machines or revoke: a clear error naming where to do it.
    out = swarmctl("join-token", state_dir=b.state_dir)
    assert out.returncode != 0 and "admin node" in out.stderr and a.address in out.stderr
    out = swarmctl("revoke", "a", state_dir=b.state_dir)
    assert out.returncode != 0 and "cannot sign a revocation" in out.stderr, out.stderr
    # Nor get a token from an admin over the network.
    out = swarmctl("--node", a.address, "join-token", state_dir=b.state_dir)
    assert out.returncode != 0 and "only on the node's own socket" in out.stderr, out.stderr

    # An --admin token hands over the secret: c can admit machines itself.
    c = _joined(tmp_path, daemons, "c", _token(a, "--admin", "--single-use"))
    assert (c.state_dir / "cluster.secret").read_text() == (
        a.state_dir / "cluster.secret"
    ).read_text()
    assert not (c.state_dir / "membership").exists()
    assert _token(c).startswith("swarmd2-")
    wait_until(lambda: len(a.states()) == 3, 20, what="c to join")

    # b is stolen: revoked on the admin c.
    stolen = b.node_id()
    out = swarmctl("--json", "revoke", "b", state_dir=c.state_dir)
    assert out.returncode == 0, out.stderr
    wait_until(lambda: a.counters().get("revoked_nodes") == 1, 20, what="a to learn it")
    b.stop()
    _thief_cannot_get_in(tmp_path, a, b, stolen)


def _thief_cannot_get_in(tmp_path: Path, a: Daemon, b: Daemon, stolen: str) -> None:
    """Everything in b's state dir: its membership (listening key, authority public key,
    certificate), node.key. No credential for another id can be made from it."""
    membership = load_membership(b.state_dir)
    assert membership is not None
    node_keys = load_or_create_node_keys(b.state_dir)
    keys = membership.keys()
    assert keys.secret is None  # nothing to sign with: only the authority's public key
    ctx = zmq.Context()
    sockets: list[zmq.Socket[bytes]] = []

    def connect(creds: Credentials, route: bytes) -> zmq.Socket[bytes]:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        curve_client(s, keys, creds)
        s.setsockopt(zmq.ROUTING_ID, route)
        s.connect(f"tcp://{a.address}")
        sockets.append(s)
        return s

    syn = codec.encode(Syn(sender=NodeRef("thief", 1, 1, "127.0.0.1:9"), seq=1, digest=[]))
    try:
        # A new id with the stolen certificate and a fresh key: unproven, dropped.
        creds = Credentials("thief", NodeKeys.generate(), membership.certificate)
        before = a.counters().get("dropped_unauthenticated", 0)
        _send_until(connect(creds, creds.routing_id()), a, syn, "dropped_unauthenticated", before)
        # b's key (revoked), under a new id or its own: refused at the handshake.
        for creds in (
            Credentials("thief", node_keys, membership.certificate),
            membership.credentials(node_keys),
        ):
            before = a.counters()
            s = connect(creds, creds.routing_id())
            deadline = time.monotonic() + 15
            while not _refused(before, a.counters()):
                assert time.monotonic() < deadline, f"b's key was not refused: {a.counters()}"
                with contextlib.suppress(zmq.Again):
                    s.send(syn, zmq.NOBLOCK)
                s.poll(200)  # a pause between tries, not a synchronisation
    finally:
        for s in sockets:
            s.close()
        ctx.term()
    # A daemon on a copy of b's state dir under a new id will not start.
    thief = Daemon(tmp_path, "thief", args=("--no-mdns", "--join", a.address))
    shutil.rmtree(thief.state_dir)
    shutil.copytree(b.state_dir, thief.state_dir, ignore=shutil.ignore_patterns("*.sock", "lock"))
    (thief.state_dir / "node_id").write_text("7h1ef000000000001\n")
    assert thief.start().wait_exit(30) == EXIT_REENROLL, thief.log()
    assert "enroll it again with a new join token" in thief.log(), thief.log()
    assert "Traceback" not in thief.log()
    assert set(a.states()) <= {"a", "b", "c"}


def _refused(before: dict[str, int], now: dict[str, int]) -> bool:
    """A revoked node's key refused at the handshake, or its message dropped."""
    return any(now.get(k, 0) > before.get(k, 0) for k in ("zap_denied", "dropped_revoked"))


def test_a_member_whose_copied_state_dir_must_take_a_new_id_stops(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """It cannot sign a credential for a new id: it stops (exit 77, re-enroll), and
    says so again if started once more; its twin keeps the id and runs on."""
    a = _admin(tmp_path, daemons)
    m = _joined(tmp_path, daemons, "m", _token(a))
    wait_until(lambda: a.states().get("m") == "alive", 20, what="m to join a")
    assert m.term() == 0
    shutil.copytree(m.state_dir, tmp_path / "m2", ignore=shutil.ignore_patterns("*.sock", "lock"))
    m2 = Daemon(tmp_path, "m2", args=("--no-mdns", "--join", a.address))
    daemons.append(m2)
    m.start()
    m2.start()

    def stopped() -> Daemon | None:
        return next((d for d in (m, m2) if d.proc is not None and d.proc.poll() is not None), None)

    loser = wait_until(stopped, 30, what="the twin that must take a new id to stop")
    assert loser.wait_exit(10) == EXIT_REENROLL, loser.log()
    assert "IDENTITY CONFLICT" in loser.log() and "enroll it again" in loser.log(), loser.log()
    assert "Traceback" not in loser.log()
    winner = m2 if loser is m else m
    assert winner.proc is not None and winner.proc.poll() is None
    # Started again without a new token: the same advice, at once.
    if loser is m:  # m's command line still carries the spent token: drop it
        loser.args = ("--no-mdns", "--join", a.address)
    assert loser.start().wait_exit(30) == EXIT_REENROLL
    assert "the membership in" in loser.log() and "is for node" in loser.log()
