"""The upstream client's wire format (swarmd/http_wire.py), sans-I/O: answer heads,
the three body framings fed byte by byte, and what breaks the grammar."""

from __future__ import annotations

import pytest

from swarmd.http_wire import MAX_HEAD_BYTES, BodyReader, WireError, read_head, request_head


def _body(raw: bytes, *, step: int = 1) -> tuple[bytes, BodyReader, bytearray]:
    """Read an answer off ``raw`` fed ``step`` bytes at a time: (body, reader, rest)."""
    buffer, out = bytearray(), b""
    answer, body = None, None
    for at in range(0, len(raw), step):
        buffer += raw[at : at + step]
        if answer is None:
            answer = read_head(buffer)
            if answer is None:
                continue
            body = BodyReader(answer)
        assert body is not None
        out += body.take(buffer)
        if body.done:
            buffer += raw[at + step :]
            break
    assert body is not None
    return out, body, buffer


def test_a_request_head_is_written_out_and_checked() -> None:
    head = request_head("POST", "/v1/chat/completions", [("Host", "h:8"), ("X-A", " b ")])
    assert head == b"POST /v1/chat/completions HTTP/1.1\r\nHost: h:8\r\nX-A: b\r\n\r\n"
    for bad in ([("X-A", "b\r\nInjected: 1")], [("Bad Name", "1")], [("X-A", "caf\u00e9\u2603")]):
        with pytest.raises(WireError):
            request_head("POST", "/", bad)
    with pytest.raises(WireError):
        request_head("POST", "/a b", [])


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_a_content_length_body_ends_at_its_length_and_keeps_what_follows(step: int) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nContent-Length: 5\r\n\r\nhelloEXTRA"
    body, reader, rest = _body(raw, step=step)
    assert (body, reader.done, bytes(rest)) == (b"hello", True, b"EXTRA")


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_a_chunked_body_with_extensions_and_trailers(step: int) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"5;name=v\r\nfirst\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n"
    )
    body, reader, rest = _body(raw, step=step)
    assert (body, reader.done, bytes(rest)) == (b"first0123456789", True, b"")


def test_a_body_up_to_the_close_and_keep_alive() -> None:
    buffer = bytearray(b"HTTP/1.0 200 OK\r\nContent-Type: a/b\r\n\r\nsome")
    answer = read_head(buffer)
    assert answer is not None and (answer.framing, answer.keep_alive) == ("close", False)
    reader = BodyReader(answer)
    assert reader.take(buffer) == b"some" and not reader.done
    reader.at_eof()
    assert reader.done
    closing = read_head(
        bytearray(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    )
    assert closing is not None and not closing.keep_alive
    kept = read_head(bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    assert kept is not None and kept.keep_alive and BodyReader(kept).done


def test_answers_without_a_body() -> None:
    for status in (b"100 Continue", b"204 No Content", b"304 Not Modified"):
        answer = read_head(bytearray(b"HTTP/1.1 " + status + b"\r\nContent-Length: 9\r\n\r\n"))
        assert answer is not None and BodyReader(answer).done


def test_a_cut_short_body_is_an_error() -> None:
    buffer = bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nfour")
    answer = read_head(buffer)
    assert answer is not None
    reader = BodyReader(answer)
    assert reader.take(buffer) == b"four"
    with pytest.raises(WireError, match="before the answer ended"):
        reader.at_eof()


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    ],
)
def test_what_is_not_an_answer_head_is_an_error(raw: bytes) -> None:
    with pytest.raises(WireError):
        read_head(bytearray(raw))


def test_a_head_that_never_ends_is_an_error_past_the_limit() -> None:
    buffer = bytearray(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_HEAD_BYTES // 6))
    with pytest.raises(WireError, match="over"):
        read_head(buffer)


@pytest.mark.parametrize("chunks", [b"zz\r\n", b"3\r\nabcd\r\n", b"3\r\nabc\r\n" + b"1" * 5000])
def test_a_bad_chunk_is_an_error(chunks: bytes) -> None:
    buffer = bytearray(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
    answer = read_head(buffer)
    assert answer is not None
    with pytest.raises(WireError):
        BodyReader(answer).take(buffer)
