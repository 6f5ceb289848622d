"""The node's llm usage in the shell: the book (:mod:`swarmd.core.usage`) wired to the
peer view for prices, gossip for cluster-wide budgets, the control API for
``swarmctl usage``, and Prometheus.

- **Budgets** (``[gateway] budget``): :meth:`Usage.check_budget` is the gateway's one
  call before it submits a request — None, or the message of a 429. What a key spent
  today is this node's book plus what every other node gossips in its ``spend`` key
  (its own book's per-key totals of the UTC day, published every ``PUBLISH_S``), so the
  limit holds across the cluster within a few seconds; requests already admitted when
  the limit is reached still finish (a budget can be overrun by what is in flight).
- **Cluster view**: a ``usage`` request with ``cluster`` asks every live peer for its
  book (``cluster`` false) over the peer links and sums what comes back within
  ``timeout_s``; a peer that does not answer is listed as missing, never waited on.
- **Persistence**: the book's changed rows go to SQLite with the coordinator's group
  commit (:class:`swarmd.group_commit.GroupCommit`); :meth:`Usage.load` reads them at
  start.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

import msgspec
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from protocol.messages import Message, UsageNode, UsageReply, UsageRequest, UsageRow
from protocol.state import Spend
from protocol.usage import MAX_USAGE_ROWS

from .core.budget import Budgets
from .core.failure import Liveness
from .core.gossip import Member
from .core.usage import OTHER, Dims, Tally, UsageBook, UsageConfig, day_of

PUBLISH_S: Final = 5.0  # how often the spend key and the expiry run
PRICES_S: Final = 2.0  # how long the profile prices read from gossip are reused
PRICES_MISS_S: Final = 0.1  # ... when a profile is not among them (a new one): read again
PEER_SPEND_S: Final = 1.0  # how long the peers' summed spend is reused
MAX_SPEND_KEYS: Final = 256  # clients in the gossiped spend key (most tokens first)

Send = Callable[[str, Message], bool]


class Usage:
    def __init__(
        self,
        *,
        node_id: Callable[[], str],
        name: str,
        members: Callable[[], list[Member]],
        send: Send,
        budgets: Budgets | None = None,
        clock: Callable[[], float] = time.time,
        log: logging.Logger | None = None,
        config: UsageConfig | None = None,
        counters: Counter[str] | None = None,
    ) -> None:
        self.node_id = node_id
        self.name = name
        self.members = members
        self.send = send
        self.budgets = budgets or Budgets()
        self.clock = clock
        self.log = log or logging.getLogger("swarmd.usage")
        self.book = UsageBook(config, price_of=self._price_of)
        self.counters: Counter[str] = Counter() if counters is None else counters  # the node's
        self._prices: dict[tuple[str, str], tuple[str, float]] = {}
        self._prices_at = -PRICES_S
        self._peer_spend: dict[str, tuple[int, float]] = {}
        self._peer_spend_at = -PEER_SPEND_S
        self._waiting: dict[tuple[str, str], asyncio.Future[UsageReply]] = {}

    def load(self, rows: Iterable[Any]) -> int:
        taken = self.book.load(rows, self.clock())
        if self.book.counters["bad_rows"]:
            self.log.warning("usage: %d stored row(s) unreadable", self.book.counters["bad_rows"])
        return taken

    # ------------------------------------------------------------ prices

    def _price_of(self, node_id: str, profile: str) -> tuple[str, float] | None:
        """The serving profile's upstream model and cost_per_mtok, as it gossips them."""
        now = time.monotonic()
        age = now - self._prices_at
        if age >= PRICES_S or (age >= PRICES_MISS_S and (node_id, profile) not in self._prices):
            self._prices_at = now
            self._prices = dict(_prices(self.members()))
        return self._prices.get((node_id, profile))

    # ------------------------------------------------------------ budgets

    def check_budget(self, key_id: str) -> str | None:
        """Why the API key with this id may not spend more today (its daily budget is
        used up, summed over the cluster), or None. The gateway answers 429 with it."""
        if not self.budgets or key_id not in self.budgets.by_key_id:
            return None
        now = self.clock()
        tokens, cost = self.spent_today(key_id, now)
        return self.budgets.refusal(key_id, tokens, cost, now)

    def spent_today(self, key_id: str, now: float) -> tuple[int, float]:
        """What the key spent today (UTC): this node's book and the peers' ``spend``."""
        tokens, cost = self.book.spent_today(key_id, now)
        peer_tokens, peer_cost = self._peers_spend(now).get(key_id, (0, 0.0))
        return tokens + peer_tokens, cost + peer_cost

    def _peers_spend(self, now: float) -> dict[str, tuple[int, float]]:
        mono = time.monotonic()
        if mono - self._peer_spend_at < PEER_SPEND_S:
            return self._peer_spend
        self._peer_spend_at = mono
        today = day_of(now)
        sums: dict[str, tuple[int, float]] = {}
        for m in self.members():
            spend = None if m.is_self else _spend(m.state.get("spend"))
            if spend is None or spend.day != today:
                continue
            for key, (tokens, cost) in spend.keys.items():
                t, c = sums.get(key, (0, 0.0))
                sums[key] = (t + tokens, c + cost)
        self._peer_spend = sums
        return sums

    def spend_value(self, now: float) -> dict[str, Any]:
        """This node's ``spend`` key: today's per-client totals of its own book."""
        today = sorted(self.book.today(now).items(), key=lambda kv: -kv[1][0])
        keys = {k: [t, round(c, 9)] for k, (t, c) in today[:MAX_SPEND_KEYS] if k != OTHER}
        return {"day": day_of(now), "keys": keys}

    async def loop(self, publish: Callable[[str, Any], object], flush: Callable[[], None]) -> None:
        """Publish the spend key, expire old buckets and persist what that changed."""
        while True:
            now = self.clock()
            self.book.expire(now)
            publish("spend", self.spend_value(now))
            if self.book.has_pending():
                flush()
            await asyncio.sleep(PUBLISH_S)

    # ------------------------------------------------------------ the cluster view

    def local_reply(self, request: UsageRequest) -> UsageReply:
        """This node's book since ``request.since``, summed over time."""
        rows = _wire_rows(self.book.summary(request.since))
        me = UsageNode(id=self.node_id(), name=self.name)
        return UsageReply(
            ref=request.ref, since=request.since, until=self.clock(), rows=rows, nodes=[me]
        )

    async def gather(self, request: UsageRequest) -> UsageReply:
        """This node's book and every live (or suspect) peer's, summed; peers silent
        for ``timeout_s``, and dead or departed ones, are listed in ``missing``."""
        own = self.local_reply(request)
        ref = secrets.token_hex(8)
        ask = UsageRequest(since=request.since, cluster=False, timeout_s=request.timeout_s, ref=ref)
        loop = asyncio.get_running_loop()
        asked: list[tuple[Member, asyncio.Future[UsageReply]]] = []
        missing: list[UsageNode] = []
        for m in self.members():
            if m.is_self:
                continue
            if m.liveness not in (Liveness.ALIVE, Liveness.SUSPECT):
                missing.append(_node(m, m.liveness.value))  # dead or left: not asked
                continue
            addr = m.state.get("addr")
            if not isinstance(addr, str) or not self.send(addr, ask):
                missing.append(_node(m, "not reachable"))
                continue
            future: asyncio.Future[UsageReply] = loop.create_future()
            self._waiting[(ref, m.node_id)] = future
            asked.append((m, future))
        try:
            if asked:
                await asyncio.wait([f for _, f in asked], timeout=request.timeout_s)
        finally:
            for m, _ in asked:
                self._waiting.pop((ref, m.node_id), None)
        replies, nodes = [own], list(own.nodes)
        for m, future in asked:
            if future.done():
                replies.append(future.result())
                nodes.append(_node(m))
            else:
                missing.append(_node(m, f"no answer within {request.timeout_s:g} s"))
                self.counters["usage_peer_timeouts"] += 1
        rows = _wire_rows(_sum(replies))
        return UsageReply(
            since=request.since, until=own.until, rows=rows, nodes=nodes, missing=missing
        )

    def on_reply(self, sender: str | None, reply: UsageReply) -> None:
        """A peer's answer on our link to it (``sender``: the node at that address)."""
        future = self._waiting.get((reply.ref, sender or ""))
        if future is None or future.done():
            self.counters["usage_replies_unexpected"] += 1  # late, or never asked
            return
        future.set_result(reply)


# ---------------------------------------------------------------- helpers


def _prices(members: list[Member]) -> Iterator[tuple[tuple[str, str], tuple[str, float]]]:
    for m in members:
        for raw in m.state.get("models") or ():
            if isinstance(raw, dict) and isinstance(raw.get("name"), str):
                cost = raw.get("cost_per_mtok")
                ok = isinstance(cost, int | float) and not isinstance(cost, bool) and cost >= 0
                yield (m.node_id, raw["name"]), (str(raw.get("model") or ""), cost if ok else 0.0)


def _spend(value: Any) -> Spend | None:
    if value is None:
        return None
    try:
        return msgspec.convert(value, Spend)
    except msgspec.ValidationError:
        return None


def _node(m: Member, why: str = "") -> UsageNode:
    name = m.state.get("name")
    return UsageNode(id=m.node_id, name=name if isinstance(name, str) else m.node_id, why=why)


def _sum(replies: list[UsageReply]) -> dict[Dims, Tally]:
    out: dict[Dims, Tally] = {}
    for reply in replies:
        for r in reply.rows:
            tally = Tally(r.requests, r.errors, r.tokens_in, r.tokens_out, r.cost, r.node_name)
            out.setdefault((r.profile, r.model, r.node, r.client), Tally()).add(tally)
    return out


def _wire_rows(rows: dict[Dims, Tally]) -> list[UsageRow]:
    """As wire rows, most tokens first; past MAX_USAGE_ROWS the rest is one (other)."""
    ordered = sorted(rows.items(), key=lambda kv: (-kv[1].tokens, -kv[1].requests, kv[0]))
    if len(ordered) > MAX_USAGE_ROWS:
        rest = Tally(node_name=OTHER)
        for _, tally in ordered[MAX_USAGE_ROWS - 1 :]:
            rest.add(tally)
        rest.node_name = OTHER
        ordered = [*ordered[: MAX_USAGE_ROWS - 1], ((OTHER, OTHER, OTHER, OTHER), rest)]
    return [
        UsageRow(
            profile=p[:128],
            model=model[:128],
            node=node[:128],
            node_name=t.node_name[:128],
            client=client[:128],
            requests=t.requests,
            errors=t.errors,
            tokens_in=t.tokens_in,
            tokens_out=t.tokens_out,
            cost=max(0.0, t.cost),
        )
        for (p, model, node, client), t in ordered
    ]


class UsageCollector(Collector):
    """Prometheus counters of this node's book since the process started, labelled
    by upstream model, profile, serving node (name) and client key id (at most
    ``UsageConfig.max_series`` label sets; past it, ``(other)``)."""

    LABELS: Final = ["model", "profile", "node", "client"]

    def __init__(self, usage: Usage) -> None:
        self.usage = usage

    def collect(self) -> Iterator[Metric]:
        help_ = " of llm requests this node coordinated (since it started)."
        requests = CounterMetricFamily("swarmd_llm_requests", "Results" + help_, labels=self.LABELS)
        errors = CounterMetricFamily(
            "swarmd_llm_errors", "Failed results" + help_, labels=self.LABELS
        )
        tokens = CounterMetricFamily(
            "swarmd_llm_tokens",
            "Tokens in (prompt) and out (completion)" + help_,
            labels=[*self.LABELS, "direction"],
        )
        cost = CounterMetricFamily(
            "swarmd_llm_cost", "Cost (cost_per_mtok x tokens / 1e6)" + help_, labels=self.LABELS
        )
        for (profile, model, node, client), t in sorted(self.usage.book.totals.items()):
            labels = [model, profile, node, client]
            requests.add_metric(labels, t.requests)
            errors.add_metric(labels, t.errors)
            tokens.add_metric([*labels, "in"], t.tokens_in)
            tokens.add_metric([*labels, "out"], t.tokens_out)
            cost.add_metric(labels, t.cost)
        yield from (requests, errors, tokens, cost)
