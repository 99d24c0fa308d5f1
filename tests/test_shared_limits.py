"""Replay protection and rate limits shared by several nodes through one Redis.

Two real nodes over one PostgreSQL schema and one Redis: a signed request accepted by one node is
refused as a replay by the other; a rate limit spent on one node is spent on both; a node whose
Redis does not answer refuses calls (UNAVAILABLE LIMITS_UNAVAILABLE) and changes nothing, never
lets them through unchecked. Without `redis_url` a node keeps its own in-process limits.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import grpc
import pytest

from marketplace.auth import (
    AGENT_KEY,
    NONCE_KEY,
    SIGNATURE_KEY,
    TIMESTAMP_KEY,
    AuthServerInterceptor,
    plain_channel,
    signed_channel,
    signed_message,
)
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.request_limits import ADMITTED, LIMITED, REPLAYED, LocalLimits, RedisLimits
from tests.conftest import postgres_schema
from tests.processes.node import free_port as _free_port  # a port bind(0) never hands out
from tests.test_auth_limits import BODY, METHOD
from tests.test_auth_limits import _metadata as _fresh_metadata
from wallets.errors import InvalidArgument, Unauthenticated, Unavailable
from wallets.grpc_errors import error_reason
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

LIST = "/wallets.v1.WalletService/ListCurrencies"


@pytest.fixture
def two_nodes(postgres_url: str, redis_url: str) -> Iterator[tuple[MarketplaceNode, ...]]:
    with postgres_schema(postgres_url) as db, \
            MarketplaceNode(db, redis_url=redis_url, rate_limit_per_s=0.001,
                            rate_limit_burst=3) as a, \
            MarketplaceNode(db, redis_url=redis_url, rate_limit_per_s=0.001,
                            rate_limit_burst=3) as b:
        yield a, b


def _signed_metadata(key: AgentKey, body: bytes) -> list[tuple[str, str | bytes]]:
    from time import time_ns

    timestamp_ms, nonce = time_ns() // 1_000_000, os.urandom(16).hex()
    return [(AGENT_KEY, key.agent_id), (TIMESTAMP_KEY, str(timestamp_ms)), (NONCE_KEY, nonce),
            (SIGNATURE_KEY, key.sign(signed_message(LIST, body, timestamp_ms, nonce)))]


def test_a_request_replayed_to_another_node_is_refused(two_nodes: tuple[MarketplaceNode, ...]):
    a, b = two_nodes
    assert isinstance(a.limits, RedisLimits)
    key, request = AgentKey.generate(), wallet_pb2.ListCurrenciesRequest()
    metadata = _signed_metadata(key, request.SerializeToString())
    with plain_channel(a.address) as to_a, plain_channel(b.address) as to_b:
        first = wallet_pb2_grpc.WalletServiceStub(to_a).ListCurrencies(
            request, metadata=metadata, timeout=10)
        assert {c.code for c in first.currencies} >= {"USD"}
        with pytest.raises(grpc.RpcError) as replay:
            wallet_pb2_grpc.WalletServiceStub(to_b).ListCurrencies(
                request, metadata=metadata, timeout=10)
    assert replay.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(replay.value) == "REPLAYED_REQUEST"


def test_a_rate_limit_holds_across_nodes(two_nodes: tuple[MarketplaceNode, ...]):
    a, b = two_nodes
    key = AgentKey.generate()
    with signed_channel(a.address, key) as to_a, signed_channel(b.address, key) as to_b:
        stubs = [wallet_pb2_grpc.WalletServiceStub(c) for c in (to_a, to_b)]
        for stub in (stubs[0], stubs[1], stubs[0]):  # the burst of 3, spent on two nodes
            stub.ListCurrencies(wallet_pb2.ListCurrenciesRequest(), timeout=10)
        for stub in stubs:  # empty on both
            with pytest.raises(grpc.RpcError) as limited:
                stub.ListCurrencies(wallet_pb2.ListCurrenciesRequest(), timeout=10)
            assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_reason(limited.value) == "RATE_LIMITED"
    other = AgentKey.generate()  # another agent has its own bucket
    with signed_channel(b.address, other) as channel:
        wallet_pb2_grpc.WalletServiceStub(channel).ListCurrencies(
            wallet_pb2.ListCurrenciesRequest(), timeout=10)


def test_one_nonce_store_and_one_bucket_for_every_node(redis_url: str):
    """Two nodes' RedisLimits: a nonce admitted by one is a replay at the other (taking no
    token); the bucket is shared, and a limited request's nonce is not kept (an agent's
    flood beyond its rate makes Redis keep nothing)."""
    agent, subject = os.urandom(8).hex(), os.urandom(8).hex()
    first, second = (RedisLimits(redis_url, rate_per_s=0.001, burst=2) for _ in range(2))
    assert [first.allow(subject), second.allow(subject), first.allow(subject)] == \
        [True, True, False]
    dear = os.urandom(8).hex()  # a dear request takes its cost, at most the burst
    assert [second.allow(dear, 5), first.allow(dear), second.allow(os.urandom(8).hex(), 2),
            ] == [True, False, True]
    assert first.admit(agent, "n1", 10_000, 0) == ADMITTED
    assert second.admit(agent, "n1", 10_000, 0) == REPLAYED
    assert second.admit(agent, "n2", 10_000, 0) == ADMITTED
    assert first.admit(agent, "n3", 10_000, 0) == LIMITED
    assert second.admit(agent, "n3", 10_000, 0) == LIMITED  # not a replay: never kept
    assert not first.client.exists(f"agentmarket:{{{agent}}}:nonce:n3")
    first.close()
    second.close()


def test_a_replay_to_a_node_whose_clock_runs_behind_is_refused(redis_url: str):
    """Redis forgets a nonce by its own clock, on a time the admitting node computed; a node
    whose clock runs 1.5 s behind still takes the request as fresh after that: the nonce is
    kept a skew window longer than the request is fresh."""
    key, prefix = AgentKey.generate(), f"t{os.urandom(4).hex()}"
    limits = [RedisLimits(redis_url, rate_per_s=100, burst=100, prefix=prefix)
              for _ in range(2)]
    ahead = AuthServerInterceptor(skew_s=2, limits=limits[0])
    behind = AuthServerInterceptor(skew_s=2, limits=limits[1],
                                   clock_ms=lambda: time.time_ns() // 1_000_000 - 1_500)
    metadata = _fresh_metadata(key, time.time_ns() // 1_000_000)
    assert ahead._check(METHOD, metadata, BODY) == key.agent_id
    time.sleep(2.2)  # stale at the first node; fresh for 1.3 s more at the second
    with pytest.raises(Unauthenticated) as replay:
        behind._check(METHOD, metadata, BODY)
    assert replay.value.reason == "REPLAYED_REQUEST"
    for each in limits:
        each.close()


def test_with_redis_down_a_node_refuses_calls_and_changes_nothing(tmp_path):
    down = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    limits = RedisLimits(down, rate_per_s=10, burst=10, timeout_s=0.5)
    with pytest.raises(Unavailable) as refused:
        limits.admit("a", "n", 10_000, 0)
    assert refused.value.reason == "LIMITS_UNAVAILABLE"
    with pytest.raises(Unavailable):
        limits.allow("k")
    key = AgentKey.generate()
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", redis_url=down) as node, \
            signed_channel(node.address, key) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            wallet_pb2_grpc.WalletServiceStub(channel).OpenAccount(
                wallet_pb2.OpenAccountRequest(idempotency_key="k1", owner=key.agent_id,
                                              currency="USD"), timeout=20)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(caught.value) == "LIMITS_UNAVAILABLE"
        assert "Redis" in (caught.value.details() or "")
        assert node.ledger.accounts(owner=key.agent_id) == []


def test_a_node_waits_for_its_redis_as_long_as_it_is_told(tmp_path):
    down = f"redis://127.0.0.1:{_free_port()}/0"
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", redis_url=down,
                         redis_timeout_s=0.25) as node:
        assert isinstance(node.limits, RedisLimits)
        settings = node.limits.client.connection_pool.connection_kwargs
        assert settings["socket_timeout"] == settings["socket_connect_timeout"] == 0.25
    for wrong in (0, -1, 61):
        with pytest.raises(InvalidArgument, match="Redis timeout"):
            RedisLimits(down, rate_per_s=10, burst=10, timeout_s=wrong)


def test_a_node_without_redis_keeps_its_own_limits(tmp_path):
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}") as node:
        assert isinstance(node.limits, LocalLimits)
