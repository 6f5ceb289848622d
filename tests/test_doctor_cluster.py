"""``swarmctl doctor`` against real daemons on loopback with real mDNS.

Other test runs on this machine share 224.0.0.251:5353, so their nodes may be heard
as "another cluster": the tests look for their own nodes by unique names and never
assert that no foreign node exists.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from tests.harness import Daemon, new_secret, swarmctl, wait_until


def doctor(state_dir: Path, *args: str) -> tuple[int, list[dict[str, Any]]]:
    out = swarmctl("doctor", "--json", *args, state_dir=state_dir, timeout=60)
    assert out.returncode in (0, 1), out.stderr
    findings: list[dict[str, Any]] = json.loads(out.stdout)
    return out.returncode, findings


def by_check(findings: list[dict[str, Any]], check: str) -> list[dict[str, Any]]:
    return [f for f in findings if f["check"] == check]


def pair(tmp_path: Path, daemons: list[Daemon]) -> tuple[Daemon, Daemon]:
    secret = new_secret()
    tag = secrets.token_hex(3)
    n1 = Daemon(tmp_path, f"doc1-{tag}", secret=secret)
    n2 = Daemon(tmp_path, f"doc2-{tag}", secret=secret)
    daemons.extend([n1, n2])
    for d in (n1, n2):
        d.start()
    for d in (n1, n2):
        d.wait_ready()
    both = {n1.name: "alive", n2.name: "alive"}
    wait_until(lambda: n1.states() == both and n2.states() == both, 15, what="the pair")
    return n1, n2


def test_a_healthy_pair_gets_a_clean_bill(tmp_path: Path, daemons: list[Daemon]) -> None:
    n1, n2 = pair(tmp_path, daemons)

    def clean() -> list[dict[str, Any]] | None:
        code, findings = doctor(n1.state_dir)
        heard = any(n2.name in f["detail"] for f in by_check(findings, "multicast"))
        return findings if code == 0 and heard else None

    findings = wait_until(clean, 20, interval=0.5, what="a clean doctor report")
    assert all(f["ok"] for f in findings), findings
    assert findings[0]["check"] == "daemon" and n1.name in findings[0]["detail"]
    assert set(findings[0]) == {"check", "ok", "level", "detail", "advice"}
    reach = by_check(findings, "reachability")
    assert [f["level"] for f in reach] == ["ok"] and n2.name in reach[0]["detail"], reach
    assert n1.address in reach[0]["detail"]
    assert [f["level"] for f in by_check(findings, "clock")] == ["ok"]
    assert [f["level"] for f in by_check(findings, "node-id")] == ["ok"]
    assert by_check(findings, "interfaces")[0]["detail"].startswith("mDNS on 127.0.0.1")
    # The readable form: one ✓ line per finding, and the verdict.
    out = swarmctl("doctor", state_dir=n2.state_dir, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[0].startswith("✓ daemon: ")
    assert f"✓ reachability: {n1.name} reached this node at {n2.address}" in out.stdout
    assert "No problems found on" in out.stdout
    assert n1.counters().get("doctor_reach_dials", 0) >= 1  # n1 dialled n2 back


def test_a_node_of_another_cluster_on_the_lan_is_named(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    n1, _n2 = pair(tmp_path, daemons)
    stranger = Daemon(tmp_path, f"stranger-{secrets.token_hex(3)}", secret=new_secret())
    daemons.append(stranger)
    stranger.start().wait_ready()

    def named() -> list[dict[str, Any]] | None:
        _code, findings = doctor(n1.state_dir)
        other = [f for f in by_check(findings, "other-cluster") if stranger.name in f["detail"]]
        return other or None

    other = wait_until(named, 20, interval=0.5, what="the stranger reported")
    assert other[0]["level"] == "warn" and other[0]["advice"] != ""
    assert stranger.address in other[0]["detail"]
    assert "join-token" in other[0]["advice"]
    # ... and it is not one of n1's peers: ignored by discovery, as the finding says.
    assert stranger.name not in n1.states()


def test_a_stopped_daemon_is_the_first_finding_and_exit_1(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    node = Daemon(tmp_path, f"gone-{secrets.token_hex(3)}", secret=new_secret())
    daemons.append(node)
    node.start().wait_ready()
    code, findings = doctor(node.state_dir)
    assert findings[0]["check"] == "daemon" and findings[0]["ok"], findings[0]
    node.kill()  # the control socket file stays behind: no answer, not "no file"
    code, findings = doctor(node.state_dir, "--peer-timeout", "1")
    assert code == 1
    first = findings[0]
    assert first["check"] == "daemon" and first["level"] == "fail", first
    assert "not answering" in first["detail"] and "swarmd" in first["advice"]
    # The checks that need no daemon still ran.
    assert by_check(findings, "interfaces"), findings
    out = swarmctl("doctor", state_dir=node.state_dir, timeout=60)
    assert out.returncode == 1
    assert out.stdout.startswith("✗ daemon: swarmd is not answering")
    assert "1 problem(s) found." in out.stdout
