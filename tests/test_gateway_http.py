"""The gateway's HTTP layer in-process: API keys (constant-time, every key checked),
the [gateway] config, and the
passthrough executor against a real HTTP server standing in for an endpoint."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from swarmd.config import ConfigError, load
from swarmd.core.gateway import key_id
from swarmd.executors import ExecRequest, passthrough
from swarmd.gateway.auth import ApiKeys
from swarmd.web import WebServer

# ---------------------------------------------------------------- keys


def test_api_keys_accept_only_a_bearer_key_they_hold() -> None:
    keys = ApiKeys(["sk-one-0123456789", "sk-two-0123456789"])
    assert keys.check("Bearer sk-two-0123456789") == key_id("sk-two-0123456789")
    assert keys.check("bearer sk-one-0123456789") == key_id("sk-one-0123456789")
    for bad in (
        None,
        "",
        "Bearer",
        "Bearer sk-one",
        "Basic sk-one-0123456789",
        "sk-one-0123456789",
    ):
        assert keys.check(bad) is None
    assert ApiKeys([]).check(None) == "local" and not ApiKeys([]).required


# ---------------------------------------------------------------- config


def _load(tmp_path: Path, text: str, **overrides: Any) -> Any:
    path = tmp_path / "swarmd.toml"
    path.write_text(text)
    return load(path, overrides, state_dir=tmp_path)


def test_gateway_config_defaults_flags_and_keys_file(tmp_path: Path) -> None:
    cfg = _load(tmp_path, "")
    assert (cfg.gateway_port, cfg.gateway_bind, cfg.gateway_api_keys) == (None, "127.0.0.1", ())
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nsk-a-0123456789\n\nsk-b-0123456789\n")
    cfg = _load(
        tmp_path,
        '[gateway]\nport = 8000\nbind = "0.0.0.0"\napi_keys = ["sk-c"]\n'
        f'api_keys_file = "{keys}"\n',
        gateway_port=9000,
    )
    assert cfg.gateway_port == 9000 and cfg.gateway_bind == "0.0.0.0"
    assert cfg.gateway_api_keys == ("sk-c", "sk-a-0123456789", "sk-b-0123456789")
    assert "sk-a" not in repr(cfg)  # never logged with the config


@pytest.mark.parametrize(
    ("text", "overrides", "why"),
    [
        ('[gateway]\nbind = "0.0.0.0"\n', {}, "api_keys"),
        ("", {"gateway_bind": "192.168.1.5"}, "not a loopback address"),
        ("[gateway]\nport = 70000\n", {}, "port 70000"),
        ('[gateway]\napi_keys_file = "/nonexistent/keys"\n', {}, "cannot read"),
        ("[gateway]\napi_keys = [1]\n", {}, "api_keys"),
        ("[gateway]\nbudjet = 1\n", {}, "unknown key"),
    ],
)
def test_gateway_config_errors_are_clear(
    tmp_path: Path, text: str, overrides: dict[str, Any], why: str
) -> None:
    with pytest.raises(ConfigError, match=why):
        _load(tmp_path, text, **overrides)


def test_a_non_loopback_bind_with_the_gateway_off_needs_no_keys(tmp_path: Path) -> None:
    assert _load(tmp_path, '[gateway]\nport = 0\nbind = "0.0.0.0"\n').gateway_port == 0


# ---------------------------------------------------------------- passthrough


class Endpoint:
    """A real HTTP server standing in for an OpenAI-compatible endpoint."""

    def __init__(self, status: int = 200, events: list[str] | None = None) -> None:
        self.status, self.events, self.bodies = status, events, list[dict[str, Any]]()

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.bodies.append(body)
        if self.status != 200:
            return JSONResponse({"error": {"message": "nope"}}, self.status)
        if self.events is not None:
            return StreamingResponse(self._stream(), media_type="text/event-stream")
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        return JSONResponse({"model": body["model"], "choices": [], "usage": usage})

    async def _stream(self) -> AsyncIterator[bytes]:
        for event in self.events or []:
            yield f"data: {event}\n\n".encode()


async def _run(endpoint: Endpoint, request: dict[str, Any]) -> tuple[Any, list[bytes]]:
    app = Starlette(routes=[Route("/v1/chat/completions", endpoint.chat, methods=["POST"])])
    server = WebServer(app, "127.0.0.1", 0)
    await server.start()
    relayed: list[bytes] = []
    try:
        req = ExecRequest(
            task_id="t", subtask_id="main", attempt=1, kind="llm", api="chat", request=request,
            endpoint=f"http://127.0.0.1:{server.port}/v1", model="upstream-id",
        )  # fmt: skip
        result = await passthrough.run(req, relayed.append)
    finally:
        await server.stop()
    return result, relayed


def test_passthrough_sends_the_body_with_only_the_model_replaced() -> None:
    asyncio.run(_test_passthrough_sends_the_body_with_only_the_model_replaced())


async def _test_passthrough_sends_the_body_with_only_the_model_replaced() -> None:
    endpoint = Endpoint()
    body = {"model": "capability:lint", "messages": [], "tools": [{"x": 1}], "logprobs": True}
    result, relayed = await _run(endpoint, body)
    assert endpoint.bodies == [{**body, "model": "upstream-id"}]
    assert result.ok and not relayed
    assert json.loads(result.output)["model"] == "capability:lint"
    assert result.usage["total_tokens"] == 5 and not result.usage["estimated"]


def test_passthrough_relays_events_with_the_model_set_back() -> None:
    asyncio.run(_test_passthrough_relays_events_with_the_model_set_back())


async def _test_passthrough_relays_events_with_the_model_set_back() -> None:
    chunk = {"model": "upstream-id", "choices": [{"delta": {"content": "hi"}}]}
    endpoint = Endpoint(events=[json.dumps(chunk)] * 3 + ["[DONE]"])
    result, relayed = await _run(endpoint, {"model": "fast", "messages": [], "stream": True})
    events = b"".join(relayed).split(b"\n\n")
    assert [json.loads(e[6:])["model"] for e in events if e] == ["fast"] * 3
    assert result.ok and result.usage["completion_tokens"] == 3
    assert result.usage["ttft_s"] is not None


def test_an_answer_naming_the_asked_model_passes_as_it_came() -> None:
    asyncio.run(_test_an_answer_naming_the_asked_model_passes_as_it_came())


async def _test_an_answer_naming_the_asked_model_passes_as_it_came() -> None:
    """Asked by its upstream id, nothing needs setting back: the bytes go on as the
    endpoint wrote them (an event whose data spans lines is still one line out)."""
    endpoint = Endpoint()
    result, _ = await _run(endpoint, {"model": "upstream-id", "messages": []})
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    as_sent = JSONResponse({"model": "upstream-id", "choices": [], "usage": usage}).body
    assert result.ok and result.output == bytes(as_sent).decode()
    one = '{"model":"upstream-id",  "choices":[{"delta":{"content":"hi"}}]}'
    split = '{"model": "upstream-id",\ndata: "choices": [{"delta": {"content": "yo"}}]}'
    endpoint = Endpoint(events=[one, split, "[DONE]"])
    result, relayed = await _run(endpoint, {"model": "upstream-id", "stream": True})
    events = b"".join(relayed).split(b"\n\n")
    assert events[0] == b"data: " + one.encode()
    assert (
        b"\n" not in events[1]
        and json.loads(events[1][6:])["choices"][0]["delta"]["content"] == "yo"
    )
    assert result.ok and result.usage["completion_tokens"] == 2


@pytest.mark.parametrize(
    ("status", "events", "app_failed"),
    [
        (503, None, False),  # the node's failure: tried elsewhere
        (429, None, False),
        (400, None, True),  # the request's own: back to the client as it came
        (200, ['{"choices": [{"delta": {"content": "a"}}]}'], False),  # no [DONE]
    ],
)
def test_passthrough_failures(status: int, events: list[str] | None, app_failed: bool) -> None:
    asyncio.run(_test_passthrough_failures(status, events, app_failed))


async def _test_passthrough_failures(
    status: int, events: list[str] | None, app_failed: bool
) -> None:
    endpoint = Endpoint(status=status, events=events)
    result, _ = await _run(endpoint, {"model": "m", "messages": [], "stream": events is not None})
    assert not result.ok and result.app_failed is app_failed
    if status == 400:
        assert result.usage["status"] == 400 and "nope" in result.output


def test_passthrough_connect_error_is_a_node_failure() -> None:
    asyncio.run(_test_passthrough_connect_error_is_a_node_failure())


async def _test_passthrough_connect_error_is_a_node_failure() -> None:
    req = ExecRequest(
        task_id="t", subtask_id="main", attempt=1, kind="llm", api="chat",
        request={"model": "m"}, endpoint="http://127.0.0.1:9/v1", model="m",
    )  # fmt: skip
    result = await passthrough.run(req)
    assert result.error and not result.app_failed
