"""LLM executor: against a real llama.cpp server (llama-cpp-python + a tiny random GGUF)
and against a scripted fake HTTP server for retries, errors and timeouts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from swarmd.executors import ExecRequest, Limits, execute, llm
from swarmd.executors.llm import LlmError, RetryPolicy, list_models, measure_latency
from tests.llm_server import LlamaServer, free_port, llama_python, llama_server

pytestmark = pytest.mark.timeout(120)

FAST_RETRY = RetryPolicy(backoff_s=0.01)


def llm_req(endpoint: str, model: str = "m", **kw: Any) -> ExecRequest:
    kw.setdefault("prompt", "hello swarm")
    return ExecRequest(
        task_id="t1", subtask_id="ask", attempt=1, kind="llm", endpoint=endpoint, model=model, **kw
    )


# ---- a real llama.cpp server ---------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    python, why = llama_python()
    if python is None:
        pytest.skip(f"llama-cpp-python is not available ({why}); CI installs it")
    with llama_server(python, tmp_path_factory.mktemp("llama")) as server:
        print(
            f"\ntiny GGUF {server.gguf_bytes} bytes written in {server.gguf_seconds:.2f}s; "
            f"llama server ready in {server.start_seconds:.2f}s"
        )
        yield server


def test_streaming_completion(llama: LlamaServer) -> None:
    lines: list[str] = []
    req = llm_req(llama.endpoint, llama.model, system="You are terse.", max_tokens=12)
    res = asyncio.run(llm.run(req, progress=lines.append))
    assert res.ok, res.error
    assert not res.app_failed and res.exit_code is None
    assert res.output and len(res.output.split()) == 12  # one word per token
    usage = res.usage or {}
    print(f"streamed: {usage}")
    # llama-cpp-python sends no usage chunk: counted and estimated
    assert usage["completion_tokens"] == 12 and usage["estimated"] is True
    assert usage["prompt_tokens"] == len("You are terse.hello swarm") // 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + 12
    assert usage["tokens_per_s"] > 0
    assert 0 < usage["ttft_s"] <= usage["seconds"]
    assert usage["finish_reason"] == "length" and usage["model"] == llama.model
    assert usage["tries"] == 1


def test_non_streaming_completion(llama: LlamaServer) -> None:
    res = asyncio.run(llm.run(llm_req(llama.endpoint, llama.model, max_tokens=5), stream=False))
    assert res.ok, res.error
    usage = res.usage or {}
    print(f"non-streamed: {usage}")
    assert usage["estimated"] is False  # the server's own counts
    assert usage["completion_tokens"] == 5 and usage["prompt_tokens"] > 0
    assert usage["ttft_s"] is None and usage["tokens_per_s"] > 0
    assert res.output and len(res.output.split()) == 5


@pytest.mark.parametrize("max_tokens", [1, 3])
def test_max_tokens_is_respected(llama: LlamaServer, max_tokens: int) -> None:
    res = asyncio.run(llm.run(llm_req(llama.endpoint, llama.model, max_tokens=max_tokens)))
    assert res.ok, res.error
    assert (res.usage or {})["completion_tokens"] <= max_tokens
    assert len((res.output or "").split()) <= max_tokens


def test_unknown_route_is_an_application_error(llama: LlamaServer) -> None:
    res = asyncio.run(llm.run(llm_req(llama.endpoint + "/nope", llama.model), retry=FAST_RETRY))
    assert res.app_failed and (res.error or "").startswith("HTTP 404 from ")
    assert res.output is None


def test_bad_request_is_an_application_error(llama: LlamaServer) -> None:
    # a prompt longer than the context: llama-cpp-python answers 400 (when not streaming)
    req = llm_req(llama.endpoint, llama.model, prompt="swarm " * 600)
    res = asyncio.run(llm.run(req, stream=False))
    assert res.app_failed, res
    assert (res.error or "").startswith("HTTP 400 from "), res.error
    assert "maximum context length is 512 tokens" in (res.error or "")


def test_a_stream_that_breaks_off_is_retried(llama: LlamaServer) -> None:
    # streaming, llama-cpp-python answers 200 and then fails inside the stream
    req = llm_req(llama.endpoint, llama.model, prompt="swarm " * 600)
    res = asyncio.run(llm.run(req, retry=FAST_RETRY))
    assert not res.app_failed and "ended before it was complete" in (res.error or "")
    assert "gave up after 3 tries" in (res.error or "")


def test_execute_dispatches_llm(llama: LlamaServer, tmp_path: Path) -> None:
    req = llm_req(llama.endpoint, llama.model, max_tokens=2)
    res = asyncio.run(execute(req, workdir_root=tmp_path, allow_shell=False))
    assert res.ok and len((res.output or "").split()) == 2


def test_measure_latency_and_list_models(llama: LlamaServer) -> None:
    latency = asyncio.run(measure_latency(llama.endpoint, llama.model, timeout=5.0))
    print(f"latency: {latency}")
    assert isinstance(latency, float) and 0 < latency < 5
    assert asyncio.run(list_models(llama.endpoint)) == [llama.model]


def test_latency_and_models_of_an_unreachable_endpoint() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/v1"
    assert asyncio.run(measure_latency(endpoint, "m", timeout=2.0)) is None
    with pytest.raises(LlmError, match="ConnectError"):
        asyncio.run(list_models(endpoint, timeout=2.0))


# ---- a scripted fake server ----------------------------------------------------------

Respond = Callable[[asyncio.StreamWriter], Awaitable[None]]


@dataclass
class FakeServer:
    """Answers the n-th request with the n-th scripted response (the last one repeats)."""

    script: list[Respond]
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(
                {
                    "method": method,
                    "path": path,
                    "headers": headers,
                    "json": json.loads(body or b"null"),
                }
            )
            respond = self.script[min(len(self.requests), len(self.script)) - 1]
            await respond(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def status(code: int, body: str = "", headers: dict[str, str] | None = None) -> Respond:
    async def respond(writer: asyncio.StreamWriter) -> None:
        data = body.encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(
            f"HTTP/1.1 {code} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n{extra}Connection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()

    return respond


def sse(*events: str | float, usage: dict[str, int] | None = None) -> Respond:
    """An event stream: strings are content deltas, floats are pauses (seconds)."""

    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            b": a comment line\r\n\r\n"
        )
        for event in events:
            if isinstance(event, float):
                await writer.drain()
                await asyncio.sleep(event)
                continue
            chunk = {"model": "fake", "choices": [{"index": 0, "delta": {"content": event}}]}
            writer.write(f"data: {json.dumps(chunk)}\n\n".encode())
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        writer.write(f"data: {json.dumps(done)}\n\ndata: not json\n\n".encode())
        if usage is not None:
            writer.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()

    return respond


def with_fake(script: list[Respond], coro: Callable[[FakeServer], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        fake = FakeServer(script)
        server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
        fake.port = server.sockets[0].getsockname()[1]
        async with server:
            return fake, await coro(fake)

    return asyncio.run(main())


USAGE = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}


def test_request_body_always_carries_max_tokens() -> None:
    fake, res = with_fake(
        [sse("a", "b", "c", usage=USAGE)],
        lambda f: llm.run(llm_req(f.endpoint, "qwen", system="sys", max_tokens=42)),
    )
    assert res.ok and res.output == "abc"
    sent = fake.requests[0]
    assert sent["method"] == "POST" and sent["path"] == "/v1/chat/completions"
    assert sent["json"] == {
        "model": "qwen",
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "hello swarm"},
        ],
        "max_tokens": 42,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert res.usage is not None
    assert {k: res.usage[k] for k in USAGE} == USAGE and res.usage["estimated"] is False
    assert res.usage["finish_reason"] == "stop" and res.usage["model"] == "fake"


def test_a_server_refusing_stream_options_is_asked_without() -> None:
    fake, res = with_fake(
        [status(422, '{"detail": "extra field: stream_options"}'), sse("ok")],
        lambda f: llm.run(llm_req(f.endpoint)),
    )
    assert res.ok and res.output == "ok" and (res.usage or {})["tries"] == 1
    assert "stream_options" in fake.requests[0]["json"]
    assert "stream_options" not in fake.requests[1]["json"]
    assert fake.requests[1]["json"]["stream"] is True


def test_503_twice_then_200_is_retried() -> None:
    lines: list[str] = []
    fake, res = with_fake(
        [status(503, '{"error": "loading"}'), status(503), sse("ok", usage=USAGE)],
        lambda f: llm.run(llm_req(f.endpoint), progress=lines.append),
    )
    assert res.ok and res.output == "ok", res.error
    assert len(fake.requests) == 3 and (res.usage or {})["tries"] == 3
    retried = [line for line in lines if "retrying" in line]
    assert len(retried) == 2 and retried[0].startswith("HTTP 503 from")
    assert "retrying in 0.5s" in retried[0] and "retrying in 1.0s" in retried[1]
    assert 1.4 < res.seconds < 5.0  # 0.5 s + 1.0 s of backoff


def test_429_retry_after_is_honoured() -> None:
    fake, res = with_fake(
        [status(429, "slow down", {"Retry-After": "1"}), sse("ok")],
        lambda f: llm.run(llm_req(f.endpoint)),
    )
    assert res.ok and len(fake.requests) == 2
    assert 0.95 < res.seconds < 3.0  # Retry-After (1 s), not the 0.5 s backoff


def test_retry_after_is_capped() -> None:
    policy = RetryPolicy(max_retry_after_s=0.2)
    _, res = with_fake(
        [status(429, "", {"Retry-After": "3600"}), sse("ok")],
        lambda f: llm.run(llm_req(f.endpoint), retry=policy),
    )
    assert res.ok and res.seconds < 1.5


def test_server_errors_give_up_as_a_node_failure() -> None:
    fake, res = with_fake(
        [status(500, "boom")], lambda f: llm.run(llm_req(f.endpoint), retry=FAST_RETRY)
    )
    assert len(fake.requests) == 3
    assert not res.app_failed  # another node may do better
    assert "HTTP 500" in (res.error or "") and "gave up after 3 tries" in (res.error or "")


def test_4xx_is_an_application_error_and_not_retried() -> None:
    body = '{"error": {"message": "model \\"m\\" not found"}}' + " " * 2000
    fake, res = with_fake([status(400, body)], lambda f: llm.run(llm_req(f.endpoint)))
    assert len(fake.requests) == 1
    assert res.app_failed
    assert (res.error or "").startswith("HTTP 400 from http://127.0.0.1:")
    assert 'model \\"m\\" not found' in (res.error or "") and len(res.error or "") < 700


def test_connection_refused_is_retried_then_a_node_failure() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/v1"
    res = asyncio.run(llm.run(llm_req(endpoint), retry=FAST_RETRY))
    assert not res.app_failed
    assert "ConnectError" in (res.error or "") and "3 tries" in (res.error or "")


def test_overall_timeout_keeps_the_partial_output() -> None:
    _, res = with_fake(
        [sse("par", "tial", 10.0, "never")],
        lambda f: llm.run(llm_req(f.endpoint, timeout_s=0.5)),
    )
    assert res.app_failed and res.error == "timed out after 0.5s"
    assert res.output == "partial" and (res.usage or {})["completion_tokens"] == 2
    assert res.seconds < 2.0


def test_a_stalled_stream_is_retried_after_the_read_timeout() -> None:
    fake, res = with_fake(
        [sse("a", 5.0, "b"), sse("fresh", usage=USAGE)],
        lambda f: llm.run(llm_req(f.endpoint), read_timeout_s=0.3),
    )
    assert res.ok and res.output == "fresh" and len(fake.requests) == 2


def test_progress_about_every_second() -> None:
    lines: list[str] = []
    _, res = with_fake(
        [sse("a", 0.6, "b", 0.6, "c")],
        lambda f: llm.run(llm_req(f.endpoint), progress=lines.append),
    )
    assert res.ok and res.output == "abc"
    assert lines and lines[0].endswith("tokens, 1s")


def test_an_error_event_in_the_stream_is_an_application_error() -> None:
    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
            b'data: {"error": {"message": "context overflow"}}\n\n'
        )
        await writer.drain()

    _, res = with_fake([respond], lambda f: llm.run(llm_req(f.endpoint)))
    assert res.app_failed and "context overflow" in (res.error or "")


def test_output_over_the_limit_is_cut() -> None:
    _, res = with_fake(
        [sse("x" * 600, "y" * 600, "z")],
        lambda f: llm.run(llm_req(f.endpoint), limits=Limits(max_output_bytes=1000)),
    )
    assert res.ok and res.truncated
    assert res.output == "x" * 600 + "y" * 400


def test_missing_profile_or_prompt() -> None:
    res = asyncio.run(llm.run(ExecRequest("t", "s", 1, "llm", prompt="hi")))
    assert not res.app_failed and "no [models.NAME] profile" in (res.error or "")
    res = asyncio.run(llm.run(llm_req("http://127.0.0.1:9/v1", prompt=None)))
    assert res.app_failed and "without a prompt" in (res.error or "")


def test_retry_policy_delays() -> None:
    policy = RetryPolicy()
    assert [policy.delay(n, None) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert policy.delay(1, 3.0) == 3.0 and policy.delay(1, 60.0) == 10.0


def test_retry_after_parsing() -> None:
    assert llm._retry_after("2") == 2.0
    assert llm._retry_after(None) is None and llm._retry_after("soon") is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 5))
    assert 3.0 < (llm._retry_after(later) or 0) <= 5.0


def test_a_deeply_nested_answer_is_a_failure_not_an_exception() -> None:
    """run() never raises: JSON nested past the recursion limit is just not JSON."""
    deep = "[" * 100_000
    _, res = with_fake([status(200, deep)], lambda f: llm.run(llm_req(f.endpoint)))
    assert res.app_failed and "is not JSON" in (res.error or ""), res
