"""Request authentication in detail, per-agent rate limits and request size limits.

The signature check itself, with a clock the test moves (no sockets): freshness, replays of a
request dated in the future, a full nonce cache, the bounded rate limiter. Then over real gRPC:
the caller stays current while a response streams, client-streaming calls are refused, a tiny
rate limit on a node and on a seller answers RESOURCE_EXHAUSTED without touching the ledger, a
request above the server's message size is refused by gRPC itself (RESOURCE_EXHAUSTED), and
oversized fields inside a request are refused by the domain (INVALID_ARGUMENT).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, per_call, skill
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace.auth import (
    AGENT_KEY,
    NONCE_KEY,
    SIGNATURE_KEY,
    TIMESTAMP_KEY,
    AuthServerInterceptor,
    signed_channel,
    signed_message,
)
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.request_limits import LocalLimits, RateLimiter
from marketplace.testing import make_listing, make_skill
from marketplace.v1 import registry_pb2, registry_pb2_grpc
from wallets.caller import current_caller
from wallets.errors import InvalidArgument, ResourceExhausted, Unauthenticated
from wallets.grpc_errors import error_reason
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

METHOD = "/wallets.v1.WalletService/GetBalance"
BODY = wallet_pb2.GetBalanceRequest(account_id="a" * 32).SerializeToString()
NOW_MS = 1_700_000_000_000
USD = "USD"
CENT = 10_000_000


class Clock:
    def __init__(self) -> None:
        self.now_ms = NOW_MS

    def __call__(self) -> int:
        return self.now_ms


def _metadata(key: AgentKey, timestamp_ms: int, nonce: str = "") -> dict[str, Any]:
    nonce = nonce or os.urandom(16).hex()
    return {AGENT_KEY: key.agent_id, TIMESTAMP_KEY: str(timestamp_ms), NONCE_KEY: nonce,
            SIGNATURE_KEY: key.sign(signed_message(METHOD, BODY, timestamp_ms, nonce))}


# ---- the check, without sockets ---------------------------------------------------------------


def test_a_fresh_signed_request_names_its_caller_and_a_replay_is_refused():
    clock, key = Clock(), AgentKey.generate()
    auth = AuthServerInterceptor(clock_ms=clock)
    metadata = _metadata(key, NOW_MS)
    assert auth._check(METHOD, metadata, BODY) == key.agent_id
    with pytest.raises(Unauthenticated) as replay:
        auth._check(METHOD, metadata, BODY)
    assert replay.value.reason == "REPLAYED_REQUEST"
    with pytest.raises(Unauthenticated):  # signed for another method
        auth._check("/wallets.v1.WalletService/History", _metadata(key, NOW_MS), BODY)
    with pytest.raises(Unauthenticated):  # upper-case hex is not the canonical agent id
        auth._check(METHOD, {**_metadata(key, NOW_MS), AGENT_KEY: key.agent_id.upper()}, BODY)


def test_a_request_dated_in_the_future_cannot_be_replayed_once_the_server_catches_up():
    """The nonce is kept until the request's own timestamp is stale (and a skew window more,
    for another node whose clock runs behind), not for a fixed time after it arrived: a
    request dated skew_s ahead stays fresh for 2 x skew_s of server time."""
    clock, key = Clock(), AgentKey.generate()
    auth = AuthServerInterceptor(skew_s=60, clock_ms=clock)
    ahead = _metadata(key, NOW_MS + 59_000)
    assert auth._check(METHOD, ahead, BODY) == key.agent_id
    clock.now_ms += 61_000  # past receipt + skew; the timestamp is still fresh
    with pytest.raises(Unauthenticated) as replay:
        auth._check(METHOD, ahead, BODY)
    assert replay.value.reason == "REPLAYED_REQUEST"
    clock.now_ms += 60_000  # now it is stale: refused as such, and the nonce is forgotten
    with pytest.raises(Unauthenticated) as stale:
        auth._check(METHOD, ahead, BODY)
    assert stale.value.reason == "STALE_REQUEST"
    clock.now_ms += 60_000  # a skew window later still
    auth._check(METHOD, _metadata(key, clock.now_ms), BODY)
    assert isinstance(auth.limits, LocalLimits)
    assert len(auth.limits.nonces) == 1  # the old nonce was dropped when no longer needed


def test_a_full_nonce_cache_refuses_rather_than_forgets():
    clock, key = Clock(), AgentKey.generate()
    auth = AuthServerInterceptor(clock_ms=clock, max_nonces=2)
    first = _metadata(key, NOW_MS)
    auth._check(METHOD, first, BODY)
    auth._check(METHOD, _metadata(key, NOW_MS), BODY)
    with pytest.raises(ResourceExhausted) as full:
        auth._check(METHOD, _metadata(key, NOW_MS), BODY)
    assert full.value.reason == "NONCE_CACHE_FULL"
    with pytest.raises(Unauthenticated):
        auth._check(METHOD, first, BODY)  # still remembered: still a replay
    clock.now_ms += 121_000  # stale, and a skew window more
    assert auth._check(METHOD, _metadata(key, clock.now_ms), BODY) == key.agent_id


def test_a_flood_beyond_the_rate_keeps_no_nonce():
    clock, key = Clock(), AgentKey.generate()
    auth = AuthServerInterceptor(clock_ms=clock, rate_per_s=0.001, burst=2)
    for _ in range(2):
        auth._check(METHOD, _metadata(key, NOW_MS), BODY)
    for _ in range(20):
        with pytest.raises(ResourceExhausted):
            auth._check(METHOD, _metadata(key, NOW_MS), BODY)
    assert len(auth.limits.nonces) == 2


def test_the_rate_limiter_is_per_agent_and_bounded():
    now = [0.0]
    limiter = RateLimiter(rate_per_s=1, burst=2, max_agents=2, clock_s=lambda: now[0])
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    assert limiter.allow("b")  # another agent has its own bucket
    assert not limiter.allow("c")  # two busy buckets: a third agent waits
    now[0] += 2.0  # both refilled: the same as absent, and dropped
    assert limiter.allow("c") and limiter.allow("a")


def test_a_dear_request_takes_its_cost_in_tokens_at_most_the_burst():
    now = [0.0]
    limiter = RateLimiter(rate_per_s=1, burst=4, clock_s=lambda: now[0])
    assert limiter.allow("a", 3) and not limiter.allow("a", 2)  # one left: none taken
    assert limiter.allow("a")
    now[0] += 4.0
    assert limiter.allow("a", 1000) and not limiter.allow("a")  # the whole burst, no more


# ---- over gRPC: streams and client streams -------------------------------------------------------


def _stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    for _ in range(3):
        yield current_caller().encode()


def _upload(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    return b"".join(requests)


@pytest.fixture
def tiny_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         interceptors=[AuthServerInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.S", {
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        "Upload": grpc.stream_unary_rpc_method_handler(_upload)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_the_caller_stays_current_while_a_response_streams(tiny_server: str):
    key = AgentKey.generate()
    with signed_channel(tiny_server, key) as channel:
        replies = list(channel.unary_stream("/t.S/Stream")(b"hi", timeout=5))
    assert replies == [key.agent_id.encode()] * 3


def test_client_streaming_calls_cannot_be_signed_so_they_are_refused(tiny_server: str):
    with signed_channel(tiny_server, AgentKey.generate()) as channel, \
            pytest.raises(grpc.RpcError) as caught:
        channel.stream_unary("/t.S/Upload")(iter([b"a", b"b"]), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ---- rate limits on a node and a seller ------------------------------------------------------


def test_a_tiny_rate_limit_on_the_node_refuses_the_excess_and_moves_no_money(tmp_path):
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600,
                         rate_limit_per_s=0.01, rate_limit_burst=3) as node:
        greedy, calm = AgentKey.generate(), AgentKey.generate()
        with signed_channel(node.address, greedy) as channel, \
                signed_channel(node.address, calm) as other:
            wallets = wallet_pb2_grpc.WalletServiceStub(channel)
            account = wallets.OpenAccount(wallet_pb2.OpenAccountRequest(
                idempotency_key="open", owner=greedy.agent_id, currency=USD), timeout=5)
            for i in range(2):
                wallets.Deposit(wallet_pb2.DepositRequest(
                    idempotency_key=f"d{i}", account_id=account.account_id,
                    amount=wallet_pb2.Money(amount_atomic=CENT, currency=USD)), timeout=5)
            with pytest.raises(grpc.RpcError) as caught:
                wallets.Deposit(wallet_pb2.DepositRequest(
                    idempotency_key="d2", account_id=account.account_id,
                    amount=wallet_pb2.Money(amount_atomic=CENT, currency=USD)), timeout=5)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_reason(caught.value) == "RATE_LIMITED"
            assert node.ledger.balance(account.account_id).posted_atomic == 2 * CENT
            registry_pb2_grpc.RegistryServiceStub(other).Discover(  # others are not slowed
                registry_pb2.DiscoverRequest(skill="x"), timeout=5)


class Echo(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def echo(text: str) -> Echo:
    """Echo a text."""
    return Echo(text=text)


@contextlib.contextmanager
def _hired_under_a_tiny_limit(tmp_path: Path, *, burst: int, quantity: int, funds: str,
                              budget: str) -> Iterator[tuple[SellerAgent, BuyerAgent, Any]]:
    """A seller whose buckets hold `burst` calls and barely refill, and a buyer that has
    negotiated (a few Negotiates of the buyer's bucket) and hired `quantity` echo calls."""
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node:
        seller = SellerAgent("echo", skills=[echo], marketplace=node.address,
                             rate_limit_per_s=0.01, rate_limit_burst=burst).serve()
        buyer = BuyerAgent("buyer", marketplace=node.address)
        try:
            buyer.fund(funds, USD)
            deal = buyer.negotiate(buyer.discover("echo", currency=USD)[0], "echo",
                                   quantity=quantity, budget=budget, currency=USD)
            buyer.hire(deal)
            yield seller, buyer, deal
        finally:
            buyer.close()
            seller.stop(0)


def test_a_tiny_rate_limit_on_a_seller_refuses_the_excess_before_any_voucher_is_used(tmp_path):
    with _hired_under_a_tiny_limit(tmp_path, burst=4, quantity=5, funds="1.00",
                                   budget="0.01") as (seller, buyer, deal):
        with pytest.raises(ResourceExhausted) as caught:
            for i in range(4):
                buyer.call(deal, {"text": str(i)})
        assert caught.value.status == "RESOURCE_EXHAUSTED"
        assert caught.value.reason == "RATE_LIMITED"
        assert seller.gate.unspent(deal.agreement_id) == 0  # only admitted calls paid


def _unsigned_invokes(seller: SellerAgent, deal: Any, vouchers: list[tuple[int, int]]
                      ) -> list[tuple[grpc.StatusCode, str]]:
    """Unsigned Invokes carrying forged vouchers (payword index, cumulative amount), one
    after another: each refusal's code and details."""
    from agents.payments import VOUCHER_METADATA_KEY
    from marketplace.v1 import agreement_pb2

    refused = []
    with grpc.insecure_channel(seller.endpoint) as raw:
        for n, (index, cumulative) in enumerate(vouchers):
            forged = agreement_pb2.Voucher(
                agreement_id=deal.agreement_id, sequence=n + 1, payword_index=index,
                cumulative_atomic=cumulative, payword=os.urandom(32))
            try:
                raw.unary_unary("/agents.v1.AgentService/Invoke")(
                    agent_pb2.InvokeRequest(agreement_id=deal.agreement_id,
                                            input_json='{"text": "x"}').SerializeToString(),
                    timeout=10, metadata=[(VOUCHER_METADATA_KEY, forged.SerializeToString())])
            except grpc.RpcError as error:
                refused.append((error.code(), error.details()))
    return refused


def test_forged_vouchers_far_along_the_chain_pay_for_their_hashing_in_tokens(tmp_path):
    """An unsigned call's voucher that would cost more than CHEAP_CHECK_HASHES hashes draws
    one token of the agreement's unproven bucket per CHEAP_CHECK_HASHES: whoever knows the
    agreement id cannot buy tens of milliseconds of hashing per token, and the buyer's own
    (cheap) calls go on."""
    from marketplace.payword import CHEAP_CHECK_HASHES

    calls = CHEAP_CHECK_HASHES * 8
    with _hired_under_a_tiny_limit(tmp_path, burst=8, quantity=calls, funds="10.00",
                                   budget="10.00") as (seller, buyer, deal):
        refused = _unsigned_invokes(seller, deal,
                                    [(calls, calls * deal.body.link_value_atomic)] * 3)
        # the first drains the burst (its cost, capped there) and is hashed and refused
        assert [code for code, _ in refused] == [grpc.StatusCode.PERMISSION_DENIED,
                                                 grpc.StatusCode.RESOURCE_EXHAUSTED,
                                                 grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert buyer.invoke(deal, {"text": "mine"}).output == {"text": "mine"}


def test_vouchers_refused_before_any_hashing_draw_nothing(tmp_path):
    """A voucher past the chain's end, or whose amount does not match its index, is refused
    without hashing, so it costs no token: a stranger's stream of them leaves the unproven
    bucket whole for the buyer's own far-along (dear) voucher."""
    from marketplace.payword import CHEAP_CHECK_HASHES
    from marketplace.v1 import agreement_pb2

    calls = CHEAP_CHECK_HASHES * 2
    with _hired_under_a_tiny_limit(tmp_path, burst=8, quantity=calls, funds="10.00",
                                   budget="10.00") as (seller, buyer, deal):
        link, length = deal.body.link_value_atomic, deal.body.payword_length
        refused = _unsigned_invokes(
            seller, deal, [(length + 1, (length + 1) * link), (calls, calls * link + 1)] * 4)
        assert len(refused) == 8 and not [d for _, d in refused if "rate limit" in d], refused
        assert {code for code, _ in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED,  # past
                                                 grpc.StatusCode.PERMISSION_DENIED}  # its end
        assert seller.gate.check_hashes(deal.agreement_id, agreement_pb2.Voucher(
            agreement_id=deal.agreement_id, sequence=1, payword_index=calls,
            cumulative_atomic=calls * link)) == calls  # a genuine far voucher would cost
        assert buyer.invoke(deal, {"text": "mine"}).output == {"text": "mine"}


# ---- size limits ---------------------------------------------------------------------------


def test_requests_above_the_message_size_are_refused_by_grpc_and_big_fields_by_the_domain(
        tmp_path):
    key = AgentKey.generate()
    options = [("grpc.max_send_message_length", 16 * 1024 * 1024)]
    with pytest.raises(InvalidArgument):  # smaller, a seller's paid-for redeem could not fit
        MarketplaceNode(f"sqlite:///{tmp_path / 'small.db'}", max_message_bytes=256 * 1024)
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            signed_channel(node.address, key, options=options) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        big = make_skill("echo", description="x" * 5 * 1024 * 1024)
        with pytest.raises(grpc.RpcError) as too_big:
            registry.Advertise(registry_pb2.AdvertiseRequest(
                idempotency_key="a1", listing=make_listing(key, big)), timeout=5)
        assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        long = make_skill("echo", description="x" * 5000)  # fits the message, not the field
        with pytest.raises(grpc.RpcError) as too_long:
            registry.Advertise(registry_pb2.AdvertiseRequest(
                idempotency_key="a2", listing=make_listing(key, long)), timeout=5)
        assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        wallets = wallet_pb2_grpc.WalletServiceStub(channel)
        account = wallets.OpenAccount(wallet_pb2.OpenAccountRequest(
            idempotency_key="o", owner=key.agent_id, currency=USD), timeout=5)
        with pytest.raises(grpc.RpcError) as memo:
            wallets.Transfer(wallet_pb2.TransferRequest(
                idempotency_key="t", debit_account_id=account.account_id,
                credit_account_id=account.account_id, memo="m" * 10_000,
                amount=wallet_pb2.Money(amount_atomic=1, currency=USD)), timeout=5)
        assert memo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert node.ledger.postings(limit=10) == []


def test_a_seller_refuses_an_oversized_invoke_before_reading_it(tmp_path):
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node:
        seller = SellerAgent("echo", skills=[echo], marketplace=node.address).serve()
        buyer = BuyerAgent("buyer", marketplace=node.address)
        try:
            options = [("grpc.max_send_message_length", 16 * 1024 * 1024)]
            with signed_channel(seller.endpoint, buyer.key, options=options) as channel:
                stub = agent_pb2_grpc.AgentServiceStub(channel)
                huge = json.dumps({"text": "x" * 3 * 1024 * 1024})
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Invoke(agent_pb2.InvokeRequest(agreement_id="a" * 64,
                                                        input_json=huge), timeout=5)
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            buyer.close()
            seller.stop(0)
