"""Sellers with standing keep a lane into the registry while fresh keys flood it.

A flood of Advertises from free keys keeps the registry's common room full
(`marketplace.registry_door`). A seller that has sold, rated above zero
(`marketplace.standing`), still advertises and withdraws through a lane of its own; a fresh key,
a seller only ever refunded, and a request forging a known seller's id are refused
REGISTRY_BUSY, the forgery before its bytes are parsed or the database read.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import grpc
import pytest
from sqlalchemy import Engine

from marketplace.auth import AGENT_KEY, NONCE_KEY, SIGNATURE_KEY, TIMESTAMP_KEY, signed_channel
from marketplace.errors import RegistryBusy
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.registry_door import (
    LANE_PAUSE_S,
    MAX_ASKED_WRITES,
    MAX_STANDING_WRITES,
    AskedWrites,
)
from marketplace.reputation import record_outcome
from marketplace.standing import STALE_S, Standing
from marketplace.testing import Harness, funded_market, make_listing
from marketplace.v1 import registry_pb2, registry_pb2_grpc
from wallets.grpc_errors import error_reason

PRICE = 1_000
ADVERTISE = "/marketplace.v1.RegistryService/Advertise"


@pytest.fixture
def market(engine: Engine, clock) -> Iterator[Harness]:  # type: ignore[no-untyped-def]
    with funded_market(engine, clock, 1_000_000_000, price_atomic=PRICE) as harness:
        yield harness


def test_a_settled_sale_gives_standing_and_a_refund_alone_does_not(market: Harness):
    now = [0.0]
    standing = Standing(market.ledger.engine, clock=lambda: now[0])
    seller = market.seller.agent_id
    assert not standing(seller)  # listed, never sold
    deal = market.deal(price_atomic=PRICE, quantity=2)
    market.open(deal)
    assert market.redeem(deal, [])["state"] == "refunded"  # rated 0
    now[0] += STALE_S
    assert not standing(seller)
    deal = market.deal(price_atomic=PRICE, quantity=2)
    market.open(deal)
    market.redeem(deal, [{"text": "fine"}])
    market.confirm(deal)  # settled: 1000, a mean of 500
    reads = standing.reads
    assert not standing(seller)  # answered from the last read until it is STALE_S old
    assert standing.reads == reads
    now[0] += STALE_S
    assert standing(seller)
    assert standing.reads == reads + 1


def test_callers_waiting_for_the_first_read_share_it(market: Harness, monkeypatch):
    """The first question reads the table; callers asking meanwhile wait for that read and
    use it, rather than reading it again each (a flood asks from every worker thread)."""
    engine = market.ledger.engine
    standing = Standing(engine)
    reading, go_on = threading.Event(), threading.Event()
    connect = engine.connect
    reads: list[int] = []

    def slow_connect():  # type: ignore[no-untyped-def]
        if threading.current_thread().name != "caller":  # the node's own threads share it
            return connect()
        reads.append(1)
        reading.set()
        go_on.wait(10)
        return connect()

    monkeypatch.setattr(engine, "connect", slow_connect)
    answers: list[bool] = []
    first = threading.Thread(target=lambda: answers.append(standing("a" * 64)), name="caller")
    first.start()
    assert reading.wait(10)
    others = [threading.Thread(target=lambda: answers.append(standing("b" * 64)),
                               name="caller") for _ in range(3)]
    for thread in others:
        thread.start()
    go_on.set()
    for thread in (first, *others):
        thread.join(10)
    assert answers == [False] * 4 and len(reads) == 1 and standing.reads == 1


def test_the_lane_takes_one_write_per_seller_with_standing_and_only_when_the_room_is_full():
    sellers = {f"{n:064x}" for n in range(MAX_STANDING_WRITES + 1)}
    writes = AskedWrites(standing=sellers.__contains__)
    first, second, third = sorted(sellers)
    with ExitStack() as held:
        for _ in range(MAX_ASKED_WRITES):
            held.enter_context(writes.room(first))  # the common room first, whoever asks
        assert writes.full() and writes.lane_open(third)
        with pytest.raises(RegistryBusy):
            held.enter_context(writes.room("f" * 64))  # no standing
        with pytest.raises(RegistryBusy):
            held.enter_context(writes.room())  # nobody
        held.enter_context(writes.room(first))
        with pytest.raises(RegistryBusy):
            held.enter_context(writes.room(first))  # one write at a time in the lane
        held.enter_context(writes.room(second))
        assert not writes.lane_open(third)  # the lane full
        with pytest.raises(RegistryBusy):
            held.enter_context(writes.room(third))
    assert not writes.full() and writes.lane_open(third)
    with writes.room(third):  # all given back
        pass


def test_a_sellers_lane_writes_are_a_pause_apart():
    """Two sellers with standing writing again and again cannot hold the lane: each waits
    LANE_PAUSE_S after its last lane write ends."""
    now = [100.0]
    seller, other = "a" * 64, "b" * 64
    writes = AskedWrites(standing={seller, other}.__contains__, clock=lambda: now[0])
    with ExitStack() as held:
        for _ in range(MAX_ASKED_WRITES):
            held.enter_context(writes.room())
        with writes.room(seller):
            now[0] += 5.0  # a long write
        with pytest.raises(RegistryBusy):
            held.enter_context(writes.room(seller))  # at once again
        with writes.room(other):  # another seller is not held back
            pass
        now[0] += LANE_PAUSE_S
        with writes.room(seller):
            pass
    with writes.room(seller):  # the common room has no pause
        pass


@pytest.fixture
def node(tmp_path) -> Iterator[MarketplaceNode]:
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node:
        yield node


def _stub(node: MarketplaceNode, key: AgentKey, stack: ExitStack
          ) -> registry_pb2_grpc.RegistryServiceStub:
    return registry_pb2_grpc.RegistryServiceStub(
        stack.enter_context(signed_channel(node.address, key)))


def _advertise(stub: registry_pb2_grpc.RegistryServiceStub, key: AgentKey
               ) -> registry_pb2.AdvertiseResponse:
    return stub.Advertise(registry_pb2.AdvertiseRequest(
        idempotency_key=f"advertise:{uuid.uuid4()}", listing=make_listing(key)), timeout=30)


def _refused_busy(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as refused:
        call()
    assert (refused.value.code(), error_reason(refused.value)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, "REGISTRY_BUSY")


def test_while_fresh_keys_fill_the_registry_a_seller_with_standing_still_lists(
        node: MarketplaceNode):
    trusted, fresh, refunded = AgentKey.generate(), AgentKey.generate(), AgentKey.generate()
    others = [AgentKey.generate().agent_id for _ in range(MAX_STANDING_WRITES)]
    with node.engine.begin() as conn:  # what settling a sale and refunding one record
        for seller in (trusted.agent_id, *others):
            record_outcome(conn, seller, 1000)
        record_outcome(conn, refunded.agent_id, 0)
    writes = node.registry.asked_writes
    now = [100.0]
    writes.clock = lambda: now[0]
    with ExitStack() as stack:
        stubs = {key.agent_id: _stub(node, key, stack) for key in (trusted, fresh, refunded)}
        with ExitStack() as flood:  # the flood's writes hold the common room
            for _ in range(MAX_ASKED_WRITES):
                flood.enter_context(writes.room())
            _advertise(stubs[trusted.agent_id], trusted)
            assert node.registry.get(trusted.agent_id).agent_id == trusted.agent_id
            _refused_busy(lambda: _advertise(stubs[fresh.agent_id], fresh))
            _refused_busy(lambda: _advertise(stubs[refunded.agent_id], refunded))
            _refused_busy(lambda: _advertise(stubs[trusted.agent_id], trusted))  # no pause yet
            now[0] += LANE_PAUSE_S
            stubs[trusted.agent_id].WithdrawListing(registry_pb2.WithdrawListingRequest(
                idempotency_key=f"withdraw:{uuid.uuid4()}", agent_id=trusted.agent_id),
                timeout=30)
            now[0] += LANE_PAUSE_S
            for seller in others:  # other sellers with standing writing: the lane full
                flood.enter_context(writes.room(seller))
            _refused_busy(lambda: _advertise(stubs[trusted.agent_id], trusted))
        _advertise(stubs[fresh.agent_id], fresh)  # the flood over: room for everyone
    assert node.registry.get(fresh.agent_id).agent_id == fresh.agent_id


def test_a_forged_claim_of_a_sellers_standing_is_refused_unread(node: MarketplaceNode):
    """Garbage bytes claiming a seller with standing, with a signature that does not verify,
    and claiming a fresh key: REGISTRY_BUSY while the room is full (never parsed: no
    INVALID_ARGUMENT), the parse error once there is room."""
    trusted = AgentKey.generate()
    with node.engine.begin() as conn:
        record_outcome(conn, trusted.agent_id, 1000)
    forged = [(AGENT_KEY, trusted.agent_id), (TIMESTAMP_KEY, str(time.time_ns() // 1_000_000)),
              (NONCE_KEY, uuid.uuid4().hex), (SIGNATURE_KEY, os.urandom(64))]
    stranger = [(AGENT_KEY, AgentKey.generate().agent_id), *forged[1:]]
    with grpc.insecure_channel(node.address) as channel:
        send = channel.unary_unary(ADVERTISE)
        with ExitStack() as flood:
            for _ in range(MAX_ASKED_WRITES):
                flood.enter_context(node.registry.asked_writes.room())
            for metadata in (forged, stranger):
                _refused_busy(lambda m=metadata: send(b"\xff\xff not a protobuf", metadata=m,
                                                      timeout=10))
        with pytest.raises(grpc.RpcError) as unread:
            send(b"\xff\xff not a protobuf", metadata=forged, timeout=10)
    assert unread.value.code() == grpc.StatusCode.INVALID_ARGUMENT
