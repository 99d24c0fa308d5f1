"""Writers of one SQLite database take turns, money first, and a flood of listings cannot
hold the writer or the node's threads.

A stranger's free keys each advertising a listing of thousands of search rows used to keep
SQLite's lock busy: the ledger met the registry at SQLite's busy handler, which sleeps in
steps of up to 100 ms and lets whoever asks next win, so a buyer's OpenEscrow waited seconds.
Now every writer of a database shares one set of turns (`wallets.writer_turns`), the ledger's
postings go before the registry's waiting writes, and at most `MAX_ASKED_WRITES` callers'
registry writes run or wait at once (the next is refused REGISTRY_BUSY, nothing written).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from sqlalchemy import event

from agents import SellerAgent, per_call, skill
from benchmarks.registry_flood import big_listing
from marketplace import discovery, listing_checks
from marketplace.auth import signed_channel
from marketplace.console.audit import AuditTrail
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.registry_door import MAX_ASKED_WRITES
from marketplace.testing import make_listing
from marketplace.v1 import registry_pb2, registry_pb2_grpc
from wallets.errors import NotFound
from wallets.grpc_errors import error_reason
from wallets.sealer import seal
from wallets.writer_turns import WriterTurns, turns_of


def _until(check: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.005)


def _started(target: Callable[[], object], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def test_an_urgent_writer_goes_before_every_other_writer_waiting() -> None:
    turns = WriterTurns()
    order: list[str] = []

    def write(name: str, urgent: bool) -> Callable[[], None]:
        def run() -> None:
            with turns.turn(urgent=urgent):
                order.append(name)
        return run

    with turns.turn(urgent=False):  # the writer under way
        others = [_started(write(f"listing-{i}", False), f"listing-{i}") for i in range(3)]
        _until(lambda: turns.waiting() == (0, 3), "three listings waiting")
        money = _started(write("posting", True), "posting")
        _until(lambda: turns.waiting() == (1, 3), "the posting waiting too")
    for thread in [money, *others]:
        thread.join(timeout=10)
    assert order[0] == "posting" and sorted(order[1:]) == ["listing-0", "listing-1", "listing-2"]
    assert turns.waiting() == (0, 0)


def test_a_writer_holding_the_turn_may_ask_again() -> None:
    """Re-entrant: one thread never waits for itself (a registry read-modify-write inside a
    ledger transaction would otherwise hang)."""
    turns = WriterTurns()
    with turns.turn(urgent=True), turns.turn(urgent=False), turns.turn(urgent=True):
        pass
    done = []

    def after() -> None:
        with turns.turn(urgent=False):
            done.append(True)

    _started(after, "after").join(10)
    assert done and turns.waiting() == (0, 0)


@pytest.fixture
def node(tmp_path) -> Iterator[MarketplaceNode]:
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node:
        yield node


def _advertise(node: MarketplaceNode, key: AgentKey) -> registry_pb2.AdvertiseResponse:
    with signed_channel(node.address, key) as channel:
        return registry_pb2_grpc.RegistryServiceStub(channel).Advertise(
            registry_pb2.AdvertiseRequest(idempotency_key=f"advertise:{uuid.uuid4()}",
                                          listing=make_listing(key)), timeout=30)


def test_payments_go_before_listings_and_a_flood_of_listings_is_refused_at_once(
        node: MarketplaceNode) -> None:
    """While the writer is busy, two Advertise calls wait for it (all the registry lets
    callers queue), a third is refused REGISTRY_BUSY at once and stores nothing, and a
    posting that comes after them is written before either listing."""
    ledger = node.ledger
    rail = ledger.open_account("bank", "USD", "rail", credit_limit_atomic=10**9).account_id
    wallet = ledger.open_account("buyer", "USD").account_id
    commits: list[str] = []
    event.listen(node.engine, "commit", lambda _conn: commits.append(
        threading.current_thread().name))
    turns = turns_of(node.engine)
    keys = [AgentKey.generate() for _ in range(3)]
    answers: dict[str, object] = {}
    with turns.turn(urgent=True):  # a long write under way
        waiting = [_started(lambda k=k: answers.setdefault(k.agent_id, _advertise(node, k)),
                            f"advertise-{i}") for i, k in enumerate(keys[:2])]
        _until(lambda: turns.waiting() == (0, MAX_ASKED_WRITES),
               "both listings waiting for the writer")
        with pytest.raises(grpc.RpcError) as refused:
            _advertise(node, keys[2])
        payment = _started(lambda: ledger.transfer("fund", rail, wallet, 5_000), "payment")
        _until(lambda: turns.waiting()[0] == 1, "the posting waiting for the writer")
        commits.clear()
    payment.join(timeout=10)
    for thread in waiting:
        thread.join(timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "registry is busy" in (refused.value.details() or "")
    assert error_reason(refused.value) == "REGISTRY_BUSY"
    with pytest.raises(NotFound):
        node.registry.get(keys[2].agent_id)
    assert set(answers) == {keys[0].agent_id, keys[1].agent_id}
    assert ledger.balance(wallet).posted_atomic == 5_000
    assert commits[0] in ("ledger-writer", "payment"), commits  # the posting went first
    _advertise(node, keys[2])  # room again once the flood has passed
    assert node.registry.get(keys[2].agent_id).agent_id == keys[2].agent_id


def test_while_the_registry_is_full_a_write_is_refused_before_it_is_read(
        node: MarketplaceNode) -> None:
    """The node's first interceptor (`marketplace.registry_door`) refuses REGISTRY_BUSY on
    the method alone while the registry has no room: bytes that are no request at all get
    REGISTRY_BUSY, not a parse error; with room they get the parse error as before."""
    method = "/marketplace.v1.RegistryService/Advertise"
    garbage = b"\xff\xff\xff not a protobuf"
    turns = turns_of(node.engine)
    keys = [AgentKey.generate() for _ in range(MAX_ASKED_WRITES)]
    with grpc.insecure_channel(node.address) as channel:
        send = channel.unary_unary(method)
        with turns.turn(urgent=True):
            waiting = [_started(lambda k=k: _advertise(node, k), f"advertise-{i}")
                       for i, k in enumerate(keys)]
            _until(node.registry.asked_writes.full, "the registry's room taken")
            with pytest.raises(grpc.RpcError) as refused:
                send(garbage, timeout=10)
        for thread in waiting:
            thread.join(timeout=10)
        assert not node.registry.asked_writes.full()
        with pytest.raises(grpc.RpcError) as unread:
            send(garbage, timeout=10)
    assert (refused.value.code(), error_reason(refused.value)) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, "REGISTRY_BUSY")
    assert unread.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_receipts_checkpoints_sealing_and_audit_rows_wait_their_turn_behind_money(
        node: MarketplaceNode) -> None:
    """Writers that are not money (sealing the chain, cutting a checkpoint, an operator's
    audit row) take a turn like the registry's, behind the ledger's postings, instead of
    meeting them at SQLite's file lock, whose busy handler sleeps up to 100 ms a try."""
    turns = turns_of(node.engine)
    trail = AuditTrail(node.engine)
    writers = {
        "seal": lambda: seal(node.engine),
        "checkpoint": node.receipts.checkpoints.cut,
        "audit": lambda: trail.begin(at_ms=1, operator="op", session="s", key_id="k",
                                     action="freeze", target="w", detail={}, trace_id=""),
    }
    finished: list[str] = []
    with turns.turn(urgent=True):  # a posting under way
        threads = [_started(lambda n=name, w=write: (w(), finished.append(n)), name)
                   for name, write in writers.items()]
        _until(lambda: turns.waiting() == (0, len(writers)), "every writer waiting its turn")
        assert finished == []
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(finished) == sorted(writers)
    assert [record.action for record in trail.records()] == ["freeze"]


@skill(price=per_call("0.001", "USD"))
def echo_text(text: str) -> dict:
    """Echo a text."""
    return {"text": text}


def test_a_seller_starting_while_the_registry_is_busy_advertises_once_it_has_room(
        node: MarketplaceNode) -> None:
    """The SDK asks again after REGISTRY_BUSY (a growing pause, up to its RPC timeout): a
    seller starting during a flood of listings is listed once the flood leaves room."""
    turns = turns_of(node.engine)
    keys = [AgentKey.generate() for _ in range(MAX_ASKED_WRITES)]
    started: list[SellerAgent] = []
    with turns.turn(urgent=True):
        waiting = [_started(lambda k=k: _advertise(node, k), f"advertise-{i}")
                   for i, k in enumerate(keys)]
        _until(lambda: turns.waiting() == (0, MAX_ASKED_WRITES),
               "the registry's room taken")
        seller = SellerAgent("late-seller", skills=[echo_text], marketplace=node.address)
        starting = _started(lambda: started.append(seller.serve()), "seller")
        time.sleep(0.3)  # refused REGISTRY_BUSY meanwhile, and asking again
        assert not started
    starting.join(timeout=15)
    for thread in waiting:
        thread.join(timeout=10)
    try:
        assert started, "the seller never got listed"
        assert node.registry.get(seller.agent_id).skills[0].name == "echo_text"
    finally:
        seller.stop(0)


def test_the_flood_benchmark_advertises_listings_the_registry_takes_whole() -> None:
    """`benchmarks.registry_flood` floods with listings inside every limit, each thousands of
    search rows: the costliest Advertise a free key may send, not one refused for its size."""
    listing = big_listing(AgentKey.generate())
    listing_checks.check_listing(listing)
    rows = sum(len(discovery.skill_terms(s)) * len(s.prices) for s in listing.skills)
    assert 5_000 < rows <= listing_checks.MAX_SEARCH_ROWS
