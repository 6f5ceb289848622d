"""Time: a task's deadline passing, an attempt's lease lapsing, and when the shell
should next call (:meth:`Timeouts.next_wakeup`).
"""

from __future__ import annotations

from swarmd.core.tasks.effects import Batch, Effect
from swarmd.core.tasks.lifecycle import Lifecycle


class Timeouts(Lifecycle):
    def tick(self, now: float) -> list[Effect]:
        """Fail tasks past their deadline, then lose attempts whose lease lapsed and
        dispatch again those no word has come for yet."""
        batch = Batch()
        for task in list(self._open.values()):
            if task.deadline is not None and now >= task.deadline and not task.final:
                self.counters["deadline_exceeded"] += 1
                self._stop_task(batch, task, "fail", "deadline exceeded", now)
        for key, rec in list(self._in_flight.items()):
            current = rec.current
            if current is not None and current.lease_until <= now:
                reason = f"no word for {self.config.lease_s:g} s (lease expired)"
                self._attempt_failed(batch, self._tasks[key[0]], rec, current, "lost", reason, now)
            elif current is not None and current.resend_at is not None and current.resend_at <= now:
                # Lost on the way, or adopted after a restart: ask again, not after a lease.
                current.resend_at = now + self.config.dispatch_resend_s
                self.counters["dispatch_resent"] += 1
                batch.effects.append(self._dispatch_effect(self._tasks[key[0]], rec, current))
        return self._finish(batch)

    def next_wakeup(self, now: float) -> float | None:
        """The earliest time ``tick`` or ``schedule`` has something to do without any
        new event (a lease lapses, a deadline passes, a backoff ends); None if never."""
        times: list[float] = []
        for rec in self._in_flight.values():
            current = rec.current
            if current is not None:
                times.append(current.lease_until)
                if current.resend_at is not None:
                    times.append(current.resend_at)
        times += [t.deadline for t in self._open.values() if t.deadline is not None]
        times += self._backlog.wakeups(now)
        return min(times, default=None)
