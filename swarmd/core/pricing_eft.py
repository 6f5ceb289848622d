"""Earliest finish with the work a node already holds, and look-ahead (sans-I/O).

:func:`swarmd.core.pricing.price` estimates a subtask's finish on each node as ``wait +
rtt + run``. With workers that hold a short queue (``[node] max_queue``) the wait is the
work queued ahead of it there, which the coordinator knows for its own dispatches: what
each attempt was estimated to run and when it was sent. This module turns that into
``PeerCapacity.free_in_s`` — seconds until each of the node's slots can start new work
— by list scheduling the held attempts in the order they were sent, the way the worker
runs them:

* every slot is free at first; each attempt, oldest first, takes the slot that frees
  first, starts no earlier than its inputs arrive (sent + ``input_s``), and holds the
  slot for its run estimate;
* an attempt that should have ended by now has overrun its estimate; it is taken to need
  half as long again as it has overrun so far (``OVERRUN``), which keeps a long task
  with a wrong estimate from looking as if it were about to finish, without giving up
  on a node whose task is only a little late (as taking it to run as long again as it
  has run would; measured on bench.scheduling's unrelated machines: 1.304 against 1.317
  of HEFT's makespan on a fifth of the grid);
* attempts of other coordinators (counted in ``slots_busy``, estimates unknown) each
  hold a slot for ``queue_slot_wait_s``.

After each dispatch in a pass, :func:`after_dispatch` adds the new attempt to the
winner's ``free_in_s``, so the next subtask sees that node busier.

Look-ahead (EFT): a node whose queue is full is not a candidate now, but pricing still
estimates when the subtask would finish there if it waited in the coordinator's queue
for a slot (``Candidate.later_s``). When that beats every node free now by more than
``PricingConfig.lookahead_margin`` and the node frees within ``lookahead_max_s``, the
placement names it (``Placement.wait_for``) and the schedule pass holds the subtask
instead of dispatching it (:mod:`swarmd.core.tasks.scheduler`), for at most
``lookahead_max_s`` in all.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable
from typing import Final, NamedTuple

__all__ = ["OVERRUN", "Held", "after_dispatch", "free_in"]

OVERRUN: Final = 0.5  # an overrunning attempt's remaining time, per second overrun so far


class Held(NamedTuple):
    """One attempt a node holds, as the coordinator estimated it when it sent it."""

    sent: float  # when it was dispatched (the clock of ``now``)
    run_s: float  # its run estimate on that node
    input_s: float = 0.0  # its inputs were to arrive this long after it was sent


def _finite(value: float) -> float:
    return value if value > 0.0 and value != math.inf else 0.0  # NaN > 0 is False


def free_in(
    slots: int,
    held: Iterable[Held],
    now: float,
    *,
    others: int = 0,
    other_s: float = 0.0,
) -> tuple[float, ...]:
    """Seconds from ``now`` until each of ``slots`` slots can start new work, sorted."""
    if slots <= 0:
        return ()
    ends = [-math.inf] * slots
    for _ in range(max(0, others)):
        heapq.heapreplace(ends, max(ends[0], 0.0) + _finite(other_s))
    for sent_at, run_s, input_s in sorted(held):  # in the order sent
        sent = sent_at - now if math.isfinite(sent_at) else 0.0
        ready = sent + input_s if input_s > 0.0 and input_s != math.inf else sent
        start = ends[0] if ends[0] > ready else ready
        end = start + (run_s if run_s > 0.0 and run_s != math.inf else 0.0)
        if end < 0.0:  # overran its estimate: half as long again as it has overrun
            end = -end * OVERRUN
        heapq.heapreplace(ends, end)
    return tuple(sorted(e if e > 0.0 else 0.0 for e in ends))


def after_dispatch(
    free: tuple[float, ...], run_s: float, input_s: float = 0.0
) -> tuple[float, ...]:
    """``free`` after one more attempt, sent now, on the slot that frees first."""
    if not free:
        return free
    end = max(free[0], _finite(input_s)) + _finite(run_s)
    rest = list(free[1:])
    bisect.insort(rest, end)
    return tuple(rest)
