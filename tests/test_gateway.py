"""The OpenAI-compatible gateway through real daemons, real llama.cpp servers and the
official ``openai`` SDK, unmodified, pointed at a node's gateway.

The cluster (one per module): n1 serves the gateway (with an API key) and no model;
n2 serves "tiny-llama" as profile "fast" (capabilities lint, format) through a counting
HTTP proxy; n3 serves the same model as "slow" (lint) behind a proxy that adds
DELAY_S to every request, and "tiny-other", a second llama.cpp server (with
embeddings), as "other" (review, embeddings), through a counting proxy. Both "fast"
and "other" take 2 requests at once.

The last test kills n2: keep it last.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.harness import Daemon, free_port, new_secret, wait_until
from tests.http_proxy import HttpProxy
from tests.llm_server import llama_python, llama_server
from tests.test_llm_cluster import DelayProxy

openai = pytest.importorskip("openai")

DELAY_S = 0.15
KEY = "sk-swarmd-test-0123456789abcdef"
SMALL_KEY = "sk-swarmd-small-0123456789abcdef"  # a budget of 10 tokens a day
HI = [{"role": "user", "content": "Fix the lint."}]


def profile(name: str, endpoint: str, model: str, caps: list[str]) -> str:
    return (
        f'[models.{name}]\nendpoint = "{endpoint}"\nmodel = "{model}"\n'
        f"capabilities = {json.dumps(caps)}\nmax_concurrency = 2\n"
    )


@dataclass
class Cluster:
    nodes: dict[str, Daemon]
    fast: HttpProxy  # n2's endpoint
    other: HttpProxy  # n3's "tiny-other"
    base_url: str

    def client(self, key: str = KEY, timeout: float = 60.0) -> Any:
        return openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=timeout)

    def reset(self, quiet: bool = False) -> None:
        """No faults, counts from zero; with ``quiet``, once what a test before left
        running at the endpoints is gone."""
        if quiet:
            idle = lambda: self.fast.in_flight == 0 and self.other.in_flight == 0  # noqa: E731
            wait_until(idle, 30, what="the endpoints quiet")
        self.fast.reset()
        self.other.reset()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    python, why = llama_python()
    if python is None:
        pytest.skip(f"llama-cpp-python is not available ({why}); test.sh installs it")
    root = tmp_path_factory.mktemp("gateway")
    (root / "a").mkdir()
    (root / "b").mkdir()
    with (
        llama_server(python, root / "a") as one,
        llama_server(python, root / "b", alias="tiny-other", embeddings=True) as two,
    ):
        host, port = one.endpoint.split("//")[1].split("/")[0].split(":")
        fast = HttpProxy(one.endpoint.removesuffix("/v1"))
        other = HttpProxy(two.endpoint.removesuffix("/v1"))
        slow = DelayProxy((host, int(port)), DELAY_S)
        secret = new_secret()
        gateway_port = free_port()
        gateway = (
            f'[gateway]\napi_keys = ["{KEY}", "{SMALL_KEY}"]\n'
            f'budget = {{ "{SMALL_KEY}" = "10 tokens/day" }}\n'
        )
        nodes = {
            "n1": Daemon(
                root, "n1", secret=secret, config=gateway,
                args=("--gateway-port", str(gateway_port)),
            ),
            "n2": Daemon(
                root, "n2", secret=secret,
                config=profile("fast", fast.endpoint, one.model, ["lint", "format"]),
            ),
            "n3": Daemon(
                root, "n3", secret=secret,
                config=profile("slow", f"http://127.0.0.1:{slow.port}/v1", one.model, ["lint"])
                + profile("other", other.endpoint, two.model, ["review", "embeddings"]),
            ),
        }  # fmt: skip
        try:
            for d in nodes.values():
                d.start()
            for d in nodes.values():
                d.wait_ready()
            wait_until(lambda: _measured(nodes["n1"]), 40, what="measured latency of both nodes")
            yield Cluster(nodes, fast, other, f"http://127.0.0.1:{gateway_port}/v1")
        finally:
            for d in nodes.values():
                d.stop()
            for proxy in (fast, other, slow):
                proxy.close()


def _measured(n1: Daemon) -> bool:
    """Whether n1 sees both nodes' model latency measured (n3 slower, as it is)."""
    out = {}
    for p in n1.peers():
        for m in p["models"]:
            if m["name"] in ("fast", "slow") and m["latency_ms"] is not None:
                out[m["name"]] = m["latency_ms"]
    return {"fast", "slow"} <= out.keys() and out["slow"] > out["fast"] + DELAY_S * 500


@pytest.fixture
def gw(cluster: Cluster) -> Iterator[Cluster]:
    cluster.reset(quiet=True)
    yield cluster
    cluster.reset()


def _chat(client: Any, model: str, **kwargs: Any) -> tuple[Any, dict[str, str]]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=HI, max_tokens=kwargs.pop("max_tokens", 8), **kwargs
    )
    return raw.parse(), dict(raw.headers)


# ---------------------------------------------------------------- the API


def test_models_list_shows_both_models_profiles_and_capability_aliases(gw: Cluster) -> None:
    listed = {m.id: m.owned_by for m in gw.client().models.list().data}
    assert listed == {
        "tiny-llama": "n2,n3",
        "tiny-other": "n3",
        "fast": "n2",
        "other": "n3",
        "slow": "n3",
        "capability:embeddings": "n3",
        "capability:format": "n2",
        "capability:lint": "n2,n3",
        "capability:review": "n3",
    }
    assert gw.client().models.retrieve("capability:review").owned_by == "n3"


def test_chat_without_and_with_stream_returns_text_and_usage(gw: Cluster) -> None:
    client = gw.client()
    answer, headers = _chat(client, "tiny-llama")
    assert answer.model == "tiny-llama"
    assert answer.choices[0].message.content.strip()
    assert answer.usage.completion_tokens == 8 and answer.usage.prompt_tokens > 0
    assert headers["x-swarmd-node"] in ("n2", "n3") and headers["x-swarmd-task"]

    stream = client.chat.completions.create(
        model="fast", messages=HI, max_tokens=8, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and all(c.model == "fast" for c in chunks)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 8


def test_completions_and_embeddings_routes(gw: Cluster) -> None:
    client = gw.client()
    done = client.completions.create(model="tiny-other", prompt="lint", max_tokens=5)
    assert done.choices[0].text.strip() and done.model == "tiny-other"
    raw = client.embeddings.with_raw_response.create(model="capability:embeddings", input="x")
    vectors = raw.parse()
    assert raw.headers["x-swarmd-node"] == "n3" and vectors.model == "capability:embeddings"
    assert len(vectors.data) == 1 and len(vectors.data[0].embedding) > 0
    with pytest.raises(openai.NotFoundError) as err:
        client.embeddings.create(model="tiny-llama", input="x")
    assert "embeddings" in str(err.value)


def test_unknown_model_is_404_listing_what_exists(gw: Cluster) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        _chat(gw.client(), "gpt-4o")
    body = err.value.body
    assert body["code"] == "model_not_found"
    assert "tiny-other" in body["message"] and "capability:lint" in body["message"]


# ---------------------------------------------------------------- routing


def test_a_request_by_capability_goes_to_the_faster_node(gw: Cluster) -> None:
    nodes = {_chat(gw.client(), "capability:lint")[1]["x-swarmd-node"] for _ in range(3)}
    assert nodes == {"n2"}  # n3 is DELAY_S slower on every request


def test_a_model_only_one_node_serves_goes_there(gw: Cluster) -> None:
    for name in ("tiny-other", "other", "capability:review"):
        answer, headers = _chat(gw.client(), name)
        assert headers["x-swarmd-node"] == "n3" and answer.model == name


def test_twenty_concurrent_requests_never_exceed_max_concurrency(gw: Cluster) -> None:
    gw.other.faults.hold_s = 0.2  # each takes a while: they must overlap to finish soon
    client = gw.client()
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: _chat(client, "tiny-other")[0], range(20)))
    assert all(a.choices[0].message.content.strip() for a in answers)
    assert gw.other.requests == 20
    assert gw.other.max_in_flight == 2  # max_concurrency = 2: never more, and used


# ---------------------------------------------------------------- failures


def test_an_endpoint_failing_before_the_first_byte_fails_over_unnoticed(gw: Cluster) -> None:
    for _ in range(3):  # n2 measured the faster (as after the tests above): it is tried first
        _chat(gw.client(), "capability:lint")
    gw.fast.reset()
    gw.fast.faults.status = 503
    answer, headers = _chat(gw.client(), "capability:lint")
    assert headers["x-swarmd-node"] == "n3" and answer.choices[0].message.content.strip()
    assert gw.fast.requests == 1  # n2 was tried first
    gw.fast.faults.status = 429
    stream = gw.client().chat.completions.create(
        model="capability:lint", messages=HI, max_tokens=8, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.strip() and gw.fast.requests == 2


def test_a_stream_cut_after_its_first_bytes_ends_with_an_error_event(gw: Cluster) -> None:
    gw.fast.faults.cut_after = 3
    # By profile name: only n2 serves "fast" (after the 503 and 429 of the test before,
    # n3 may be the better pick for the capability, and its stream is not cut).
    stream = gw.client(timeout=30).chat.completions.create(
        model="fast", messages=HI, max_tokens=50, stream=True
    )
    got = []
    started = time.monotonic()
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            got.append(chunk)
    assert got and time.monotonic() - started < 20
    assert "broke off" in str(err.value)


def test_a_client_that_hangs_up_before_the_answer_frees_the_upstream_request(
    gw: Cluster,
) -> None:
    """Non-streamed: the client gives up while the endpoint still works on it; the
    gateway hears it at once (no task of its own waits on the connection) and cancels
    the task, so the worker drops its upstream request."""
    gw.fast.faults.hold_s = 5.0  # the endpoint does not answer within the client's patience
    before = gw.nodes["n1"].counters().get("gateway_client_gone", 0)
    with pytest.raises(openai.APITimeoutError):
        gw.client(timeout=1.0).chat.completions.create(model="fast", messages=HI, max_tokens=8)
    wait_until(
        lambda: gw.nodes["n1"].counters().get("gateway_client_gone", 0) == before + 1,
        10,
        what="the gateway to see its client go",
    )
    assert gw.nodes["n1"].counters().get("gateway_cancelled", 0) >= 1


def test_a_client_that_disconnects_frees_the_upstream_request(gw: Cluster) -> None:
    gw.fast.faults.event_delay_s = 0.1  # 200 tokens: 20 s if read to the end
    # By profile name: only n2 serves "fast", whatever the tests before did to the
    # measured speeds (a stream cut on n2 may make n3 the better pick for a capability).
    stream = gw.client().chat.completions.create(
        model="fast", messages=HI, max_tokens=200, stream=True
    )
    first = next(iter(stream))
    assert first.model == "fast" and gw.fast.in_flight == 1
    left = time.monotonic()
    stream.close()
    wait_until(lambda: gw.fast.client_gone >= 1 and gw.fast.in_flight == 0, 10, what="freed")
    assert time.monotonic() - left < 10
    counters = gw.nodes["n1"].counters()
    assert counters.get("gateway_cancelled", 0) >= 1


# ---------------------------------------------------------------- security


def test_keys_sizes_and_garbage_are_refused_and_the_node_keeps_serving(gw: Cluster) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        gw.client(key=KEY[:-1]).models.list()
    assert err.value.body["code"] == "invalid_api_key"
    url = gw.base_url + "/chat/completions"
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(trust_env=False, timeout=30) as http:
        for path, headers in [("/models", {}), ("/chat/completions", {"authorization": KEY})]:
            refused = http.request("GET" if path == "/models" else "POST", gw.base_url + path,
                                   headers=headers, json={"model": "fast"})  # fmt: skip
            assert refused.status_code == 401
            assert not any(name in refused.text for name in ("n1", "n2", "n3", "tiny", "lint"))
        big = http.post(url, headers=auth, content=b"x" * (9 * 1024 * 1024))
        assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"
        garbage = http.post(url, headers=auth, content=b"\x00{garbage")
        assert garbage.status_code == 400 and "JSON" in garbage.json()["error"]["message"]
        bad = http.post(
            url, headers={**auth, "x-swarmd-priority": "urgent"}, json={"model": "fast"}
        )
        assert bad.status_code == 400
        rebound = http.get(gw.base_url + "/models", headers={**auth, "host": "evil.example"})
        assert rebound.status_code == 403  # a web page's rebound name on a loopback gateway
        low = {**auth, "x-swarmd-priority": "low"}
        body = {"model": "fast", "messages": HI, "max_tokens": 4}
        assert http.post(url, headers=low, json=body).status_code == 200
    with socket.create_connection(("127.0.0.1", int(gw.base_url.split(":")[2][:-3]))) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        answer, _ = _chat(gw.client(), "fast")  # served meanwhile
    assert answer.choices[0].message.content.strip()


def test_a_key_past_its_daily_budget_is_refused_with_429(gw: Cluster) -> None:
    client = gw.client(key=SMALL_KEY)
    _chat(client, "fast", max_tokens=20)  # within budget when asked: it goes through
    with pytest.raises(openai.RateLimitError) as err:
        _chat(client, "fast")
    assert "budget" in str(err.value).lower()
    assert _chat(gw.client(), "fast")[0].choices  # other keys go on


# ---------------------------------------------------------------- last: kills n2


def test_sigkill_of_the_chosen_worker_before_its_first_token_completes_elsewhere(
    gw: Cluster,
) -> None:
    """Five requests at once: two held at n2's endpoint (its max_concurrency), the
    rest at n3 or queued on the coordinator. SIGKILL n2: every request is answered,
    once, by n3; none fails and none hangs."""
    gw.fast.faults.hold_s = 60.0  # n2's endpoint sits on the requests
    client = gw.client()
    results: list[dict[str, Any]] = [{} for _ in range(5)]

    def ask(out: dict[str, Any]) -> None:
        try:
            out["answer"] = _chat(client, "capability:lint")
        except Exception as exc:  # reported below
            out["error"] = exc

    askers = [threading.Thread(target=ask, args=(out,)) for out in results]
    for asker in askers:
        asker.start()
    wait_until(lambda: gw.fast.in_flight == 2, 20, what="two requests held at n2's endpoint")
    killed = time.monotonic()
    gw.nodes["n2"].kill()
    for asker in askers:
        asker.join(60)
    assert not any(a.is_alive() for a in askers), "a request hangs"
    assert all("error" not in r for r in results), results
    for r in results:
        answer, headers = r["answer"]
        assert headers["x-swarmd-node"] == "n3" and answer.choices[0].message.content.strip()
    assert len({r["answer"][1]["x-swarmd-task"] for r in results}) == 5  # one answer each
    print(f"all 5 answered by n3 {time.monotonic() - killed:.2f} s after n2 was killed")
