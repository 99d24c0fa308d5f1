"""Disputes: the buyer freezes the earnings inside the window, with evidence; an arbiter pays
them to the seller, the buyer, or splits them; every outcome is a ledger posting."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import Engine

from marketplace import agreements as ag
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.reputation import reputation_permille
from marketplace.testing import (
    Harness,
    funded_market,
    make_deal,
    make_listing,
    make_skill,
    make_terms,
)
from marketplace.v1 import (
    dispute_pb2,
    dispute_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
)
from wallets.audit import check_balances, verify_chain
from wallets.currencies import split
from wallets.ecny import CNY_ATOMIC, DEFAULT_TIERS, EcnyGuard, EcnyRules
from wallets.errors import AgentmarketError
from wallets.grpc_errors import error_reason

PRICE = 1_000
FUNDS = 1_000_000_000
OK = {"text": "fine"}
Outcome = dispute_pb2.DisputeOutcome


@pytest.fixture
def market(engine: Engine, clock) -> Iterator[Harness]:  # type: ignore[no-untyped-def]
    with funded_market(engine, clock, FUNDS, price_atomic=PRICE) as harness:
        yield harness


def _disputed(market: Harness, calls: int = 4):  # type: ignore[no-untyped-def]
    deal = market.deal(price_atomic=PRICE, quantity=5)
    market.open(deal)
    market.redeem(deal, [OK] * calls)
    evidence = [settlement_pb2.Evidence(kind="note", description="what I asked for",
                                        content=b"I asked for French")]
    market.dispute(deal, "the outputs are in English", evidence)
    return deal


def _books_ok(market: Harness) -> None:
    assert check_balances(market.ledger).ok and verify_chain(market.ledger).ok
    assert sum(b.posted_atomic for b in market.ledger.accounts()) == 0


def test_a_dispute_keeps_the_evidence(market: Harness):
    deal = _disputed(market)
    record = market.settlement.disputes.get(deal.agreement_id)
    assert record.status == "open" and record.reason == "the outputs are in English"
    assert record.frozen_atomic == 4 * PRICE and record.currency == "USD"
    assert [e.content for e in record.buyer_evidence] == [b"I asked for French"]
    assert record.delivery.voucher.payword_index == 4
    assert [r.sequence for r in record.delivery.receipts] == [1, 2, 3, 4]
    for receipt in record.delivery.receipts:  # signed output hashes an arbiter can check
        ag.check_receipt(receipt, market.seller.agent_id)
    results = json.loads(record.delivery.verification_json)
    assert results["method"] == "schema"
    assert all(r["passed"] for r in results["receipts"])
    assert ag.agreement_id(record.agreement.body) == deal.agreement_id


@pytest.mark.parametrize(("outcome", "seller_gross"), [
    (Outcome.DISPUTE_OUTCOME_SELLER, 4 * PRICE), (Outcome.DISPUTE_OUTCOME_BUYER, 0),
    (Outcome.DISPUTE_OUTCOME_SPLIT, 1_500)], ids=["seller", "buyer", "split"])
def test_resolution_pays_out_the_frozen_amount(market: Harness, outcome: int, seller_gross: int):
    deal = _disputed(market)
    escrow = market.resolve(deal, outcome, seller_gross if outcome == Outcome.DISPUTE_OUTCOME_SPLIT
                            else 0, note="looked at the outputs")
    seller_part, fee = split(seller_gross, 250)
    assert escrow["state"] == "resolved"
    assert (escrow["captured_atomic"], escrow["fee_atomic"]) == (seller_gross, fee)
    assert escrow["refunded_atomic"] == 5 * PRICE - seller_gross
    assert market.posted(market.seller) == seller_part
    assert market.posted("marketplace", "fees") == fee
    assert market.posted(market.buyer) == FUNDS - seller_gross
    assert market.posted("marketplace", "escrow") == 0
    record = market.settlement.disputes.get(deal.agreement_id)
    assert (record.status, record.outcome, record.seller_atomic, record.buyer_atomic) == (
        "resolved", outcome, seller_gross, 4 * PRICE - seller_gross)
    assert record.arbiter_id == market.arbiter.agent_id and record.note == "looked at the outputs"
    assert reputation_permille(market.ledger.engine, market.seller.agent_id) == \
        seller_gross * 1000 // (4 * PRICE)
    _books_ok(market)


def test_money_stays_frozen_past_the_holds_timeout(market: Harness):
    deal = _disputed(market)
    market.clock.advance(40 * 24 * 3600)  # long past any hold's timeout
    market.ledger.expire_holds()
    market.settlement.sweep()
    assert market.posted("marketplace", "escrow") == 4 * PRICE
    market.resolve(deal, Outcome.DISPUTE_OUTCOME_SELLER)
    assert market.posted(market.seller) == split(4 * PRICE, 250)[0]
    _books_ok(market)


def test_disputing_and_resolving_are_idempotent(market: Harness):
    deal = market.deal()
    market.open(deal)
    market.redeem(deal, [OK])
    first = market.dispute(deal, key="dispute-once")
    balances = market.balances()
    assert market.dispute(deal, key="dispute-once") == first
    assert market.balances() == balances
    resolved = market.resolve(deal, Outcome.DISPUTE_OUTCOME_BUYER, key="resolve-once")
    balances = market.balances()
    assert market.resolve(deal, Outcome.DISPUTE_OUTCOME_BUYER, key="resolve-once") == resolved
    assert market.balances() == balances


def _refused(market: Harness, attempt, status: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    before = market.balances()
    with pytest.raises(AgentmarketError) as caught:
        attempt()
    assert (caught.value.status, caught.value.reason) == (status, reason), caught.value
    assert market.balances() == before


def test_refusals_change_nothing(market: Harness):
    deal = market.deal()
    market.open(deal)
    market.redeem(deal, [OK, OK])
    stranger = AgentKey.generate()
    reason = "not what I wanted"
    _refused(market, lambda: market.settlement.dispute(
        "d-stranger", deal.agreement_id, reason,
        stranger.sign(ag.dispute_message(deal.agreement_id, reason, [])), []),
        "PERMISSION_DENIED", "BAD_SIGNATURE")
    _refused(market, lambda: market.dispute(deal, reason="x" * 2001), "INVALID_ARGUMENT",
             "INVALID_ARGUMENT")
    _refused(market, lambda: market.resolve(deal, Outcome.DISPUTE_OUTCOME_SELLER),
             "FAILED_PRECONDITION", "ILLEGAL_TRANSITION")
    market.clock.advance(60)
    _refused(market, lambda: market.dispute(deal), "FAILED_PRECONDITION",
             "DISPUTE_WINDOW_CLOSED")

    other = market.deal()
    market.open(other)
    market.redeem(other, [OK, OK])
    market.dispute(other)
    _refused(market, lambda: market.resolve(other, Outcome.DISPUTE_OUTCOME_SPLIT, 2 * PRICE),
             "FAILED_PRECONDITION", "SPLIT_OUT_OF_RANGE")  # a split gives each side something
    note, seller = "mine", Outcome.DISPUTE_OUTCOME_SELLER
    _refused(market, lambda: market.settlement.resolve_dispute(
        "r-stranger", other.agreement_id, seller, 0, note, stranger.agent_id,
        stranger.sign(ag.resolve_message(other.agreement_id, seller, 0, note))),
        "PERMISSION_DENIED", "PERMISSION_DENIED")
    _refused(market, lambda: market.settlement.resolve_dispute(
        "r-forged", other.agreement_id, Outcome.DISPUTE_OUTCOME_SELLER, 0, note,
        market.arbiter.agent_id, stranger.sign(b"anything")), "PERMISSION_DENIED",
        "BAD_SIGNATURE")


def test_arbitration_over_grpc(tmp_path: Path):
    arbiter, buyer, seller = AgentKey.generate(), AgentKey.generate(), AgentKey.generate()
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600,
                           arbiters=[arbiter.agent_id],
                           require_auth=False).start()  # raw unsigned stubs
    channel = grpc.insecure_channel(node.address)
    try:
        node.registry.advertise(make_listing(seller, make_skill(price_atomic=PRICE)), 3600)
        account = node.ledger.open_account(buyer.agent_id, "USD").account_id
        node.wallets.deposit("fund", account, FUNDS, "USD")
        deal = make_deal(buyer, seller, make_terms(price_atomic=PRICE), node.ledger.clock_ms())
        settlement = settlement_pb2_grpc.SettlementServiceStub(channel)
        arbitration = dispute_pb2_grpc.ArbitrationServiceStub(channel)
        settlement.OpenEscrow(settlement_pb2.OpenEscrowRequest(
            idempotency_key="open", agreement=deal.signed), timeout=10)
        receipts = [deal.receipt(seller, 1, OK)]
        voucher = deal.voucher(1)
        settlement.Redeem(ag.signed_redeem(seller, deal.agreement_id, voucher, receipts,
                                           "redeem"), timeout=10)
        settlement.Dispute(settlement_pb2.DisputeRequest(
            idempotency_key="dispute", agreement_id=deal.agreement_id, reason="wrong",
            buyer_signature=buyer.sign(ag.dispute_message(deal.agreement_id, "wrong", []))),
            timeout=10)
        record = arbitration.GetDispute(dispute_pb2.GetDisputeRequest(
            agreement_id=deal.agreement_id), timeout=10)
        assert record.status == "open" and record.frozen_atomic == PRICE
        request = dispute_pb2.ResolveDisputeRequest(
            idempotency_key="resolve", agreement_id=deal.agreement_id,
            outcome=Outcome.DISPUTE_OUTCOME_BUYER, note="n", arbiter_id=arbiter.agent_id)
        with pytest.raises(grpc.RpcError) as caught:
            arbitration.ResolveDispute(request, timeout=10)  # unsigned
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(caught.value) == "BAD_SIGNATURE"
        request.arbiter_signature = arbiter.sign(ag.resolve_message(
            deal.agreement_id, Outcome.DISPUTE_OUTCOME_BUYER, 0, "n"))
        escrow = arbitration.ResolveDispute(request, timeout=10)
        assert escrow.state == settlement_pb2.AGREEMENT_STATE_RESOLVED
        assert escrow.refunded_atomic == 5 * PRICE
        with pytest.raises(grpc.RpcError) as caught:
            arbitration.GetDispute(dispute_pb2.GetDisputeRequest(agreement_id="ab" * 32),
                                   timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        channel.close()
        node.stop(0)


@pytest.mark.parametrize("outcome", [Outcome.DISPUTE_OUTCOME_BUYER, Outcome.DISPUTE_OUTCOME_SPLIT,
                                     Outcome.DISPUTE_OUTCOME_SELLER],
                         ids=["buyer", "split", "seller"])
def test_a_seller_at_its_ecny_cap_cannot_keep_a_decision_from_landing(engine: Engine, clock,
                                                                      outcome: int):
    """The decision pays out what the escrow promised (counted against the cap when it
    opened): a losing seller that filled its e-CNY wallet since does not freeze it forever."""
    harness = Harness(engine, clock, guard=EcnyGuard(EcnyRules()))
    try:
        price = 10 * CNY_ATOMIC
        harness.advertise(make_skill(price_atomic=price, currency="ECNY"))
        harness.fund(harness.buyer, 1_000 * CNY_ATOMIC, "ECNY")
        deal = harness.deal(price_atomic=price, quantity=5, currency="ECNY")
        harness.open(deal)
        harness.redeem(deal, [OK] * 3)
        harness.dispute(deal)
        cap = DEFAULT_TIERS[4].balance_cap_atomic  # an anonymous wallet's
        seller = harness.ledger.open_account(harness.seller.agent_id, "ECNY").account_id
        now = harness.ledger.balance(seller)
        room = cap - now.posted_atomic - now.pending_credits_atomic
        harness.wallets.deposit(harness.key("fill"), seller, room, "ECNY")
        with pytest.raises(AgentmarketError) as refused:  # the cap holds for anything else
            harness.wallets.deposit(harness.key("more"), seller, CNY_ATOMIC, "ECNY")
        assert refused.value.reason == "ECNY_BALANCE_CAP"
        seller_atomic = 1 if outcome == Outcome.DISPUTE_OUTCOME_SPLIT else 0
        escrow = harness.resolve(deal, outcome, seller_atomic)
        assert escrow["state"] == "resolved"
        assert check_balances(harness.ledger).ok and verify_chain(harness.ledger).ok
    finally:
        harness.close()
