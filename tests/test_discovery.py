"""mDNS discovery: interface choice (pure) and real zeroconf traffic on loopback only.

Every test uses random node ids and a random cluster fingerprint, so parallel runs that
share 224.0.0.251:5353 on `lo` cannot see each other's nodes as their own peers.
Waits are deadlines on events/conditions, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from zeroconf import NonUniqueNameException, ServiceInfo, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

from protocol.messages import PROTOCOL_VERSION
from swarmd.discovery import (
    SERVICE_TYPE,
    Discovery,
    Sighting,
    _BadRecord,
    _parse_txt,
    advertise_address,
    choose_interfaces,
    instance_label,
)

LOOPBACK = ["127.0.0.1"]
DEADLINE_S = 8.0  # generous bound for waits; the discovery-time assertion is stricter


# --------------------------------------------------------------------------- helpers


class Addr(NamedTuple):
    family: int
    address: str
    netmask: str | None = None
    broadcast: str | None = None
    ptp: str | None = None


class Stats(NamedTuple):
    isup: bool


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def saw(self, *needles: str) -> bool:
        return any(all(n in m for n in needles) for m in self.messages)


def make_logger() -> tuple[logging.Logger, Capture]:
    log = logging.getLogger(f"test.discovery.{uuid.uuid4().hex[:8]}")
    log.setLevel(logging.DEBUG)
    cap = Capture()
    log.addHandler(cap)
    return log, cap


async def eventually(cond: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> float:
    """Poll `cond` until true; return the seconds it took; fail after `timeout`."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - t0


class Node:
    """A Discovery plus what it reported."""

    def __init__(self, name: str, port: int, fingerprint: str, pv: int = PROTOCOL_VERSION) -> None:
        self.node_id = uuid.uuid4().hex
        self.seen: dict[str, Sighting] = {}
        self.log, self.cap = make_logger()
        self.disc = Discovery(
            node_id=self.node_id,
            name=name,
            port=port,
            fingerprint=fingerprint,
            interfaces=LOOPBACK,
            on_sighting=self._on,
            protocol_version=pv,
            log=self.log,
        )

    def _on(self, s: Sighting) -> None:
        self.seen[s.node_id] = s


# --------------------------------------------------------------------------- pure parts

FAKE_ADDRS = {
    "lo": [Addr(socket.AF_INET, "127.0.0.1"), Addr(socket.AF_INET6, "::1")],
    "eth0": [
        Addr(socket.AF_INET, "192.168.1.20"),
        Addr(socket.AF_INET6, "fe80::1"),
        Addr(getattr(socket, "AF_PACKET", 17), "00:11:22:33:44:55"),
    ],
    "docker0": [Addr(socket.AF_INET, "172.17.0.1")],
    "veth123": [Addr(socket.AF_INET, "172.18.0.5")],
    "br-abc": [Addr(socket.AF_INET, "172.19.0.1")],
    "wlan0": [Addr(socket.AF_INET, "192.168.1.21")],
}
FAKE_STATS = {
    "lo": Stats(True),
    "eth0": Stats(True),
    "docker0": Stats(True),
    "veth123": Stats(True),
    "br-abc": Stats(True),
    "wlan0": Stats(False),
}


def test_choose_interfaces_wildcard_picks_real_lan_interfaces_that_are_up() -> None:
    assert choose_interfaces("0.0.0.0", FAKE_ADDRS, FAKE_STATS) == ["192.168.1.20"]


def test_choose_interfaces_loopback_and_specific_bind() -> None:
    assert choose_interfaces("127.0.0.1", FAKE_ADDRS, FAKE_STATS) == ["127.0.0.1"]
    assert choose_interfaces("127.0.0.2") == ["127.0.0.2"]
    assert choose_interfaces("localhost") == ["127.0.0.1"]
    assert choose_interfaces("10.1.2.3", FAKE_ADDRS, FAKE_STATS) == ["10.1.2.3"]


def test_choose_interfaces_falls_back_to_loopback() -> None:
    addrs = {k: v for k, v in FAKE_ADDRS.items() if k != "eth0"}
    assert choose_interfaces("0.0.0.0", addrs, FAKE_STATS) == ["127.0.0.1"]
    assert choose_interfaces("0.0.0.0", {}, {}) == ["127.0.0.1"]
    # link-local only, and an interface without stats, count as nothing usable
    assert choose_interfaces(
        "0.0.0.0",
        {"eth0": [Addr(socket.AF_INET, "169.254.3.4")], "eth1": [Addr(socket.AF_INET, "10.0.0.2")]},
        {"eth0": Stats(True)},
    ) == ["127.0.0.1"]


def test_choose_interfaces_rejects_hostnames() -> None:
    with pytest.raises(ValueError, match="IP address"):
        choose_interfaces("example.org")


def test_choose_interfaces_real_psutil_does_not_crash() -> None:
    got = choose_interfaces("0.0.0.0")
    assert got and all(isinstance(a, str) for a in got)


def test_advertise_address() -> None:
    assert advertise_address("127.0.0.1", 7946, ["127.0.0.1"]) == "127.0.0.1:7946"
    assert advertise_address("10.0.0.5", 7946, ["10.0.0.5"]) == "10.0.0.5:7946"
    assert advertise_address("0.0.0.0", 7946, ["192.168.1.20", "10.0.0.2"]) == "192.168.1.20:7946"
    assert advertise_address("0.0.0.0", 7946, []) == "127.0.0.1:7946"
    assert advertise_address("::1", 7946, ["::1"]) == "[::1]:7946"


def test_instance_label_is_dns_safe_and_unique_per_node() -> None:
    label = instance_label("my desk (GPU) ü" * 10, "0123456789abcdef")
    assert len(label) <= 63
    assert label.endswith("-0123456789ab")
    assert all(c.isascii() and (c.isalnum() or c == "-") for c in label)
    assert instance_label("", "ab") == "node-ab"
    assert instance_label("a", "x") != instance_label("a", "y")


def test_parse_txt_rejects_missing_and_invalid_fields() -> None:
    good = {"id": "n1", "name": "desk", "port": "7946", "pv": "1", "fp": "ABCD"}
    assert _parse_txt(good) == ("n1", "desk", 7946, 1, "abcd")
    for key in good:
        with pytest.raises(_BadRecord):
            _parse_txt({k: v for k, v in good.items() if k != key})
    for key, bad in [("port", "x"), ("port", "0"), ("port", "70000"), ("pv", "v1"), ("id", None)]:
        with pytest.raises(_BadRecord):
            _parse_txt({**good, key: bad})


# --------------------------------------------------------------------------- loopback mDNS


def test_two_nodes_find_each_other_on_loopback() -> None:
    async def main() -> float:
        fp = secrets.token_hex(4)
        a = Node("alpha", 17001, fp)
        b = Node("beta", 17002, fp)
        t0 = time.monotonic()
        await asyncio.gather(a.disc.start(), b.disc.start())
        try:
            await eventually(lambda: b.node_id in a.seen and a.node_id in b.seen, "mutual sighting")
            elapsed = time.monotonic() - t0
        finally:
            await asyncio.gather(a.disc.stop(), b.disc.stop())
        assert a.seen[b.node_id] == Sighting(b.node_id, "beta", "127.0.0.1:17002", PROTOCOL_VERSION)
        assert b.seen[a.node_id] == Sighting(
            a.node_id, "alpha", "127.0.0.1:17001", PROTOCOL_VERSION
        )
        assert set(a.seen) == {b.node_id} and set(b.seen) == {a.node_id}
        assert a.disc.sightings[b.node_id] == a.seen[b.node_id]
        assert a.disc.counters["sighting"] >= 1
        assert a.disc.counters["handler_error"] == 0 and a.disc.counters["callback_error"] == 0
        return elapsed

    elapsed = asyncio.run(main())
    print(f"\nmutual discovery on loopback (incl. start/probe): {elapsed:.2f}s")
    assert elapsed < 5.0


def test_foreign_cluster_is_never_reported() -> None:
    async def main() -> None:
        fp = secrets.token_hex(4)
        a = Node("alpha", 17011, fp)
        b = Node("beta", 17012, fp)
        c = Node("gamma", 17013, secrets.token_hex(4))
        await asyncio.gather(a.disc.start(), b.disc.start(), c.disc.start())
        try:
            await eventually(
                lambda: (
                    b.node_id in a.seen
                    and a.node_id in b.seen
                    and a.cap.saw(c.disc.instance_name, "foreign cluster")
                    and b.cap.saw(c.disc.instance_name, "foreign cluster")
                    and c.cap.saw(a.disc.instance_name, "foreign cluster")
                ),
                "same-cluster pair sighted and the foreign node counted",
            )
        finally:
            await asyncio.gather(a.disc.stop(), b.disc.stop(), c.disc.stop())
        assert c.node_id not in a.seen and c.node_id not in b.seen
        assert c.seen == {}
        assert a.disc.counters["foreign_cluster"] >= 1
        assert c.disc.counters["foreign_cluster"] >= 2

    asyncio.run(main())


def test_other_protocol_version_is_ignored() -> None:
    async def main() -> None:
        fp = secrets.token_hex(4)
        a = Node("alpha", 17021, fp, pv=PROTOCOL_VERSION)
        b = Node("beta", 17022, fp, pv=PROTOCOL_VERSION + 1)
        await asyncio.gather(a.disc.start(), b.disc.start())
        try:
            await eventually(
                lambda: (
                    a.cap.saw(b.disc.instance_name, "protocol version")
                    and b.cap.saw(a.disc.instance_name, "protocol version")
                ),
                "protocol mismatch noticed on both sides",
            )
        finally:
            await asyncio.gather(a.disc.stop(), b.disc.stop())
        assert a.seen == {} and b.seen == {}
        assert a.disc.counters["other_protocol"] >= 1

    asyncio.run(main())


def test_malformed_records_are_counted_and_ignored() -> None:
    async def main() -> None:
        fp = secrets.token_hex(4)
        a = Node("alpha", 17031, fp)
        raw = AsyncZeroconf(interfaces=LOOPBACK)
        base = {"id": uuid.uuid4().hex, "name": "bad", "port": "17032", "pv": "1", "fp": fp}
        bad_props: list[dict[str, str]] = [
            {k: v for k, v in base.items() if k != "id"},  # missing id
            {**base, "port": "not-a-port"},
            {**base, "pv": ""},
        ]
        infos = []
        for props in bad_props:
            label = f"bad-{uuid.uuid4().hex[:12]}"
            infos.append(
                ServiceInfo(
                    SERVICE_TYPE,
                    f"{label}.{SERVICE_TYPE}",
                    port=17032,
                    properties=props,
                    server=f"{label}.local.",
                    parsed_addresses=LOOPBACK,
                )
            )
        try:
            await asyncio.gather(a.disc.start(), *(raw.async_register_service(i) for i in infos))
            await eventually(
                lambda: all(a.cap.saw(i.name, "bad record") for i in infos),
                "all malformed records counted",
            )
            assert a.disc.counters["bad_record"] >= len(infos)
            assert a.seen == {}
            assert a.disc.counters["handler_error"] == 0
        finally:
            await a.disc.stop()
            for i in infos:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(await raw.async_unregister_service(i), 3)
            await asyncio.wait_for(raw.async_close(), 5)

    asyncio.run(main())


def test_stop_sends_goodbye_and_is_idempotent() -> None:
    async def main() -> float:
        fp = secrets.token_hex(4)
        a = Node("alpha", 17041, fp)
        observer = AsyncZeroconf(interfaces=LOOPBACK)
        events: list[tuple[str, ServiceStateChange]] = []

        def handler(
            zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
        ) -> None:
            events.append((name.lower(), state_change))

        browser = AsyncServiceBrowser(observer.zeroconf, SERVICE_TYPE, handlers=[handler])
        ours = a.disc.instance_name.lower()
        try:
            await a.disc.start()
            await eventually(lambda: (ours, ServiceStateChange.Added) in events, "Added")
            t0 = time.monotonic()
            await asyncio.wait_for(a.disc.stop(), 10)
            stop_s = time.monotonic() - t0
            gone = await eventually(
                lambda: (ours, ServiceStateChange.Removed) in events, "Removed after goodbye"
            )
            await asyncio.wait_for(a.disc.stop(), 1)  # second stop: a no-op
        finally:
            await a.disc.stop()
            await browser.async_cancel()
            await asyncio.wait_for(observer.async_close(), 5)
        print(f"\nstop() took {stop_s:.2f}s; observer saw Removed {gone:.2f}s after it")
        return gone

    # Without a goodbye the record would live its full TTL (75-120 s); seconds prove it.
    assert asyncio.run(main()) < 5.0


def test_discovery_across_processes() -> None:
    """A node in a child process and one here find each other over loopback mDNS."""
    child_code = textwrap.dedent(
        """
        import asyncio, json, sys
        from swarmd.discovery import Discovery

        async def main():
            node_id, fp = sys.argv[1], sys.argv[2]
            def on(s):
                print(json.dumps({"seen": s.node_id, "address": s.address}), flush=True)
            d = Discovery(node_id=node_id, name="child", port=17052, fingerprint=fp,
                          interfaces=["127.0.0.1"], on_sighting=on)
            await d.start()
            print(json.dumps({"started": True}), flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            await d.stop()

        asyncio.run(main())
        """
    )

    async def main() -> None:
        fp = secrets.token_hex(4)
        child_id = uuid.uuid4().hex
        here = Node("parent", 17051, fp)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])
            ),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            child_code,
            child_id,
            fp,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        child_lines: list[dict[str, Any]] = []

        async def read_child() -> None:
            assert proc.stdout is not None
            async for line in proc.stdout:
                child_lines.append(json.loads(line))

        reader = asyncio.ensure_future(read_child())
        try:
            await here.disc.start()
            await eventually(
                lambda: (
                    child_id in here.seen
                    and any(d.get("seen") == here.node_id for d in child_lines)
                ),
                "cross-process mutual sighting",
            )
            assert here.seen[child_id].address == "127.0.0.1:17052"
            assert here.seen[child_id].name == "child"
            assert {"seen": here.node_id, "address": "127.0.0.1:17051"} in child_lines
        finally:
            await here.disc.stop()
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            reader.cancel()
        assert proc.returncode == 0

    asyncio.run(main())


def test_second_node_with_same_id_fails_to_start_and_cleans_up() -> None:
    """A copied state dir (same node id) is refused by the mDNS name probe."""

    async def main() -> None:
        fp = secrets.token_hex(4)
        a = Node("dup", 17061, fp)
        b = Node("dup", 17062, fp)
        b.disc = Discovery(
            node_id=a.node_id,
            name="dup",
            port=17062,
            fingerprint=fp,
            interfaces=LOOPBACK,
            on_sighting=b._on,
            log=b.log,
        )
        await a.disc.start()
        try:
            with pytest.raises(NonUniqueNameException):
                await b.disc.start()
            await asyncio.wait_for(b.disc.stop(), 1)  # already cleaned up: a no-op
        finally:
            await a.disc.stop()

    asyncio.run(main())
