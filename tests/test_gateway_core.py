"""The gateway's sans-I/O core: model names resolved against the catalog, a request body
made into a job that round-trips through the journal, priced like any llm subtask."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from swarmd.core.gateway import (
    Catalog,
    GatewayError,
    Served,
    Target,
    estimate_request_tokens,
    gateway_job,
    job_data,
    key_id,
    parse_body,
    priority_of,
    rewrite_model,
    served_from_gossip,
)
from swarmd.core.jobspec import JobError, job_to_data, parse_job
from swarmd.core.pricing import ModelOffer, PeerCapacity, PricingConfig, ThroughputTracker
from swarmd.core.tasks import Coordinator, Dispatch, Result

CATALOG = Catalog(
    [
        Served("n2", "fast", "tiny-llama", frozenset({"lint", "format"})),
        Served("n3", "slow", "tiny-llama", frozenset({"lint"})),
        Served("n3", "other", "tiny-other", frozenset({"embeddings"})),
    ]
)


def test_models_list_has_ids_profiles_and_capability_aliases_with_their_nodes() -> None:
    listed = {m["id"]: m["owned_by"] for m in CATALOG.models_list()["data"]}
    assert listed == {
        "tiny-llama": "n2,n3",
        "tiny-other": "n3",
        "fast": "n2",
        "slow": "n3",
        "other": "n3",
        "capability:embeddings": "n3",
        "capability:format": "n2",
        "capability:lint": "n2,n3",
    }
    ids = list(listed)
    assert ids.index("tiny-other") < ids.index("fast") < ids.index("capability:lint")


def test_names_resolve_to_what_pricing_matches() -> None:
    assert CATALOG.resolve("tiny-llama", "chat").model == "tiny-llama"
    assert CATALOG.resolve("fast", "chat").model == "fast"
    target = CATALOG.resolve("capability:lint", "chat")
    assert (target.model, target.capability) == (None, "lint")
    emb = CATALOG.resolve("tiny-other", "embeddings")
    assert (emb.model, emb.capability) == ("tiny-other", "embeddings")


@pytest.mark.parametrize(
    ("name", "api"),
    [("gpt-4", "chat"), ("capability:nope", "chat"), ("tiny-llama", "embeddings")],
)
def test_an_unknown_model_is_a_404_listing_what_exists(name: str, api: str) -> None:
    with pytest.raises(GatewayError) as err:
        CATALOG.resolve(name, api)  # type: ignore[arg-type]
    e = err.value
    assert e.status == 404 and e.code == "model_not_found"
    assert name in e.message
    assert "tiny-other" in e.message
    if api == "chat":
        assert "capability:lint" in e.message
    else:  # embeddings: only the embeddings models are listed
        assert "fast" not in e.message
    assert set(e.body()["error"]) == {"message", "type", "code"}


def test_served_from_gossip_skips_malformed_profiles() -> None:
    rows = served_from_gossip(
        "n9",
        [
            {"name": "a", "model": "m", "capabilities": ["x", 3]},
            {"name": 1, "model": "m"},
            "junk",
            {"name": "b", "model": "m2"},
        ],
    )
    assert rows == [Served("n9", "a", "m", frozenset({"x"})), Served("n9", "b", "m2", frozenset())]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"messages": []}', "model parameter"),
        (b'{"model": "", "messages": []}', "model parameter"),
        (b'{"model": "m", "stream": "yes"}', "stream"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_bad_bodies_are_400(raw: bytes, why: str) -> None:
    with pytest.raises(GatewayError) as err:
        parse_body(raw)
    assert err.value.status == 400 and why in err.value.message


def test_priority_defaults_to_high_and_the_header_overrides() -> None:
    assert priority_of(None) == "high"
    assert priority_of("LOW") == "low"
    with pytest.raises(GatewayError):
        priority_of("urgent")


def test_key_id_labels_a_key_without_keeping_it() -> None:
    assert key_id(None) == "local"
    label = key_id("sk-secret")
    assert len(label) == 12 and "secret" not in label
    assert label == key_id("sk-secret") != key_id("sk-other")


def test_a_request_becomes_a_job_that_round_trips_through_the_journal() -> None:
    body = parse_body(
        json.dumps(
            {
                "model": "capability:lint",
                "messages": [{"role": "user", "content": "x" * 400}],
                "max_tokens": 50,
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "temperature": 0.2,
            }
        ).encode()
    )
    target = CATALOG.resolve(body["model"], "chat")
    job = parse_job(job_data("chat", body, target, "high", key_id("k")))
    (s,) = job.subtasks
    assert (s.kind, s.api, s.capability, s.model, s.priority) == (
        "llm",
        "chat",
        "lint",
        None,
        "high",
    )
    assert s.request == body and s.client == key_id("k") and s.max_tokens == 50
    assert parse_job(job_to_data(job)) == job
    assert estimate_request_tokens("chat", body) == 100 + 50 + 1  # "user" counts too


GATEWAY_CASES = [
    ("chat", {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]},
     Target("tiny-llama", "tiny-llama", None), "high", "local"),
    ("chat", {"model": "capability:lint", "max_tokens": 7, "stream": True, "tools": [{"a": 1.5}]},
     Target("capability:lint", None, "lint"), "low", "0123456789ab"),
    ("completions", {"model": "fast", "prompt": ["a", "b"], "max_completion_tokens": 3},
     Target("fast", "fast", None), "critical", "local"),
    ("embeddings", {"model": "tiny-other", "input": "x" * 10},
     Target("tiny-other", "tiny-other", "embeddings"), "normal", "local"),
    ("chat", {"model": "x" * 300, "max_tokens": 0}, Target("x" * 300, "x" * 300, None),
     "high", "local"),  # a long name is cut; an unusable max_tokens is the default
]  # fmt: skip


@pytest.mark.parametrize(("api", "body", "target", "priority", "client"), GATEWAY_CASES)
def test_gateway_job_is_what_the_job_reader_reads(
    api: str, body: dict, target: Target, priority: str, client: str
) -> None:
    """The request path builds its job directly: the same spec as the reader's."""
    direct = gateway_job(api, body, target, priority, client)  # type: ignore[arg-type]
    read = parse_job(job_data(api, body, target, priority, client), source="x")  # type: ignore[arg-type]
    assert direct == read
    assert direct.subtasks[0].request == body and direct.subtasks[0].request is not body


@pytest.mark.parametrize(
    ("body", "target", "client", "why"),
    [
        ({"model": "m", "x": float("nan")}, Target("m", "m", None), "local", "JSON"),
        ({"model": "m\n"}, Target("m\n", "m\n", None), "local", "printable"),
        ({"model": "m"}, Target("m", "m", None), " ", "must not be empty"),
    ],
)
def test_gateway_job_reports_what_the_job_reader_would(
    body: dict, target: Target, client: str, why: str
) -> None:
    with pytest.raises(JobError, match=why):
        gateway_job("chat", body, target, "high", client)


def test_a_request_subtask_must_not_carry_a_prompt_too() -> None:
    data = job_data("chat", {"model": "m"}, CATALOG.resolve("fast", "chat"), "high", "local")
    data["subtasks"][0]["prompt"] = "hi"
    data["subtasks"][0]["api"] = "speech"
    with pytest.raises(JobError) as err:
        parse_job(data)
    text = str(err.value)
    assert "prompt" in text and "speech" in text


def _peer(node: str, *offers: ModelOffer) -> PeerCapacity:
    return PeerCapacity(
        node_id=node, name=node, alive=True, draining=False, on_battery=False,
        battery_policy="pause", cores=4, load=0.0, ram_available=1 << 33,
        gpus_vram_free=(), gpus_vram_total=(), slots_total=4, slots_busy=0, queue=0,
        rtt_s=None, cost_per_hour=0.0, models=offers,
    )  # fmt: skip


def _offer(
    name: str, model: str, caps: set[str], latency_ms: float, busy: dict[str, int]
) -> ModelOffer:
    return ModelOffer(name, model, frozenset(caps), 2, 0.0, latency_ms, 100.0, busy.get(name, 0))


def test_the_coordinator_prices_a_gateway_request_like_any_llm_subtask() -> None:
    c = Coordinator(node_id="n1", pricing=PricingConfig(max_queue=0))

    def peers() -> list[PeerCapacity]:  # as the node's view gives them: with our load
        loads = c.load_by_node()
        busy = {n: dict(load.models) for n, load in loads.items()}
        return [
            _peer("n2", _offer("fast", "tiny-llama", {"lint"}, 5.0, busy.get("n2", {}))),
            _peer("n3", _offer("slow", "tiny-llama", {"lint"}, 300.0, busy.get("n3", {}))),
        ]

    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
    job = parse_job(job_data("chat", body, CATALOG.resolve("tiny-llama", "chat"), "high", "local"))
    c.submit("t1", job, 0.0)
    dispatches = [e for e in c.schedule(peers(), 0.0) if isinstance(e, Dispatch)]
    assert [(d.node_id, d.model) for d in dispatches] == [("n2", "fast")]
    assert dispatches[0].spec.request == body
    # Both slots of n2 and n3 taken: the fifth request waits on the coordinator.
    for i in range(2, 6):
        c.submit(f"t{i}", job, 0.0)
    more = [e for e in c.schedule(peers(), 0.0) if isinstance(e, Dispatch)]
    loads = {n: dict(load.models) for n, load in c.load_by_node().items()}
    assert len(more) == 3 and loads == {"n2": {"fast": 2}, "n3": {"slow": 2}}
    assert [e for e in c.schedule(peers(), 0.0) if isinstance(e, Dispatch)] == []
    assert "model queue full" in str(c.explain("t5"))


def test_rewrite_model_sets_the_name_the_client_used() -> None:
    assert rewrite_model({"model": "tiny-llama", "x": 1}, "fast") == {"model": "fast", "x": 1}
    assert rewrite_model([1], "fast") == [1]


def test_a_gateway_answer_is_measured_like_any_llm_result() -> None:
    tracker = ThroughputTracker()
    c = Coordinator(node_id="n1", pricing=PricingConfig(max_queue=0), throughput=tracker)
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    c.submit(
        "t1", parse_job(job_data("chat", body, CATALOG.resolve("fast", "chat"), "high", "k")), 0.0
    )
    peers = [_peer("n2", _offer("fast", "tiny-llama", {"lint"}, 5.0, {}))]
    (d,) = [e for e in c.schedule(peers, 0.0) if isinstance(e, Dispatch)]
    # what the passthrough executor reports (swarmd/executors/passthrough.py)
    usage = {"prompt_tokens": 10, "completion_tokens": 40, "total_tokens": 50}
    result = Result(output=None, usage=usage, duration_s=1.1, latency_s=0.1)
    c.on_result("t1", "main", d.attempt, "n2", result, 1.0)
    assert tracker.latency_s("n2", "fast") == pytest.approx(0.1)
    assert tracker.tokens_per_s("n2", "fast") == pytest.approx(40.0)  # generated / (1.1 - 0.1) s


def test_gateway_requests_go_ahead_of_queued_batch_work() -> None:
    c = Coordinator(node_id="n1", pricing=PricingConfig(max_queue=0))
    batch = {
        "name": "batch",
        "subtasks": [
            {"id": f"s{i}", "kind": "llm", "prompt": "x", "model": "fast"} for i in range(3)
        ],
    }
    c.submit("batch", parse_job(batch), 0.0)
    body = {"model": "fast", "messages": []}
    target = CATALOG.resolve("fast", "chat")
    c.submit("gw", parse_job(job_data("chat", body, target, priority_of(None), "k")), 1.0)
    c.submit("gw-low", parse_job(job_data("chat", body, target, priority_of("low"), "k")), 1.0)
    peers = [_peer("n2", replace(_offer("fast", "m", set(), 5.0, {}), max_concurrency=1))]
    (first,) = [e for e in c.schedule(peers, 2.0) if isinstance(e, Dispatch)]
    assert first.task_id == "gw"
    assert c.record("gw-low").subtasks["main"].spec.priority == "low"


def test_a_gateway_task_is_never_journaled() -> None:
    """Ephemeral: no journal record from submit to forget (only the connected client
    waits for it), while a like task submitted as a job is journaled at every step."""
    from swarmd.core.tasks import Journal

    def records(ephemeral: bool) -> list[str]:
        c = Coordinator(node_id="n1", pricing=PricingConfig(max_queue=0))
        body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
        job = parse_job(job_data("chat", body, CATALOG.resolve("fast", "chat"), "high", "k"))
        effects = list(c.submit("t1", job, 0.0, ephemeral=ephemeral))
        peers = [_peer("n2", _offer("fast", "tiny-llama", {"lint"}, 5.0, {}))]
        placed = c.schedule(peers, 0.0)
        (d,) = [e for e in placed if isinstance(e, Dispatch)]
        effects += placed
        effects += c.on_result("t1", "main", d.attempt, "n2", Result(output="{}"), 1.0)
        assert c.status("t1")["state"] == "done"
        effects += c.forget("t1")
        return [e.kind for e in effects if isinstance(e, Journal)]

    assert records(ephemeral=True) == []
    assert {"task", "subtask", "task_state", "forget"} <= set(records(ephemeral=False))


def test_an_answered_gateway_task_sheds_its_request_and_answer() -> None:
    """Retention keeps finished tasks (10,000 by default): a gateway task's body and
    answer (up to 8 MiB each) go once answered; its state and placement stay. A job's
    task keeps everything."""
    c = Coordinator(node_id="n1", pricing=PricingConfig(max_queue=0))
    body = {"model": "fast", "messages": [{"role": "user", "content": "x" * 1000}]}
    job = parse_job(job_data("chat", body, CATALOG.resolve("fast", "chat"), "high", "k"))
    peers = [_peer("n2", _offer("fast", "tiny-llama", {"lint"}, 5.0, {}))]
    for task_id, ephemeral in (("gw", True), ("job", False)):
        c.submit(task_id, job, 0.0, ephemeral=ephemeral)
        (d,) = [e for e in c.schedule(peers, 0.0) if isinstance(e, Dispatch)]
        c.on_result(task_id, "main", d.attempt, "n2", Result(output="{}" * 1000), 1.0)
        c.shed(task_id)
    gw, kept = c.record("gw").subtasks["main"], c.record("job").subtasks["main"]
    assert gw.spec.request is None and gw.result is not None and gw.result.output is None
    assert c.record("gw").spec.subtasks[0].request is None
    assert gw.state == "done" and gw.attempts and "n2" in str(c.explain("gw"))
    assert kept.spec.request == body and kept.result is not None and kept.result.output


# ---------------------------------------------------------------- the cluster view


def test_the_cluster_view_is_rebuilt_when_a_member_dies_or_after_a_while() -> None:
    from types import SimpleNamespace

    from swarmd.core.failure import Liveness
    from swarmd.gateway.catalog import FRESH_S, ClusterView

    profile = {"name": "fast", "model": "m1", "capabilities": ["lint"]}
    state = SimpleNamespace(generation=1, get=lambda k: {"name": "n2", "models": [profile]}.get(k))
    member = SimpleNamespace(node_id="n2", liveness=Liveness.ALIVE, state=state)
    now = [100.0]
    view = ClusterView(lambda: [member], clock=lambda: now[0])
    checks: list[str] = []
    target = view.catalog().resolve("m1", "chat")
    view.check_feasible(target, lambda: checks.append("checked"))
    view.check_feasible(target, lambda: checks.append("checked"))
    assert checks == ["checked"]  # passed once: remembered
    member.liveness = Liveness.DEAD
    with pytest.raises(GatewayError):  # at once, not after FRESH_S
        view.catalog().resolve("m1", "chat")
    member.liveness = Liveness.ALIVE
    view.check_feasible(target, lambda: checks.append("checked"))
    now[0] += FRESH_S
    view.check_feasible(target, lambda: checks.append("checked"))
    assert checks == ["checked"] * 3

    def refuse() -> None:
        raise GatewayError(503, "no", "x")

    now[0] += FRESH_S
    for _ in range(2):  # a refusal is never remembered
        with pytest.raises(GatewayError):
            view.check_feasible(target, refuse)
