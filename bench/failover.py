"""Failure detection as a user sees it: worker lost -> its subtask re-dispatched.

    python -m bench.failover [--quick] [--trials 10]

Setup per trial (a fresh cluster each time): a coordinator that runs no shell work
(``allow_shell = false``) and two workers A and B, joined by a ``--join`` seed (no
mDNS). One shell subtask ``sleep 30`` is submitted to the coordinator; the worker it
lands on (read from ``status``) is the victim. After it has run for ``settle_s`` (so the
detector has a few seconds of heartbeat history, plus a random 0-200 ms so the fault
falls at any phase of the 200 ms gossip round), the victim is cut off:

* ``sigkill``: SIGKILL of the victim's daemon (its ``sleep`` child is killed too, after
  the measurement);
* ``partition``: the victim runs in its own network namespace (``tests/netns.py``) and
  an nft table drops every packet in and out of it; the daemon keeps running, silent.

Clocks (all on this one machine):

* ``t0`` = ``time.time()`` just before ``os.kill`` (sigkill) or just before the ``nft``
  command is started (partition: conservative, it includes the ~10-50 ms the command
  takes to spawn; its duration is recorded as ``cut_cmd_s``).
* ``dead_s``: the coordinator's own timestamp of attempt 1 ending (``explain``:
  ``attempts[0].ended``; it is set when the coordinator's detector declares the peer
  dead) minus t0. The coordinator's clock is epoch-at-start + monotonic-since, so it
  agrees with this process's ``time.time()`` to well under a millisecond.
* ``redispatch_s``: the coordinator's timestamp of attempt 2's dispatch
  (``attempts[1].started``) minus t0 — the headline number.
* ``running_s``: the first poll (every 10 ms, over the coordinator's control socket) that
  shows attempt 2 ``running`` on B, i.e. B accepted it, minus t0 (monotonic clock).
* ``seen_redispatch_s``: the first poll that shows 2 attempts, minus t0 (a cross-check
  of ``redispatch_s``: it trails by at most one poll interval plus a request).

Expected from the defaults: after a SIGKILL the victim's kernel resets its
connections, the coordinator's link to it drops (ZeroMQ socket monitor) and two probes
of its port 100 ms apart are refused: dead ~0.1 s after the kill (swarmd/core/crash.py).
A partition resets nothing: death = last heartbeat + phi >= 8 (mean interval + 0.3 s
acceptable pause + ~5 deviations) + 0.6 s suspicion, ~1.5-2 s. Either way the
coordinator re-dispatches at once (the first retry after a lost attempt has no backoff; later
failures back off from ``backoff_base_s`` 0.5 s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    REFERENCES,
    Poller,
    daemons,
    descendants,
    fmt_summary,
    load,
    poll_until,
    save,
    summary,
    table,
)
from protocol.messages import SubmitReply, SubmitRequest, TaskReply, TaskRequest
from swarmd.core.failure import DetectorConfig
from swarmd.core.gossip import GossipConfig
from swarmd.core.tasks import CoordinatorConfig
from tests.harness import Daemon, new_secret

COORDINATOR_CONFIG = "[node]\nallow_shell = false\n"
SLEEP_JOB = {
    "name": "failover",
    "subtasks": [{"id": "main", "kind": "shell", "run": ["sleep", "30"]}],
}
POLL_S = 0.01
KINDS = {"sigkill": "SIGKILL of A", "partition": "A partitioned (nft drops all)"}
NETNS_PORT = 7946


class NetnsDaemon(Daemon):
    """A swarmd inside ``lan`` host ``host``'s namespace, bound to that host's address."""

    def __init__(
        self,
        root: Path,
        lan: Any,
        host: int,
        name: str,
        secret: str,
        port: int,
        args: tuple[str, ...] = (),
        config: str | None = None,
    ) -> None:
        super().__init__(root, name, secret=secret, port=port, args=args, config=config)
        self.lan = lan
        self.host = host

    @property
    def address(self) -> str:
        return f"{self.lan.ip(self.host)}:{self.port}"

    def command(self) -> list[str]:
        argv = [sys.executable, "-m", "swarmd", "run", "--state-dir", str(self.state_dir)]
        argv += ["--bind", self.lan.ip(self.host), "--port", str(self.port), "--name", self.name]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        return list(self.lan.command(self.host, argv + list(self.args)))


def _status(poller: Poller, task: str) -> dict[str, Any] | None:
    reply = poller.request(TaskRequest(task=task, what="status"))
    return reply.body if isinstance(reply, TaskReply) else None


def _form(nodes: list[Daemon], timeout: float = 30.0) -> None:
    for d in nodes:
        d.start()
    for d in nodes:
        d.wait_ready(timeout)
    everyone = {d.name: "alive" for d in nodes}
    pollers = [Poller(d.state_dir) for d in nodes]
    try:
        poll_until(
            lambda: all(p.states() == everyone for p in pollers), timeout, 0.05, "cluster formed"
        )
    finally:
        for p in pollers:
            p.close()


def _trial(
    coord: Daemon,
    workers: dict[str, Daemon],
    cut: Any,
    settle_s: float,
    rng: random.Random,
) -> dict[str, Any]:
    """One fault on a formed cluster; ``cut(victim)`` does it and returns its own duration."""
    poller = Poller(coord.state_dir, timeout_s=5.0)
    try:
        reply = poller.request(SubmitRequest(job=SLEEP_JOB))
        assert isinstance(reply, SubmitReply), reply
        task = reply.task
        running: dict[str, Any] = {}

        def first_running() -> bool:
            s = _status(poller, task)
            if s and s["subtasks"][0]["state"] == "running":
                running.update(s["subtasks"][0])
                return True
            return False

        poll_until(first_running, 20, 0.02, "the subtask to run")
        victim = workers[running["peer"]]
        time.sleep(settle_s + rng.uniform(0.0, 0.2))

        children = descendants(victim.proc.pid) if victim.proc else []
        t0_wall = time.time()
        t0 = time.monotonic()
        cut_cmd_s = cut(victim)
        seen: dict[str, float] = {}

        def redispatched_and_running() -> bool:
            s = _status(poller, task)
            if s is None:
                return False
            sub = s["subtasks"][0]
            now = time.monotonic()
            if sub["attempts"] >= 2:
                seen.setdefault("dispatch", now)
                if sub["state"] == "running":
                    seen["running"] = now
                    return True
            return False

        poll_until(redispatched_and_running, 60, POLL_S, "re-dispatch to the other worker")
        reply = poller.request(TaskRequest(task=task, what="explain"))
        assert isinstance(reply, TaskReply), reply
        attempts = reply.body["subtasks"][0]["attempts"]
        first, second = attempts[0], attempts[1]
        refusals = reply.body["subtasks"][0]["refusals"]
        result = {
            "victim": victim.name,
            "second_peer": second["peer"],
            "attempt1_error": first["error"],
            "cut_cmd_s": None if cut_cmd_s is None else round(cut_cmd_s, 4),
            "dead_s": round(first["ended"] - t0_wall, 4) if first["ended"] else None,
            "redispatch_s": round(second["started"] - t0_wall, 4),
            "seen_redispatch_s": round(seen["dispatch"] - t0, 4),
            "running_s": round(seen["running"] - t0, 4),
            "refusals": refusals,
        }
        assert second["peer"] != victim.name, result
        # cancel, so the survivor's sleep does not outlive the trial
        poller.request(TaskRequest(task=task, what="cancel"))
        for child in children:
            child.kill()
        return result
    finally:
        poller.close()


def _sigkill(victim: Daemon) -> None:
    assert victim.proc is not None
    os.kill(victim.proc.pid, 9)


def sigkill_trials(trials: int, settle_s: float, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for _ in range(trials):
        with tempfile.TemporaryDirectory(prefix="swarmd-bench-failover-") as tmp:
            root = Path(tmp)
            secret = new_secret()
            coord = Daemon(
                root, "coord", secret=secret, args=("--no-mdns",), config=COORDINATOR_CONFIG
            )
            seed_args = ("--no-mdns", "--join", coord.address)
            wa = Daemon(root, "wa", secret=secret, args=seed_args)
            wb = Daemon(root, "wb", secret=secret, args=seed_args)
            with daemons([coord, wa, wb]):
                _form([coord, wa, wb])
                out.append(_trial(coord, {"wa": wa, "wb": wb}, _sigkill, settle_s, rng))
    return out


def partition_trials(trials: int, settle_s: float, seed: int = 2) -> list[dict[str, Any]]:
    from tests.netns import Lan

    rng = random.Random(seed)
    out = []
    with Lan(3) as lan, tempfile.TemporaryDirectory(prefix="swarmd-bench-part-") as tmp:
        try:
            for trial in range(trials):
                root = Path(tmp) / f"t{trial}"
                secret = new_secret()
                port = NETNS_PORT + trial
                coord = NetnsDaemon(
                    root, lan, 1, "coord", secret, port, ("--no-mdns",), COORDINATOR_CONFIG
                )
                seed_args = ("--no-mdns", "--join", coord.address)
                wa = NetnsDaemon(root, lan, 2, "wa", secret, port, seed_args)
                wb = NetnsDaemon(root, lan, 3, "wb", secret, port, seed_args)

                def cut(victim: Daemon) -> float:
                    assert isinstance(victim, NetnsDaemon)
                    started = time.monotonic()
                    lan.partition(victim.host)
                    return time.monotonic() - started

                try:
                    with daemons([coord, wa, wb]):
                        _form([coord, wa, wb])
                        out.append(_trial(coord, {"wa": wa, "wb": wb}, cut, settle_s, rng))
                finally:
                    for host in list(lan.partitioned):
                        lan.heal(host)
        finally:
            _kill_namespace_processes(lan)
    return out


def _kill_namespace_processes(lan: Any) -> None:
    """Anything still running in the Lan's namespaces (e.g. a partitioned worker's
    ``sleep``, which nobody could cancel) is killed before the namespaces go."""
    import subprocess

    for name in lan.namespaces:
        pids = subprocess.run(
            ["ip", "netns", "pids", name], capture_output=True, text=True, timeout=20
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid), 9)


def _digest(trials: list[dict[str, Any]]) -> dict[str, Any]:
    for t in trials:
        if t.get("dead_s") is not None:
            t["dead_to_redispatch_s"] = round(t["redispatch_s"] - t["dead_s"], 4)
    keys = (
        "dead_s",
        "redispatch_s",
        "seen_redispatch_s",
        "running_s",
        "dead_to_redispatch_s",
        "cut_cmd_s",
    )
    return {
        "trials": trials,
        **{k: summary(t.get(k) for t in trials) for k in keys if any(t.get(k) for t in trials)},
    }


def run(quick: bool = False, trials: int | None = None) -> dict[str, Any]:
    n = trials if trials is not None else (2 if quick else 10)
    settle_s = 1.0 if quick else 3.0
    detector, gossip, coordinator = DetectorConfig(), GossipConfig(), CoordinatorConfig()
    crash = gossip.crash
    result: dict[str, Any] = {
        "quick": quick,
        "settings": {
            "gossip_interval_s": gossip.interval_s,
            "phi_threshold": detector.phi_threshold,
            "acceptable_pause_s": detector.acceptable_pause_s,
            "min_std_s": detector.min_std_s,
            "suspicion_s": detector.suspicion_s,
            "crash_probes": crash.probes if crash.enabled else 0,
            "crash_probe_gap_s": crash.probe_gap_s,
            "retry_backoff_s": 0.0,  # a first lost attempt is retried at once
            "backoff_base_s": coordinator.backoff_base_s,
            "lease_s": coordinator.lease_s,
            "settle_s": settle_s,
            "poll_s": POLL_S,
        },
        "load_before": load(),
        "references": {k: REFERENCES[k] for k in ("memberlist", "ray", "dask")},
    }
    started = time.perf_counter()
    result["sigkill"] = _digest(sigkill_trials(n, settle_s))

    from tests.netns import unavailable_reason

    reason = unavailable_reason()
    if reason is None:
        result["partition"] = _digest(partition_trials(n, settle_s))
    else:
        result["partition"] = {"skipped": reason}
    result["load_after"] = load()
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "### Failure detection: worker lost -> subtask re-dispatched",
        "",
        "Coordinator + 2 workers (seeded with `--join`); a `sleep 30` shell subtask runs on "
        f"worker A for {s['settle_s']:g} s (+0-0.2 s), then A is cut off. Times from the cut: "
        "*dead* = the coordinator ends attempt 1 (peer declared dead), *re-dispatch* = the "
        "coordinator dispatches attempt 2 to B (both from its journal timestamps), *running* "
        f"= a {s['poll_s'] * 1000:g} ms poll first sees attempt 2 running on B.",
        "",
    ]
    rows = []
    for kind, label in KINDS.items():
        part = result.get(kind) or {}
        if "skipped" in part:
            rows.append([label, f"skipped: {part['skipped']}", "", ""])
            continue
        if "dead_s" not in part:
            continue
        rows.append(
            [
                label,
                fmt_summary(part.get("dead_s")),
                fmt_summary(part.get("redispatch_s")),
                fmt_summary(part.get("running_s")),
            ]
        )
    n = max((result.get(k, {}).get("redispatch_s", {}).get("n", 0) for k in KINDS), default=0)
    lines.append(table(["fault", "-> dead (s)", "-> re-dispatch (s)", "-> running on B (s)"], rows))
    lines += ["", f"Cells: median (min-max, p90) over {n} trials, each on a fresh cluster."]
    for kind, label in KINDS.items():
        gaps = [t.get("dead_to_redispatch_s") for t in result.get(kind, {}).get("trials", [])]
        got = [g for g in gaps if g is not None]
        if got:
            slow = sum(g > s["retry_backoff_s"] + 0.2 for g in got)
            lines.append(
                f"{label}: dead -> re-dispatch {fmt_summary(summary(got))} s; "
                f"{slow} of {len(got)} trials took more than 0.2 s."
            )
    lines += [
        "",
        f"swarmd settings: gossip every {s['gossip_interval_s']:g} s, phi >= "
        f"{s['phi_threshold']:g} (acceptable pause {s['acceptable_pause_s']:g} s, std floor "
        f"{s['min_std_s']:g} s) then {s['suspicion_s']:g} s suspicion; a dropped link whose "
        f"port refuses {s.get('crash_probes', 0)} probes "
        f"({s.get('crash_probe_gap_s', 0.1) * 1000:g} ms apart) is dead at once; the first retry "
        f"after a lost attempt goes at once (later ones back off from "
        f"{s.get('backoff_base_s', 0.5):g} s).",
        "",
        "For reference (their defaults, not measured here): "
        + "; ".join(f"{k}: {v}" for k, v in result["references"].items())
        + ".",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--trials", type=int)
    args = parser.parse_args()
    result = run(args.quick, args.trials)
    save("failover", result)
    print(markdown(result))


if __name__ == "__main__":
    main()
