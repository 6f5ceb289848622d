"""What the control API shows of the coordinator's tasks: ``swarmctl status``,
``result``, ``explain`` and ``tasks`` (CONTRACT.md), and the load it puts on each node.
Read only.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from swarmd.core.pricing import explain_table
from swarmd.core.tasks.outlook import Outlook
from swarmd.core.tasks.records import NodeLoad, SubtaskRecord, TaskRecord
from swarmd.core.tasks.transitions import IN_FLIGHT


class Views(Outlook):
    def load_by_node(self) -> dict[str, NodeLoad]:
        """This coordinator's attempts in flight per node, for building the peer view
        (``peer_from_gossip(slots_busy=..., model_in_flight=...)``)."""
        slots: Counter[str] = Counter()
        models: dict[str, Counter[str]] = {}
        for rec in self._in_flight.values():
            current = rec.current
            if current is None:
                continue
            if rec.spec.kind == "llm" and current.model is not None:
                models.setdefault(current.node_id, Counter())[current.model] += 1
            else:
                slots[current.node_id] += 1
        nodes = set(slots) | set(models)
        return {n: NodeLoad(slots[n], dict(models.get(n, {}))) for n in sorted(nodes)}

    def task_ids(self) -> list[str]:
        return list(self._tasks)

    def open_task_ids(self) -> list[str]:
        """The unfinished tasks."""
        return list(self._open)

    def is_open(self, task_id: str) -> bool:
        """Whether ``task_id`` is an unfinished task coordinated here."""
        return task_id in self._open

    def record(self, task_id: str) -> TaskRecord:
        """The live record (read it, do not change it)."""
        return self._task(task_id)

    @staticmethod
    def _peer(rec: SubtaskRecord) -> str | None:
        return rec.attempts[-1].peer if rec.attempts else None

    @staticmethod
    def _engine(rec: SubtaskRecord) -> dict[str, Any]:
        """An engine attempt's engine and, while it runs, what the engine says."""
        last = rec.attempts[-1] if rec.attempts else None
        if last is None or last.engine is None:
            return {}
        running = not rec.final and last.state in IN_FLIGHT
        return {"engine": last.engine, "engine_note": last.engine_note if running else None}

    def status(self, task_id: str) -> dict[str, Any]:
        """``swarmctl status TASK --json`` (CONTRACT.md)."""
        task = self._task(task_id)
        return {
            "id": task.id,
            "name": task.spec.name,
            "state": task.state,
            "coordinator": self.node_name,
            "priority": task.spec.priority,
            "submitted": task.submitted,
            "finished": task.finished,
            "subtasks": [
                {
                    "id": rec.id,
                    "kind": rec.spec.kind,
                    "state": rec.state,
                    "peer": self._peer(rec),
                    "attempts": len(rec.attempts),
                    "started": rec.attempts[-1].started if rec.attempts else None,
                    "finished": rec.finished,
                    "exit_code": None if rec.result is None else rec.result.exit_code,
                    "error": rec.error,
                    **self._engine(rec),
                }
                for rec in task.subtasks.values()
            ],
            "epoch": task.epoch,  # the coordinator epoch (1 until a successor adopts it)
            "deadline": self.deadline_view(task),
        }

    def result(self, task_id: str) -> dict[str, Any]:
        """``swarmctl result TASK --json`` (CONTRACT.md)."""
        task = self._task(task_id)
        subtasks: dict[str, Any] = {}
        for rec in task.subtasks.values():
            res = rec.result
            subtasks[rec.id] = {
                "state": rec.state,
                "stdout": None if res is None else res.stdout,
                "stderr": None if res is None else res.stderr,
                "exit_code": None if res is None else res.exit_code,
                "output": None if res is None else res.output,
                "usage": None if res is None or res.usage is None else dict(res.usage),
                "artifacts": [] if res is None else list(res.artifacts),
                "peer": self._peer(rec) if res is not None else None,
            }
        return {"id": task.id, "state": task.state, "subtasks": subtasks}

    def explain(self, task_id: str) -> dict[str, Any]:
        """``swarmctl explain TASK``: per subtask the latest candidate table (winner
        first), why it is not placed if it is not, and its attempt history."""
        task = self._task(task_id)
        rows = []
        for rec in task.subtasks.values():
            last = rec.last_placement
            rows.append(
                {
                    "id": rec.id,
                    "state": rec.state,
                    "priced": rec.priced,
                    "placed": len(rec.attempts) + rec.refusals,
                    "reason": None if last is None else last.reason,
                    "candidates": [] if last is None else explain_table(last),
                    "grouped": None if rec.group is None else rec.group.to_data(),
                    "attempts": [a.to_data() for a in rec.attempts],
                    "reasons": list(rec.reasons),
                    "refusals": list(rec.refusal_notes),
                    "error": rec.error,
                }
            )
        return {
            "id": task.id,
            "name": task.spec.name,
            "state": task.state,
            "epoch": task.epoch,
            "coordinators": [dict(c) for c in task.coordinators],
            "subtasks": rows,
        }

    def tasks(self) -> list[dict[str, Any]]:
        """``swarmctl tasks``: one summary row per task, oldest first (in the order they
        were submitted, which the task dict keeps, also across a restore: no sort)."""
        return [self._summary(task) for task in self._tasks.values()]

    def summary(self, task_id: str) -> dict[str, Any]:
        """One task's row of :meth:`tasks`, plus how many subtasks are running, queued."""
        return self._summary(self._task(task_id), running=True)

    def _summary(self, task: TaskRecord, running: bool = False) -> dict[str, Any]:
        states = Counter(r.state for r in task.subtasks.values())
        row = {
            "id": task.id,
            "name": task.spec.name,
            "state": task.state,
            "priority": task.spec.priority,
            "submitted": task.submitted,
            "finished": task.finished,
            "subtasks": len(task.subtasks),
            "done": states["done"],
            "failed": states["failed"],
        }
        if running:
            row["running"] = states["running"] + states["dispatched"]
            row["queued"] = states["waiting"] + states["ready"]
        if task.deadline is not None:
            row["deadline"] = self.deadline_view(task)
        return row
