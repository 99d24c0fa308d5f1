"""An HTTP request must arrive whole in time (`marketplace.http.read_deadline`): half-sent
headers or a body shorter than its Content-Length no longer hold a connection of the node's
process for ever, while a slow answer or a kept-alive connection between requests is fine."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from marketplace.http.read_deadline import HEAD_LIMIT_BYTES, ReadDeadlineH11
from marketplace.http.server import HttpServer

DEADLINE_S = 0.5


async def _slow(request: Request) -> PlainTextResponse:
    body = await request.body()
    await asyncio.sleep(DEADLINE_S * 3)  # answering may take longer than reading
    return PlainTextResponse(f"read {len(body)}")


@pytest.fixture
def server(monkeypatch) -> Iterator[HttpServer]:
    monkeypatch.setattr(ReadDeadlineH11, "read_deadline_s", DEADLINE_S)
    started = HttpServer(Starlette(routes=[Route("/slow", _slow, methods=["POST"])])).start()
    yield started
    started.stop()


def _connect(server: HttpServer) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return connection


def _closed_by_server(connection: socket.socket) -> bool:
    """Whether the server closes the connection (reads until EOF, 10 s at most)."""
    try:
        while connection.recv(4096):
            pass
        return True
    except (TimeoutError, ConnectionResetError):
        return False


def test_half_sent_headers_and_short_bodies_are_closed(server: HttpServer):
    started = time.monotonic()
    half_headers, short_body, silent = _connect(server), _connect(server), _connect(server)
    half_headers.sendall(b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
    short_body.sendall(b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n"
                       b"only ten b")
    assert all(_closed_by_server(c) for c in (half_headers, short_body, silent))
    assert time.monotonic() - started < 10
    for connection in (half_headers, short_body, silent):
        connection.close()


def test_a_whole_request_is_answered_however_long_the_answer_takes_and_kept_alive(
        server: HttpServer):
    connection = _connect(server)
    request = b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello"
    for _ in range(2):  # a second request on the kept-alive connection, after a pause
        connection.sendall(request)
        answer = b""
        while b"read 5" not in answer:
            piece = connection.recv(4096)
            assert piece, answer
            answer += piece
        assert answer.startswith(b"HTTP/1.1 200")
        time.sleep(DEADLINE_S / 2)
    connection.close()


def test_a_request_pipelined_behind_an_answered_one_has_the_same_deadline(
        server: HttpServer):
    """A whole request and, in the same write, the head of a second whose body never comes:
    the second was parsed after the first's answer, where no deadline started."""
    connection = _connect(server)
    connection.sendall(
        b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nonly ten b")
    assert _closed_by_server(connection)
    connection.close()


def _answer_head(connection: socket.socket) -> bytes:
    """The status line and headers the server answered before closing."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        piece = connection.recv(4096)
        if not piece:
            break
        answer += piece
    return answer


def test_a_head_over_the_limit_is_431_or_414_and_a_malformed_one_400(server: HttpServer):
    oversized = _connect(server)  # the head's first part already over the limit, then more
    oversized.sendall(b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nPayment-Signature: "
                      + b"A" * (HEAD_LIMIT_BYTES + 100))
    time.sleep(0.2)
    with contextlib.suppress(OSError):  # the server may have answered and closed already
        oversized.sendall(b"A" * 100 + b"\r\nContent-Length: 0\r\n\r\n")
    head = _answer_head(oversized)
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), head
    assert b"connection: close" in head.lower()
    assert _closed_by_server(oversized)
    malformed = _connect(server)
    malformed.sendall(b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n\r\n")
    assert _answer_head(malformed).startswith(b"HTTP/1.1 400"), "a malformed head stays 400"
    long_line = _connect(server)  # the request line alone over the limit
    long_line.sendall(b"POST /slow?" + b"q" * (HEAD_LIMIT_BYTES + 100))
    assert _answer_head(long_line).startswith(b"HTTP/1.1 414 URI Too Long\r\n")
    long_line.close()
    within = _connect(server)  # a large head under the limit is read as usual
    within.sendall(b"POST /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nPayment-Signature: "
                   + b"A" * (HEAD_LIMIT_BYTES // 2) + b"\r\nContent-Length: 5\r\n\r\nhello")
    assert _answer_head(within).startswith(b"HTTP/1.1 200")
    for connection in (oversized, malformed, within):
        connection.close()
