"""The small HTTP/1.x pieces the dashboard's server needs: a strict parser of a request
head, the response head with its security headers, and loopback checks. No bodies, one
request per connection."""

from __future__ import annotations

import ipaddress
import json
import re
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec

MAX_HEADERS = 64
TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}

REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'",
    ),
)


def is_loopback(host: str) -> bool:
    """True for a loopback address or ``localhost``; False for anything else."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_access(port: str, bind: str, token: str | None) -> None:
    """The rule of every opt-in HTTP port (``port``: its config prefix, e.g. "metrics"):
    beyond loopback only with a token, and a token hard to guess. ValueError if not."""
    if token is not None and (len(token) < 16 or not token.isprintable() or " " in token):
        raise ValueError(
            f"{port}_token: use at least 16 printable characters without spaces "
            "(for example the output of `openssl rand -hex 16`)"
        )
    if token is None and not is_loopback(bind):
        raise ValueError(
            f"{port}_bind {bind!r} is not a loopback address: set {port}_token too "
            "(every request must then carry it, as Authorization: Bearer or ?token=)"
        )


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request(msgspec.Struct):
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


def parse_head(head: bytes) -> Request:
    """Parse a request line and headers (up to and including the blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise BadRequest(400, "undecodable request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not TOKEN_RE.match(method):
        raise BadRequest(400, "malformed method")
    if not re.fullmatch(r"HTTP/\d\.\d", version):
        raise BadRequest(400, "malformed HTTP version")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest(505, f"{version} is not supported")
    if not target.startswith("/") or any(c <= " " or c == "\x7f" for c in target):
        raise BadRequest(400, "malformed request target")
    headers: dict[str, str] = {}
    fields = [line for line in lines[1:] if line]
    if len(fields) > MAX_HEADERS:
        raise BadRequest(431, "too many header fields")
    for line in fields:
        name, sep, value = line.partition(":")
        if not sep or not TOKEN_RE.match(name):
            raise BadRequest(400, "malformed header field")
        key = name.lower()
        value = value.strip(" \t")
        if key in headers and key in ("host", "authorization", "content-length"):
            raise BadRequest(400, f"repeated {name} header")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if version == "HTTP/1.1" and "host" not in headers:
        raise BadRequest(400, "missing Host header")
    if "transfer-encoding" in headers:
        raise BadRequest(400, "request bodies are not accepted")
    length = headers.get("content-length", "0")
    if not length.isdigit():
        raise BadRequest(400, "malformed Content-Length")
    if int(length) > 0:
        raise BadRequest(413, "request bodies are not accepted")
    split = urlsplit(target)
    try:
        query = parse_qs(split.query, keep_blank_values=True, max_num_fields=32)
    except ValueError:
        raise BadRequest(400, "malformed query") from None
    return Request(method=method, path=unquote(split.path), query=query, headers=headers)


def host_name(host: str) -> str:
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def response_head(
    status: int,
    content_type: str,
    length: int | None,
    headers: list[tuple[str, str]] | None = None,
) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}"]
    lines.append(f"Content-Type: {content_type}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.append("Connection: close")
    lines += [f"{k}: {v}" for k, v in (*SECURITY_HEADERS, *(headers or []))]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
