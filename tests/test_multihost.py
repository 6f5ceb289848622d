"""Three hosts in network namespaces on one bridge: mDNS-only discovery, partition, heal.

Each swarmd runs in its own namespace (``tests/netns.py``) bound to its 10.77.0.x
address, with no ``--join`` seed: the nodes can only find each other by mDNS across the
bridge. A partition is an nft drop-all inside one host's namespace. The tests talk to
each daemon through the unix control socket in its state dir, which works from the root
namespace because the filesystem is shared.

Needs root, iproute2 and nftables; skipped (with the reason) otherwise.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon, new_secret, wait_until
from tests.netns import Lan, list_namespaces, unavailable_reason

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(150)]

PORT = 7946
READY_WITHIN_S = 20.0  # every daemon answers on its control socket
DISCOVER_WITHIN_S = 10.0  # all three alive everywhere, by mDNS alone
DEAD_WITHIN_S = 6.0  # partitioned host seen dead (failure detection is ~2 s)
HEAL_WITHIN_S = 15.0  # all alive again after the partition is lifted
POLL_S = 0.05


@pytest.fixture(scope="module")
def netns_ok() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)


class NetnsDaemon(Daemon):
    """A swarmd inside host ``host``'s namespace, bound to that host's address."""

    def __init__(
        self, root: Path, lan: Lan, host: int, secret: str, config: str | None = None
    ) -> None:
        super().__init__(root, f"h{host}", secret=secret, port=PORT, config=config)
        self.lan = lan
        self.host = host

    @property
    def address(self) -> str:
        return f"{self.lan.ip(self.host)}:{self.port}"

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "swarmd", "run", "--state-dir", str(self.state_dir)]
        argv += ["--bind", self.lan.ip(self.host), "--port", str(self.port)]
        argv += ["--name", self.name, "--log-level", "debug"]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        return self.lan.command(self.host, argv)

    def try_states(self) -> dict[str, str] | None:
        peers = self.try_peers()
        return None if peers is None else {p["name"]: p["state"] for p in peers}


def views(nodes: list[NetnsDaemon]) -> dict[str, dict[str, str] | None]:
    return {n.name: n.try_states() for n in nodes}


def timed(what: str, cond: Callable[[], bool], timeout: float, t0: float | None = None) -> float:
    """Wait for ``cond``; print and return the seconds since ``t0`` (default: now)."""
    start = time.monotonic() if t0 is None else t0
    wait_until(cond, timeout, interval=POLL_S, what=what)
    took = time.monotonic() - start
    print(f"[multihost] {what}: {took:.2f} s")
    return took


def dump(nodes: list[NetnsDaemon], lan: Lan) -> None:
    """Everything useful for debugging a failure, on stdout (pytest shows it)."""
    print("\n========== multihost failure dump ==========")
    print(f"namespaces: {lan.namespaces}; partitioned hosts: {sorted(lan.partitioned)}")
    for n in nodes:
        print(f"\n---------- {n.name} ({n.address}) ----------")
        running = n.proc is not None and n.proc.poll() is None
        print(f"running: {running}; exit code: {None if n.proc is None else n.proc.poll()}")
        if running:
            print(f"view: {n.try_states()}")
            try:
                print(f"counters: {n.counters()}")
            except Exception as e:  # a wedged daemon must not hide the logs
                print(f"counters: unavailable ({e!r})")
        lines = n.log().splitlines()
        print(f"log ({len(lines)} lines, last 300; full log at {n.log_path}):")
        print("\n".join(lines[-300:]))


def udp_reaches(lan: Lan, src: int, dst: int) -> bool:
    """Does a UDP datagram from host ``src`` arrive at host ``dst``? (harness self-test)"""
    receiver = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(({lan.ip(dst)!r}, 9999)); s.settimeout(1.5)\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    s.recvfrom(100); print('got', flush=True)\n"
        "except TimeoutError:\n"
        "    print('timeout', flush=True)\n"
    )
    sender = (
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(5):\n"
        "    try:\n"
        f"        s.sendto(b'x', ({lan.ip(dst)!r}, 9999))\n"
        "    except OSError:\n"
        "        pass\n"
        "    time.sleep(0.05)\n"
    )
    rx = lan.exec(dst, [sys.executable, "-c", receiver], stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout is not None
        assert rx.stdout.readline().strip() == "ready"
        lan.run(src, [sys.executable, "-c", sender])
        out, _ = rx.communicate(timeout=10)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait(5)
    return out.strip() == "got"


def test_lan_harness_connects_partitions_heals_and_cleans_up(netns_ok: None) -> None:
    with Lan(2) as lan:
        names = lan.namespaces
        assert set(names) <= set(list_namespaces())
        assert udp_reaches(lan, 1, 2), "no UDP from h1 to h2 across the bridge"
        lan.partition(2)
        assert not udp_reaches(lan, 1, 2), "partitioned h2 still receives"
        lan.heal(2)
        assert udp_reaches(lan, 1, 2), "healed h2 does not receive"
    left = set(names) & set(list_namespaces())
    assert not left, f"namespaces left behind: {left}"


EVERYONE = {"h1": "alive", "h2": "alive", "h3": "alive"}


@contextlib.contextmanager
def three_hosts(tmp_path: Path, config: str | None = None) -> Iterator[list[NetnsDaemon]]:
    """Three swarmd, one per namespace, no --join; all answering on their control socket.

    On any failure inside the block the logs, views and counters are printed. Afterwards
    the daemons are stopped and the namespaces deleted, and that nothing is left behind
    is checked.
    """
    lan = Lan(3)
    names = lan.namespaces
    nodes: list[NetnsDaemon] = []
    try:
        secret = new_secret()
        nodes = [NetnsDaemon(tmp_path, lan, h, secret, config) for h in lan.hosts]
        t_spawn = time.monotonic()
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready(READY_WITHIN_S)
        print(f"[multihost] all daemons answering: {time.monotonic() - t_spawn:.2f} s after spawn")
        yield nodes
    except BaseException:
        dump(nodes, lan)
        raise
    finally:
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                try:
                    n.term(5)
                except subprocess.TimeoutExpired:
                    n.stop()
        lan.close()
    left = set(names) & set(list_namespaces())
    assert not left, f"namespaces left behind: {left}"


def test_three_hosts_discover_by_mdns_detect_partition_and_heal(
    netns_ok: None, tmp_path: Path
) -> None:
    with three_hosts(tmp_path) as nodes:
        h1, h2, h3 = nodes
        lan = h1.lan

        # 1. Discovery across hosts, by mDNS alone.
        timed(
            "discovery (all 3 alive on every node, from all answering)",
            lambda: all(n.try_states() == EVERYONE for n in nodes),
            DISCOVER_WITHIN_S,
        )
        addresses = {p["name"]: p["address"] for p in h1.peers()}
        assert addresses == {n.name: n.address for n in nodes}, addresses

        # 2. Partition h3: both sides declare the other dead, and it stays so.
        lan.partition(3)
        t_cut = time.monotonic()
        dead_others = timed(
            "partition -> h1 and h2 see h3 dead",
            lambda: all((h.try_states() or {}).get("h3") == "dead" for h in (h1, h2)),
            DEAD_WITHIN_S + 5,
            t_cut,
        )
        cut_off = {"h1": "dead", "h2": "dead", "h3": "alive"}
        dead_h3 = timed(
            "partition -> h3 sees h1 and h2 dead",
            lambda: h3.try_states() == cut_off,
            DEAD_WITHIN_S + 5,
            t_cut,
        )
        assert dead_others < DEAD_WITHIN_S, f"h3 seen dead after {dead_others:.2f} s"
        assert dead_h3 < DEAD_WITHIN_S, f"h3 saw the others dead after {dead_h3:.2f} s"
        split = {"h1": "alive", "h2": "alive", "h3": "dead"}
        for _ in range(5):  # no flapping while the partition holds
            assert h1.try_states() == h2.try_states() == split
            assert h3.try_states() == cut_off
            time.sleep(0.2)

        # 3. Heal: gossip keeps probing dead peers now and then (and mDNS contacts).
        lan.heal(3)
        healed = timed(
            "heal -> all 3 alive on every node",
            lambda: all(n.try_states() == EVERYONE for n in nodes),
            HEAL_WITHIN_S + 10,
        )
        assert healed < HEAL_WITHIN_S, f"healed after {healed:.2f} s"
    # 4. (three_hosts checked on exit that no namespace is left.)


FORGET_AFTER_S = 3.0


def test_heals_after_a_partition_longer_than_forget_after(netns_ok: None, tmp_path: Path) -> None:
    config = f'[gossip]\nforget_after = "{FORGET_AFTER_S}s"\n'
    with three_hosts(tmp_path, config) as nodes:
        h1, h2, h3 = nodes
        wait_until(
            lambda: all(n.try_states() == EVERYONE for n in nodes),
            DISCOVER_WITHIN_S,
            what="the cluster to form",
        )
        h1.lan.partition(3)
        timed(
            "long partition -> h3 forgotten on both sides",
            lambda: (
                all(h.try_states() == {"h1": "alive", "h2": "alive"} for h in (h1, h2))
                and h3.try_states() == {"h3": "alive"}
            ),
            DEAD_WITHIN_S + FORGET_AFTER_S + 5,
        )
        h1.lan.heal(3)
        timed(
            "long partition healed -> all 3 alive on every node",
            lambda: all(n.try_states() == EVERYONE for n in nodes),
            HEAL_WITHIN_S,
        )
