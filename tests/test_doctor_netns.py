"""``swarmctl doctor`` on two hosts in network namespaces (tests/netns.py): a firewall
on one host that drops new connections to its cluster port is reported by name, with
the port to open.

Needs root, iproute2 and nftables; skipped (with the reason) otherwise.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness import new_secret, swarmctl, wait_until
from tests.netns import Lan, unavailable_reason
from tests.test_multihost import PORT, NetnsDaemon

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(150)]

# New TCP connections to the cluster port dropped (a SYN without ACK), as a host
# firewall does; connections already open, loopback and UDP (mDNS) pass.
FIREWALL = f"""
table inet swarmt_doctor {{
    chain input {{
        type filter hook input priority -250; policy accept;
        iifname "lo" accept
        tcp dport {PORT} tcp flags & (syn | ack) == syn drop
    }}
}}
"""


def doctor(node: NetnsDaemon) -> tuple[int, list[dict[str, Any]]]:
    out = swarmctl("doctor", "--json", state_dir=node.state_dir, timeout=60)
    assert out.returncode in (0, 1), out.stderr
    findings: list[dict[str, Any]] = json.loads(out.stdout)
    return out.returncode, findings


def reach(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in findings if f["check"] == "reachability"]


def test_a_blocked_cluster_port_is_reported(tmp_path: Path) -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with Lan(2) as lan:
        secret = new_secret()
        nodes = [NetnsDaemon(tmp_path, lan, h, secret) for h in lan.hosts]
        try:
            for n in nodes:
                n.start()
            for n in nodes:
                n.wait_ready(20)
            h1, h2 = nodes
            both = {"h1": "alive", "h2": "alive"}
            wait_until(lambda: h1.try_states() == h2.try_states() == both, 15, what="the pair")
            code, findings = doctor(h1)
            assert [f["level"] for f in reach(findings)] == ["ok"], findings

            lan.run(1, ["nft", "-f", "-"], stdin=FIREWALL)
            code, findings = doctor(h1)
            blocked = reach(findings)
            assert code == 1, findings
            assert [f["level"] for f in blocked] == ["fail"], findings
            assert blocked[0]["detail"].startswith(
                f"h2 cannot open a connection to this node at {h1.address}: timed out"
            )
            assert f"{PORT}/tcp" in blocked[0]["advice"]
            # From h2's side h1's port is what is closed, not its own: h1 reaches it.
            _code, theirs = doctor(h2)
            assert [f["level"] for f in reach(theirs)] == ["ok"], theirs
        except BaseException:
            for n in nodes:
                print(f"--- {n.name}\n{n.log()[-3000:]}")
            raise
        finally:
            for n in nodes:
                if n.proc is not None and n.proc.poll() is None:
                    try:
                        n.term(5)
                    except subprocess.TimeoutExpired:
                        n.stop()
