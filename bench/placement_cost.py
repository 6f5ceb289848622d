"""CPU per subtask of the coordinator's placement alone (the sans-I/O core, no daemons).

    python bench/placement_cost.py [--subtasks 10000] [--rounds 3]

One job of N no-op shell subtasks (no estimate, as bench/dispatch.py's) on three peers
of 4 slots and a queue of 4 each; every step answers the oldest attempt out and runs a
schedule pass, as the daemon does when a result arrives. Prints CPU microseconds per
subtask (submit, passes, results), the median of ``--rounds``. Run it from two
checkouts alternately to compare them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from swarmd.core.jobspec import parse_job  # noqa: E402
from swarmd.core.pricing import GiB, PeerCapacity, PricingConfig  # noqa: E402
from swarmd.core.tasks import Coordinator, Dispatch, Result  # noqa: E402


def peer(i: int, busy: int) -> PeerCapacity:
    return PeerCapacity(
        node_id=f"n{i}",
        name=f"n{i}",
        alive=True,
        draining=False,
        on_battery=False,
        battery_policy="run",
        cores=4,
        load=0.1,
        ram_available=16 * GiB,
        gpus_vram_free=(),
        gpus_vram_total=(),
        slots_total=4,
        slots_busy=busy,
        queue=0,
        rtt_s=0.001 * i,
        cost_per_hour=0.0,
        models=(),
        queue_max=4,
    )


def daemon_pricing() -> PricingConfig:
    """Pricing as swarmd.work configures it (look-ahead where this checkout has it)."""
    try:
        from swarmd.work import LOOKAHEAD_S, QUEUE_AHEAD_S

        return PricingConfig(max_queue=0, lookahead_max_s=LOOKAHEAD_S, queue_ahead_s=QUEUE_AHEAD_S)  # type: ignore[call-arg]
    except ImportError:
        return PricingConfig(max_queue=0)


def one_round(n: int) -> float:
    job = parse_job(
        {
            "name": "noop",
            "subtasks": [{"id": f"s{i}", "kind": "shell", "run": ["true"]} for i in range(n)],
        }
    )
    c = Coordinator(node_id="coord", node_name="coord", pricing=daemon_pricing())
    out: deque[Dispatch] = deque()
    held = [0, 0, 0]
    started = time.process_time()
    now = 0.0
    c.submit("t1", job, now)
    done = 0
    while done < n:
        now += 0.001
        for e in c.schedule([peer(i, held[i]) for i in range(3)], now):
            if isinstance(e, Dispatch):
                out.append(e)
                held[int(e.node_id[1:])] += 1
        d = out.popleft()
        c.on_accepted(d.task_id, d.subtask_id, d.attempt, d.node_id, now)
        c.on_result(d.task_id, d.subtask_id, d.attempt, d.node_id, Result(exit_code=0), now)
        held[int(d.node_id[1:])] -= 1
        done += 1
    return (time.process_time() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--subtasks", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs = [one_round(args.subtasks) for _ in range(args.rounds)]
    print(
        f"placement: {statistics.median(runs):.1f} us CPU per subtask "
        f"(median of {args.rounds}: {', '.join(f'{r:.1f}' for r in runs)})"
    )


if __name__ == "__main__":
    main()
