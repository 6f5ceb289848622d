"""``swarmctl doctor``'s decisions, each with injected facts (swarmd/core/diagnosis*.py,
swarmd/core/interfaces.py), and the reach handler's dial against real sockets."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

from swarmctl.doctor_command import document, render
from swarmd.core import diagnosis, diagnosis_peers
from swarmd.core.diagnosis import ClockSample, Peer, Reach, Record
from swarmd.core.interfaces import decide, interface_decisions
from swarmd.doctor import dial


def addr(ip: str, family: int = socket.AF_INET) -> SimpleNamespace:
    return SimpleNamespace(family=family, address=ip)


UP, DOWN = SimpleNamespace(isup=True), SimpleNamespace(isup=False)
ADDRS = {
    "eth0": [addr("192.168.1.20"), addr("fe80::1", socket.AF_INET6)],
    "docker0": [addr("172.17.0.1")],
    "br-4f2a": [addr("172.18.0.1")],
    "veth12ab": [],
    "wg0": [addr("10.8.0.2")],
    "tun0": [addr("10.9.0.2")],
    "lo": [addr("127.0.0.1")],
    "wlan0": [addr("192.168.1.21")],
    "enp3s0": [addr("169.254.10.3")],
}
STATS = {name: UP for name in ADDRS} | {"wlan0": DOWN}


def by_iface(decisions: list[object]) -> dict[str, tuple[bool, str]]:
    return {d.interface: (d.used, d.reason) for d in decisions}  # type: ignore[attr-defined]


# ---------------------------------------------------------------- interfaces


def test_each_interface_gets_a_decision_and_a_reason() -> None:
    got = by_iface(interface_decisions(ADDRS, STATS))
    assert got["eth0"] == (True, "a LAN interface that is up")
    assert got["docker0"][0] is False and "Docker bridge" in got["docker0"][1]
    assert got["br-4f2a"][0] is False and "Docker network" in got["br-4f2a"][1]
    assert got["veth12ab"][0] is False and "container" in got["veth12ab"][1]
    assert got["wg0"][0] is False and "WireGuard" in got["wg0"][1]
    assert got["tun0"][0] is False and "VPN" in got["tun0"][1]
    assert got["lo"] == (False, "skipped: loopback")
    assert got["wlan0"] == (False, "skipped: down")
    assert got["enp3s0"][0] is False and "link-local" in got["enp3s0"][1]


def test_interface_findings_say_where_mdns_runs_and_what_was_skipped() -> None:
    findings = diagnosis.interfaces(decide("0.0.0.0", ADDRS, STATS), "0.0.0.0")
    assert findings[0].level == "ok" and findings[0].detail == "mDNS on eth0 192.168.1.20"
    skipped = [f.detail for f in findings[1:]]
    assert any(d.startswith("docker0 (172.17.0.1) skipped: a Docker bridge") for d in skipped)
    assert diagnosis.healthy(findings)


def test_no_lan_interface_fails_with_advice() -> None:
    only_virtual = {k: v for k, v in ADDRS.items() if k in ("docker0", "wg0", "lo")}
    findings = diagnosis.interfaces(decide("0.0.0.0", only_virtual, STATS), "0.0.0.0")
    assert findings[0].level == "fail" and "falls back to loopback" in findings[0].detail
    assert "--join" in findings[0].advice
    assert not diagnosis.healthy(findings)


def test_a_specific_or_loopback_bind_is_used_as_it_is() -> None:
    findings = diagnosis.interfaces(decide("127.0.0.1", ADDRS, STATS), "127.0.0.1")
    assert findings == [findings[0]] and findings[0].level == "ok"
    assert "only nodes on this machine" in findings[0].detail
    assert decide("10.1.2.3", {}, {})[0].address == "10.1.2.3"


def test_wsl_is_recognised_and_warned_about() -> None:
    assert diagnosis.is_wsl("5.15.153.1-microsoft-standard-WSL2")
    assert not diagnosis.is_wsl("6.1.0-18-amd64")
    findings = diagnosis.interfaces(decide("0.0.0.0", ADDRS, STATS), "0.0.0.0", wsl=True)
    assert findings[-1].level == "warn" and "mirrored" in findings[-1].advice


# ---------------------------------------------------------------- multicast


PEERS = [
    Peer("a1", "desk", "192.168.1.30:7946", True),
    Peer("b2", "laptop", "192.168.1.31:7946", True),
    Peer("c3", "cloud", "10.200.0.5:7946", True),
    Peer("d4", "old", "192.168.1.40:7946", False),
]


def test_peers_heard_by_mdns_are_named() -> None:
    findings = diagnosis.multicast("running", PEERS[:2], {"a1", "b2"}, ["192.168.1.20"])
    assert [f.level for f in findings] == ["ok"]
    assert findings[0].detail == "mDNS works: heard desk, laptop on 192.168.1.20"


def test_an_alive_peer_on_the_subnet_never_heard_means_multicast_is_filtered() -> None:
    findings = diagnosis.multicast("running", PEERS, {"a1"}, ["192.168.1.20"])
    levels = {f.level for f in findings}
    assert levels == {"ok", "fail"}
    failed = next(f for f in findings if f.level == "fail")
    assert "laptop (192.168.1.31:7946)" in failed.detail and "filtered" in failed.detail
    assert "5353" in failed.advice
    # A peer on another subnet is expected not to be heard; a dead one is not judged.
    assert "cloud" not in failed.detail and "old" not in failed.detail
    assert any("cloud" in f.detail and "another subnet" in f.detail for f in findings)


def test_alone_and_unheard_is_a_warning_not_a_failure() -> None:
    findings = diagnosis.multicast("running", [], set(), ["192.168.1.20"])
    assert [f.level for f in findings] == ["warn"] and "--join" in findings[0].advice


def test_mdns_off_or_broken() -> None:
    assert [f.level for f in diagnosis.multicast("off", PEERS, set(), [])] == ["warn"]
    broken = diagnosis.multicast("OSError: [Errno 98] in use", PEERS, set(), [])
    assert broken[0].level == "fail" and "Errno 98" in broken[0].detail


def test_same_subnet() -> None:
    assert diagnosis.same_subnet("192.168.1.31:7946", ["192.168.1.20"])
    assert not diagnosis.same_subnet("192.168.2.31:7946", ["192.168.1.20"])
    assert diagnosis.same_subnet("127.0.0.5:1", ["127.0.0.1"])
    assert not diagnosis.same_subnet("nonsense", ["192.168.1.20"])


# ---------------------------------------------------------------- LAN records

FP = "00aa11bb22cc33dd"


def test_another_cluster_and_another_version_are_reported() -> None:
    records = [
        Record("a1", "desk", "192.168.1.30:7946", FP, 6),
        Record("x9", "neighbour", "192.168.1.50:7946", "ffeeddccbbaa9988", 6),
        Record("b2", "laptop", "192.168.1.31:7946", FP, 5),
    ]
    findings = diagnosis.other_clusters(records, FP, 6)
    other = next(f for f in findings if f.check == "other-cluster")
    assert other.level == "warn" and "neighbour (192.168.1.50:7946" in other.detail
    assert "desk" not in other.detail
    version = next(f for f in findings if f.check == "version")
    assert version.level == "fail" and "laptop (protocol 5)" in version.detail
    clean = diagnosis.other_clusters(records[:1], FP, 6)
    assert [f.level for f in clean] == ["ok"]


def test_announced_but_unreachable_peer() -> None:
    records = [Record("e5", "nas", "192.168.1.60:7946", FP, 6)]
    findings = diagnosis.heard_not_alive(PEERS, records, FP)
    assert len(findings) == 1 and findings[0].level == "fail" and "nas" in findings[0].detail
    assert "7946" in findings[0].advice
    assert diagnosis.heard_not_alive(PEERS, [Record("a1", "desk", "x:1", FP, 6)], FP) == []


# ---------------------------------------------------------------- peers' answers


def test_reachability_from_peers_answers() -> None:
    me = "192.168.1.20:7946"
    answers = [
        Reach("desk", me, True),
        Reach("laptop", me, False, "timed out after 2 s (a firewall dropping the packets?)"),
        Reach("cloud", me, None),
    ]
    findings = diagnosis_peers.reachability(me, answers)
    assert [f.level for f in findings] == ["ok", "fail", "warn"]
    assert "laptop cannot open a connection to this node at 192.168.1.20:7946" in findings[1].detail
    assert "ufw allow 7946/tcp" in findings[1].advice
    assert "cloud" in findings[2].detail
    alone = diagnosis_peers.reachability(me, [])
    assert [f.level for f in alone] == ["warn"]


def test_clock_skew_beyond_a_second_and_the_round_trip_fails() -> None:
    # Peer 3 s ahead, 20 ms each way, 1 ms to answer.
    ahead = ClockSample("desk", sent=100.0, received=103.02, answered=103.021, back=100.041)
    assert abs(ahead.offset - 3.0) < 1e-6 and abs(ahead.doubt - 0.02) < 1e-6
    near = ClockSample("laptop", sent=100.0, received=100.3, answered=100.31, back=100.02)
    findings = diagnosis_peers.clock_skew([ahead, near])
    assert [f.level for f in findings] == ["fail"]
    assert findings[0].detail == "desk's clock is 3.0 s ahead of this node's"
    assert "timedatectl" in findings[0].advice
    # 1.2 s off, but the round trip was 1 s: too doubtful to blame the clock.
    slow = ClockSample("far", sent=100.0, received=101.7, answered=101.7, back=101.0)
    assert [f.level for f in diagnosis_peers.clock_skew([slow])] == ["ok"]
    behind = ClockSample("old", sent=100.0, received=95.0, answered=95.0, back=100.0)
    assert "behind" in diagnosis_peers.clock_skew([behind])[0].detail
    assert diagnosis_peers.clock_skew([]) == []


def test_duplicate_node_ids() -> None:
    views = [
        ("a1", "192.168.1.30:7946", 3),
        ("a1", "192.168.1.77:7946", 3),  # same id, same generation, elsewhere: a twin
        ("b2", "192.168.1.31:7946", 1),
        ("b2", "192.168.1.99:7946", 2),  # a restart at a new address: fine
    ]
    findings = diagnosis_peers.duplicate_ids(views, [], FP)
    assert [f.level for f in findings] == ["fail"]
    assert "a1 is used at 192.168.1.30:7946, 192.168.1.77:7946" in findings[0].detail
    records = [Record("c3", "x", "10.0.0.1:1", FP, 6), Record("c3", "y", "10.0.0.2:1", FP, 6)]
    twins = diagnosis_peers.duplicate_ids([], records, FP)
    assert twins[0].level == "fail" and "c3" in twins[0].detail
    clean = diagnosis_peers.duplicate_ids(views[2:], [], FP, conflicts_resolved=1)
    assert [f.level for f in clean] == ["ok", "warn"] and "join token" in clean[1].advice


# ---------------------------------------------------------------- output and dialling


def test_render_and_json() -> None:
    findings = [
        diagnosis.ok("daemon", "desk answers"),
        diagnosis.warn("multicast", "alone", "start another"),
        diagnosis.fail("clock", "off", "sync it"),
    ]
    text = render(findings, " on desk")
    assert text.splitlines() == [
        "✓ daemon: desk answers",
        "! multicast: alone",
        "    → start another",
        "✗ clock: off",
        "    → sync it",
        "1 problem(s) found on desk.",
    ]
    assert [d["ok"] for d in document(findings)] == [True, True, False]
    assert render(findings[:2], "").endswith("No problems found (1 warning(s)).")


def test_dial_says_whether_a_port_is_reachable() -> None:
    async def run() -> tuple[str, str, str]:
        server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reachable = await dial(f"127.0.0.1:{port}")
        server.close()
        await server.wait_closed()
        refused = await dial(f"127.0.0.1:{port}")
        bad = await dial("no-port")
        return reachable, refused, bad

    reachable, refused, bad = asyncio.run(run())
    assert reachable == ""
    assert "refused" in refused.lower()
    assert bad.startswith("bad address")
