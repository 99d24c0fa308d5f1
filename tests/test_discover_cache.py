"""Discover answers are reused for a moment, never past a write to this node's listings, and
never with a listing that has expired."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from marketplace import discover_cache
from marketplace.discover_cache import DiscoverCache
from marketplace.identity import AgentKey
from marketplace.registry import Registry
from marketplace.testing import make_listing, make_skill
from marketplace.v1 import registry_pb2
from wallets.errors import AgentmarketError


class _Ticks:
    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> int:
        return self.ms


class _Counted(Registry):
    reads = 0

    def discover(self, *args: Any, **kwargs: Any) -> list[registry_pb2.Listing]:
        self.reads += 1
        return super().discover(*args, **kwargs)


@pytest.fixture
def registry(engine: Engine, clock) -> _Counted:  # type: ignore[no-untyped-def]
    return _Counted(engine, clock_ms=clock)


@pytest.fixture
def ticks() -> _Ticks:
    return _Ticks()


@pytest.fixture
def cache(registry: _Counted, ticks: _Ticks) -> DiscoverCache:
    return DiscoverCache(registry, ttl_ms=1000, max_answers=3, clock_ms=ticks)


def _ask(skill: str = "echo", **fields: Any) -> registry_pb2.DiscoverRequest:
    return registry_pb2.DiscoverRequest(skill=skill, currency="USD", limit=10, **fields)


def _names(response: registry_pb2.DiscoverResponse) -> list[str]:
    return sorted(listing.name for listing in response.listings)


def _advertise(registry: Registry, name: str, ttl_s: int = 60) -> AgentKey:
    key = AgentKey.generate()
    registry.advertise(make_listing(key, make_skill("echo"), name=name), ttl_s)
    return key


def test_the_same_query_within_the_moment_is_answered_once(
        cache: DiscoverCache, registry: _Counted, ticks: _Ticks) -> None:
    _advertise(registry, "a")
    first = cache.answer(_ask())
    ticks.ms = 999
    assert cache.answer(_ask()) is first and registry.reads == 1
    ticks.ms = 1000  # the moment is over: read again
    assert _names(cache.answer(_ask())) == ["a"] and registry.reads == 2
    assert (cache.hits, cache.misses) == (1, 2)


def test_a_write_to_the_listings_is_seen_at_once(
        cache: DiscoverCache, registry: _Counted) -> None:
    a = _advertise(registry, "a")
    assert _names(cache.answer(_ask())) == ["a"]
    b = _advertise(registry, "b")
    assert _names(cache.answer(_ask())) == ["a", "b"]
    registry.withdraw(a.agent_id)
    assert _names(cache.answer(_ask())) == ["b"]
    registry.heartbeat(b.agent_id)
    registry.flush_leases()  # the beat's expiry written (the node's `LeaseFlusher`)
    assert cache.answer(_ask()).listings[0].expires_at_ms == registry.get(
        b.agent_id).expires_at_ms
    assert registry.expire(b.agent_id, "127.0.0.1:9")
    assert _names(cache.answer(_ask())) == []
    assert cache.hits == 0


def test_a_listing_that_expires_meanwhile_is_left_out(
        cache: DiscoverCache, registry: _Counted, clock) -> None:  # type: ignore[no-untyped-def]
    _advertise(registry, "short", ttl_s=10)
    _advertise(registry, "long", ttl_s=60)
    assert _names(cache.answer(_ask())) == ["long", "short"]
    clock.advance(11)
    assert _names(cache.answer(_ask())) == ["long"] and registry.reads == 1


def test_each_query_is_its_own_answer_and_only_the_latest_are_kept(
        cache: DiscoverCache, registry: _Counted) -> None:
    _advertise(registry, "a")
    queries = [_ask(), _ask(max_price_atomic=5), _ask(tags=["x"]), _ask(text="echo")]
    for query in queries:
        cache.answer(query)
    assert registry.reads == 4
    cache.answer(queries[-1])  # kept
    cache.answer(queries[0])  # the least recently used went when the fourth came
    assert registry.reads == 5
    assert _names(cache.answer(_ask(tags=["x"]))) == []  # another query, another answer


def test_a_bad_query_is_refused_every_time_and_never_kept(
        cache: DiscoverCache, registry: _Counted) -> None:
    for _ in range(2):
        with pytest.raises(AgentmarketError):
            cache.answer(registry_pb2.DiscoverRequest(skill="echo", currency="XXX"))
    assert registry.reads == 2


def test_a_large_answer_is_not_kept(cache: DiscoverCache, registry: _Counted,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _advertise(registry, "a")
    monkeypatch.setattr(discover_cache, "MAX_ANSWER_BYTES", 10)
    cache.answer(_ask())
    cache.answer(_ask())
    assert registry.reads == 2 and cache.hits == 0


def test_a_cache_of_no_time_reads_every_time(registry: _Counted) -> None:
    _advertise(registry, "a")
    off = DiscoverCache(registry, ttl_ms=0)
    assert off.answer(_ask()) is not off.answer(_ask())
    assert registry.reads == 2 and off.hits == off.misses == 0
