"""Shared by the bench sections: statistics, markdown tables, daemons and their cleanup.

Every section module (``failover``, ``discovery``, ``simconv``, ``footprint``) exposes
``run(quick: bool = False) -> dict`` and ``markdown(result: dict) -> str``;
``bench/run_all.py`` runs them. Daemons bind to 127.0.0.1 (or to addresses inside
network namespaces the bench creates), never to a real interface.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from protocol import codec  # noqa: E402
from protocol.messages import PeersReply, PeersRequest  # noqa: E402
from swarmctl.client import Client, RequestFailed, Unreachable  # noqa: E402
from tests.harness import Daemon  # noqa: E402

# The numbers other systems ship with, printed beside ours (sources in DESIGN.md).
REFERENCES = {
    "memberlist": "LAN probe every 1 s, suspicion >= 4 s before dead",
    "ray": "node declared dead after ~15-65 s (health-check period x threshold)",
    "dask": "worker TTL 5 min (300 s) by default",
    "exo": "30 s",
    "gpustack": "150 s",
}


# ---------------------------------------------------------------- statistics


def quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank quantile (no interpolation: always one of the values)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summary(values: Iterable[float | None], digits: int = 3) -> dict[str, Any]:
    """n, min, median, p90, max and mean of the values that are not None."""
    got = [float(v) for v in values if v is not None]
    if not got:
        return {"n": 0}
    return {
        "n": len(got),
        "min": round(min(got), digits),
        "median": round(statistics.median(got), digits),
        "p90": round(quantile(got, 0.9), digits),
        "max": round(max(got), digits),
        "mean": round(statistics.fmean(got), digits),
    }


def fmt_summary(s: dict[str, Any] | None, digits: int = 2) -> str:
    """``1.23 (1.10-1.60, p90 1.50)``: the median, the range and the p90."""
    if not s or not s.get("n"):
        return "-"
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}"
    return (
        f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f}, "
        f"p90 {s['p90']:.{digits}f})"
    )


def save(name: str, result: dict[str, Any]) -> Path:
    """Write one section's result to bench/results/NAME.json; the path."""
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- talking to daemons


class Poller:
    """One persistent control-socket client per daemon, for tight polling loops.

    A fresh ``Client`` per request (what ``Daemon.request`` does) costs a socket and a
    connect each time; polling every 10 ms wants one socket. A request that times out
    leaves a late reply queued on the DEALER, so the client is replaced after one.
    """

    def __init__(self, state_dir: Path, timeout_s: float = 2.0) -> None:
        self.state_dir = state_dir
        self.timeout_s = timeout_s
        self._client: Client | None = None

    def request(self, message: Any) -> Any | None:
        """The reply, or None when the daemon did not answer (or is not up yet)."""
        try:
            if self._client is None:
                self._client = Client(self.state_dir, timeout_s=self.timeout_s)
            return self._client.request(message)
        except (Unreachable, RequestFailed):
            self.close()
            return None

    def states(self) -> dict[str, str] | None:
        """node name -> state as this daemon sees the cluster, or None if no answer."""
        reply = self.request(PeersRequest())
        if not isinstance(reply, PeersReply):
            return None
        peers: list[dict[str, Any]] = codec.to_builtins(reply.peers)
        return {p["name"]: p["state"] for p in peers}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def descendants(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return list(psutil.Process(pid).children(recursive=True))
    return []


def kill_tree(daemon: Daemon, extra: Iterable[psutil.Process] = ()) -> None:
    """SIGKILL a daemon and everything it started (shell subtasks run in their own
    session, so they outlive a killed daemon otherwise)."""
    procs = list(extra)
    if daemon.proc is not None and daemon.proc.poll() is None:
        procs += descendants(daemon.proc.pid)
        with contextlib.suppress(OSError):
            daemon.proc.send_signal(signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    if daemon.proc is not None:
        with contextlib.suppress(Exception):
            daemon.proc.wait(10)
    psutil.wait_procs(procs, timeout=5)


@contextlib.contextmanager
def daemons(nodes: list[Daemon]) -> Iterator[list[Daemon]]:
    """Yield the (not yet started) daemons; kill them and their children on exit."""
    try:
        yield nodes
    finally:
        for d in nodes:
            kill_tree(d)


def poll_until(
    fn: Callable[[], bool], timeout: float, interval: float = 0.01, what: str = ""
) -> float:
    """Poll ``fn`` until true; returns time.monotonic() of the first true poll."""
    deadline = time.monotonic() + timeout
    while True:
        if fn():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what or fn}")
        time.sleep(interval)


def load() -> dict[str, float]:
    """The 1/5/15-minute load averages and this instant's CPU use, for the record."""
    one, five, fifteen = os.getloadavg()
    return {"load1": round(one, 2), "load5": round(five, 2), "load15": round(fifteen, 2)}
