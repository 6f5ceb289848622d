"""Prometheus metrics of one node, read from its live state when scraped.

Each node has its own :class:`~prometheus_client.CollectorRegistry` (never the
process-global one: several nodes in one process must not collide). It holds

* :class:`NodeCollector`, which reads the node at scrape time: peers by state, the
  coordinator's subtasks by state, re-dispatches, fenced (stale) results, dropped
  messages by reason, worker attempts by outcome, model latency, GPU VRAM;
* the dispatch latency histogram, observed by :class:`~swarmd.work.Coordination` when a
  worker first answers a dispatch: its start, or its result (``on_dispatch_latency``);
* the standard process collector (CPU seconds, RSS, open fds of this process).

Nothing here changes the node; a scrape costs one pass over members and tasks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol, get_args

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__
from .core.failure import Liveness
from .core.gossip import Member
from .core.presence import PAUSE_REASONS
from .core.tasks import SubtaskState, TaskState
from .usage import UsageCollector
from .work import Coordination
from .worker import Worker

# What generate_latest writes (names here are all legacy-valid, no escaping needed).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Dispatch -> the worker says it started: one network round trip plus its bookkeeping.
DISPATCH_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    float("inf"),
)
# Worker attempt outcomes, disjoint: a dispatch is refused, or accepted and then ends
# in exactly one of the others (``swarmd_worker_running`` holds the ones not ended yet).
WORKER_OUTCOMES = ("refused", "ok", "app_failed", "error", "cancelled", "handed_back")


def is_dropped(counter: str) -> bool:
    """Node counters that count a message dropped on receipt (or a peer refused)."""
    return counter.startswith(("dropped_", "handshake_failed")) or counter == "zap_denied"


class MetricsNode(Protocol):
    """What the metrics read from the running node."""

    counters: Counter[str]
    coordination: Coordination
    worker: Worker
    draining: bool
    paused: str | None  # battery | user-active | draining | disk-full

    @property
    def node_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    def members(self) -> list[Member]: ...


class NodeCollector(Collector):
    def __init__(self, node: MetricsNode) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        yield from self._node()
        yield from self._tasks()
        yield from self._messages()
        yield from self._worker()
        yield from self._hardware()

    def _node(self) -> Iterator[Metric]:
        node = self.node
        yield InfoMetricFamily(
            "swarmd",
            "This node: id, name and swarmd version.",
            value={"node": node.node_id, "name": node.name, "version": __version__},
        )
        yield GaugeMetricFamily(
            "swarmd_draining", "1 while this node takes no new work.", value=int(node.draining)
        )
        paused = GaugeMetricFamily(
            "swarmd_paused",
            "1 for the reason this node takes no new work now (none: all 0).",
            labels=["reason"],
        )
        for reason in PAUSE_REASONS:
            paused.add_metric([reason], int(node.paused == reason))
        yield paused
        members = node.members()
        peers = GaugeMetricFamily(
            "swarmd_peers", "Known nodes by state, this one included.", labels=["state"]
        )
        by_state = Counter(m.liveness.value for m in members)
        for liveness in Liveness:
            peers.add_metric([liveness.value], by_state[liveness.value])
        yield peers
        draining = sum(
            1 for m in members if m.liveness is Liveness.ALIVE and m.state.get("draining") is True
        )
        yield GaugeMetricFamily(
            "swarmd_peers_draining", "Alive nodes that take no new work.", value=draining
        )

    def _tasks(self) -> Iterator[Metric]:
        c = self.node.coordination.coordinator
        tasks: Counter[str] = Counter()
        subtasks: Counter[str] = Counter()
        for task_id in c.task_ids():
            record = c.record(task_id)
            tasks[record.state] += 1
            subtasks.update(s.state for s in record.subtasks.values())
        tasks_family = GaugeMetricFamily(
            "swarmd_tasks", "Tasks this node coordinates, by state.", labels=["state"]
        )
        for state in get_args(TaskState):
            tasks_family.add_metric([state], tasks[state])
        yield tasks_family
        subtasks_family = GaugeMetricFamily(
            "swarmd_subtasks",
            "Subtasks of the tasks this node coordinates, by state.",
            labels=["state"],
        )
        for state in get_args(SubtaskState):
            subtasks_family.add_metric([state], subtasks[state])
        yield subtasks_family

        counters = c.counters
        yield CounterMetricFamily(
            "swarmd_redispatches",
            "Subtasks dispatched again after a failed or lost attempt.",
            value=counters["redispatched"],
        )
        yield CounterMetricFamily(
            "swarmd_fenced_results",
            "Results of attempts that were no longer current: fenced off, not committed.",
            value=counters["stale_results"],
        )

    def _messages(self) -> Iterator[Metric]:
        node = self.node
        dropped = CounterMetricFamily(
            "swarmd_dropped_messages",
            "Messages dropped on receipt (and connections refused), by reason.",
            labels=["reason"],
        )
        for key, value in sorted(node.counters.items()):
            if is_dropped(key):
                dropped.add_metric([key.removeprefix("dropped_")], value)
        yield dropped
        yield CounterMetricFamily(
            "swarmd_messages_received", "Messages received.", value=node.counters["received"]
        )

    def _worker(self) -> Iterator[Metric]:
        worker = self.node.worker
        attempts = CounterMetricFamily(
            "swarmd_worker_attempts",
            "Dispatches this node refused, and attempts it ran, by how they ended.",
            labels=["outcome"],
        )
        for outcome in WORKER_OUTCOMES:
            key = "refused" if outcome == "refused" else f"outcome_{outcome}"
            attempts.add_metric([outcome], worker.counters[key])
        yield attempts
        yield GaugeMetricFamily(
            "swarmd_worker_running", "Attempts running on this node.", value=len(worker.running)
        )

    def _hardware(self) -> Iterator[Metric]:
        node = self.node
        latency = GaugeMetricFamily(
            "swarmd_model_latency_seconds",
            "Measured latency of a 1-token completion per local model profile.",
            labels=["model"],
        )
        measured: dict[str, float | None] = getattr(node, "model_latency_ms", {})
        for model, ms in sorted(measured.items()):
            if ms is not None:
                latency.add_metric([model], ms / 1000)
        yield latency

        vram = GaugeMetricFamily(
            "swarmd_gpu_vram_bytes",
            "GPU memory of this node (total and free; declared GPUs report free = total).",
            labels=["gpu", "name", "kind"],
        )
        hardware: Any = getattr(node, "hardware", None)
        for i, gpu in enumerate(getattr(hardware, "gpus", None) or []):
            vram.add_metric([str(i), gpu.name, "total"], gpu.vram_total)
            vram.add_metric([str(i), gpu.name, "free"], gpu.vram_free)
        yield vram


class NodeMetrics:
    """The registry of one node; :meth:`render` is the body of ``GET /metrics``."""

    def __init__(self, node: MetricsNode) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(node))
        ProcessCollector(registry=self.registry)
        self.dispatch_latency = Histogram(
            "swarmd_dispatch_latency_seconds",
            "Seconds from sending a dispatch to the worker's first word on it (start or result).",
            buckets=DISPATCH_BUCKETS,
            registry=self.registry,
        )
        node.coordination.on_dispatch_latency = self.dispatch_latency.observe
        self._register_usage(node)

    def _register_usage(self, node: MetricsNode) -> None:
        """swarmd_llm_requests_total, _errors_total, _tokens_total, _cost_total."""
        usage = getattr(node, "usage", None)
        if usage is not None:
            self.registry.register(UsageCollector(usage))

    def render(self) -> bytes:
        return generate_latest(self.registry)
