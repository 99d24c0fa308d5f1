"""Several `agentmarket serve` processes over one PostgreSQL and one Redis serve one market.

Three node processes share a schema, a Redis and the market's node key. The node holding the
sweep lease is found in PostgreSQL's own lock table; a seller talks to another node, a buyer to
the leader and the third node (a list of addresses: round robin). While the buyer streams
deposits and works through a task, the leader is killed with SIGKILL. Then:

- every deposit the buyer saw acknowledged is in the ledger once, and the ones that failed,
  retried under their own keys, are in it once too (no lost or doubled operation);
- the task settles through the surviving nodes (the buyer's calls to the dead node cost only
  retries), paid exactly for its calls;
- the sweep is taken over: a hold placed before the kill expires on time on another node;
- two transfers of the buyer's whole balance sent at once to two nodes: exactly one succeeds;
- a request accepted by one node and replayed to another is refused (nonces in Redis);
- the books balance, no hold is left open and the chain verifies.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psycopg
import pytest
from pydantic import BaseModel

from agents import AgentmarketError, BuyerAgent, SellerAgent, per_call, skill
from marketplace.auth import (
    AGENT_KEY,
    NONCE_KEY,
    SIGNATURE_KEY,
    TIMESTAMP_KEY,
    plain_channel,
    signed_channel,
    signed_message,
)
from marketplace.identity import AgentKey
from tests.conftest import postgres_schema
from tests.processes.node import NodeProcess
from wallets.audit import check_balances, verify_chain
from wallets.currencies import currency, split
from wallets.grpc_errors import error_reason
from wallets.ledger import Ledger
from wallets.store import make_engine
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

USD = currency("USD")
FEE_BPS = 250
DEPOSITS = 24
KILL_AFTER = 8  # acknowledged deposits before the leader dies
T = TypeVar("T")


class Upper(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def upper(text: str) -> Upper:
    """Upper-case a text."""
    return Upper(text=text.upper())


def _sweepers(db: str) -> list[str]:
    """Application names of the sessions holding this schema's sweep lease."""
    conninfo = db.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as conn:
        return [row[0] for row in conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.classid::int = hashtext('agentmarket-sweeper') "
            "AND l.objid::int = hashtext(current_schema())")]


def _until(condition: Callable[[], T], timeout_s: float = 20.0) -> T:
    end = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


@pytest.fixture
def market(postgres_url: str, redis_url: str, tmp_path: Path
           ) -> Iterator[tuple[str, list[NodeProcess]]]:
    node_key = tmp_path / "node.key"
    AgentKey.generate().save(node_key)
    with postgres_schema(postgres_url) as db:
        nodes = [NodeProcess(db, tmp_path / f"node{n}", extra_args=(
            "--redis", redis_url, "--key-file", str(node_key), "--fee-bps", str(FEE_BPS)))
            for n in range(3)]
        try:
            with ThreadPoolExecutor(3) as pool:  # migrations take a lock: starting together
                list(pool.map(lambda node: node.start(), nodes))
            yield db, nodes
        finally:
            for node in nodes:
                node.kill()


def _deposits(buyer: BuyerAgent, acknowledged: list[str], failed: list[str],
              enough: threading.Event) -> None:
    for n in range(DEPOSITS):
        key = f"dep-{buyer.agent_id[:12]}-{n}"
        try:
            buyer.fund("0.01", "USD", idempotency_key=key)
            acknowledged.append(key)
        except AgentmarketError:
            failed.append(key)
        if len(acknowledged) >= KILL_AFTER:
            enough.set()
        time.sleep(0.02)


def _signed_metadata(key: AgentKey, method: str, body: bytes) -> list[tuple[str, Any]]:
    timestamp_ms, nonce = time.time_ns() // 1_000_000, os.urandom(16).hex()
    return [(AGENT_KEY, key.agent_id), (TIMESTAMP_KEY, str(timestamp_ms)), (NONCE_KEY, nonce),
            (SIGNATURE_KEY, key.sign(signed_message(method, body, timestamp_ms, nonce)))]


def test_three_nodes_one_market_survive_a_killed_node(market: tuple[str, list[NodeProcess]]):
    db, nodes = market
    holder = _until(lambda: _sweepers(db))[0]
    leader = next(n for n in nodes if holder.endswith(n.address))
    seller_node, other = (n for n in nodes if n is not leader)
    engine = make_engine(db)
    ledger = Ledger(engine, group_commit=False)
    seller = SellerAgent("upper", skills=[upper], marketplace=seller_node.address,
                         dispute_window_s=0, settle_interval_s=0.2).serve()
    buyer = BuyerAgent("buyer", marketplace=[leader.address, other.address])
    try:
        buyer.fund("1.00", "USD", idempotency_key=f"fund-{buyer.agent_id[:12]}")
        listing = _until(lambda: [found for found in buyer.discover("upper", currency="USD")
                                  if found.agent_id == seller.agent_id])[0]
        deal = buyer.negotiate(listing, "upper", quantity=5, budget="0.01", currency="USD",
                               deadline_s=30)
        buyer.hire(deal)
        assert buyer.call(deal, {"text": "one"}) == {"text": "ONE"}
        wallet = buyer.wallet("USD").account_id
        payee = ledger.open_account("payee", "USD").account_id

        acknowledged: list[str] = []
        failed: list[str] = []
        enough = threading.Event()
        stream = threading.Thread(target=_deposits, args=(buyer, acknowledged, failed, enough))
        stream.start()
        assert enough.wait(30)
        with signed_channel(other.address, buyer.key) as channel:  # due after the kill
            lapsing = wallet_pb2_grpc.WalletServiceStub(channel).Hold(wallet_pb2.HoldRequest(
                idempotency_key="lapses", debit_account_id=wallet,
                credit_account_id=payee,
                amount=wallet_pb2.Money(amount_atomic=USD.atomic("0.05"), currency="USD"),
                timeout_s=2), timeout=10)
        leader.kill()  # SIGKILL mid-stream: its lease and connections die with it
        killed_ms = time.time_ns() // 1_000_000
        done_at_kill = len(acknowledged) + len(failed)
        for word in ("two", "three"):
            assert buyer.call(deal, {"text": word}) == {"text": word.upper()}
        stream.join(60)
        assert done_at_kill < DEPOSITS  # the stream went on after the kill
        escrow = buyer.finish(deal)
        price = deal.body.terms.unit_price_atomic
        assert escrow.captured_atomic == 3 * price, escrow
        for key in failed:  # failed, so maybe done: the same key makes it done exactly once
            buyer.fund("0.01", "USD", idempotency_key=key)

        new_holder = _until(lambda: _sweepers(db))
        assert new_holder != [holder] and len(new_holder) == 1
        _until(lambda: ledger.get_hold(lapsing.hold_id).status == "expired")
        expiry = [p for p in ledger.postings(hold_id=lapsing.hold_id) if p.kind == "expire"]
        assert len(expiry) == 1 and expiry[0].created_at_ms > killed_ms  # by the new sweeper

        available = ledger.balance(wallet).available_atomic
        assert available == USD.atomic("1.00") + DEPOSITS * USD.atomic("0.01") - 3 * price
        outcomes: list[str] = []

        def spend_all(node: NodeProcess, n: int) -> None:
            with signed_channel(node.address, buyer.key) as channel:
                try:
                    wallet_pb2_grpc.WalletServiceStub(channel).Transfer(
                        wallet_pb2.TransferRequest(
                            idempotency_key=f"all-{n}", debit_account_id=wallet,
                            credit_account_id=payee,
                            amount=wallet_pb2.Money(amount_atomic=available, currency="USD")),
                        timeout=10)
                    outcomes.append("ok")
                except grpc.RpcError as error:
                    outcomes.append(error_reason(error))

        racers = [threading.Thread(target=spend_all, args=(node, n))
                  for n, node in enumerate((seller_node, other))]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join()
        assert sorted(outcomes) == ["INSUFFICIENT_FUNDS", "ok"], outcomes

        request = wallet_pb2.GetBalanceRequest(account_id=wallet)
        metadata = _signed_metadata(buyer.key, "/wallets.v1.WalletService/GetBalance",
                                    request.SerializeToString())
        with plain_channel(seller_node.address) as first, plain_channel(other.address) as again:
            wallet_pb2_grpc.WalletServiceStub(first).GetBalance(request, metadata=metadata,
                                                                timeout=10)
            with pytest.raises(grpc.RpcError) as replay:
                wallet_pb2_grpc.WalletServiceStub(again).GetBalance(request, metadata=metadata,
                                                                    timeout=10)
        assert error_reason(replay.value) == "REPLAYED_REQUEST"
    finally:
        buyer.close()
        seller.stop(0)

    try:
        keys = [row.idempotency_key for row in ledger.postings(limit=10_000)
                if row.idempotency_key.startswith(f"dep-{buyer.agent_id[:12]}-")]
        assert sorted(keys) == sorted({*acknowledged, *failed}) and len(keys) == DEPOSITS
        assert ledger.balance(wallet).posted_atomic == 0
        assert ledger.balance(payee).posted_atomic == available
        seller_wallet = ledger.find_account(seller.agent_id, "USD")
        assert seller_wallet is not None
        assert ledger.balance(seller_wallet.account_id).posted_atomic == \
            split(3 * price, FEE_BPS)[0]
        assert ledger.holds(status="open") == []
        chain, balances = verify_chain(ledger), check_balances(ledger)
        assert chain.ok, chain.problems
        assert balances.ok, balances.problems
        assert sum(b.posted_atomic for b in ledger.accounts()) == 0
    finally:
        engine.dispose()
