"""Real daemons without mDNS (--no-mdns, --join seeds only): a restarted seedless node
is back within seconds, and a copied state dir becomes two nodes."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.harness import Daemon, new_secret, wait_until

BACK_WITHIN_S = 5.0  # forget_after is 60 s: that was the wait before


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_seedless_node_that_restarts_is_back_within_seconds(
    tmp_path: Path, daemons: list[Daemon], how: str
) -> None:
    secret = new_secret()
    a = Daemon(tmp_path, "a", secret=secret, args=("--no-mdns",))  # nobody to dial
    b = Daemon(tmp_path, "b", secret=secret, args=("--no-mdns", "--join", a.address))
    daemons += [a, b]
    a.start().wait_ready()
    b.start().wait_ready()
    wait_until(lambda: b.states() == {"a": "alive", "b": "alive"}, 10, what="b to join a")
    gen = next(p["generation"] for p in b.peers() if p["name"] == "a")

    if how == "sigterm":
        assert a.term() == 0
        wait_until(lambda: b.states()["a"] == "left", 5, what="a left")
    else:
        a.kill()
    a.start().wait_ready()
    ready = time.monotonic()

    def back() -> bool:
        return any(
            p["name"] == "a" and p["state"] == "alive" and p["generation"] > gen for p in b.peers()
        )

    wait_until(back, 15, what="b to see a's new generation alive")
    took = time.monotonic() - ready
    print(f"{how}: a's new generation alive on b {took:.2f} s after a answered")
    assert took < BACK_WITHIN_S
    wait_until(lambda: a.states() == {"a": "alive", "b": "alive"}, 5, what="a to see b")


@pytest.mark.parametrize("via", ["third-node", "direct"])
def test_a_copied_state_dir_started_with_join_becomes_two_nodes(
    tmp_path: Path, daemons: list[Daemon], via: str
) -> None:
    """Stopped, copied, both started: one id, one generation. Seeded with a third node
    the two never dialed each other, and that node showed one of them only."""
    secret = new_secret()
    c = Daemon(tmp_path, "c", secret=secret, args=("--no-mdns",))
    a = Daemon(tmp_path, "a", secret=secret, args=("--no-mdns", "--join", c.address))
    daemons += [c, a]
    c.start().wait_ready()
    a.start().wait_ready()
    wait_until(lambda: c.states() == {"a": "alive", "c": "alive"}, 10, what="a to join c")
    assert a.term() == 0
    shutil.copytree(a.state_dir, tmp_path / "b", ignore=shutil.ignore_patterns("*.sock", "lock"))
    seed = c.address if via == "third-node" else a.address
    b = Daemon(tmp_path, "b", args=("--no-mdns", "--join", seed))
    daemons.append(b)
    assert b.node_id() == a.node_id()
    a.start()
    b.start()
    a.wait_ready()
    b.wait_ready()
    started = time.monotonic()

    def resolved() -> bool:
        ids = {d.name: d.node_id() for d in (a, b, c)}
        return len(set(ids.values())) == 3 and all(
            {p["name"]: (p["id"], p["state"]) for p in d.peers()}
            == {name: (node_id, "alive") for name, node_id in ids.items()}
            for d in (a, b, c)
        )

    wait_until(resolved, 20, what="three distinct alive nodes, seen alike by all")
    print(f"{via}: resolved {time.monotonic() - started:.2f} s after both answered")
    assert "IDENTITY CONFLICT" in a.log() + b.log()
