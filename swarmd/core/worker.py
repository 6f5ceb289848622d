"""The worker's state machine: admission, held attempts, progress, the outbox.

Sans-I/O, like the coordinator (:mod:`swarmd.core.tasks`): a :class:`WorkerCore` is fed
the coordinators' messages (``on_dispatch``, ``on_cancel``, ``on_ack``), the end of an
attempt (``on_finished``) and the time (``tick``), and returns effects for the asyncio
shell to carry out: :class:`Start` and :class:`Stop` an executor, :class:`Send` a
message, :class:`Persist` or :class:`Unpersist` a result in the durable outbox.

Admission (every dispatch, whatever the coordinator believed):

* ``shell`` and ``python`` subtasks need ``allow_shell`` (a python call such as
  ``os:system`` is a shell); they share ``slots`` running attempts, and up to
  :attr:`WorkerCore.queue_limit` more are held, queued, so a worker never idles for a
  round trip between two: ``queue`` when configured (``[node] max_queue``), else as
  much as covers ``queue_hold_s`` of its recent attempts' run time — one per slot for
  attempts of ``queue_hold_s`` or longer, up to ``queue_depth_max`` per slot for short
  ones (a slot that ran a 1 ms call is free again long before a round trip brings the
  next: a deeper queue keeps it busy, and long work is still held only one deep);
* ``llm`` subtasks need the named model profile, at most ``max_concurrency`` each;
* a draining worker takes nothing new.

A refused dispatch is answered with a refusal (``DispatchReply``); an accepted one gets
no reply: a ``Progress`` says it started (``start_notice_s`` after, if it is still
running then: a result says more) or that it waits in the queue (after at most
``queued_notice_s``), then one goes every third of its lease while it is held.
A finished attempt's result stays in the outbox, sent again with a doubling back-off
(``resend_first_s`` .. ``resend_max_s``, at most a third of the attempt's lease, as its
progress went) until its coordinator acknowledges it, across restarts too
(:meth:`WorkerCore.restore`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec

from protocol.messages import (
    AttemptResult,
    CancelAttempt,
    Dispatch,
    DispatchReply,
    NodeRef,
    Progress,
    ResultAck,
    Succession,
    TaskClaim,
)

from .succession import EpochBook
from .worker_config import SHELL_DISABLED, WorkerConfig, lacking_resources
from .worker_effects import AttemptKey, Effect, Persist, Send, Start, Stop, Unpersist
from .worker_engines import EngineJobs

__all__ = [
    "SHELL_DISABLED",
    "AttemptKey",
    "Effect",
    "Persist",
    "Send",
    "Start",
    "Stop",
    "Unpersist",
    "WorkerConfig",
    "WorkerCore",
    "key_of",
]

DONE_KEPT = 10_000  # acknowledged attempts remembered, so a late dispatch is not rerun


# ---------------------------------------------------------------- state


@dataclass(slots=True)
class _Held:
    dispatch: Dispatch
    model: str | None  # an llm attempt's profile; None: a shell/python slot
    next_beat: float
    running: bool = False
    started: float | None = None  # when it started running (shell/python)
    told: bool = False  # its coordinator heard it started
    cancelled: bool = False  # by its coordinator
    engine: str | None = None  # runs as a job of this engine, outside the slots


@dataclass(slots=True)
class _Outgoing:
    addr: str
    message: AttemptResult
    next_send: float
    backoff: float
    max_backoff: float


def key_of(m: Dispatch | CancelAttempt | ResultAck | AttemptResult) -> AttemptKey:
    return (m.task, m.subtask, m.attempt)


class WorkerCore:
    def __init__(
        self, node_id: str, config: WorkerConfig | None = None, generation: int | None = None
    ) -> None:
        self.node_id = node_id
        self.generation = generation  # this run of the node (dispatches name the one)
        self.config = config or WorkerConfig()
        self.draining = False
        self.counters: Counter[str] = Counter()
        self.held: dict[AttemptKey, _Held] = {}
        self._queued: deque[AttemptKey] = deque()  # shell/python, in arrival order
        self._running_slots = 0
        self._model_use: Counter[str] = Counter()
        self.engine_jobs = EngineJobs()
        self._run_s: float | None = None  # shell/python attempts' run time, an EWMA
        self.outbox: dict[AttemptKey, _Outgoing] = {}
        # Attempts whose result was acknowledged: a late copy of their dispatch (sent
        # again while the answer was on its way) is not run again. The last DONE_KEPT.
        self._done: dict[AttemptKey, None] = {}
        # The newest coordinator epoch known per task (a successor that adopted it):
        # dispatches of an older one are refused (swarmd/core/succession.py).
        self.epochs = EpochBook()

    # ------------------------------------------------------------ views

    @property
    def busy(self) -> int:
        """Shell/python attempts running."""
        return self._running_slots

    @property
    def queued(self) -> int:
        return len(self._queued)

    @property
    def load(self) -> int:
        """Shell/python attempts held, running or queued (what a coordinator prices)."""
        return self._running_slots + len(self._queued)

    @property
    def queue_limit(self) -> int:
        """Shell/python attempts held beyond the slots, at most, now (gossiped as
        ``queue_max``): the configured queue, else adaptive (module docstring)."""
        config = self.config
        if config.queue is not None or self._run_s is None:
            return config.queue_limit
        per_slot = int(config.queue_hold_s / max(self._run_s, 1e-6))
        return config.slots * max(1, min(config.queue_depth_max, per_slot))

    def model_use_by(self) -> dict[str, dict[str, int]]:
        """llm attempts held per model profile, per coordinating node id."""
        out: dict[str, dict[str, int]] = {}
        for held in self.held.values():
            if held.model is not None:
                by = out.setdefault(held.model, {})
                coordinator = held.dispatch.coordinator.id
                by[coordinator] = by.get(coordinator, 0) + 1
        return out

    def set_models(self, models: Mapping[str, int]) -> None:
        """The model profiles served from now on (profile -> max_concurrency): local
        servers found or gone. Attempts already held run to their end."""
        self.config = dataclasses.replace(self.config, models=dict(models))

    def running_keys(self) -> list[AttemptKey]:
        return [k for k, h in self.held.items() if h.running]

    # ------------------------------------------------------------ coordinators' messages

    def on_dispatch(self, d: Dispatch, now: float) -> list[Effect]:
        key = key_of(d)
        if key in self.held or key in self._done:
            self.counters["duplicate_dispatches"] += 1
            return []
        done = self.outbox.get(key)
        if done is not None:  # it ran already: the coordinator lacks the result
            self.counters["duplicate_dispatches"] += 1
            return [Send(done.addr, done.message)]
        fenced = self._fenced(d)
        if fenced is not None:
            return fenced
        reason = self._refusal(d)
        if reason is not None:
            self.counters["refused"] += 1
            reply = DispatchReply(
                task=d.task,
                subtask=d.subtask,
                attempt=d.attempt,
                accepted=False,
                reason=reason,
                load=self.load,
            )
            return [Send(d.coordinator.addr, reply)]
        self.counters["accepted"] += 1
        if isinstance(engine := d.spec.get("engine"), str):
            return self._hold_engine_job(d, engine, now, told=False)
        model = d.model if d.spec.get("kind") == "llm" else None
        # Queued: told soon (before its coordinator would dispatch it again), then as due.
        first = min(self._beat_every(d), self.config.queued_notice_s)
        self.held[key] = _Held(d, model, now + first)
        if model is not None:
            self._model_use[model] += 1
            return self._start(key, now)
        self._queued.append(key)
        return self._start_queued(now)

    def readopt(self, d: Dispatch, now: float) -> list[Effect]:
        """An engine attempt this node started before it restarted (its job still in
        the engine): held again and followed, as if just dispatched (no admission: it
        was admitted then)."""
        key, engine = key_of(d), d.spec.get("engine")
        if key in self.held or key in self.outbox or key in self._done:
            return []
        if not isinstance(engine, str) or engine not in self.config.engines:
            return []
        self.counters["engine_readopted"] += 1
        return self._hold_engine_job(d, engine, now, told=True)

    def _hold_engine_job(self, d: Dispatch, engine: str, now: float, told: bool) -> list[Effect]:
        key = key_of(d)
        self.held[key] = _Held(d, None, now, engine=engine, told=told)
        self.engine_jobs.held[engine] += 1
        return self._start(key, now)

    def _fenced(self, d: Dispatch) -> list[Effect] | None:
        """A dispatch of a superseded coordinator epoch: refused, and its sender told
        who coordinates the task now. Else the epoch is learnt (None)."""
        if not self.epochs.stale(d.task, d.epoch):
            self.epochs.learn(d.task, d.epoch, d.coordinator.id, d.coordinator.addr)
            return None
        self.counters["fenced_dispatches"] += 1
        known = self.epochs.get(d.task)
        assert known is not None
        epoch, node, addr = known
        reply = DispatchReply(
            task=d.task,
            subtask=d.subtask,
            attempt=d.attempt,
            accepted=False,
            reason=f"coordinator epoch {d.epoch} is superseded: {node} coordinates it "
            f"at epoch {epoch}",
            load=self.load,
        )
        claim = TaskClaim(d.task, epoch, NodeRef(node, 0, 0, addr), adopted=True)
        return [
            Send(d.coordinator.addr, reply),
            Send(d.coordinator.addr, Succession(claims=[claim])),
        ]

    def on_claim(self, claim: TaskClaim, now: float) -> list[Effect]:
        """``claim.coordinator`` took ``claim.task`` over at ``claim.epoch``: the
        attempts held of it and their results in the outbox report there from now on
        (progress and results go at once, so it re-adopts them instead of re-running)."""
        ref = claim.coordinator
        if not self.epochs.learn(claim.task, claim.epoch, ref.id, ref.addr):
            return []
        effects: list[Effect] = []
        for key, held in self.held.items():
            if key[0] != claim.task:
                continue
            held.dispatch = msgspec.structs.replace(
                held.dispatch, coordinator=ref, epoch=claim.epoch
            )
            self.counters["attempts_repointed"] += 1
            note = "running" if held.running else "queued"
            held.told = held.told or held.running
            effects.append(self._progress(held, note))
        for key, out in self.outbox.items():
            if key[0] != claim.task:
                continue
            out.addr = ref.addr
            out.next_send = now + out.backoff
            self.counters["results_repointed"] += 1
            effects += [Send(out.addr, out.message), Persist(key, out.addr, out.message)]
        return effects

    def coordinator_addr(self, key: AttemptKey) -> str | None:
        """Where the attempt's messages go now (its task may have been adopted)."""
        held = self.held.get(key)
        if held is not None:
            return held.dispatch.coordinator.addr
        out = self.outbox.get(key)
        return None if out is None else out.addr

    def _refusal(self, d: Dispatch) -> str | None:
        if d.generation is not None and self.generation not in (None, d.generation):
            return (
                f"sent to generation {d.generation} of this node, which runs generation "
                f"{self.generation} (it restarted)"
            )
        if self.draining:
            return "draining"
        kind = d.spec.get("kind", "shell")
        engine = d.spec.get("engine")
        if engine is not None:
            c = self.config
            return self.engine_jobs.refusal(c.engines, kind, engine, c.allow_shell)
        if kind == "llm":
            limit = self.config.models.get(d.model or "")
            if limit is None:
                return f"no model profile {d.model!r} on this node"
            return "model busy" if self._model_use[d.model or ""] >= limit else None
        if kind not in ("shell", "python"):
            return f"unknown subtask kind {kind!r}"
        lacking = lacking_resources(self.config, d.spec)
        if lacking is not None:
            return lacking
        if not self.config.allow_shell:
            return SHELL_DISABLED
        if self.config.slots <= 0:
            return "no shell/python slots on this node"
        if self.load >= self.config.slots + self.queue_limit:
            return "all slots busy"
        return None

    def on_cancel(self, m: CancelAttempt, now: float, by: str | None = None) -> list[Effect]:
        """``by``: the address of the node the transport proved sent it (None: not
        known); only the attempt's coordinator may cancel it."""
        key = key_of(m)
        held = self.held.get(key)
        if held is None or held.cancelled:
            return []
        if by is not None and by != held.dispatch.coordinator.addr:
            self.counters["wrong_sender"] += 1
            return []
        self.counters["cancelled"] += 1
        held.cancelled = True
        if held.running:
            return [Stop(key)]
        self._queued.remove(key)  # it never started: it ends here
        ended = self.ended_early(key, "cancelled by the coordinator")
        return self.on_finished(key, ended, now)

    def on_ack(self, m: ResultAck, by: str | None = None) -> list[Effect]:
        """``by`` as for :meth:`on_cancel`: only the coordinator the result is for can
        acknowledge it (another member could otherwise make this node drop it)."""
        key = key_of(m)
        entry = self.outbox.get(key)
        if by is not None and entry is not None and by != entry.addr:
            self.counters["wrong_sender"] += 1
            return []
        self.counters["acked"] += 1
        if self.outbox.pop(key, None) is not None:
            self._done[key] = None
            if len(self._done) > DONE_KEPT:
                del self._done[next(iter(self._done))]
        return [Unpersist(key)]  # also one from before a restart that restore missed

    # ------------------------------------------------------------ attempts

    def _beat_every(self, d: Dispatch) -> float:
        return max(self.config.min_progress_s, d.lease_s / 3)

    def _start(self, key: AttemptKey, now: float) -> list[Effect]:
        """Run it; its start is told ``start_notice_s`` later if it still runs then (a
        short attempt's result says it all, one message fewer)."""
        held = self.held[key]
        held.running = True
        held.next_beat = now + self.config.start_notice_s
        if held.model is None and held.engine is None:
            self._running_slots += 1
            held.started = now
        return [Start(key, held.dispatch)]

    def _start_queued(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        while self._queued and self._running_slots < self.config.slots:
            effects += self._start(self._queued.popleft(), now)
        return effects

    def _progress(self, held: _Held, note: str) -> Send:
        d = held.dispatch
        message = Progress(
            task=d.task,
            subtask=d.subtask,
            attempt=d.attempt,
            node=self.node_id,
            note=note,
            load=self.load,
        )
        return Send(d.coordinator.addr, message)

    def ended_early(self, key: AttemptKey, why: str) -> AttemptResult:
        """The result of an attempt that did not run to its end (not its own failure)."""
        return AttemptResult(
            task=key[0],
            subtask=key[1],
            attempt=key[2],
            node=self.node_id,
            usage={"seconds": 0.0},
            error=why,
            app_failed=False,
        )

    def was_cancelled(self, key: AttemptKey) -> bool:
        held = self.held.get(key)
        return held is not None and held.cancelled

    def on_finished(self, key: AttemptKey, result: AttemptResult, now: float) -> list[Effect]:
        """The attempt ended (ran, failed, was cancelled or handed back): keep its result
        until acknowledged, send it, and start what waits for the slot it frees."""
        held = self.held.pop(key, None)
        if held is None:
            return []
        if held.model is not None:
            self._model_use[held.model] -= 1
        elif held.engine is not None:
            self.engine_jobs.held[held.engine] -= 1
        elif held.running:
            self._running_slots -= 1
            if held.started is not None:
                self._observe_run(now - held.started)
        self.counters["finished"] += 1
        message = msgspec.structs.replace(result, node=self.node_id, load=self.load)
        addr = held.dispatch.coordinator.addr
        # Resent at least every third of the lease, as progress went while it ran: a
        # coordinator that missed the result would otherwise give the attempt up.
        longest = min(self.config.resend_max_s, self._beat_every(held.dispatch))
        first = min(self.config.resend_first_s, longest)
        self.outbox[key] = _Outgoing(addr, message, now + first, first, longest)
        # Sent first: the outbox is for resends (the coordinator may not have heard), so
        # its write need not delay the first send; a crash before it re-runs the attempt.
        effects: list[Effect] = [Send(addr, message), Persist(key, addr, message)]
        return effects + self._start_queued(now)

    def _observe_run(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        old = self._run_s
        self._run_s = seconds if old is None else old + self.config.run_alpha * (seconds - old)

    def hand_back(self, now: float) -> list[Effect]:
        """Shutting down: queued attempts end at once, running ones are stopped."""
        effects: list[Effect] = []
        while self._queued:
            key = self._queued.popleft()
            self.counters["outcome_handed_back"] += 1
            effects += self.on_finished(key, self.ended_early(key, "worker shutting down"), now)
        effects += [Stop(k) for k in self.running_keys()]
        return effects

    # ------------------------------------------------------------ time

    def tick(self, now: float) -> list[Effect]:
        """Progress for held attempts and resends of unacknowledged results, when due."""
        effects: list[Effect] = []
        for held in self.held.values():
            if held.next_beat <= now:
                held.next_beat = now + self._beat_every(held.dispatch)
                note = "queued" if not held.running else "running" if held.told else "started"
                held.told = held.told or held.running
                effects.append(self._progress(held, note))
        for out in self.outbox.values():
            if out.next_send <= now:
                self.counters["resent"] += 1
                out.backoff = min(out.max_backoff, out.backoff * 2)
                out.next_send = now + out.backoff
                effects.append(Send(out.addr, out.message))
        return effects

    def next_wakeup(self) -> float | None:
        times = [h.next_beat for h in self.held.values()]
        times += [o.next_send for o in self.outbox.values()]
        return min(times, default=None)

    def restore(self, entries: Iterable[tuple[str, AttemptResult]], now: float) -> None:
        """Unacknowledged results kept from before a restart: due at once."""
        first = self.config.resend_first_s
        for addr, message in entries:
            self.outbox[key_of(message)] = _Outgoing(
                addr, message, now, first / 2, self.config.resend_max_s
            )
