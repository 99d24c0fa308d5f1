"""Cross-border payment-versus-payment between two node processes (an e-CNY node on SQLite, a
USD node on PostgreSQL), killed with SIGKILL at every step: both legs settle, or both void.

Each case is one payment: the buyer locks e-CNY on node A, the FX provider locks USD on node B,
the seller claims on B with the preimage, the provider claims on A with the preimage it read
from B. In case (node, step) that node is killed while the step's request is in flight, then
restarted on the same database and port; every party then runs its step again (idempotent) and
the payment goes on. The last case keeps node B down past the destination leg's expiry: the
seller can no longer claim, and both legs void by their own timeouts. Money and receipts are
then checked on both ledgers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from marketplace.auth import signed_channel
from marketplace.identity import AgentKey
from marketplace.pvp import (
    LegState,
    NodeUnavailable,
    PvpLeg,
    PvpParty,
    PvpPayment,
    source_amount,
    staggered_expiries,
)
from marketplace.receipt_verify import verify_receipt
from marketplace.receipts import ReceiptBook
from tests.conftest import postgres_schema
from tests.processes.node import NodeProcess
from wallets.audit import check_balances, verify_chain
from wallets.fx import FixedRateProvider
from wallets.ledger import Ledger
from wallets.store import make_engine
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
USD_PRICE_ATOMIC = 10_000_000_000  # the skill's price: 10 USD
QUOTE = FixedRateProvider({"USD": "1", "ECNY": "7.1"}).quote("USD", "ECNY", 0)  # the provider's
ECNY_PRICE_ATOMIC = source_amount(USD_PRICE_ATOMIC, QUOTE)
assert ECNY_PRICE_ATOMIC == 71_000_000_000  # 71 CNY
MARGIN_MS = 20_000
RETRY_FOR_S = 30.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _retry(step: Callable[[], Any]) -> Any:
    """Run a step until its node answers (it is idempotent, so a repeat is harmless)."""
    end = time.monotonic() + RETRY_FOR_S
    while True:
        try:
            return step()
        except NodeUnavailable:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


class Nodes:
    def __init__(self, a: NodeProcess, b: NodeProcess, keys: dict[str, AgentKey]) -> None:
        self.a, self.b, self.keys = a, b, keys

    def wallet(self, node: NodeProcess, owner: AgentKey, currency: str,
               fund_atomic: int = 0) -> str:
        with signed_channel(node.address, owner) as channel:
            stub = wallet_pb2_grpc.WalletServiceStub(channel)
            account = _retry(lambda: _call(lambda: stub.OpenAccount(wallet_pb2.OpenAccountRequest(
                idempotency_key=os.urandom(8).hex(), owner=owner.agent_id, currency=currency,
                kind=wallet_pb2.ACCOUNT_KIND_WALLET), timeout=5))).account_id
            if fund_atomic:
                key = os.urandom(8).hex()
                _retry(lambda: _call(lambda: stub.Deposit(wallet_pb2.DepositRequest(
                    idempotency_key=key, account_id=account, amount=wallet_pb2.Money(
                        amount_atomic=fund_atomic, currency=currency)), timeout=5)))
        return account


def _call(fn: Callable[[], Any]) -> Any:
    import grpc

    try:
        return fn()
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            raise NodeUnavailable(str(error.details())) from None
        raise


@pytest.fixture
def nodes(tmp_path: Path, postgres_url: str):
    keys = {name: AgentKey.generate() for name in ("a", "b")}
    with postgres_schema(postgres_url) as b_url:
        made = []
        for name, url in (("a", f"sqlite:///{tmp_path / 'ecny.db'}"), ("b", b_url)):
            key_file = tmp_path / f"{name}.key"
            key_file.write_text(keys[name].seed().hex())
            made.append(NodeProcess(url, tmp_path / name, extra_args=(
                "--key-file", str(key_file), "--checkpoint-interval", "0.5",
                *(("--ecny",) if name == "a" else ()))))  # A applies e-CNY's wallet rules
        for node in made:
            node.start()
        try:
            yield Nodes(*made, keys)
        finally:
            for node in made:
                node.kill()


def _payment(nodes: Nodes, window_ms: int) -> tuple[PvpPayment, bytes, dict[str, Any]]:
    buyer, seller, provider = (AgentKey.generate() for _ in range(3))
    accounts = {
        "buyer": nodes.wallet(nodes.a, buyer, "ECNY", 2 * ECNY_PRICE_ATOMIC),
        "provider_a": nodes.wallet(nodes.a, provider, "ECNY"),
        "provider_b": nodes.wallet(nodes.b, provider, "USD", 2 * USD_PRICE_ATOMIC),
        "seller": nodes.wallet(nodes.b, seller, "USD"),
    }
    preimage = os.urandom(32)
    destination_expiry, source_expiry = staggered_expiries(
        _now_ms(), destination_window_ms=window_ms, margin_ms=MARGIN_MS)
    payment = PvpPayment(
        payment_id=os.urandom(16).hex(), condition_sha256=hashlib.sha256(preimage).hexdigest(),
        source=PvpLeg(nodes.a.address, accounts["buyer"], accounts["provider_a"],
                   ECNY_PRICE_ATOMIC, "ECNY", source_expiry),
        destination=PvpLeg(nodes.b.address, accounts["provider_b"], accounts["seller"],
                        USD_PRICE_ATOMIC, "USD", destination_expiry))
    parties = {"buyer": PvpParty(buyer), "seller": PvpParty(seller),
               "provider": PvpParty(provider)}
    return payment, preimage, {**parties, "accounts": accounts}


def _run(nodes: Nodes, kill: tuple[str, int] | None, *, window_ms: int = 40_000) -> dict:
    payment, preimage, p = _payment(nodes, window_ms)
    held: dict[str, LegState] = {}
    steps: list[Callable[[], Any]] = [
        lambda: held.setdefault("source", p["buyer"].lock_source(payment)),
        lambda: held.setdefault("destination", p["provider"].lock_destination(
            payment, held["source"].hold_id, margin_ms=MARGIN_MS)),
        lambda: p["seller"].claim_destination(payment, held["destination"].hold_id, preimage),
        lambda: p["provider"].claim_source(payment, held["source"].hold_id,
                                           held["destination"].hold_id),
    ]
    for number, step in enumerate(steps, 1):
        if kill is not None and kill[1] == number:
            victim = nodes.a if kill[0] == "a" else nodes.b
            inflight = threading.Thread(target=lambda s=step: _swallow(s))
            inflight.start()
            time.sleep(random.uniform(0, 0.02))
            victim.kill()
            inflight.join()
            victim.start()
        _retry(step)
    return {"payment": payment, "held": held, **p}


def _swallow(step: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):  # the node died under it: run again after restart
        step()


def _leg(nodes: Nodes, party: PvpParty, leg: PvpLeg, hold_id: str) -> LegState:
    return _retry(lambda: party.get(leg, hold_id))


def test_payment_versus_payment_survives_kill_9_of_either_node_at_every_step(nodes: Nodes):
    settled = []
    for victim in ("a", "b"):
        for step in (1, 2, 3, 4):
            run = _run(nodes, (victim, step))
            payment, held, provider = run["payment"], run["held"], run["provider"]
            source = _leg(nodes, provider, payment.source, held["source"].hold_id)
            destination = _leg(nodes, provider, payment.destination,
                               held["destination"].hold_id)
            assert (source.status, destination.status) == ("captured", "captured"), \
                (victim, step)
            settled.append(run)

    # node B stays down past the destination leg's expiry: the seller cannot claim
    run = _payment(nodes, 6_000)
    payment, preimage, p = run
    source = _retry(lambda: p["buyer"].lock_source(payment))
    destination = _retry(lambda: p["provider"].lock_destination(payment, source.hold_id,
                                                                margin_ms=MARGIN_MS))
    nodes.b.kill()
    time.sleep(max(0.0, (payment.destination.expires_at_ms - _now_ms()) / 1000) + 0.5)
    nodes.b.start()
    with pytest.raises(Exception, match=r"expired|HOLD_CLOSED"):
        _retry(lambda: p["seller"].claim_destination(payment, destination.hold_id, preimage))
    with pytest.raises(Exception, match="expired"):
        _retry(lambda: p["provider"].claim_source(payment, source.hold_id, destination.hold_id))
    time.sleep(max(0.0, (payment.source.expires_at_ms - _now_ms()) / 1000) + 0.5)
    assert _leg(nodes, p["buyer"], payment.source, source.hold_id).status == "expired"
    assert _leg(nodes, p["provider"], payment.destination, destination.hold_id).status == \
        "expired"

    _check_books_and_receipts(nodes, settled, payment,
                              {"a": source.hold_id, "b": destination.hold_id})


def _check_books_and_receipts(nodes: Nodes, settled: list[dict], voided: PvpPayment,
                              voided_holds: dict[str, str]) -> None:
    books = {}
    for name, node in (("a", nodes.a), ("b", nodes.b)):
        engine = make_engine(node.db_url)
        ledger = Ledger(engine, group_commit=False)
        assert verify_chain(ledger).ok and check_balances(ledger).ok
        books[name] = (ledger, ReceiptBook(engine, None, ledger.clock_ms))
    for run in settled:
        accounts = run["accounts"]
        ledger_a, ledger_b = books["a"][0], books["b"][0]
        assert ledger_a.balance(accounts["buyer"]).posted_atomic == ECNY_PRICE_ATOMIC
        assert ledger_a.balance(accounts["provider_a"]).posted_atomic == ECNY_PRICE_ATOMIC
        assert ledger_b.balance(accounts["provider_b"]).posted_atomic == USD_PRICE_ATOMIC
        assert ledger_b.balance(accounts["seller"]).posted_atomic == USD_PRICE_ATOMIC
    last = settled[-1]
    settled_holds = {"a": last["held"]["source"].hold_id,
                     "b": last["held"]["destination"].hold_id}
    deadline = time.monotonic() + 20
    for name in ("a", "b"):
        expected = [(f"{last['payment'].condition_sha256}:{settled_holds[name]}", "pvp_settled"),
                    (f"{voided.condition_sha256}:{voided_holds[name]}", "pvp_voided")]
        for subject, kind in expected:
            while True:  # the node's sweeper issues voided receipts and cuts checkpoints
                try:
                    data = books[name][1].receipt_file(subject, kind)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            found = verify_receipt(data, node=nodes.keys[name].agent_id)
            assert (found.subject, found.kind, found.subject_kind) == (subject, kind, "pvp")
    for ledger, _book in books.values():
        ledger.close()
        ledger.engine.dispose()
