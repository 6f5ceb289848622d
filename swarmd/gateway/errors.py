"""OpenAI-shaped error responses: ``{"error": {"message", "type", "code"}}``."""

from __future__ import annotations

import json
from typing import Final

from starlette.responses import Response

from ..core.gateway import GatewayError

UNAUTHORIZED: Final = GatewayError(
    401,
    "Incorrect API key provided. Pass it as 'Authorization: Bearer KEY'.",
    "invalid_request_error",
    "invalid_api_key",
)


def error_response(error: GatewayError, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(error.body()),
        status_code=error.status,
        media_type="application/json",
        headers=headers,
    )


_SERVER_CODES: Final = {400: "bad_request", 408: "timeout", 413: "too_large", 503: "busy"}


def error_body(status: int, message: str) -> tuple[str, bytes]:
    """What the HTTP server answers itself (413, 408, 400 for a malformed request,
    503 when full), OpenAI-shaped."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    code = _SERVER_CODES.get(status, str(status))
    body = {"error": {"message": message, "type": kind, "code": code}}
    return "application/json", json.dumps(body).encode()


def error_event(message: str, type_: str = "server_error", code: str | None = None) -> bytes:
    """An error as a server-sent event, for a stream that cannot go on."""
    body = {"error": {"message": message, "type": type_, "code": code}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def too_large(limit: int) -> GatewayError:
    return GatewayError(
        413, f"The request body is over {limit} bytes.", "invalid_request_error", "too_large"
    )


def unavailable(message: str, code: str = "unavailable") -> GatewayError:
    return GatewayError(503, message, "server_error", code)


def upstream_failed(message: str) -> GatewayError:
    return GatewayError(502, message, "server_error", "upstream_failed")
