"""The bounded per-endpoint connection cache: endpoints come from strangers' listings, so a
party keeps at most `limit` connections, evicts the least recently used, and closes an evicted
one only after it lingered (its running calls may end) or when too many linger."""

from __future__ import annotations

import threading
import time

import pytest

from marketplace.channel_cache import ChannelCache


class Conn:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.closed = False


def cache(limit: int = 2, linger_s: float = 60.0) -> tuple[ChannelCache[Conn], list[Conn]]:
    closed: list[Conn] = []

    def close(conn: Conn) -> None:
        conn.closed = True
        closed.append(conn)

    return ChannelCache(Conn, close, limit=limit, linger_s=linger_s), closed


def test_one_connection_per_endpoint_reused() -> None:
    made, _closed = cache()
    first = made.get("a:1")
    assert made.get("a:1") is first
    assert len(made) == 1


def test_least_recently_used_is_evicted_but_lingers_open() -> None:
    made, closed = cache(limit=2)
    a, b = made.get("a"), made.get("b")
    made.get("a")  # a is now the most recently used
    c = made.get("c")
    assert len(made) == 2 and made.lingering() == 1
    assert not b.closed and closed == []  # a call may still run on it
    assert made.get("a") is a and made.get("c") is c
    assert made.get("b") is not b  # dialed again: a new connection


def test_a_lingering_connection_closes_once_its_time_passed() -> None:
    made, closed = cache(limit=1, linger_s=0.05)
    a = made.get("a")
    made.get("b")
    assert closed == []
    time.sleep(0.06)
    made.get("b")  # any later lookup closes what is due
    assert closed == [a] and made.lingering() == 0


def test_churning_endpoints_never_keep_more_than_twice_the_limit_open() -> None:
    made, closed = cache(limit=4)
    conns = [made.get(f"endpoint-{n}") for n in range(1000)]
    opened = [c for c in conns if not c.closed]
    assert len(made) == 4 and made.lingering() <= 4
    assert len(opened) <= 8
    assert len(closed) == 1000 - len(opened)
    assert all(c.closed for c in conns[:-8])  # the oldest went first


def test_close_closes_live_and_lingering_and_drain_hands_them_over() -> None:
    made, closed = cache(limit=1)
    a, b = made.get("a"), made.get("b")
    made.close()
    assert {id(c) for c in closed} == {id(a), id(b)}
    assert len(made) == 0 and made.lingering() == 0
    c = made.get("c")
    assert made.drain() == [c] and not c.closed


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ChannelCache(Conn, lambda _c: None, limit=0)


def test_threads_share_one_connection_per_endpoint() -> None:
    made, closed = cache(limit=8)
    seen: list[Conn] = []
    barrier = threading.Barrier(8)

    def dial() -> None:
        barrier.wait()
        for n in range(200):
            seen.append(made.get(f"e{n % 8}"))

    threads = [threading.Thread(target=dial) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(c) for c in seen}) == 8 and closed == []
