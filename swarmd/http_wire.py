"""HTTP/1.1 on the wire for the gateway's upstream client (swarmd/http_client.py),
sans-I/O: a request head written out, an answer's head read, its body unframed.

    head = request_head("POST", "/v1/chat/completions", [("Host", "h:80"), ...])
    answer = read_head(buffer)         # None: more bytes needed; consumes the head
    body = BodyReader(answer)
    data = body.take(buffer)           # the body's bytes in ``buffer`` (consumed)
    body.done                          # its end was read
    body.at_eof()                      # the server closed: ends a close-framed body

An answer's body is framed by ``Transfer-Encoding: chunked``, else ``Content-Length``,
else by the server closing the connection (HTTP/1.0, or neither header); 1xx, 204 and
304 answers have none. Whatever breaks the grammar (a status line that is not
HTTP/1.x, a header line without a name, a bad chunk size, a head over
MAX_HEAD_BYTES, conflicting lengths) is a :class:`WireError`. Written for one client
that only POSTs: no pipelining, no upgrades.

A general library (h11) did this at about 0.1 ms of CPU per request on this project's
reference machine; the gateway's hop to the model server pays it on every request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

MAX_HEAD_BYTES: Final = 64 * 1024
MAX_CHUNK_LINE: Final = 4096  # a chunk's size line with its extensions, or a trailer line

_TOKEN: Final = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_VALUE_BAD: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET: Final = re.compile(r"[\x21-\x7e]+")
_STATUS: Final = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: [^\r\n]*)?")
_HEAD_END: Final = re.compile(rb"\r?\n\r?\n")
_LINE: Final = re.compile(rb"\r?\n")
_CHUNK_SIZE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")

Framing = Literal["none", "length", "chunked", "close"]


class WireError(Exception):
    """What came (or would go) is not HTTP/1.1 as this client speaks it."""


def request_head(method: str, target: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """The request line and header fields, checked (no field or target can smuggle a
    line break into the head)."""
    if not _TARGET.fullmatch(target):
        raise WireError(f"bad request target {target!r}")
    lines = [f"{method} {target} HTTP/1.1"]
    for name, value in headers:
        value = value.strip(" \t")
        if not _TOKEN.fullmatch(name) or _VALUE_BAD.search(value):
            raise WireError(f"bad header field {name!r}")
        lines.append(f"{name}: {value}")
    lines += ["", ""]
    try:
        return "\r\n".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        raise WireError("a header field is not latin-1") from None


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer's head."""

    status: int
    headers: dict[str, str]  # lower-case names; a repeated field keeps its last value
    framing: Framing
    length: int  # framing "length": the body's size
    keep_alive: bool  # the connection may carry another request after this answer


def read_head(buffer: bytearray) -> Answer | None:
    """The answer head at the start of ``buffer`` (removed from it), or None while it
    has not all come. WireError if it is not one."""
    end = _HEAD_END.search(buffer)
    if end is None:
        if len(buffer) > MAX_HEAD_BYTES:
            raise WireError(f"an answer head over {MAX_HEAD_BYTES} bytes")
        return None
    if end.start() > MAX_HEAD_BYTES:
        raise WireError(f"an answer head over {MAX_HEAD_BYTES} bytes")
    lines = _LINE.split(bytes(buffer[: end.start()]))
    del buffer[: end.end()]
    status = _STATUS.fullmatch(lines[0])
    if status is None:
        raise WireError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    minor, code = int(status[1]), int(status[2])
    headers: dict[str, str] = {}
    lengths: set[str] = set()
    for line in lines[1:]:
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise WireError(f"a bad header line: {line[:80]!r}")
        name, value = name.lower(), value.strip(" \t")
        if name == "content-length":
            lengths.add(value)
        headers[name] = value
    connection = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = minor >= 1 and "close" not in connection
    framing, length = _framing(code, headers, lengths)
    return Answer(code, headers, framing, length, keep_alive and framing != "close")


def _framing(status: int, headers: dict[str, str], lengths: set[str]) -> tuple[Framing, int]:
    if status < 200 or status in (204, 304):
        return "none", 0
    coding = headers.get("transfer-encoding")
    if coding is not None:
        last = coding.split(",")[-1].strip().lower()
        return ("chunked", 0) if last == "chunked" else ("close", 0)
    if lengths:
        if len(lengths) > 1 or not next(iter(lengths)).isdigit():
            raise WireError(f"a bad Content-Length: {sorted(lengths)}")
        return "length", int(next(iter(lengths)))
    return "close", 0


class BodyReader:
    """An answer's body as its bytes arrive."""

    def __init__(self, answer: Answer) -> None:
        self.framing = answer.framing
        self.left = answer.length  # "length": bytes to come; "chunked": of this chunk
        self.state = "size"  # chunked: size, data, data-end, trailer
        self.done = self.framing == "none" or (self.framing == "length" and self.left == 0)

    def take(self, buffer: bytearray) -> bytes:
        """The body's bytes in ``buffer`` (removed from it); b"" if none yet."""
        if self.done:
            return b""
        if self.framing == "close":
            data = bytes(buffer)
            buffer.clear()
            return data
        if self.framing == "length":
            data = bytes(buffer[: self.left])
            del buffer[: len(data)]
            self.left -= len(data)
            self.done = self.left == 0
            return data
        pieces: list[bytes] = []
        while not self.done and self._chunked(buffer, pieces):
            pass
        return b"".join(pieces)

    def _chunked(self, buffer: bytearray, pieces: list[bytes]) -> bool:
        """One step of the chunked grammar; False when it needs more bytes."""
        if self.state == "data":
            if not buffer:
                return False
            data = bytes(buffer[: self.left])
            del buffer[: len(data)]
            pieces.append(data)
            self.left -= len(data)
            if self.left == 0:
                self.state = "data-end"
            return True
        line = _line(buffer)
        if line is None:
            return False
        if self.state == "data-end":
            if line:
                raise WireError("a chunk longer than its size")
            self.state = "size"
        elif self.state == "size":
            size = _CHUNK_SIZE.fullmatch(line)
            if size is None:
                raise WireError(f"a bad chunk size line: {line[:80]!r}")
            self.left = int(size[1], 16)
            self.state = "data" if self.left else "trailer"
        elif not line:  # the blank line after the trailer fields
            self.done = True
        return True

    def at_eof(self) -> None:
        """The server closed the connection: the end of a body framed by it, else
        WireError (the answer was cut short)."""
        if self.framing == "close":
            self.done = True
        elif not self.done:
            raise WireError("the server closed the connection before the answer ended")


def _line(buffer: bytearray) -> bytes | None:
    """One CRLF-ended line off ``buffer`` (without its end), or None if not all here."""
    end = buffer.find(b"\n")
    if end < 0:
        if len(buffer) > MAX_CHUNK_LINE:
            raise WireError("a chunk size or trailer line too long")
        return None
    line = bytes(buffer[:end]).removesuffix(b"\r")
    del buffer[: end + 1]
    return line
