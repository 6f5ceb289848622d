"""Tasks in the asyncio shell: this node as coordinator, and this node as worker.

The coordinator side drives :class:`swarmd.core.tasks.Coordinator` (sans-I/O) and
executes its effects in order: journal records in one SQLite transaction first, then
the messages (dispatch, cancel, result acknowledgements). The worker side accepts or
refuses dispatches by free slots, runs the executor, reports progress well within
the lease, and keeps each finished result in its SQLite outbox, re-sending it until
the coordinator acknowledges it — across its own restarts too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import codec
from protocol.messages import (
    AttemptResult,
    CancelAttempt,
    Dispatch,
    DispatchReply,
    Message,
    NodeRef,
    Progress,
    ResultAck,
)

from .core import tasks as core
from .core import template
from .core.jobspec import JobSpec, SubtaskSpec
from .core.pricing import PeerCapacity, PricingConfig
from .executors import ExecRequest, ExecResult, Limits, execute
from .store import Store

RESEND_S = 2.0
Send = Callable[[str, Message], bool]  # (node address, message) -> queued?


class Clock:
    """Wall-clock seconds that never go backwards: epoch at start + monotonic since.

    Journaled times stay meaningful across restarts (epoch seconds), and a clock
    step while running cannot expire every lease at once.
    """

    def __init__(self) -> None:
        self._wall0, self._mono0 = time.time(), time.monotonic()

    def __call__(self) -> float:
        return self._wall0 + time.monotonic() - self._mono0


def spec_to_wire(spec: SubtaskSpec) -> dict[str, Any]:
    """What a worker needs of a (rendered) subtask spec."""
    return {
        "id": spec.id,
        "kind": spec.kind,
        "run": list(spec.run),
        "env": dict(spec.env),
        "timeout_s": spec.timeout_s,
        "outputs": list(spec.outputs),
        "prompt": spec.prompt,
        "system": spec.system,
        "max_tokens": spec.max_tokens,
        "call": spec.call,
        "args": list(spec.args),
        "kwargs": dict(spec.kwargs),
    }


def files_for(spec: SubtaskSpec, files: Mapping[str, bytes]) -> dict[str, bytes]:
    """The shipped files under the subtask's ``inputs`` (a file or a directory)."""
    out = {}
    for wanted in spec.inputs:
        prefix = wanted.rstrip("/")
        for path, data in files.items():
            if path == prefix or path.startswith(prefix + "/"):
                out[path] = data
    return out


def render_files(
    files: Mapping[str, bytes], upstream: Mapping[str, Mapping[str, Any]]
) -> dict[str, bytes]:
    """``{{ ID.stdout }}`` in text input files, from the upstream results."""
    if not upstream:
        return dict(files)
    out = {}
    for path, data in files.items():
        try:
            text = data.decode()
        except UnicodeDecodeError:
            out[path] = data
            continue
        if "{{" in text:
            with contextlib.suppress(KeyError):
                text = template.render(text, upstream)
        out[path] = text.encode()
    return out


# ---------------------------------------------------------------- coordinator side


class Coordination:
    def __init__(
        self,
        *,
        node_id: str,
        node_name: str,
        store: Store,
        send: Send,
        address_of: Callable[[str], str | None],
        peers: Callable[[dict[str, core.NodeLoad]], Sequence[PeerCapacity]],
        me: Callable[[], NodeRef],
        clock: Clock,
        log: logging.Logger,
        config: core.CoordinatorConfig | None = None,
    ) -> None:
        self.node_id = node_id
        self.me = me  # who we are on the wire (the dispatch's coordinator)
        self.store = store
        self.send = send
        self.address_of = address_of
        self.peers = peers
        self.clock = clock
        self.log = log
        self.coordinator = core.Coordinator(
            node_id=node_id,
            node_name=node_name,
            config=config or core.CoordinatorConfig(),
            # Workers refuse when their slots are full (they do not queue), so a full
            # peer is not a candidate: dispatching to it would only earn a refusal.
            pricing=PricingConfig(max_queue=0),
        )
        self._inputs: dict[str, dict[str, bytes]] = {}
        self._finished: dict[str, asyncio.Event] = {}
        self._wake = asyncio.Event()
        self.journal_writes = 0
        # Metrics: seconds from sending a Dispatch to its "accepted" (None: not measured).
        self.on_dispatch_latency: Callable[[float], None] | None = None
        self._dispatched_at: dict[tuple[str, str, int], float] = {}

    @property
    def counters(self) -> Counter[str]:
        return self.coordinator.counters

    def restore(self) -> int:
        records = [core.Journal(kind, data) for kind, data in self.store.journal()]
        if not records:
            return 0
        self.run(self.coordinator.restore(records, self.clock()))
        count = len(self.coordinator.task_ids())
        self.log.info("resumed %d task(s) from the journal", count)
        self.wake()
        return count

    def new_task_id(self) -> str:
        return f"{self.node_id[:6]}-{secrets.token_hex(5)}"

    def submit(self, job: JobSpec, files: Mapping[str, bytes]) -> str:
        task_id = self.new_task_id()
        if files:
            self.store.put_inputs(task_id, files)
            self._inputs[task_id] = dict(files)
        self.run(self.coordinator.submit(task_id, job, self.clock()))
        self.log.info("task %s (%s): %d subtask(s)", task_id, job.name, len(job.subtasks))
        self.wake()
        return task_id

    def wake(self) -> None:
        self._wake.set()

    async def loop(self) -> None:
        """Price ready work and expire leases; wake early on news."""
        while True:
            now = self.clock()
            self._expire(now)
            effects = self.coordinator.tick(now)
            loads = self.coordinator.load_by_node()
            effects += self.coordinator.schedule(self.peers(loads), now)
            self.run(effects)
            wakeup = self.coordinator.next_wakeup(self.clock())
            delay = 0.5 if wakeup is None else min(0.5, max(0.01, wakeup - self.clock()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def run(self, effects: Sequence[core.Effect]) -> None:
        """Journal first (one transaction), then messages."""
        journal = [e for e in effects if isinstance(e, core.Journal)]
        if journal:
            self.journal_writes += self.store.write_journal(
                (e.kind, *e.key[1:], e.data) for e in journal
            )
        for effect in effects:
            if isinstance(effect, core.Dispatch):
                self._dispatch(effect)
            elif isinstance(effect, core.CancelAttempt):
                self._to(
                    effect.node_id,
                    CancelAttempt(
                        task=effect.task_id, subtask=effect.subtask_id, attempt=effect.attempt
                    ),
                )
            elif isinstance(effect, core.Ack):
                self._to(
                    effect.node_id,
                    ResultAck(
                        task=effect.task_id,
                        subtask=effect.subtask_id,
                        attempt=effect.attempt,
                        committed=effect.committed,
                    ),
                )
            elif isinstance(effect, core.TaskFinished):
                self.log.info("task %s %s", effect.task_id, effect.state)
                self._finished.setdefault(effect.task_id, asyncio.Event()).set()

    def _to(self, node_id: str, message: Message) -> bool:
        addr = self.address_of(node_id)
        return addr is not None and self.send(addr, message)

    def _task_files(self, task_id: str) -> dict[str, bytes]:
        if task_id not in self._inputs:
            self._inputs[task_id] = self.store.inputs(task_id)
        return self._inputs[task_id]

    def _dispatch(self, d: core.Dispatch) -> None:
        files = render_files(files_for(d.spec, self._task_files(d.task_id)), d.upstream)
        me = self.me()
        message = Dispatch(
            task=d.task_id,
            subtask=d.subtask_id,
            attempt=d.attempt,
            coordinator=me,
            lease_s=d.lease_s,
            spec=spec_to_wire(d.spec),
            inputs=files,
            model=d.model,
        )
        if self.on_dispatch_latency is not None:
            self._dispatched_at[(d.task_id, d.subtask_id, d.attempt)] = time.monotonic()
            while len(self._dispatched_at) > 4096:  # replies that never came
                del self._dispatched_at[next(iter(self._dispatched_at))]
        if not self._to(d.node_id, message):
            now = self.clock()
            self.run(
                self.coordinator.on_refused(
                    d.task_id, d.subtask_id, d.attempt, d.node_id, "not reachable", now
                )
            )

    # ------------------------------------------------------------ worker messages

    def on_message(self, message: Message) -> None:
        now = self.clock()
        c = self.coordinator
        if isinstance(message, DispatchReply):
            node = self._sender_of(message.task, message.subtask, message.attempt)
            if node is None:
                return
            sent = self._dispatched_at.pop((message.task, message.subtask, message.attempt), None)
            if message.accepted and sent is not None and self.on_dispatch_latency is not None:
                self.on_dispatch_latency(time.monotonic() - sent)
            if message.accepted:
                self.run(c.on_accepted(message.task, message.subtask, message.attempt, node, now))
            else:
                self.run(
                    c.on_refused(
                        message.task, message.subtask, message.attempt, node, message.reason, now
                    )
                )
                self.wake()
        elif isinstance(message, Progress):
            self.run(
                c.on_progress(message.task, message.subtask, message.attempt, message.node, now)
            )
        elif isinstance(message, AttemptResult):
            self._on_result(message, now)

    def _sender_of(self, task: str, subtask: str, attempt: int) -> str | None:
        with contextlib.suppress(KeyError):
            rec = self.coordinator.record(task).subtasks[subtask]
            for a in rec.attempts:
                if a.number == attempt:
                    return a.node_id
            current = rec.current
            if current is not None and current.number == attempt:
                return current.node_id
        self.counters["stale_messages"] += 1
        return None

    def _on_result(self, m: AttemptResult, now: float) -> None:
        usage = m.usage or {}
        result = core.Result(
            exit_code=m.exit_code,
            stdout=m.stdout,
            stderr=m.stderr,
            output=m.output,
            usage=m.usage,
            artifacts=tuple(sorted(m.artifacts)),
            error=m.error,
            app_failed=m.app_failed,
            duration_s=usage.get("seconds"),
            latency_s=usage.get("ttft_s"),
        )
        effects = self.coordinator.on_result(m.task, m.subtask, m.attempt, m.node, result, now)
        committed = any(
            isinstance(e, core.Ack) and e.committed and e.attempt == m.attempt for e in effects
        )
        if committed and m.artifacts:
            self.store.put_artifacts(m.task, m.subtask, m.artifacts)
        if not any(isinstance(e, core.Ack) for e in effects):
            # Unknown task (forgotten) or a duplicate: still let the worker clear it.
            effects.append(core.Ack(m.task, m.subtask, m.attempt, m.node, False))
        self.run(effects)
        self.wake()

    def on_peer_gone(self, node_id: str) -> None:
        self.run(self.coordinator.on_peer_dead(node_id, self.clock()))
        self.wake()

    async def wait_finished(self, task_id: str, timeout: float) -> None:
        event = self._finished.setdefault(task_id, asyncio.Event())
        await asyncio.wait_for(event.wait(), timeout)

    # ------------------------------------------------------------ retention

    _next_sweep: float = 0.0  # when the next sweep for aged-out tasks is due

    def _expire(self, now: float) -> None:
        """Forget the finished tasks the retention policy lets go (one bounded batch):
        every ``interval_s``, at once when more than ``keep_tasks`` (or subtasks than
        ``keep_subtasks``) are held, and again on the next turn while it finds some.
        Their files, events and dispatch timings go with them."""
        c = self.coordinator
        policy = c.config.retention
        if now < self._next_sweep and not policy.over_cap(*c.finished_count()):
            return
        effects = c.expire(now)
        gone = {str(e.data["task"]) for e in effects if isinstance(e, core.Journal)}
        self._next_sweep = now if gone else now + policy.interval_s
        if not gone:
            return
        self.run(effects)
        for task_id in gone:
            self._inputs.pop(task_id, None)
            self._finished.pop(task_id, None)
        for key in [k for k in self._dispatched_at if k[0] in gone]:
            del self._dispatched_at[key]
        self.log.debug("forgot %d finished task(s)", len(gone))
        self.wake()


# ---------------------------------------------------------------- worker side


@dataclass
class _Running:
    dispatch: Dispatch
    task: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.monotonic)
    cancelled: bool = False  # by its coordinator (else: this worker is shutting down)


class Worker:
    def __init__(
        self,
        *,
        node_id: str,
        store: Store,
        send: Send,
        workdir_root: Path,
        slots: int,
        allow_shell: bool,
        models: Mapping[str, tuple[str, str, int]],  # profile -> (endpoint, model, max)
        log: logging.Logger,
        limits: Limits | None = None,
    ) -> None:
        self.node_id = node_id
        self.store = store
        self.send = send
        self.workdir_root = workdir_root
        self.slots = slots
        self.allow_shell = allow_shell
        self.models = models
        self.log = log
        self.limits = limits or Limits()
        self.running: dict[tuple[str, str, int], _Running] = {}
        self.counters: Counter[str] = Counter()
        self._pool: Any = None
        self.draining = False  # refuse new dispatches; running attempts finish

    @property
    def busy(self) -> int:
        return sum(1 for r in self.running.values() if r.dispatch.spec.get("kind") != "llm")

    def _full(self, d: Dispatch) -> str | None:
        if d.spec.get("kind") == "llm":
            profile = self.models.get(d.model or "")
            if profile is None:
                return f"no model profile {d.model!r} on this node"
            in_use = sum(1 for r in self.running.values() if r.dispatch.model == d.model)
            return "model busy" if in_use >= profile[2] else None
        return "all slots busy" if self.busy >= self.slots else None

    def on_dispatch(self, d: Dispatch) -> None:
        key = (d.task, d.subtask, d.attempt)
        if key in self.running:
            self._reply(d, True)  # a duplicate: still accepted
            return
        reason = "draining" if self.draining else self._full(d)
        if reason is not None:
            self.counters["refused"] += 1
            self._reply(d, False, reason)
            return
        run = _Running(d)
        self.running[key] = run
        run.task = asyncio.ensure_future(self._run(run))
        self.counters["accepted"] += 1
        self._reply(d, True)

    def _reply(self, d: Dispatch, accepted: bool, reason: str = "") -> None:
        self.send(
            d.coordinator.addr,
            DispatchReply(
                task=d.task, subtask=d.subtask, attempt=d.attempt, accepted=accepted, reason=reason
            ),
        )

    def on_cancel(self, m: CancelAttempt) -> None:
        run = self.running.get((m.task, m.subtask, m.attempt))
        if run is not None and run.task is not None:
            self.counters["cancelled"] += 1
            run.cancelled = True
            run.task.cancel()

    def on_ack(self, m: ResultAck) -> None:
        self.store.drop_outbox(m.task, m.subtask, m.attempt)
        self.counters["acked"] += 1

    def _request(self, d: Dispatch) -> ExecRequest:
        s = d.spec
        endpoint = model = None
        if s.get("kind") == "llm" and d.model in self.models:
            endpoint, model, _ = self.models[d.model]
        return ExecRequest(
            task_id=d.task,
            subtask_id=d.subtask,
            attempt=d.attempt,
            kind=s.get("kind", "shell"),
            run=tuple(s.get("run") or ()),
            env=dict(s.get("env") or {}),
            timeout_s=s.get("timeout_s"),
            inputs=d.inputs,
            outputs=tuple(s.get("outputs") or ()),
            prompt=s.get("prompt"),
            system=s.get("system"),
            max_tokens=int(s.get("max_tokens") or 256),
            endpoint=endpoint,
            model=model,
            call=s.get("call"),
            args=tuple(s.get("args") or ()),
            kwargs=dict(s.get("kwargs") or {}),
        )

    async def _run(self, run: _Running) -> None:
        d = run.dispatch
        key = (d.task, d.subtask, d.attempt)
        beat = asyncio.ensure_future(self._progress(d))
        try:
            result = await execute(
                self._request(d),
                workdir_root=self.workdir_root,
                allow_shell=self.allow_shell,
                limits=self.limits,
                pool=await self._python_pool() if d.spec.get("kind") == "python" else None,
            )
        except asyncio.CancelledError:
            # Still report how it ended: the coordinator fences it off if it moved on,
            # and on shutdown it re-dispatches at once instead of waiting for the lease.
            why = "cancelled by the coordinator" if run.cancelled else "worker shutting down"
            self.counters["outcome_cancelled" if run.cancelled else "outcome_handed_back"] += 1
            self.log.info("attempt %s/%s#%d: %s", d.task, d.subtask, d.attempt, why)
            result = ExecResult.failure(why, app_failed=False)
        except Exception as exc:  # an executor bug must not lose the attempt
            self.log.exception("executor failed")
            result = ExecResult.failure(f"executor error: {exc}", app_failed=False)
            self.counters["outcome_error"] += 1
        else:
            outcome = "ok" if result.ok else "app_failed" if result.app_failed else "error"
            self.counters[f"outcome_{outcome}"] += 1
        finally:
            beat.cancel()
            self.running.pop(key, None)
        self._finish(d, result)

    def _finish(self, d: Dispatch, r: ExecResult) -> None:
        usage = dict(r.usage or {})
        usage.setdefault("seconds", r.seconds)
        message = AttemptResult(
            task=d.task,
            subtask=d.subtask,
            attempt=d.attempt,
            node=self.node_id,
            exit_code=r.exit_code,
            stdout=r.stdout,
            stderr=r.stderr,
            output=r.output,
            usage=usage,
            artifacts=dict(r.artifacts),
            error=r.error,
            app_failed=r.app_failed,
        )
        encoded = codec.encode(message)
        self.store.put_outbox(d.task, d.subtask, d.attempt, d.coordinator.addr, encoded)
        self.counters["finished"] += 1
        self.send(d.coordinator.addr, message)

    async def _progress(self, d: Dispatch) -> None:
        every = max(0.2, d.lease_s / 3)
        while True:
            await asyncio.sleep(every)
            self.send(
                d.coordinator.addr,
                Progress(task=d.task, subtask=d.subtask, attempt=d.attempt, node=self.node_id),
            )

    async def _python_pool(self) -> Any:
        if self._pool is None:
            from .executors.python import PythonPool

            self._pool = PythonPool(max_workers=max(1, self.slots))
        return self._pool

    async def resend_loop(self) -> None:
        """Unacknowledged results go out again until their coordinator says so (at once
        after a restart: the coordinator may be waiting for them)."""
        while True:
            for addr, encoded in self.store.outbox():
                try:
                    message = codec.decode(encoded)
                except codec.ProtocolError:
                    continue
                self.counters["resent"] += 1
                self.send(addr, message)
            await asyncio.sleep(RESEND_S)

    async def close(self) -> None:
        tasks = [run.task for run in self.running.values() if run.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._pool is not None:
            with contextlib.suppress(Exception):
                close = self._pool.close()
                if asyncio.iscoroutine(close):
                    await asyncio.wait_for(close, 5)
