"""The llm usage book, its persistence, budgets and the cluster gather (fast tests)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from protocol import codec
from protocol.messages import Message, UsageReply, UsageRequest, UsageRow
from swarmd.config import ConfigError, load
from swarmd.core.budget import Budget, Budgets, key_id, parse_budget, parse_budgets
from swarmd.core.failure import Liveness
from swarmd.core.gossip import Member
from swarmd.core.jobspec import SubtaskSpec
from swarmd.core.membership import NodeState
from swarmd.core.tasks import Coordinator, Dispatch, Result
from swarmd.core.usage import DAY_S, HOUR_S, NO_CLIENT, OTHER, UsageBook, UsageConfig, tokens_of
from swarmd.group_commit import GroupCommit
from swarmd.journal_health import JournalHealth
from swarmd.store import Store
from swarmd.usage import Usage, UsageCollector
from tests.capacity import peer
from tests.test_tasks import answer, job, offer, one

T0 = 1_700_000_000.0 - 1_700_000_000.0 % DAY_S + 10 * HOUR_S  # 10:00 UTC on some day
USAGE = {"prompt_tokens": 30, "completion_tokens": 70, "total_tokens": 100}


def priced(node: str, profile: str) -> tuple[str, float] | None:
    return {("G", "fast"): ("qwen-7b", 2.0), ("H", "slow"): ("llama-70b", 10.0)}.get(
        (node, profile)
    )


def record(book: UsageBook, now: float, node: str = "G", profile: str = "fast", **kw: Any) -> None:
    args: dict[str, Any] = {"client": "k1", "usage": USAGE, "ok": True}
    args.update(kw)
    book.record_result(now, node=node, node_name=f"name-{node}", profile=profile, **args)


# ---------------------------------------------------------------- the book


def test_book_counts_requests_tokens_cost_and_errors_per_dims() -> None:
    book = UsageBook(price_of=priced)
    record(book, T0)
    record(book, T0 + 60)
    record(book, T0 + 120, ok=False, usage={"prompt_tokens": 5})
    record(book, T0 + 180, node="H", profile="slow", client="k2")
    rows = book.summary(since=T0 - 1)
    fast = rows[("fast", "qwen-7b", "G", "k1")]
    assert (fast.requests, fast.errors, fast.tokens_in, fast.tokens_out) == (3, 1, 65, 140)
    assert fast.cost == pytest.approx(2.0 * 205 / 1e6)
    assert fast.node_name == "name-G"
    slow = rows[("slow", "llama-70b", "H", "k2")]
    assert slow.cost == pytest.approx(10.0 * 100 / 1e6)
    assert book.spent_today("k1", T0 + 200) == (205, pytest.approx(2.0 * 205 / 1e6))
    assert book.spent_today("k1", T0 + DAY_S) == (0, 0.0)  # a new UTC day
    assert book.summary(since=T0 + HOUR_S) == {}  # every bucket ended before that


def test_no_client_is_cli_and_unknown_price_is_free_and_garbage_usage_counts_zero() -> None:
    book = UsageBook(price_of=priced)
    record(book, T0, node="X", profile="p", client=None, usage={"model": "m-from-server"})
    record(book, T0, node="X", profile="p", client=None, usage={"prompt_tokens": -3, "model": "m"})
    record(book, T0, node="X", profile="p", client=None, usage=None)
    rows = book.summary(0)
    assert rows[("p", "m-from-server", "X", NO_CLIENT)].requests == 1
    assert rows[("p", "m", "X", NO_CLIENT)].requests == 1
    assert rows[("p", "", "X", NO_CLIENT)].requests == 1
    assert sum(r.tokens + r.cost for r in rows.values()) == 0
    assert book.counters["bad_usage"] == 2
    assert tokens_of({"prompt_tokens": True, "completion_tokens": 10**12}) is None
    assert tokens_of({"completion_tokens": 4}) == (0, 4)


def test_hour_buckets_merge_into_days_then_go_after_the_retention() -> None:
    book = UsageBook(UsageConfig(hourly_s=2 * DAY_S, retention_s=35 * DAY_S), price_of=priced)
    record(book, T0)
    record(book, T0 + HOUR_S)
    book.written()
    assert {(k.start, k.span) for k in book.rows} == {(T0, HOUR_S), (T0 + HOUR_S, HOUR_S)}
    book.expire(T0 + 3 * DAY_S)
    day = T0 - T0 % DAY_S
    assert [(k.start, k.span) for k in book.rows] == [(day, DAY_S)]
    assert book.rows[next(iter(book.rows))].requests == 2
    upserts, gone = book.pending()
    assert [(r[0], r[1], r[7]) for r in upserts] == [(day, DAY_S, 2)]
    assert {(k.start, k.span) for k in gone} == {(T0, HOUR_S), (T0 + HOUR_S, HOUR_S)}
    assert book.summary(since=day + 1)  # a day bucket counts while it ends after since
    book.expire(day + 36 * DAY_S)
    assert book.rows == {} and book.pending()[1]


def test_rows_and_series_past_their_caps_fold_into_other() -> None:
    book = UsageBook(UsageConfig(max_rows=3, max_series=2), price_of=priced)
    for i in range(6):
        record(book, T0, client=f"k{i}")
    assert len(book.rows) == 4  # 3 + the (other) row of that bucket
    assert book.summary(0)[(OTHER,) * 4].requests == 3
    assert book.counters["folded"] == 3
    assert len(book.totals) == 3 and book.totals[(OTHER,) * 4].requests == 4


# ---------------------------------------------------------------- persistence


def test_the_book_survives_a_restart_through_the_group_commit(tmp_path: Path) -> None:
    store = Store(tmp_path / "swarmd.db")
    commits = GroupCommit(store, JournalHealth(tmp_path, logging.getLogger("test")))
    book = UsageBook(price_of=priced)
    commits.usage = book
    record(book, T0)
    record(book, T0 + 1, client="k2")
    # Usage rows alone wait for a commit with records, or for USAGE_DELAY_S:
    assert commits.commit() is not None and book.has_pending()
    assert commits.usage_due_at is not None
    assert commits.commit(all_usage=True) is not None and not book.has_pending()
    record(book, T0 + 2)  # the same row again: an upsert, not a second row
    commits.commit(all_usage=True)
    book.expire(T0 + 3 * DAY_S)  # hours become a day: rows deleted and added
    commits.commit(all_usage=True)
    store.close()

    store = Store(tmp_path / "swarmd.db")
    again = UsageBook(price_of=priced)
    assert again.load(store.usage_rows(), T0 + 3 * DAY_S) == 2
    assert again.summary(0) == book.summary(0)
    assert again.summary(0)[("fast", "qwen-7b", "G", "k1")].requests == 2
    store.close()


def test_todays_spend_is_restored_and_bad_rows_are_skipped() -> None:
    book = UsageBook(price_of=priced)
    record(book, T0)
    rows = [*book.pending()[0], ("bad",), (1, 7, "p", "m", "n", "c", "x", 1, 0, 1, 1, 0.0)]
    again = UsageBook()
    assert again.load(rows, T0 + HOUR_S) == 1
    assert again.counters["bad_rows"] == 2
    assert again.spent_today("k1", T0 + HOUR_S)[0] == 100
    assert again.spent_today("k1", T0 + DAY_S)[0] == 0


# ---------------------------------------------------------------- the coordinator feeds it


@dataclass(frozen=True)
class _ClientSpec(SubtaskSpec):
    client: str | None = None


def with_client(spec: SubtaskSpec, client: str) -> SubtaskSpec:
    """The spec as the gateway submits it (``client``: the API key's id)."""
    if "client" in {f.name for f in fields(spec)}:
        return replace(spec, client=client)  # type: ignore[call-arg]
    return _ClientSpec(**{f.name: getattr(spec, f.name) for f in fields(spec)}, client=client)


GPU = peer("G", models=(offer("fast", cost_per_mtok=2.0),), slots_total=0)


def llm_coordinator(
    book: UsageBook, client: str | None, n: int = 1
) -> tuple[Coordinator, list[Dispatch]]:
    c = Coordinator(node_id="me")
    c.usage = book
    subtasks = [
        {"id": f"p{i}", "kind": "llm", "capability": "lint", "prompt": "x"} for i in range(n)
    ]
    c.submit("t1", job(*subtasks), now=T0)
    if client is not None:
        for rec in c.record("t1").subtasks.values():
            rec.spec = with_client(rec.spec, client)
    fx = c.schedule([GPU, peer("A")], now=T0)
    return c, [e for e in fx if isinstance(e, Dispatch)]


def test_the_coordinator_counts_current_llm_results_only() -> None:
    book = UsageBook(price_of=priced)
    c, (d,) = llm_coordinator(book, client=None)
    stale = c.on_result(d.task_id, d.subtask_id, d.attempt + 1, d.node_id, Result(usage=USAGE), T0)
    assert stale and book.summary(0) == {}  # fenced off: not counted
    answer(c, d, Result(output="y", usage=USAGE), T0 + 1)
    answer(c, d, Result(output="y", usage=USAGE), T0 + 2)  # a duplicate: not counted again
    row = book.summary(0)[("fast", "qwen-7b", "G", NO_CLIENT)]
    assert (row.requests, row.tokens_in, row.tokens_out) == (1, 30, 70)
    shell = Coordinator(node_id="me")
    shell.usage = book
    shell.submit("t2", job({"id": "s", "kind": "shell", "run": ["true"]}), now=T0)
    answer(shell, one(shell.schedule([peer("A")], now=T0), Dispatch), Result(exit_code=0), T0)
    assert sum(t.requests for t in book.summary(0).values()) == 1


def test_a_budget_refuses_once_the_keys_results_spent_it() -> None:
    key = key_id("sk-team-1")
    budgets = Budgets(parse_budgets({"sk-team-1": "250 tokens/day"}))
    book = UsageBook(price_of=priced)
    c, dispatches = llm_coordinator(book, client=key, n=3)
    assert len(dispatches) == 3
    spent = []
    for i, d in enumerate(dispatches):
        answer(c, d, Result(output="y", usage=USAGE), T0 + i)
        tokens, cost = book.spent_today(key, T0 + i)
        spent.append(budgets.refusal(key, tokens, cost, T0 + i))
    assert spent[:2] == [None, None]
    assert spent[2] is not None and "300 tokens of 250 tokens/day" in spent[2]
    assert key in spent[2] and "sk-team-1" not in spent[2] and "resets at 00:00 UTC" in spent[2]
    assert budgets.refusal(key, 300, 0.0, T0 + DAY_S) is not None  # the caller passes today's
    assert budgets.refusal(key_id("other"), 10**9, 1e9, T0) is None  # no budget: no limit


def test_budget_forms_and_clear_errors() -> None:
    assert parse_budget("2000000 tokens/day") == Budget(2_000_000, "tokens")
    assert parse_budget("2_000_000 tokens / day") == Budget(2_000_000, "tokens")
    assert parse_budget("$5/day") == Budget(5.0, "cost")
    assert parse_budget("$ 2.50 / day") == Budget(2.5, "cost")
    for bad in ("lots", "5 tokens/week", "-5 tokens/day", "$/day", 5, None):
        with pytest.raises(ValueError, match="bad budget"):
            parse_budget(bad)
    with pytest.raises(ValueError, match=key_id("sk-x")) as info:
        parse_budgets({"sk-x": "soon"})
    assert "sk-x" not in str(info.value)  # the raw key is never shown
    assert Budgets({"k": Budget(1.0, "cost")}).refusal("k", 0, 1.5, T0) is not None
    assert Budgets({"k": Budget(1.0, "cost")}).refusal("k", 10**9, 0.5, T0) is None
    assert len(key_id("sk-anything")) == 12


def test_config_budget_table(tmp_path: Path) -> None:
    path = tmp_path / "swarmd.toml"
    path.write_text('[gateway]\nbudget = { "sk-a" = "100 tokens/day", "sk-b" = "$3/day" }\n')
    cfg = load(path, {}, tmp_path)
    assert cfg.budgets == {key_id("sk-a"): Budget(100, "tokens"), key_id("sk-b"): Budget(3, "cost")}
    path.write_text('[gateway]\nbudget = { "sk-a" = "100 tokens/month" }\n')
    with pytest.raises(ConfigError, match=r"\[gateway\] budget: the key with id .*tokens/month"):
        load(path, {}, tmp_path)
    path.write_text('[gateway]\nbudget = "sk-a"\n')
    with pytest.raises(ConfigError, match="expected a table"):
        load(path, {}, tmp_path)


# ---------------------------------------------------------------- the shell: gossip, gather


def member(node_id: str, me: bool = False, **state: Any) -> Member:
    ns = NodeState(node_id, 1)
    for key, value in {"name": f"name-{node_id}", "addr": f"{node_id}:1", **state}.items():
        ns.set(key, value)
    return Member(ns, Liveness.ALIVE, me, None, None)


def test_check_budget_sums_this_book_and_the_peers_spend_of_today() -> None:
    key = key_id("sk-a")
    day = int(T0 // DAY_S)
    peers = [
        member("me", me=True),
        member("p1", spend={"day": day, "keys": {key: [120, 0.0]}}),
        member("p2", spend={"day": day - 1, "keys": {key: [10**6, 0.0]}}),  # yesterday's
        member("p3", spend={"day": "bad"}),
    ]
    usage = Usage(
        node_id=lambda: "me",
        name="me",
        members=lambda: peers,
        send=lambda _a, _m: True,
        budgets=Budgets(parse_budgets({"sk-a": "200 tokens/day"})),
        clock=lambda: T0,
    )
    assert usage.check_budget(key) is None
    assert usage.check_budget(key_id("no-budget")) is None
    usage.book.record_result(
        T0, node="G", node_name="g", profile="fast", client=key, usage=USAGE, ok=True
    )
    usage._peer_spend_at = -1e9  # the peers' sum is reused for a second; read it again
    refusal = usage.check_budget(key)
    assert refusal is not None and "220 tokens of 200 tokens/day" in refusal
    spend = usage.spend_value(T0)
    assert spend == {"day": day, "keys": {key: [100, 0.0]}}
    codec.encode(UsageRequest())  # the spend value is a valid state value:
    from protocol.messages import validate_state_value

    validate_state_value("spend", spend)


def test_gather_sums_answering_peers_and_lists_the_silent_one_as_missing() -> None:
    async def scenario() -> UsageReply:
        peers = [member("me", me=True), member("p1"), member("p2"), member("p3")]
        sent: list[tuple[str, Message]] = []

        def send(addr: str, message: Message) -> bool:
            sent.append((addr, message))
            return addr != "p3:1"  # p3's link is down

        usage = Usage(
            node_id=lambda: "me", name="me", members=lambda: peers, send=send, clock=lambda: T0
        )
        usage.book.price_of = priced
        record(usage.book, T0)

        async def p1_answers() -> None:
            await asyncio.sleep(0.01)
            ask = sent[0][1]
            assert isinstance(ask, UsageRequest) and not ask.cluster
            row = UsageRow("fast", "qwen-7b", "G", "name-G", "k1", 2, 0, 10, 20, 0.5)
            usage.on_reply("p1", UsageReply(ref=ask.ref, rows=[row]))
            usage.on_reply("p9", UsageReply(ref=ask.ref, rows=[row]))  # never asked: ignored

        helper = asyncio.create_task(p1_answers())
        reply = await usage.gather(UsageRequest(since=T0 - 10, timeout_s=0.2))
        await helper
        return reply

    reply = asyncio.run(scenario())
    (row,) = reply.rows
    assert (row.requests, row.tokens_in, row.tokens_out) == (3, 40, 90)
    assert [n.id for n in reply.nodes] == ["me", "p1"]
    missing = {n.id: n.why for n in reply.missing}
    assert missing == {"p2": "no answer within 0.2 s", "p3": "not reachable"}
    decoded = codec.decode(codec.encode(reply))
    assert decoded == reply


def test_prometheus_counters_of_the_book() -> None:
    usage = Usage(node_id=lambda: "me", name="me", members=lambda: [], send=lambda _a, _m: True)
    usage.book.price_of = priced
    record(usage.book, T0)
    record(usage.book, T0, ok=False)
    registry = CollectorRegistry()
    registry.register(UsageCollector(usage))
    text = generate_latest(registry).decode()
    labels = 'client="k1",model="qwen-7b",node="name-G",profile="fast"'
    assert f"swarmd_llm_requests_total{{{labels}}} 2.0" in text
    assert f"swarmd_llm_errors_total{{{labels}}} 1.0" in text
    tokens = 'swarmd_llm_tokens_total{client="k1",direction="%s",model="qwen-7b",node="name-G"'
    assert tokens % "in" + ',profile="fast"} 60.0' in text
    assert tokens % "out" + ',profile="fast"} 140.0' in text
    assert "swarmd_llm_cost_total{" in text
