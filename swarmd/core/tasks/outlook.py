"""Deadlines as a contract: admission at submit time, and the outlook of running tasks.

* :meth:`Outlook.admit` — before a job with a deadline is taken, plan (with
  :class:`swarmd.core.deadlines.Planner`) the work that would be started ahead of it —
  attempts in flight, then every unfinished subtask of a higher class, or of its class
  with an earlier own deadline (the ready queue's order) — and then the job itself,
  its waits for a slot stretched by the pressure of the classes above it
  (:class:`swarmd.core.deadlines.ClassLoad`: how much of each pool they took in the last
  minute, a forecast of the work they will still send ahead of it). If its estimated
  finish is past its deadline, the answer says so with the estimate; the shell refuses
  the job unless it was submitted ``deadline_best_effort``.
* :meth:`Outlook.refresh_outlook` — at most every :data:`OUTLOOK_EVERY_S`, plan every
  open task in queue order and keep each task-with-a-deadline's estimated finish;
  ``status`` shows it (``deadline``: ``{at, estimated_finish, reachable}``) and a task
  whose estimate passed its deadline is *unreachable* (counted once per task in
  ``counters["deadline_unreachable"]``). The task is not stopped for that: it fails
  when the deadline passes (:mod:`~swarmd.core.tasks.timeouts`), as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from swarmd.core.deadlines import Planner, Step, next_look
from swarmd.core.jobspec import PRIORITY_RANK, JobSpec
from swarmd.core.pricing import PeerCapacity
from swarmd.core.tasks.bookkeeping import Bookkeeping
from swarmd.core.tasks.graph import demand_of, estimate_s, new_task
from swarmd.core.tasks.records import SubtaskRecord, TaskRecord
from swarmd.core.tasks.transitions import IN_FLIGHT

OUTLOOK_EVERY_S: Final = 1.0
PLANNED_PER_S: Final = 2000  # a refresh that planned N subtasks: the next after N / this s
MIN_LOOK_GAP_S: Final = 0.1  # a look just after an estimated end: at most this often
_NEW: Final = "\x00new"  # the task id the job being admitted is planned under


@dataclass(frozen=True, slots=True)
class Admission:
    """The estimate for a job: ``finish`` (absolute; inf if a subtask fits no peer),
    ``deadline`` (absolute), how many subtasks were planned ahead of it."""

    finish: float
    deadline: float
    ahead: int
    now: float

    @property
    def meets(self) -> bool:
        return self.finish <= self.deadline

    def refusal(self) -> str:
        """Why the job is refused, with the estimate."""
        deadline_s = self.deadline - self.now
        if math.isinf(self.finish):
            when = "a subtask fits no live peer now, so no finish can be estimated"
        else:
            when = f"estimated finish in {self.finish - self.now:.1f} s"
        return (
            f"deadline {deadline_s:g} s cannot be met: {when}, with {self.ahead} subtask(s) "
            "running or queued ahead of it; submit with --deadline-best-effort (job key "
            "deadline_best_effort = true) to run it anyway"
        )


def _order(task: TaskRecord, rec: SubtaskRecord) -> tuple[int, float, float]:
    """Where the ready queue would put it: class, own deadline, urgency (shares aside)."""
    rank = PRIORITY_RANK.get(rec.spec.priority, PRIORITY_RANK["normal"])
    deadline = task.latest_finish(rec.id)
    return (rank, math.inf if deadline is None else deadline, -task.urgency.get(rec.id, 0.0))


class Outlook(Bookkeeping):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._outlook_next = -math.inf  # when to plan again
        self._outlook_every = OUTLOOK_EVERY_S
        self._outlook: dict[str, float] = {}  # task id -> estimated finish (with a deadline)
        self._unreachable: set[str] = set()  # counted once each (pruned with _outlook)

    def outlook_due(self, now: float) -> bool:
        """Whether :meth:`refresh_outlook` has something to do at ``now`` (see
        :meth:`outlook_wakeup`)."""
        if now < self._outlook_next:
            return False
        if self._outlook or any(t.deadline is not None for t in self._open.values()):
            return True
        self._outlook_next = now + OUTLOOK_EVERY_S  # none has a deadline: look again later
        return False

    def outlook_wakeup(self) -> float | None:
        """When the outlook is next due while a task with a deadline is open: every
        OUTLOOK_EVERY_S, and just after an attempt for one is estimated to end."""
        return self._outlook_next if self._outlook else None

    def _planner(self, peers: Sequence[PeerCapacity], now: float) -> Planner:
        plan = Planner(peers, self.pricing, now, throughput=self.throughput)
        for (task_id, subtask_id), rec in self._in_flight.items():
            current = rec.current
            if current is None:
                continue
            run = estimate_s(rec.spec, self.pricing)
            if rec.placements and rec.placements[-1].winner is not None:
                won = rec.placements[-1].winner
                run = (won.wait_s or 0.0) + won.rtt_s + (won.run_s or run)
            model = current.model if rec.spec.kind == "llm" else None
            plan.hold(
                (task_id, subtask_id),
                current.node_id,
                model,
                current.started + run,
                current.started,
            )
        return plan

    def _waiting(self) -> list[tuple[tuple[int, float, float], int, TaskRecord, SubtaskRecord]]:
        """Every open task's subtasks not final and not in flight, in queue order."""
        rows = []
        n = 0
        for task in self._open.values():
            for rec in task.subtasks.values():
                if rec.final or rec.state in IN_FLIGHT:
                    continue
                rows.append((_order(task, rec), n, task, rec))
                n += 1
        rows.sort(key=lambda r: (r[0], r[1]))
        return rows

    @staticmethod
    def _step(task_id: str, rec: SubtaskRecord) -> Step:
        demand = (
            rec.demand if rec.demand is not None else demand_of(rec.spec)
        )  # as written: not rendered yet
        return Step((task_id, rec.id), demand, tuple((task_id, a) for a in rec.spec.after))

    def admit(self, job: JobSpec, peers: Sequence[PeerCapacity], now: float) -> Admission | None:
        """The estimate for ``job`` submitted at ``now``; None if it has no deadline."""
        if job.deadline_s is None:
            return None
        draft = new_task(_NEW, job, now, self.pricing)
        assert draft.deadline is not None
        mine = sorted(
            ((_order(draft, rec), n, rec) for n, rec in enumerate(draft.subtasks.values())),
            key=lambda r: (r[0], r[1]),
        )
        first = mine[0][0]
        plan = self._planner(peers, now)
        ahead = len(self._in_flight)
        for order, _, task, rec in self._waiting():
            if order[:2] > first[:2]:
                break
            plan.place(self._step(task.id, rec))
            ahead += 1
        finish = now
        for order, _, rec in mine:
            pressure = self.class_load.pressure(order[0], now, plan.capacity())
            finish = max(finish, plan.place(self._step(_NEW, rec), pressure))
        return Admission(finish=finish, deadline=draft.deadline, ahead=ahead, now=now)

    def refresh_outlook(self, peers: Sequence[PeerCapacity], now: float) -> None:
        """Plan the open tasks again (every OUTLOOK_EVERY_S, or every second per
        :data:`PLANNED_PER_S` subtasks the last one planned, sooner just after an attempt
        for a deadline is estimated to end; only while one has a deadline); keep the
        estimated finish of those with a deadline (NaN: not planned, past the planner's
        limit). Work ordered after the last subtask with a deadline is not planned: it
        cannot delay one. An attempt past its estimated end is planned to need more
        (:data:`~swarmd.core.deadlines.OVERRUN_SHARE`), so its overrun shows."""
        if now < self._outlook_next:
            return
        self._outlook_next = now + OUTLOOK_EVERY_S
        due = [t for t in self._open.values() if t.deadline is not None]
        self._outlook = {}
        self._unreachable &= {t.id for t in due}
        if not due:
            return
        last = max(
            (_order(t, rec) for t in due for rec in t.subtasks.values() if not rec.final),
            default=(-1, -math.inf, 0.0),
        )
        plan = self._planner(peers, now)
        placed = 0
        for order, _, task, rec in self._waiting():
            if order > last or plan.truncated:
                break
            plan.place(self._step(task.id, rec))
            placed += 1
        self._outlook_every = max(OUTLOOK_EVERY_S, placed / PLANNED_PER_S)
        ends: list[float] = []
        for task in due:
            pending = [r for r in task.subtasks.values() if not r.final]
            finishes = [plan.finish_of((task.id, r.id)) for r in pending]
            self._note(task, finishes)
            running = zip(pending, finishes, strict=True)
            ends += (f for r, f in running if f is not None and r.state in IN_FLIGHT)
        # Sooner looks spend the same budget: PLANNED_PER_S subtasks a second at most.
        min_gap = max(MIN_LOOK_GAP_S, placed / PLANNED_PER_S)
        self._outlook_next = next_look(now, self._outlook_every, ends, min_gap)

    def _note(self, task: TaskRecord, finishes: list[float | None]) -> None:
        assert task.deadline is not None
        if any(f is None for f in finishes):
            self._outlook[task.id] = math.nan
            return
        finish = max((f for f in finishes if f is not None), default=-math.inf)
        if finish > task.deadline and task.id not in self._unreachable:
            self._unreachable.add(task.id)
            self.counters["deadline_unreachable"] += 1
        self._outlook[task.id] = finish

    def deadline_view(self, task: TaskRecord) -> dict[str, Any] | None:
        """``status``'s ``deadline``: when it is, the estimated finish, whether it is
        reachable (null until estimated; a finished task: whether it was met)."""
        if task.deadline is None:
            return None
        best_effort = task.spec.deadline_best_effort
        if task.final:
            met = task.state == "done" and (task.finished or math.inf) <= task.deadline
            return {
                "at": task.deadline,
                "estimated_finish": task.finished,
                "reachable": met,
                "best_effort": best_effort,
            }
        finish = self._outlook.get(task.id)
        if finish is not None and math.isnan(finish):
            finish = None
        return {
            "at": task.deadline,
            "estimated_finish": None if finish is None or math.isinf(finish) else finish,
            "reachable": None if finish is None else finish <= task.deadline,
            "best_effort": best_effort,
        }
