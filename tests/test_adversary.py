"""A member turned hostile, with real daemons and real CURVE sockets: it cannot speak as
another node, cannot hand in another node's result, is shut out once revoked, and a
message it replays changes nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import zmq

from protocol import codec
from protocol.messages import AttemptResult, NodeRef, Progress, Syn
from swarmd.artifact_names import check_artifact_names
from swarmd.credentials import (
    Credentials,
    NodeKeys,
    encode_signature,
    load_or_create_node_keys,
)
from swarmd.identity import ClusterKeys
from swarmd.transport import curve_client
from tests.harness import Daemon, member_socket, new_secret, swarmctl, wait_until


def _status(d: Daemon, task: str) -> dict[str, Any]:
    out = swarmctl("--json", "status", task, state_dir=d.state_dir)
    assert out.returncode == 0, out.stderr
    body: dict[str, Any] = json.loads(out.stdout)
    return body


def _running(d: Daemon, command: str) -> tuple[str, str, int]:
    """Submit ``command`` (sh -c) and wait until it runs: (task, subtask, attempt)."""
    task = swarmctl("submit", "--", "sh", "-c", command, state_dir=d.state_dir).stdout.strip()
    assert task, "no task id"

    def started() -> dict[str, Any] | None:
        sub = _status(d, task)["subtasks"][0]
        return sub if sub["state"] == "running" else None

    sub = wait_until(started, 20, what="the subtask to run")
    return task, sub["id"], sub["attempts"]


def _send_until_counted(
    s: zmq.Socket[bytes], d: Daemon, frame: bytes, counter: str, at_least: int = 1
) -> dict[str, int]:
    """Send ``frame`` until ``d`` counts ``counter`` (a new link takes a moment)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        s.send(frame)
        c = d.counters()
        if c.get(counter, 0) >= at_least:
            return c
        s.poll(200)  # a pause between tries, not a synchronisation
    raise AssertionError(f"{counter} never counted: {d.counters()}")


def test_a_member_cannot_speak_as_another_node(tmp_path: Path, daemons: list[Daemon]) -> None:
    """Mallory holds a credential of its own. A gossip message naming the victim as its
    sender is dropped; so is a routing id that names the victim with Mallory's signature."""
    secret = new_secret()
    d = Daemon(tmp_path, "victim", secret=secret, args=("--no-mdns",))
    daemons.append(d)
    d.start().wait_ready()
    victim = d.node_id()
    ctx = zmq.Context()
    s = member_socket(ctx, d, secret, node_id="mallory")
    mallory_keys = NodeKeys.generate()
    raw = bytes.fromhex(secret)
    forged = Credentials.issue(raw, "mallory", mallory_keys)
    s2 = ctx.socket(zmq.DEALER)
    try:
        syn = Syn(sender=NodeRef(victim, 99, 1, "127.0.0.1:9"), seq=1, digest=[])
        _send_until_counted(s, d, codec.encode(syn), "dropped_forged_sender")
        # Mallory's own signature under the victim's id: it binds the id, so it fails.
        s2.setsockopt(zmq.LINGER, 0)
        curve_client(s2, ClusterKeys.from_secret(raw), forged)
        route = f"{victim} {encode_signature(forged.signature)} 0002"
        s2.setsockopt(zmq.ROUTING_ID, route.encode())
        s2.connect(f"tcp://{d.address}")
        _send_until_counted(s2, d, codec.encode(syn), "dropped_unauthenticated")
    finally:
        s.close()
        s2.close()
        ctx.term()
    assert d.states() == {"victim": "alive"}  # nothing of Mallory's gossip was taken


def test_a_forged_or_replayed_result_is_not_committed(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """While the real attempt runs, a result naming the worker (from Mallory's
    connection) and a result naming Mallory are both dropped; the task is still
    running. After the real result, the same result sent again changes nothing."""
    secret = new_secret()
    d = Daemon(tmp_path, "n1", secret=secret, args=("--no-mdns",))
    daemons.append(d)
    d.start().wait_ready()
    wait_until(lambda: d.states() == {"n1": "alive"}, 10, what="alive")
    worker = d.node_id()
    task, sub, attempt = _running(d, "sleep 4; echo real")
    ctx = zmq.Context()
    s = member_socket(ctx, d, secret, node_id="mallory")
    try:

        def result(node: str, text: str) -> bytes:
            r = AttemptResult(
                task=task, subtask=sub, attempt=attempt, node=node, exit_code=0, stdout=text
            )
            return codec.encode(r)

        _send_until_counted(s, d, result(worker, "forged"), "dropped_forged_sender")
        _send_until_counted(s, d, result("mallory", "forged"), "tasks_wrong_sender")
        progress = Progress(task=task, subtask=sub, attempt=attempt, node="mallory")
        _send_until_counted(s, d, codec.encode(progress), "tasks_wrong_sender", 2)
        assert _status(d, task)["state"] == "running"

        done = wait_until(
            lambda: (b := _status(d, task))["state"] == "done" and b, 30, what="the real result"
        )
        assert done["subtasks"][0]["attempts"] == attempt
        out = swarmctl("--json", "result", task, state_dir=d.state_dir)
        assert json.loads(out.stdout)["subtasks"][sub]["stdout"] == "real\n"

        # A replay, as the worker itself (its key file and the secret: all it has).
        own = Credentials.issue(
            bytes.fromhex(secret), worker, load_or_create_node_keys(d.state_dir)
        )
        replay = ctx.socket(zmq.DEALER)
        replay.setsockopt(zmq.LINGER, 0)
        curve_client(replay, ClusterKeys.from_secret(bytes.fromhex(secret)), own)
        replay.connect(f"tcp://{d.address}")
        before = d.counters().get("tasks_stale_results", 0)
        _send_until_counted(
            replay, d, result(worker, "replayed"), "tasks_stale_results", before + 1
        )
        replay.close()
        out = swarmctl("--json", "result", task, state_dir=d.state_dir)
        assert json.loads(out.stdout)["subtasks"][sub]["stdout"] == "real\n"
    finally:
        s.close()
        ctx.term()


def _cluster(tmp_path: Path, daemons: list[Daemon], names: list[str]) -> list[Daemon]:
    secret = new_secret()
    first = Daemon(tmp_path, names[0], secret=secret, args=("--no-mdns",))
    rest = [
        Daemon(tmp_path, n, secret=secret, args=("--no-mdns", "--join", first.address))
        for n in names[1:]
    ]
    nodes = [first, *rest]
    daemons += nodes
    for d in nodes:
        d.start()
    for d in nodes:
        d.wait_ready()
    everyone = dict.fromkeys(names, "alive")
    for d in nodes:
        wait_until(lambda d=d: d.states() == everyone, 20, what=f"{d.name} to see everyone")
    return nodes


def test_a_revoked_node_is_shut_out_everywhere_and_gets_no_work(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    n1, n2, n3 = _cluster(tmp_path, daemons, ["n1", "n2", "n3"])
    stolen = n3.node_id()
    t0 = time.monotonic()
    out = swarmctl("--json", "revoke", "n3", state_dir=n1.state_dir)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"node": stolen, "added": True, "revoked": [stolen]}

    def shut_out_everywhere() -> bool:
        return all(
            d.counters().get("revoked_nodes", 0) == 1 and d.counters().get("dropped_revoked", 0)
            for d in (n1, n2)
        )

    wait_until(shut_out_everywhere, 30, what="n1 and n2 to drop n3's messages")
    print(f"revoked node: shut out on every member {time.monotonic() - t0:.2f} s after revoke")
    # n3 restarts (a thief with the laptop): it cannot get back in.
    n3.stop()
    n3.start().wait_ready()
    wait_until(lambda: n1.counters().get("zap_denied", 0) >= 1, 20, what="n1 to refuse n3's key")
    for _ in range(3):
        assert n3.states() == {"n3": "alive"}, n3.states()  # it hears from nobody
        n3.counters()  # a round trip, so the loop had time to gossip
    for d in (n1, n2):
        wait_until(
            lambda d=d: d.states().get("n3") in ("dead", None), 60, what=f"{d.name}: n3 gone"
        )
        assert d.states()["n1"] == d.states()["n2"] == "alive"
    # No work goes to it: every subtask runs on n1 or n2.
    tasks = [
        swarmctl("submit", "--", "true", state_dir=n1.state_dir).stdout.strip() for _ in range(6)
    ]
    for task in tasks:
        body = wait_until(
            lambda t=task: (b := _status(n1, t))["state"] == "done" and b, 30, what="done"
        )
        assert body["subtasks"][0]["peer"] in ("n1", "n2", n1.node_id(), n2.node_id())
    # A revocation cannot be made over the network, nor forged into the gossip.
    remote = swarmctl("--node", n1.address, "revoke", n2.node_id(), state_dir=n2.state_dir)
    assert remote.returncode != 0


def test_artifact_names_that_leave_the_output_directory_are_refused() -> None:
    for bad in ("../../x", "/abs", "", ".", "a/../b", "a//b", "a/", "x\x00y", "a" * 300):
        assert check_artifact_names([bad]) is not None, bad
    assert check_artifact_names(["a", "a/b"]) is not None  # a file where a directory goes
    assert check_artifact_names(["out.txt", "dir/sub/file.bin", "..hidden"]) is None
