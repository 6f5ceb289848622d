"""A throwaway LAN of network namespaces, for multi-host tests on one machine.

Layout for ``Lan(3)`` (nothing is created in the root namespace, no real interface is
touched)::

    <prefix>-br:  br0 (bridge, up) with ports vh1, vh2, vh3
    <prefix>-h1:  lo, eth0 = 10.77.0.2/24   (veth peer of vh1)
    <prefix>-h2:  lo, eth0 = 10.77.0.3/24   (veth peer of vh2)
    <prefix>-h3:  lo, eth0 = 10.77.0.4/24   (veth peer of vh3)

Each veth pair is created inside the bridge namespace with its host end placed straight
into the host namespace (``ip -n BR link add vhI type veth peer name eth0 netns HI``), so
even the pair never exists in the root namespace. Every host namespace routes multicast
(224.0.0.0/4, where mDNS lives) out of its ``eth0``.

The prefix is ``swt<pid>n<seq>``: unique per process and per ``Lan`` within a process.
:func:`remove_stale` deletes namespaces of that pattern left behind by runs whose process
is gone (an aborted pytest), and is called before a new ``Lan`` is built.

A partition is an nftables table in the host's namespace that drops everything in and out
except on ``lo``; healing deletes the table. Packet loss is another table that drops a
random share of the packets (``numgen random mod 100 < N drop``) in and out of the host,
again sparing ``lo``. (``tc netem`` is not available on the machines this runs on; nft
is. Delay is a userspace forwarder: ``tests/delay.py``.)

:meth:`Lan.new_socket` makes a socket *inside* a host's namespace from this process (a
thread that has ``setns``-ed into it creates it; a socket stays in the namespace it was
created in), so a test can listen and dial on the LAN without a helper process.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from typing import Any

SUBNET = "10.77.0"
PREFIX_LEN = 24
PARTITION_TABLE = "swarmt_partition"
LOSS_TABLE = "swarmt_loss"
CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"^swt(\d+)n(\d+)-(br|h\d+)$")
_seq = itertools.count(1)

PARTITION_RULES = f"""
table inet {PARTITION_TABLE} {{
    chain input {{
        type filter hook input priority -300; policy drop;
        iifname "lo" accept
    }}
    chain output {{
        type filter hook output priority -300; policy drop;
        oifname "lo" accept
    }}
}}
"""


def loss_rules(percent: int) -> str:
    """An nft table dropping ``percent`` % of the packets in and out (not on ``lo``)."""
    if not 0 <= percent <= 100:
        raise ValueError("percent must be 0..100")
    drop = f"numgen random mod 100 < {percent} drop"
    return f"""
table inet {LOSS_TABLE} {{
    chain input {{
        type filter hook input priority -200; policy accept;
        iifname "lo" accept
        {drop}
    }}
    chain output {{
        type filter hook output priority -200; policy accept;
        oifname "lo" accept
        {drop}
    }}
}}
"""


def _enter_namespace(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (``setns(2)``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsError(RuntimeError):
    """An ``ip``/``nft`` command failed; the message has the command and its stderr."""


def _run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def list_namespaces() -> list[str]:
    """Names from ``ip netns list`` (which prints ``name`` or ``name (id: N)``)."""
    out = _run(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def unavailable_reason() -> str | None:
    """Why namespaces cannot be built here (for ``pytest.skip``), or None if they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2 / nftables)"
    probe = f"swt{os.getpid()}n0-probe"
    try:
        _run(["ip", "netns", "add", probe])
    except (NetnsError, OSError, subprocess.SubprocessError) as e:
        return f"`ip netns` is not usable here: {e}"
    try:
        _run(["ip", "netns", "exec", probe, "nft", "list", "tables"])
    except (NetnsError, OSError, subprocess.SubprocessError) as e:
        return f"nft does not work inside a network namespace: {e}"
    finally:
        _run(["ip", "netns", "del", probe], check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete ``swt<pid>n<seq>-*`` namespaces whose creating process no longer exists.

    Leftover swarmd processes still inside such a namespace (children of the aborted run)
    are killed by pid first. Returns the names removed.
    """
    removed: list[str] = []
    for name in list_namespaces():
        m = _NAME.match(name) or re.match(r"^swt(\d+)n0-probe$", name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        for pid_text in _run(["ip", "netns", "pids", name], check=False).split():
            with contextlib.suppress(OSError, ValueError):
                cmdline = open(f"/proc/{pid_text}/cmdline", "rb").read()  # noqa: SIM115
                if b"swarmd" in cmdline or b"swarmctl" in cmdline:
                    os.kill(int(pid_text), signal.SIGKILL)
        _run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    return removed


class Lan:
    """``n`` hosts on one bridged /24, each in its own network namespace.

    Hosts are numbered 1..n; host ``i`` has address ``10.77.0.(i+1)``. Use as a context
    manager (or call :meth:`close`): everything is deleted on exit, even after a failure
    half-way through construction.
    """

    def __init__(self, n: int) -> None:
        if not 1 <= n <= 200:
            raise ValueError("1..200 hosts")
        remove_stale()
        self.n = n
        self.prefix = f"swt{os.getpid()}n{next(_seq)}"
        self.bridge_ns = f"{self.prefix}-br"
        self.created: list[str] = []
        self.partitioned: set[int] = set()
        self.lossy: dict[int, int] = {}  # host -> percent of packets dropped
        self._threads: dict[int, concurrent.futures.ThreadPoolExecutor] = {}
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ naming

    def ns(self, host: int) -> str:
        self._check(host)
        return f"{self.prefix}-h{host}"

    def ip(self, host: int) -> str:
        self._check(host)
        return f"{SUBNET}.{host + 1}"

    @property
    def hosts(self) -> range:
        return range(1, self.n + 1)

    @property
    def namespaces(self) -> list[str]:
        return [self.bridge_ns, *(self.ns(h) for h in self.hosts)]

    def _check(self, host: int) -> None:
        if not 1 <= host <= self.n:
            raise ValueError(f"no host {host} (hosts are 1..{self.n})")

    # ------------------------------------------------------------------ build

    def _add_ns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self.created.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build(self) -> None:
        br = self.bridge_ns
        self._add_ns(br)
        _run(["ip", "-n", br, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])
        _run(["ip", "-n", br, "link", "set", "br0", "up"])
        for h in self.hosts:
            ns = self.ns(h)
            self._add_ns(ns)
            port = f"vh{h}"
            veth = ["type", "veth", "peer", "name", "eth0", "netns", ns]
            _run(["ip", "-n", br, "link", "add", port, *veth])
            _run(["ip", "-n", br, "link", "set", port, "master", "br0"])
            _run(["ip", "-n", br, "link", "set", port, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.ip(h)}/{PREFIX_LEN}", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])

    # ------------------------------------------------------------------ use

    def command(self, host: int, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside host ``host``'s namespace."""
        return ["ip", "netns", "exec", self.ns(host), *argv]

    def exec(self, host: int, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside host ``host``'s namespace (``ip netns exec`` execs, so the
        Popen's pid is the program's own)."""
        return subprocess.Popen(self.command(host, argv), **popen)

    def run(self, host: int, argv: Sequence[str], *, stdin: str | None = None) -> str:
        """Run ``argv`` in host ``host``'s namespace to completion; its stdout."""
        return _run(self.command(host, argv), stdin=stdin)

    def partition(self, host: int) -> None:
        """Cut ``host`` off: drop every packet in or out of it except on ``lo``."""
        self.run(host, ["nft", "-f", "-"], stdin=PARTITION_RULES)
        self.partitioned.add(host)

    def heal(self, host: int) -> None:
        """Undo :meth:`partition`."""
        self.run(host, ["nft", "delete", "table", "inet", PARTITION_TABLE])
        self.partitioned.discard(host)

    def add_loss(self, host: int, percent: int) -> None:
        """Drop ``percent`` % of the packets in and out of ``host`` (not on ``lo``)."""
        self.run(host, ["nft", "-f", "-"], stdin=loss_rules(percent))
        self.lossy[host] = percent

    def remove_loss(self, host: int) -> None:
        """Undo :meth:`add_loss`."""
        self.run(host, ["nft", "delete", "table", "inet", LOSS_TABLE])
        self.lossy.pop(host, None)

    def heal_all(self) -> None:
        """Remove every partition and loss table this Lan may have added (idempotent)."""
        for host in self.hosts:
            for table in (PARTITION_TABLE, LOSS_TABLE):
                _run(self.command(host, ["nft", "delete", "table", "inet", table]), check=False)
        self.partitioned.clear()
        self.lossy.clear()

    def new_socket(self, host: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> socket.socket:
        """A new IPv4 socket in ``host``'s namespace (bind, listen or connect it anywhere)."""
        pool = self._threads.get(host)
        if pool is None:
            pool = concurrent.futures.ThreadPoolExecutor(
                1,
                thread_name_prefix=f"netns-h{host}",
                initializer=_enter_namespace,
                initargs=(self.ns(host),),
            )
            self._threads[host] = pool
        return pool.submit(socket.socket, socket.AF_INET, kind).result(timeout=20)

    def pids(self, host: int) -> list[int]:
        """Processes running in ``host``'s namespace."""
        out = _run(["ip", "netns", "pids", self.ns(host)], check=False)
        return [int(p) for p in out.split() if p.isdigit()]

    def kill_all(self) -> list[int]:
        """SIGKILL every process left in this Lan's namespaces (orphaned subtask processes,
        pool workers of a killed daemon); returns their pids."""
        killed = []
        for name in self.created:
            for pid_text in _run(["ip", "netns", "pids", name], check=False).split():
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pid_text), signal.SIGKILL)
                    killed.append(int(pid_text))
        return killed

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Delete every namespace this Lan made (their veth ends go with them).

        Processes started with :meth:`exec` should be stopped first; a namespace with
        processes still in it loses its name here and disappears when they exit.
        """
        errors: list[str] = []
        for pool in self._threads.values():
            pool.shutdown(wait=True, cancel_futures=True)
        self._threads.clear()
        for name in reversed(self.created):
            try:
                _run(["ip", "netns", "del", name])
            except (NetnsError, OSError, subprocess.SubprocessError) as e:
                errors.append(str(e))
        self.created.clear()
        if errors:
            raise NetnsError("; ".join(errors))

    def __enter__(self) -> Lan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
