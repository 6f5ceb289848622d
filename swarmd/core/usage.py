"""The usage book a coordinating node keeps of the llm requests it coordinated.

One row per (time bucket, model profile, upstream model, serving node, client key):
requests, errors, tokens in (prompt), tokens out (completion) and cost
(``cost_per_mtok`` of the serving profile × tokens / 1e6). Fed with every result of a
current llm attempt that reaches the coordinator (:meth:`UsageBook.record_result`;
an attempt lost with its node reports nothing and is not counted).

Time buckets are UTC hours, merged into UTC days once older than ``hourly_s`` (2 days),
and dropped once older than ``retention_s`` (35 days). Memory is bounded: beyond
``max_rows`` rows a new combination is folded into one ``(other)`` row of its bucket,
and the lifetime totals behind the Prometheus counters keep at most ``max_series``
label sets the same way.

Persistence is the shell's: :meth:`UsageBook.pending` gives the rows changed (and the
rows gone) since the last :meth:`UsageBook.written`, as absolute values to upsert, so
a commit that fails is simply tried again. :meth:`UsageBook.load` reads them back.

Sans-I/O: plain values in, plain values out; ``price_of`` is a lookup the shell
provides (a node's gossiped profile: its upstream model id and ``cost_per_mtok``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

HOUR_S: Final = 3600
DAY_S: Final = 86400
NO_CLIENT: Final = "cli"  # jobs from swarmctl, MCP or a job file: no API key behind them
OTHER: Final = "(other)"  # rows (and metric series) folded together past the caps
MAX_TOKENS_PER_REQUEST: Final = 10**9  # a count above this is garbage, not usage
EXPIRE_EVERY_S: Final = 60.0

PriceOf = Callable[[str, str], "tuple[str, float] | None"]  # (node id, profile) -> (model, $/Mtok)
# The dimensions of a row, in the order they are keyed and stored.
Dims = tuple[str, str, str, str]  # (profile, model, node id, client)
# A stored row: (start, span, profile, model, node, client, node_name,
#                requests, errors, tokens_in, tokens_out, cost)
Row = tuple[int, int, str, str, str, str, str, int, int, int, int, float]


@dataclass(frozen=True, slots=True)
class UsageConfig:
    hourly_s: float = 2 * DAY_S  # hour buckets are kept this long, then merged into days
    retention_s: float = 35 * DAY_S  # buckets that ended longer ago than this are dropped
    max_rows: int = 20_000
    max_series: int = 512  # label sets of the lifetime totals (Prometheus)


@dataclass(frozen=True, slots=True, order=True)
class UsageKey:
    start: int  # bucket start, unix seconds (UTC)
    span: int  # HOUR_S or DAY_S
    dims: Dims

    @property
    def end(self) -> int:
        return self.start + self.span


@dataclass(slots=True)
class Tally:
    requests: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    node_name: str = ""  # the serving node's name as last seen (not summed)

    def add(self, other: Tally) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.cost += other.cost
        self.node_name = other.node_name or self.node_name

    @property
    def tokens(self) -> int:
        return self.tokens_in + self.tokens_out

    def to_data(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "cost": round(self.cost, 9),
        }


def bucket_start(now: float, span: int) -> int:
    return int(now // span) * span


def day_of(now: float) -> int:
    """The UTC day number (days since the epoch) of ``now``."""
    return int(now // DAY_S)


def _count(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool)
    return value if ok and 0 <= value <= MAX_TOKENS_PER_REQUEST else None


def tokens_of(usage: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """(prompt tokens, completion tokens) of an OpenAI ``usage`` map; None if it has
    neither as a sane count (a missing one of the two counts as 0)."""
    if not isinstance(usage, Mapping):
        return None
    prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    if prompt is None and completion is None:
        return None
    return prompt or 0, completion or 0


class UsageBook:
    def __init__(self, config: UsageConfig | None = None, price_of: PriceOf | None = None) -> None:
        self.config = config or UsageConfig()
        self.price_of = price_of
        self.rows: dict[UsageKey, Tally] = {}
        self.totals: dict[tuple[str, str, str, str], Tally] = {}  # lifetime, for counters
        self.counters: dict[str, int] = {"folded": 0, "bad_usage": 0, "bad_rows": 0}
        self._today: dict[str, list[float]] = {}  # client -> [tokens, cost] on day _day
        self._day = -1
        self._dirty: set[UsageKey] = set()
        self._gone: set[UsageKey] = set()
        self._next_expire = -math.inf

    # ------------------------------------------------------------ recording

    def record_result(
        self,
        now: float,
        *,
        node: str,
        node_name: str,
        profile: str,
        client: str | None,
        usage: Mapping[str, Any] | None,
        ok: bool,
    ) -> None:
        """One llm attempt's result as the coordinator took it: its tokens (if it
        reported any) are priced at the serving profile's ``cost_per_mtok``."""
        tokens = tokens_of(usage)
        if tokens is None:
            if usage:
                self.counters["bad_usage"] += 1
            tokens = (0, 0)
        priced = self.price_of(node, profile) if self.price_of is not None else None
        model, cost_per_mtok = priced if priced is not None else ("", 0.0)
        if not model and isinstance(usage, Mapping) and isinstance(usage.get("model"), str):
            model = usage["model"][:200]
        self.record(
            now,
            dims=(profile, model, node, client or NO_CLIENT),
            node_name=node_name,
            tokens_in=tokens[0],
            tokens_out=tokens[1],
            cost_per_mtok=cost_per_mtok,
            ok=ok,
        )

    def record(
        self,
        now: float,
        *,
        dims: Dims,
        node_name: str,
        tokens_in: int,
        tokens_out: int,
        cost_per_mtok: float,
        ok: bool,
    ) -> None:
        """Count one request: ``dims`` = (profile, upstream model, node id, client)."""
        if now >= self._next_expire:
            self.expire(now)
        rate = cost_per_mtok if math.isfinite(cost_per_mtok) and cost_per_mtok > 0 else 0.0
        tally = Tally(
            requests=1,
            errors=0 if ok else 1,
            tokens_in=max(0, tokens_in),
            tokens_out=max(0, tokens_out),
            cost=rate * (max(0, tokens_in) + max(0, tokens_out)) / 1e6,
            node_name=node_name,
        )
        self._add(UsageKey(bucket_start(now, HOUR_S), HOUR_S, dims), tally)
        self._series(dims, node_name).add(tally)
        today = self._today_of(now).setdefault(dims[3], [0.0, 0.0])
        today[0] += tally.tokens
        today[1] += tally.cost

    def _add(self, key: UsageKey, tally: Tally) -> None:
        row = self.rows.get(key)
        if row is None and len(self.rows) >= self.config.max_rows:
            self.counters["folded"] += 1
            key = UsageKey(key.start, key.span, (OTHER, OTHER, OTHER, OTHER))
            row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = Tally()
        row.add(tally)
        self._dirty.add(key)
        self._gone.discard(key)

    def _series(self, dims: Dims, node_name: str) -> Tally:
        profile, model, _node, client = dims
        label = (profile, model, node_name, client)
        series = self.totals.get(label)
        if series is None:
            if len(self.totals) >= self.config.max_series:
                label = (OTHER, OTHER, OTHER, OTHER)
            series = self.totals.setdefault(label, Tally())
        return series

    def _today_of(self, now: float) -> dict[str, list[float]]:
        day = day_of(now)
        if day != self._day:
            self._day = day
            self._today = {}
        return self._today

    # ------------------------------------------------------------ reading

    def spent_today(self, client: str, now: float) -> tuple[int, float]:
        """(tokens, cost) this book counted for ``client`` on today's UTC day."""
        tokens, cost = self._today_of(now).get(client, (0.0, 0.0))
        return int(tokens), cost

    def today(self, now: float) -> dict[str, tuple[int, float]]:
        """Every client's (tokens, cost) of today's UTC day."""
        return {c: (int(t), cost) for c, (t, cost) in self._today_of(now).items()}

    def summary(self, since: float) -> dict[Dims, Tally]:
        """Every bucket that ends after ``since``, summed over time per dims."""
        out: dict[Dims, Tally] = {}
        for key, tally in self.rows.items():
            if key.end > since:
                out.setdefault(key.dims, Tally()).add(tally)
        return out

    # ------------------------------------------------------------ retention

    def expire(self, now: float) -> None:
        """Merge hour buckets older than ``hourly_s`` into their day, drop buckets that
        ended before ``retention_s``; runs at most every EXPIRE_EVERY_S from record."""
        self._next_expire = now + EXPIRE_EVERY_S
        hourly_cutoff = now - self.config.hourly_s
        drop_cutoff = now - self.config.retention_s
        for key in list(self.rows):
            if key.end <= drop_cutoff:
                self._drop(key)
            elif key.span == HOUR_S and key.end <= hourly_cutoff:
                tally = self._drop(key)
                day = UsageKey(bucket_start(key.start, DAY_S), DAY_S, key.dims)
                self.rows.setdefault(day, Tally()).add(tally)
                self._dirty.add(day)
                self._gone.discard(day)

    def _drop(self, key: UsageKey) -> Tally:
        tally = self.rows.pop(key)
        self._dirty.discard(key)
        self._gone.add(key)
        return tally

    # ------------------------------------------------------------ persistence

    def pending(self) -> tuple[list[Row], list[UsageKey]]:
        """Rows changed since the last :meth:`written` (absolute values) and rows gone."""
        rows = [_row(key, self.rows[key]) for key in sorted(self._dirty)]
        return rows, sorted(self._gone)

    def has_pending(self) -> bool:
        return bool(self._dirty or self._gone)

    def written(self) -> None:
        self._dirty.clear()
        self._gone.clear()

    def load(self, rows: Iterable[Any], now: float) -> int:
        """Rows as :meth:`pending` gave them (from the store); malformed ones are
        skipped and counted. Returns how many were taken."""
        taken = 0
        for raw in rows:
            parsed = _parse_row(raw)
            if parsed is None:
                self.counters["bad_rows"] += 1
                continue
            key, tally = parsed
            self.rows.setdefault(key, Tally()).add(tally)
            if bucket_start(key.start, DAY_S) == bucket_start(now, DAY_S):
                today = self._today_of(now).setdefault(key.dims[3], [0.0, 0.0])
                today[0] += tally.tokens
                today[1] += tally.cost
            taken += 1
        self.expire(now)
        return taken


def _row(key: UsageKey, t: Tally) -> Row:
    return (
        key.start,
        key.span,
        *key.dims,
        t.node_name,
        t.requests,
        t.errors,
        t.tokens_in,
        t.tokens_out,
        t.cost,
    )


def _parse_row(raw: Any) -> tuple[UsageKey, Tally] | None:
    try:
        start, span, profile, model, node, client, name, req, err, t_in, t_out, cost = raw
    except (TypeError, ValueError):
        return None
    texts = (profile, model, node, client, name)
    counts = (start, req, err, t_in, t_out)
    if span not in (HOUR_S, DAY_S) or not all(isinstance(t, str) for t in texts):
        return None
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        return None
    if not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost < 0:
        return None
    tally = Tally(req, err, t_in, t_out, float(cost), name)
    return UsageKey(start, span, (profile, model, node, client)), tally


DIMENSIONS: Final = {"model": 1, "profile": 0, "node": 2, "key": 3}


def group(rows: Mapping[Dims, Tally], by: str) -> dict[str, Tally]:
    """``rows`` summed by ``by`` (model, profile, node or key); a node is its id."""
    index = DIMENSIONS[by]
    out: dict[str, Tally] = {}
    for dims, tally in rows.items():
        out.setdefault(dims[index], Tally()).add(tally)
    return out
