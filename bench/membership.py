"""Membership figures with real daemons on loopback and with the simulator.

    python bench/membership.py [--trials 10] [--sim-sizes 50,100,200,400]

Prints, and writes bench/results/membership.json:
- formation: seconds from the last of 3 daemons answering until all 3 list each other
  alive (real mDNS on loopback, no --join);
- detection: seconds from SIGKILL of one daemon until both others list it dead,
  over repeated trials (median, p90, max);
- leave: seconds from SIGTERM until a peer lists the node left;
- simulator: gossip rounds until N virtual nodes agree, for several N.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swarmd.simulator import Simulation  # noqa: E402
from tests.harness import Daemon, new_secret, wait_until  # noqa: E402


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def real_trial(root: Path) -> dict[str, float]:
    secret = new_secret()
    nodes = [Daemon(root, f"n{i}", secret=secret) for i in (1, 2, 3)]
    try:
        for d in nodes:
            d.start()
        for d in nodes:
            d.wait_ready()
        ready = time.monotonic()
        everyone = {"n1": "alive", "n2": "alive", "n3": "alive"}
        wait_until(lambda: all(d.states() == everyone for d in nodes), 15, interval=0.02)
        formation = time.monotonic() - ready
        n1, n2, n3 = nodes
        n3.kill()
        killed = time.monotonic()
        wait_until(lambda: all(d.states()["n3"] == "dead" for d in (n1, n2)), 15, interval=0.02)
        detection = time.monotonic() - killed
        n2.signal(15)
        termed = time.monotonic()
        wait_until(lambda: n1.states()["n2"] == "left", 5, interval=0.01)
        leave = time.monotonic() - termed
        return {"formation_s": formation, "detection_s": detection, "leave_s": leave}
    finally:
        for d in nodes:
            d.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--sim-sizes", default="50,100,200,400")
    args = parser.parse_args()

    trials = []
    for i in range(args.trials):
        with tempfile.TemporaryDirectory(prefix="swarmd-bench-") as tmp:
            t = real_trial(Path(tmp))
        trials.append(t)
        print(
            f"trial {i + 1}: formation {t['formation_s']:.2f} s, "
            f"SIGKILL->dead {t['detection_s']:.2f} s, SIGTERM->left {t['leave_s']:.3f} s",
            flush=True,
        )
    summary: dict[str, object] = {}
    for key in ("formation_s", "detection_s", "leave_s"):
        values = [t[key] for t in trials]
        summary[key] = {
            "median": round(statistics.median(values), 3),
            "p90": round(quantile(values, 0.9), 3),
            "max": round(max(values), 3),
            "n": len(values),
        }
        print(
            f"{key:12} median {statistics.median(values):.3f}  p90 {quantile(values, 0.9):.3f}"
            f"  max {max(values):.3f}  (n={len(values)})"
        )

    sim = {}
    for n in (int(x) for x in args.sim_sizes.split(",")):
        s = Simulation(n, seed=n)
        started = time.perf_counter()
        ok = s.run_until_true(s.converged, limit_s=120, step_s=s.config.interval_s)
        rounds = s.rounds(s.now)
        sim[n] = {
            "rounds": rounds,
            "converged": ok,
            "wall_s": round(time.perf_counter() - started, 2),
        }
        print(
            f"simulator N={n:5}: converged={ok} in {rounds} rounds "
            f"(log2 N = {math.log2(n):.1f}), {sim[n]['wall_s']} s wall"
        )
    summary["simulator"] = sim
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "membership.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out / 'membership.json'}")


if __name__ == "__main__":
    main()
