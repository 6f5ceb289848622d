"""Real daemons on loopback with real mDNS: the swarm forms, detects failures, heals."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon, new_secret, swarmctl, wait_until

FORM_WITHIN_S = 2.0
DEAD_WITHIN_S = 3.0
LEFT_WITHIN_S = 1.0


def start_cluster(tmp_path: Path, daemons: list[Daemon], n: int, **kw: object) -> list[Daemon]:
    secret = new_secret()
    nodes = [Daemon(tmp_path, f"n{i}", secret=secret, **kw) for i in range(1, n + 1)]  # type: ignore[arg-type]
    daemons.extend(nodes)
    for d in nodes:
        d.start()
    for d in nodes:
        d.wait_ready()
    return nodes


def all_see(nodes: list[Daemon], expected: dict[str, str]) -> bool:
    return all(n.states() == expected for n in nodes)


def test_three_daemons_form_one_cluster_by_mdns_and_track_failures(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    t0 = time.monotonic()
    n1, n2, n3 = start_cluster(tmp_path, daemons, 3)
    ready = time.monotonic()
    everyone = {"n1": "alive", "n2": "alive", "n3": "alive"}
    wait_until(lambda: all_see([n1, n2, n3], everyone), 10, what="the cluster to form")
    formed = time.monotonic()
    print(f"formed {formed - ready:.2f} s after all answered ({formed - t0:.2f} s from spawn)")
    assert formed - ready < FORM_WITHIN_S, f"took {formed - ready:.2f} s"

    # The real CLI shows the same, with the CONTRACT fields. A peer first heard of
    # through another's gossip has no round trip measured yet (rtt_ms null) until this
    # node's own first exchange with it: wait for that, then check every field.
    def measured() -> list[dict[str, Any]] | None:
        out = swarmctl("--json", "peers", state_dir=n1.state_dir)
        assert out.returncode == 0, out.stderr
        rows: list[dict[str, Any]] = json.loads(out.stdout)
        return rows if all(p["self"] or p["rtt_ms"] is not None for p in rows) else None

    wait_until(lambda: measured() is not None, 5, what="round trips measured")
    peers = measured()
    assert peers is not None
    assert {p["name"] for p in peers} == {"n1", "n2", "n3"}
    keys = {"id", "name", "address", "state", "self", "generation", "draining", "rtt_ms"}
    keys |= {"last_seen_s", "cpu", "memory", "gpus", "models"}
    for p in peers:
        assert keys <= p.keys()
        assert p["self"] == (p["name"] == "n1")
        assert p["cpu"]["cores"] >= 1 and p["memory"]["total"] > 0
        if not p["self"]:
            assert p["rtt_ms"] is not None and 0 < p["rtt_ms"] < 1000
    table = swarmctl("peers", state_dir=n1.state_dir)
    assert table.returncode == 0 and "n3" in table.stdout and "alive" in table.stdout

    # SIGKILL: the others mark it dead within 3 s.
    n3.kill()
    killed = time.monotonic()
    wait_until(lambda: all(n.states()["n3"] == "dead" for n in (n1, n2)), 10, what="n3 dead")
    dead_after = time.monotonic() - killed
    print(f"SIGKILL -> dead on both peers in {dead_after:.2f} s")
    assert dead_after < DEAD_WITHIN_S

    # SIGTERM: left within 1 s, and the process exits 0.
    gen_before = next(p["generation"] for p in n1.peers() if p["name"] == "n2")
    n2.signal(15)
    termed = time.monotonic()
    wait_until(lambda: n1.states()["n2"] == "left", 5, interval=0.02, what="n2 left")
    left_after = time.monotonic() - termed
    print(f"SIGTERM -> left in {left_after:.2f} s")
    assert left_after < LEFT_WITHIN_S
    assert n2.wait_exit(10) == 0

    # Restart with the same state dir: alive again, same id, higher generation.
    old_id = n2.node_id()
    n2.start().wait_ready()
    wait_until(lambda: n1.states()["n2"] == "alive", 10, what="n2 alive again")
    again = next(p for p in n1.peers() if p["name"] == "n2")
    assert again["id"] == old_id
    assert again["generation"] > gen_before


def test_join_token_and_remote_control(tmp_path: Path, daemons: list[Daemon]) -> None:
    a = Daemon(tmp_path, "a", args=("--no-mdns",))
    daemons.append(a)
    a.start().wait_ready()
    out = swarmctl("join-token", state_dir=a.state_dir)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert token.startswith("swarmd2-")

    b = Daemon(tmp_path, "b", args=("--no-mdns", "--join-token", token))
    daemons.append(b)
    b.start().wait_ready()
    wait_until(lambda: a.states() == {"a": "alive", "b": "alive"}, 10, what="b to join a")
    # b is a member without the secret (its membership: listening key, certificate).
    assert not (b.state_dir / "cluster.secret").exists()
    assert oct((b.state_dir / "membership").stat().st_mode & 0o777) == "0o600"
    assert oct((a.state_dir / "control.sock").stat().st_mode & 0o777) == "0o600"

    # A member can query another member remotely over CURVE (with its certificate).
    out = swarmctl("--json", "--node", a.address, "peers", state_dir=b.state_dir)
    assert out.returncode == 0, out.stderr
    assert {p["name"] for p in json.loads(out.stdout)} == {"a", "b"}
    # Later starts need no token: the membership is stored.
    b.term()
    b.args = ("--no-mdns", "--join", a.address)
    b.start().wait_ready()
    wait_until(lambda: a.states().get("b") == "alive", 10, what="b back without token")


def test_bad_join_token_and_config_exit_2(tmp_path: Path) -> None:
    out = swarmctl("--state-dir", str(tmp_path / "none"), "peers")
    assert out.returncode == 3 and "no swarmd control socket" in out.stderr
    d = Daemon(tmp_path, "x", args=("--join-token", "swarmd1-garbage"))
    d.start()
    assert d.wait_exit(20) == 1
    assert "join token is damaged" in d.log()
    bad = Daemon(tmp_path, "y", config="[node]\nport = 'seven'\n")
    bad.start()
    assert bad.wait_exit(20) == 2
    assert "port: expected int" in bad.log()


@pytest.mark.parametrize("same_name", [False, True], ids=["other-name", "same-name"])
def test_copied_state_dir_does_not_merge_two_nodes(
    tmp_path: Path, daemons: list[Daemon], same_name: bool
) -> None:
    """A state dir copied to a second machine: one of the two takes a new id, loudly.

    With another name the conflict is found by gossip (same id, other address); with
    the same name too, the newcomer's mDNS name probe fails and it takes a new id.
    """
    a = Daemon(tmp_path, "a", secret=new_secret())
    daemons.append(a)
    a.start().wait_ready()
    shutil.copytree(a.state_dir, tmp_path / "b", ignore=shutil.ignore_patterns("*.sock", "lock"))
    b = Daemon(tmp_path, "b", args=("--name", "a") if same_name else ())
    daemons.append(b)
    assert b.node_id() == a.node_id()
    b.start().wait_ready()

    def two_distinct() -> bool:
        return all(
            len({p["id"] for p in view if p["state"] == "alive"}) == 2
            for view in (a.peers(), b.peers())
        )

    wait_until(two_distinct, 15, what="two distinct alive nodes")
    assert a.node_id() != b.node_id()
    assert "IDENTITY CONFLICT" in a.log() + b.log()
