"""Retention: memory and journal size of a coordinator that runs many subtasks.

    python bench/retention.py [--tasks 20000] [--per-task 10] [--keep 7d]
                              [--keep-tasks 10000] [--keep-subtasks 100000]
                              [--gap 1] [--no-retention]

Drives the real :class:`swarmd.core.tasks.Coordinator` and the real SQLite
:class:`swarmd.store.Store` (in a temporary state dir) on virtual time, as the shell
does: every task is submitted, placed on two fake peers, each subtask answered, every
effect journaled; retention sweeps run as ``Coordination._expire`` runs them (every
``interval_s`` and whenever a count cap is passed), with the defaults of
``[tasks]`` unless told otherwise. Tasks
start ``--gap`` virtual seconds apart. Prints, at every tenth of the run, the
process's RSS, the tasks held, the journal rows, and the SQLite file and WAL sizes;
``--no-retention`` shows the same run without forgetting anything.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from swarmd.config import parse_age  # noqa: E402
from swarmd.core.jobspec import JobSpec, parse_job  # noqa: E402
from swarmd.core.retention import Retention  # noqa: E402
from swarmd.core.tasks import (  # noqa: E402
    Coordinator,
    CoordinatorConfig,
    Dispatch,
    Effect,
    Journal,
    Result,
)
from swarmd.store import Store  # noqa: E402
from tests.capacity import peer  # noqa: E402

PEERS = [peer("A", slots_total=512), peer("B", slots_total=512)]


def job(n: int) -> JobSpec:
    subtasks = [{"id": f"s{i}", "kind": "shell", "run": ["true"]} for i in range(n)]
    return parse_job({"name": "bench", "subtasks": subtasks})


def persist(store: Store, effects: list[Effect]) -> None:
    store.write_journal(
        (e.kind, e.key[1], e.key[2], e.data) for e in effects if isinstance(e, Journal)
    )


def run_task(c: Coordinator, store: Store, task_id: str, spec: JobSpec, now: float) -> None:
    persist(store, c.submit(task_id, spec, now))
    left = len(spec.subtasks)
    while left:
        fx = c.schedule(PEERS, now)
        persist(store, fx)
        for d in [e for e in fx if isinstance(e, Dispatch)]:
            done = Result(exit_code=0, stdout="ok\n")
            persist(store, c.on_result(d.task_id, d.subtask_id, d.attempt, "A", done, now + 1))
            left -= 1


def sweep(c: Coordinator, store: Store, now: float, due: float) -> float:
    """Coordination._expire: returns when the next sweep by age is due."""
    policy = c.config.retention
    while now >= due or policy.over_cap(*c.finished_count()):
        fx = c.expire(now)
        persist(store, fx)
        due = now if fx else now + policy.interval_s
        if not fx:
            break
    return due


def sample(c: Coordinator, store: Store, subtasks: int) -> dict[str, Any]:
    gc.collect()
    path = store.path
    wal = Path(f"{path}-wal")
    return {
        "subtasks": subtasks,
        "rss_mib": psutil.Process().memory_info().rss / 2**20,
        "tasks": len(c.task_ids()),
        "rows": store.db.execute("SELECT COUNT(*) FROM journal").fetchone()[0],
        "db_kib": os.path.getsize(path) >> 10,
        "wal_kib": (os.path.getsize(wal) >> 10) if wal.exists() else 0,
    }


def measure(
    tasks: int, per_task: int, policy: Retention, gap_s: float, retain: bool
) -> list[dict[str, Any]]:
    c = Coordinator(node_id="bench", config=CoordinatorConfig(retention=policy))
    spec = job(per_task)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "swarmd.db")
        out.append(sample(c, store, 0))
        now, due = 0.0, 0.0
        for i in range(tasks):
            run_task(c, store, f"t{i:07d}", spec, now)
            now += gap_s
            if retain:
                due = sweep(c, store, now, due)
            if (i + 1) % max(1, tasks // 10) == 0:
                out.append(sample(c, store, (i + 1) * per_task))
        store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    base = Retention()
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--per-task", type=int, default=10)
    ap.add_argument("--keep", default="7d")
    ap.add_argument("--keep-tasks", type=int, default=base.keep_tasks)
    ap.add_argument("--keep-subtasks", type=int, default=base.keep_subtasks)
    ap.add_argument("--gap", type=float, default=1.0, help="virtual seconds between tasks")
    ap.add_argument("--no-retention", action="store_true")
    args = ap.parse_args()
    policy = Retention(
        keep_s=parse_age(args.keep), keep_tasks=args.keep_tasks, keep_subtasks=args.keep_subtasks
    )
    retain = not args.no_retention
    what = (
        f"keep={args.keep} keep_tasks={args.keep_tasks} keep_subtasks={args.keep_subtasks}"
        if retain
        else "no retention"
    )
    print(f"{args.tasks} tasks x {args.per_task} subtasks, {args.gap:g} s apart, {what}")
    print(f"{'subtasks':>10} {'RSS MiB':>8} {'tasks':>7} {'rows':>8} {'db KiB':>8} {'wal KiB':>8}")
    sys.stdout.flush()
    started = time.perf_counter()
    for row in measure(args.tasks, args.per_task, policy, args.gap, retain):
        print(
            f"{row['subtasks']:>10} {row['rss_mib']:>8.1f} {row['tasks']:>7} {row['rows']:>8}"
            f" {row['db_kib']:>8} {row['wal_kib']:>8}",
            flush=True,
        )
    print(f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
