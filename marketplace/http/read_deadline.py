"""An HTTP/1.1 connection must send each request whole within `REQUEST_READ_S`.

uvicorn's h11 protocol starts no timer until it has answered a first request, and nothing
bounds how long a request takes to arrive: a client that sends half its headers, or fewer body
bytes than its Content-Length, held its connection (a file descriptor of the node's process,
shared with gRPC and SQLite) for ever. Here a deadline starts with a connection and with each
request's first bytes (or with a request pipelined behind one just answered), and ends once
the request has been read whole; past it the connection is closed. Between requests uvicorn's
own keep-alive timeout (5 s) applies. A response streamed for long after its request
(server-sent events) is not affected.

A request head that outgrows h11's buffer (`HEAD_LIMIT_BYTES` received and still incomplete:
a PAYMENT-SIGNATURE of 100 KB, say) is answered 431 Request Header Fields Too Large (414 URI Too
Long when the request line alone is that long), HTTP's own statuses for them, where uvicorn
answers every refusal of h11's 400 "Invalid HTTP request received.".
"""

from __future__ import annotations

import asyncio

import h11
from h11._connection import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE
from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_READ_S = 10.0
HEAD_LIMIT_BYTES = DEFAULT_MAX_INCOMPLETE_EVENT_SIZE  # uvicorn's, unless configured
_READ_WHOLE = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)


class ReadDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol, with the deadline above."""

    read_deadline_s = REQUEST_READ_S
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self.read_deadline_s, self._too_slow)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in _READ_WHOLE:
            self._stop_deadline()
        elif self._deadline is None:  # the next request on a kept-alive connection
            self._deadline = self.loop.call_later(self.read_deadline_s, self._too_slow)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a request pipelined behind the answered one
        if self._deadline is None and self.conn.their_state not in (*_READ_WHOLE, h11.IDLE):
            self._deadline = self.loop.call_later(self.read_deadline_s, self._too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """h11 refused the request: 414 when its request line alone outgrew the buffer, 431
        when its headers did (what was received is still there, unread), else uvicorn's 400."""
        limit = self.config.h11_max_incomplete_event_size or HEAD_LIMIT_BYTES
        received = self.conn.trailing_data[0]
        if len(received) <= limit:
            super().send_400_response(msg)
            return
        if b"\n" not in received[:limit]:
            status, reason, text = 414, b"URI Too Long", f"the request line is over {limit} bytes"
        else:
            status, reason = 431, b"Request Header Fields Too Large"
            text = f"the request's line and headers are over {limit} bytes"
        body = text.encode()
        for event in (h11.Response(status_code=status, reason=reason,
                                   headers=[(b"content-type", b"text/plain; charset=utf-8"),
                                            (b"content-length", str(len(body)).encode()),
                                            (b"connection", b"close")]),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.conn.their_state not in _READ_WHOLE and not self.transport.is_closing():
            self.transport.close()
