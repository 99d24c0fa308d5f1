"""A buyer fetching an Agent Card from a server it does not trust: the whole card must come
within the card's time (each read had its own timeout, so a server dripping a byte every half
second held the buyer for ever) and its size (the body was read whole before its size was
checked: 200 MiB and more went into the buyer's memory)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from agents import AsyncBuyerAgent, BuyerAgent
from agents import _a2a_buyer as a2a_buyer
from agents.errors import InvalidArgument, Unavailable


def _listening(server) -> None:  # type: ignore[no-untyped-def]
    """`server.listener` on a loopback port (`server.url`), served by `server._serve` on a
    thread."""
    server.listener = socket.socket()
    server.listener.bind(("127.0.0.1", 0))
    server.listener.listen()
    server.url = f"http://127.0.0.1:{server.listener.getsockname()[1]}"
    threading.Thread(target=server._serve, daemon=True).start()


class _CardServer:
    """An HTTP server whose card is a chunked body without end: a byte every 0.2 s (drip)
    or 64 KiB pieces as fast as the buyer reads them (flood, up to 64 MiB)."""

    def __init__(self, *, drip: bool) -> None:
        self.drip, self.sent, self.stop = drip, 0, threading.Event()
        _listening(self)

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"1\r\n \r\n" if self.drip else b"10000\r\n" + b" " * 65536 + b"\r\n"
        try:
            while not self.stop.is_set() and self.sent < 64 * 1024 * 1024:
                connection.sendall(piece)
                self.sent += 1 if self.drip else 65536
                if self.drip:
                    time.sleep(0.2)
        except OSError:
            pass  # the buyer hung up
        finally:
            connection.close()
            self.listener.close()


@pytest.fixture
def quick_cards(monkeypatch) -> Iterator[None]:
    monkeypatch.setattr(a2a_buyer, "CARD_TIMEOUT_S", 1.5)
    yield


def test_a_card_dripping_a_byte_at_a_time_is_given_up_in_time(quick_cards):
    server = _CardServer(drip=True)
    with BuyerAgent("buyer", marketplace="127.0.0.1:9") as buyer:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="did not arrive within"):
            buyer.card(server.url)
        assert time.monotonic() - started < 10  # 1.5 s, and one read's timeout at most
    server.stop.set()


def test_a_card_without_end_is_refused_once_past_its_size(quick_cards):
    server = _CardServer(drip=False)
    with BuyerAgent("buyer", marketplace="127.0.0.1:9") as buyer, \
            pytest.raises(InvalidArgument, match="larger than"):
        buyer.card(server.url)
    server.stop.set()
    assert server.sent < 16 * 1024 * 1024  # 1 MiB, and what the sockets buffered


def test_the_async_buyer_too(quick_cards):
    dripping, flooding = _CardServer(drip=True), _CardServer(drip=False)

    async def main() -> None:
        async with AsyncBuyerAgent("buyer", marketplace="127.0.0.1:9") as buyer:
            with pytest.raises(Unavailable, match="did not arrive within"):
                await buyer.card(dripping.url)
            with pytest.raises(InvalidArgument, match="larger than"):
                await buyer.card(flooding.url)

    asyncio.run(main())
    dripping.stop.set()
    flooding.stop.set()
    assert flooding.sent < 16 * 1024 * 1024


class _HeaderDrip:
    """A card server that drips its headers a byte every 0.2 s (30 bytes: 6 s)."""

    def __init__(self) -> None:
        self.sent, self.hung_up, self.done = 0, False, threading.Event()
        _listening(self)

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        connection.recv(65536)
        try:
            connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            for _ in range(30):
                connection.sendall(b"a")
                self.sent += 1
                time.sleep(0.2)
        except OSError:
            self.hung_up = True
        finally:
            connection.close()
            self.listener.close()
            self.done.set()


def test_dripped_headers_are_given_up_within_the_card_time(quick_cards):
    """httpx's timeout bounds each read: headers dripped a byte at a time were read for as
    long as the server liked."""
    server = _HeaderDrip()
    started = time.monotonic()
    with BuyerAgent("buyer", marketplace="127.0.0.1:9") as buyer, \
            pytest.raises(Unavailable, match="did not arrive within"):
        buyer.card(server.url)
    assert time.monotonic() - started < 5
    server.done.wait(20)
    assert server.sent < 30
