"""Gossip convergence at scale in the deterministic simulator (swarmd/simulator.py).

    python -m bench.simconv [--quick] [--sizes 50,100,200,500,1000]

The daemon's own :class:`~swarmd.core.gossip.Gossip` objects, N of them in one process,
on a virtual clock and an in-memory network (0.5-5 ms latency, no loss). Every node
knows only node 0's address as its ``--join`` seed and starts at a random phase within
the first 200 ms round. Per N:

* ``converge``: gossip rounds (checked after every round of ``interval_s``) and virtual
  seconds until every node lists every node alive;
* ``spread``: then one node writes a new value; rounds until every node holds it (the
  epidemic part: no node acts as a hub any more);
* ``detect`` (N <= ``detect_max``): one node is killed; virtual seconds (checked every
  50 ms) until every other node lists it dead.

* ``steady``: ``STEADY_ROUNDS`` rounds with every message encoded by the real codec:
  ``bytes_per_node_round`` is the bytes all nodes sent / N / rounds; then as many
  rounds again without encoding, timed with ``process_time``: ``cpu_ms_per_node_round``
  is this process's CPU time / N / rounds (the whole simulator: event queue, in-memory
  network and the gossip core of every node). Measured twice: ``early_*`` 1 s after
  converging (the news of N joins still travelling), and idle, ``IDLE_AFTER_S`` after
  converging (news stays hot 4 + 2 log2 N rounds: 4.8 s at N = 1,000).

``wall_s`` is this process's wall-clock time for each phase; the virtual times do not
depend on the machine.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import load, save, table
from swarmd.core.failure import Liveness
from swarmd.simulator import Simulation

DETECT_STEP_S = 0.05
STEADY_ROUNDS = 5
IDLE_AFTER_S = 6.0


def _rounds_until(sim: Simulation, predicate: Any, limit: int) -> int | None:
    for r in range(1, limit + 1):
        sim.run_for(sim.config.interval_s)
        if predicate():
            return r
    return None


def steady(sim: Simulation, rounds: int = STEADY_ROUNDS) -> dict[str, Any]:
    """Bytes, messages and CPU per node per round of an idle, converged cluster."""
    n, interval_s = len(sim.nodes), sim.config.interval_s
    net = sim.network
    sent, net.bytes_sent, net.count_bytes = net.sent, 0, True
    sim.run_for(rounds * interval_s)
    net.count_bytes = False
    out = {
        "bytes_per_node_round": round(net.bytes_sent / n / rounds),
        "messages_per_node_round": round((net.sent - sent) / n / rounds, 2),
    }
    cpu = time.process_time()
    sim.run_for(rounds * interval_s)
    out["cpu_ms_per_node_round"] = round((time.process_time() - cpu) * 1000 / n / rounds, 4)
    return out


def _detect(sim: Simulation, n: int) -> dict[str, Any]:
    """Kill one node after a few seconds of history; when the first and the last of the
    others list it dead (virtual seconds, checked every ``DETECT_STEP_S``)."""
    sim.run_for(3.0)
    victim_id = sim.node_id(n // 3)
    sim.kill(n // 3)
    killed = sim.now
    first_dead: float | None = None
    for _ in range(round(10.0 / DETECT_STEP_S)):
        sim.run_for(DETECT_STEP_S)
        dead = [g.liveness(victim_id) is Liveness.DEAD for g in sim.nodes.values()]
        if first_dead is None and any(dead):
            first_dead = sim.now - killed
        if all(dead):
            return {
                "detect_first_s": round(first_dead or 0.0, 2),
                "detect_all_s": round(sim.now - killed, 2),
            }
    return {
        "detect_first_s": None if first_dead is None else round(first_dead, 2),
        "detect_all_s": None,
    }


def one(n: int, detect: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    sim = Simulation(n, seed=n)
    interval_s = sim.config.interval_s
    rounds = _rounds_until(sim, sim.converged, 60)
    t1 = time.perf_counter()
    out: dict[str, Any] = {
        "n": n,
        "converged": rounds is not None,
        "converge_rounds": rounds,
        "converge_virtual_s": round(sim.now, 3),
        "converge_wall_s": round(t1 - t0, 2),
        "converge_messages": sim.network.sent,
    }
    if rounds is None:
        return out
    sim.run_for(1.0)  # let the last joins settle
    out.update({f"early_{k}": v for k, v in steady(sim).items()})
    sim.run_for(max(0.0, IDLE_AFTER_S - 1.0 - 2 * STEADY_ROUNDS * interval_s))
    out.update(steady(sim))
    t1 = time.perf_counter()
    writer = sim.nodes[sim.addr(n - 1)]
    writer.set("queue", 42)
    sent = sim.network.sent

    def everyone_has_it() -> bool:
        return all(g.state.nodes[writer.node_id].get("queue") == 42 for g in sim.nodes.values())

    spread = _rounds_until(sim, everyone_has_it, 40)
    t2 = time.perf_counter()
    out.update(
        spread_rounds=spread,
        spread_log2_n=round(math.log2(n), 2),
        spread_wall_s=round(t2 - t1, 2),
        wall_s_per_round=round((t2 - t1) / max(1, spread or 40), 3),
        messages_per_round=round((sim.network.sent - sent) / max(1, spread or 40)),
    )
    if detect:
        out.update(_detect(sim, n))
        out["detect_wall_s"] = round(time.perf_counter() - t2, 2)
    out["interval_s"] = interval_s
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    return out


def run(
    quick: bool = False, sizes: tuple[int, ...] | None = None, detect_max: int | None = None
) -> dict[str, Any]:
    sizes = sizes if sizes is not None else ((50, 100) if quick else (50, 100, 200, 500, 1000))
    detect_max = detect_max if detect_max is not None else (50 if quick else 1000)
    started = time.perf_counter()
    result: dict[str, Any] = {"quick": quick, "load_before": load(), "sizes": []}
    for n in sizes:
        result["sizes"].append(one(n, detect=n <= detect_max))
    result["load_after"] = load()
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "### Gossip convergence in the simulator (virtual nodes, one process)",
        "",
        "The daemon's gossip and failure-detector code on a virtual clock, no loss; every "
        "node seeded with node 0 only. *converge*: rounds (200 ms each) until every node "
        "lists all N alive. *spread*: rounds for a value written on one node to reach all, "
        "once converged. *dead to all*: virtual seconds from killing a node until every "
        "other node lists it dead. *bytes* and *CPU*: per node per round (encoded message "
        "bytes sent; this process's CPU time for the whole simulator / N / rounds), 1 s "
        f"after converging (*early*) and {IDLE_AFTER_S:.0f} s after (idle). "
        "Wall: seconds of this machine per simulated round.",
        "",
    ]
    rows = []
    for s in result["sizes"]:
        rows.append(
            [
                s["n"],
                s["converge_rounds"] if s["converged"] else "not in 60",
                f"{s['converge_virtual_s']:.2f}",
                s.get("spread_rounds", "-"),
                f"{s.get('spread_log2_n', math.log2(s['n'])):.1f}",
                "-" if s.get("detect_first_s") is None else f"{s['detect_first_s']:.2f}",
                "-" if s.get("detect_all_s") is None else f"{s['detect_all_s']:.2f}",
                s.get("early_bytes_per_node_round", "-"),
                s.get("bytes_per_node_round", "-"),
                s.get("messages_per_node_round", "-"),
                s.get("early_cpu_ms_per_node_round", "-"),
                s.get("cpu_ms_per_node_round", "-"),
                s.get("wall_s_per_round", "-"),
                s.get("wall_s", s["converge_wall_s"]),
            ]
        )
    lines.append(
        table(
            [
                "N",
                "converge (rounds)",
                "converge (virtual s)",
                "spread (rounds)",
                "log2 N",
                "dead to first (virtual s)",
                "dead to all (virtual s)",
                "bytes/node/round early",
                "bytes/node/round idle",
                "messages/node/round idle",
                "CPU ms/node/round early",
                "CPU ms/node/round idle",
                "wall s/round",
                "wall s total",
            ],
            rows,
        )
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", help="comma-separated N, e.g. 50,100,200,500,1000")
    parser.add_argument("--detect-max", type=int)
    args = parser.parse_args()
    sizes = None if args.sizes is None else tuple(int(x) for x in args.sizes.split(","))
    result = run(args.quick, sizes, args.detect_max)
    save("simconv", result)
    print(markdown(result))


if __name__ == "__main__":
    main()
