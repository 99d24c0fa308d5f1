"""Redeem: batched and idempotent; a voucher is never redeemed twice nor for more than the hold;
only the seller redeems; every refusal changes nothing. Bad input at OpenEscrow, too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import Engine

from marketplace import agreements as ag
from marketplace.escrows import OpenedAgreements
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.testing import (
    Harness,
    funded_market,
    make_deal,
    make_listing,
    make_skill,
    make_terms,
)
from marketplace.v1 import registry_pb2, settlement_pb2, settlement_pb2_grpc
from wallets.errors import AgentmarketError
from wallets.grpc_errors import error_reason

PRICE = 1_000
FUNDS = 1_000_000_000
OK = {"text": "fine"}


@pytest.fixture
def market(engine: Engine, clock) -> Iterator[Harness]:  # type: ignore[no-untyped-def]
    with funded_market(engine, clock, FUNDS, price_atomic=PRICE,
                       methods=[registry_pb2.VERIFICATION_METHOD_SCHEMA]) as harness:
        yield harness


def _refused(market: Harness, attempt, status: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    before = market.balances()
    escrows = market.settlement.agreements()
    with pytest.raises(AgentmarketError) as caught:
        attempt()
    assert (caught.value.status, caught.value.reason) == (status, reason), caught.value
    assert market.balances() == before
    assert market.settlement.agreements() == escrows


def _open(market: Harness, **terms):  # type: ignore[no-untyped-def]
    deal = market.deal(**terms)
    market.open(deal)
    return deal


def _redeem(market: Harness, deal, voucher, receipts, signer=None, key="r"):  # type: ignore[no-untyped-def]
    signer = signer or market.seller
    return market.settlement.redeem(key, deal.agreement_id, voucher, receipts,
                                    deal.redeem_signature(signer, voucher, receipts))


# ---- idempotency and double redemption ------------------------------------------------------


def test_a_retried_redeem_returns_the_first_result_and_pays_once(market: Harness):
    deal = _open(market, dispute_window_s=0)
    first = market.redeem(deal, [OK, OK], key="redeem-1")
    balances = market.balances()
    assert market.redeem(deal, [OK, OK], key="redeem-1") == first
    assert market.balances() == balances
    assert first["state"] == "settled" and first["captured_atomic"] == 2 * PRICE


def test_a_retried_open_returns_the_first_result_after_the_offer_lapsed(market: Harness):
    deal = market.deal(price_atomic=FUNDS // 5, quantity=5)  # holds every cent
    first = market.settlement.open_escrow("open-once", deal.signed)
    market.clock.advance(120)  # the offer lapsed, and nothing is left to hold
    balances = market.balances()
    assert market.settlement.open_escrow("open-once", deal.signed) == first
    assert market.balances() == balances
    _refused(market, lambda: market.settlement.open_escrow("open-twice", deal.signed),
             "FAILED_PRECONDITION", "ILLEGAL_TRANSITION")


def test_a_voucher_is_never_redeemed_twice(market: Harness):
    deal = _open(market)
    market.redeem(deal, [OK, OK], key="redeem-1")
    _refused(market, lambda: market.redeem(deal, [OK, OK], key="redeem-2"),
             "FAILED_PRECONDITION", "ILLEGAL_TRANSITION")


def test_a_settled_agreement_redeemed_again_is_refused_alike_by_any_node(market: Harness):
    """The node that opened it redeems on the terms it kept (the state is checked in the
    transaction); another node reads the escrow first: the same refusal, and past the
    deadline's grace a retry still replays."""
    deal = _open(market, dispute_window_s=0)
    first = market.redeem(deal, [OK], key="redeem-1")
    with pytest.raises(AgentmarketError) as kept:
        market.redeem(deal, [OK], key="redeem-2")
    market.settlement._opened = OpenedAgreements()  # as another node of the market sees it
    with pytest.raises(AgentmarketError) as read:
        market.redeem(deal, [OK], key="redeem-3")
    assert (kept.value.reason, kept.value.message) == (read.value.reason, read.value.message)
    market.clock.advance(2 * 3600)
    assert market.redeem(deal, [OK], key="redeem-1") == first


def test_the_same_key_for_another_redeem_is_refused(market: Harness):
    deal = _open(market)
    market.redeem(deal, [OK], key="redeem-1")
    _refused(market, lambda: market.redeem(deal, [OK, OK], key="redeem-1"),
             "ALREADY_EXISTS", "IDEMPOTENCY_KEY_REUSED")


# ---- what the voucher and the receipts allow --------------------------------------------------


def test_the_seller_earns_what_verified_within_what_the_voucher_paid(market: Harness):
    deal = _open(market)
    receipts = [deal.receipt(market.seller, i, OK) for i in (1, 2, 3)]
    voucher = deal.voucher(2, sequence=3)  # three calls made, the buyer paid for two
    escrow = _redeem(market, deal, voucher, receipts)
    assert escrow["earned_atomic"] == 2 * PRICE


def test_a_voucher_for_more_than_the_hold_is_refused(market: Harness):
    deal = _open(market, max_total_atomic=4_500)  # chain of 5 links of 1000 covers 5000
    voucher = deal.voucher(5)
    receipts = [deal.receipt(market.seller, i, OK) for i in range(1, 6)]
    _refused(market, lambda: _redeem(market, deal, voucher, receipts), "RESOURCE_EXHAUSTED",
             "BUDGET_EXCEEDED")


def test_forged_vouchers_and_receipts_are_refused(market: Harness):
    deal = _open(market)
    receipts = [deal.receipt(market.seller, 1, OK)]
    forged = deal.voucher(1)
    forged.payword = b"\x01" * 32
    _refused(market, lambda: _redeem(market, deal, forged, receipts), "PERMISSION_DENIED",
             "INVALID_VOUCHER")
    past_the_chain = deal.voucher(1)
    past_the_chain.payword_index = 10**9
    with pytest.raises(AgentmarketError, match="past the agreement's chain"):
        _redeem(market, deal, past_the_chain, receipts)
    inflated = deal.voucher(1)
    inflated.cumulative_atomic += 1
    _refused(market, lambda: _redeem(market, deal, inflated, receipts), "PERMISSION_DENIED",
             "INVALID_VOUCHER")
    voucher = deal.voucher(2)
    overcharged = [deal.receipt(market.seller, 1, OK, 2 * PRICE)]
    _refused(market, lambda: _redeem(market, deal, voucher, overcharged), "INVALID_ARGUMENT",
             "INVALID_ARGUMENT")
    unpaid = [deal.receipt(market.seller, 3, OK)]  # voucher sequence 2
    _refused(market, lambda: _redeem(market, deal, voucher, unpaid), "INVALID_ARGUMENT",
             "INVALID_ARGUMENT")
    not_the_sellers = [deal.receipt(market.buyer, 1, OK)]
    _refused(market, lambda: _redeem(market, deal, voucher, not_the_sellers),
             "PERMISSION_DENIED", "BAD_SIGNATURE")
    tampered = deal.receipt(market.seller, 1, OK)
    tampered.output_json = '{"text": "other"}'
    _refused(market, lambda: _redeem(market, deal, voucher, [tampered]), "INVALID_ARGUMENT",
             "INVALID_ARGUMENT")


def test_only_the_seller_can_redeem(market: Harness):
    deal = _open(market)
    receipts = [deal.receipt(market.seller, 1, OK)]
    voucher = deal.voucher(1)
    # The buyer holds the receipts and its own vouchers: it must not close the deal early.
    _refused(market, lambda: _redeem(market, deal, voucher, receipts, signer=market.buyer),
             "PERMISSION_DENIED", "BAD_SIGNATURE")
    _refused(market, lambda: market.settlement.redeem("r", deal.agreement_id, voucher,
                                                      receipts, b""),
             "PERMISSION_DENIED", "BAD_SIGNATURE")
    # A signature over other receipts than those presented does not count either.
    signature = deal.redeem_signature(market.seller, voucher, [])
    _refused(market, lambda: market.settlement.redeem("r", deal.agreement_id, voucher,
                                                      receipts, signature),
             "PERMISSION_DENIED", "BAD_SIGNATURE")


def test_a_redeem_with_the_buyers_confirmation_pays_at_once(market: Harness):
    deal = _open(market, dispute_window_s=3600)
    receipts = [deal.receipt(market.seller, 1, OK), deal.receipt(market.seller, 2, OK)]
    voucher = deal.voucher(2)
    confirmation = market.buyer.sign(ag.request_message("confirm", deal.agreement_id))
    paid = market.settlement.redeem("r", deal.agreement_id, voucher, receipts,
                                    deal.redeem_signature(market.seller, voucher, receipts),
                                    confirmation)
    assert paid["state"] == "settled" and paid["captured_atomic"] == 2 * PRICE
    assert market.posted(market.seller) == 2 * PRICE - 2 * PRICE * 250 // 10_000
    # a retry without the confirmation replays the first answer and pays nothing more
    balances = market.balances()
    assert market.settlement.redeem("r", deal.agreement_id, voucher, receipts,
                                    deal.redeem_signature(market.seller, voucher,
                                                          receipts)) == paid
    assert market.balances() == balances


def test_a_confirmation_not_signed_by_the_buyer_is_refused(market: Harness):
    deal = _open(market)
    receipts = [deal.receipt(market.seller, 1, OK)]
    voucher = deal.voucher(1)
    signature = deal.redeem_signature(market.seller, voucher, receipts)
    for forged in (market.seller.sign(ag.request_message("confirm", deal.agreement_id)),
                   market.buyer.sign(ag.request_message("finish", deal.agreement_id))):
        _refused(market, lambda forged=forged: market.settlement.redeem(
            "r", deal.agreement_id, voucher, receipts, signature, forged),
            "PERMISSION_DENIED", "BAD_SIGNATURE")
    assert market.settlement.redeem("r", deal.agreement_id, voucher, receipts,
                                    signature)["state"] == "verified"


def test_redeem_after_the_deadline_is_refused(market: Harness):
    deal, late = _open(market), _open(market)
    market.clock.advance(3601)  # within the redeem grace: verified work is still paid
    assert market.redeem(deal, [OK])["earned_atomic"] > 0
    market.clock.advance(360)  # past the grace, a tenth of the agreement's span
    _refused(market, lambda: market.redeem(late, [OK]), "FAILED_PRECONDITION",
             "DEADLINE_PASSED")


def test_per_unit_receipts_are_priced_by_their_metered_units(market: Harness):
    market.advertise(make_skill("gpu.a100", price_atomic=50, unit=registry_pb2.PRICE_UNIT_UNIT,
                                unit_name="gpu_second"), seller=market.seller)
    deal = _open(market, skill="gpu.a100", price_atomic=50, quantity=100,
                 unit=registry_pb2.PRICE_UNIT_UNIT, unit_name="gpu_second")
    voucher = deal.voucher(61)
    too_much = [deal.receipt(market.seller, 1, OK, 50 * 61, units=60)]
    _refused(market, lambda: _redeem(market, deal, voucher, too_much), "INVALID_ARGUMENT",
             "INVALID_ARGUMENT")
    exact = [deal.receipt(market.seller, 1, OK, 50 * 60, units=60)]
    assert _redeem(market, deal, voucher, exact)["earned_atomic"] == 50 * 60


# ---- batches ----------------------------------------------------------------------------------


def _request(market: Harness, deal, outputs, key):  # type: ignore[no-untyped-def]
    receipts = [deal.receipt(market.seller, i, out) for i, out in enumerate(outputs, 1)]
    return ag.signed_redeem(market.seller, deal.agreement_id, deal.voucher(len(outputs)),
                            receipts, key)


def test_redeem_batch_settles_each_item_on_its_own(market: Harness):
    deals = [_open(market) for _ in range(3)]
    requests = [_request(market, deals[0], [OK, OK], "b-0"),
                _request(market, deals[1], [OK], "b-1"),
                _request(market, deals[2], [OK], "b-2")]
    requests[1].seller_signature = b"forged"
    results = market.settlement.redeem_batch(requests)
    assert [r.agreement_id for r in results] == [d.agreement_id for d in deals]
    assert results[0].escrow.earned_atomic == 2 * PRICE and not results[0].error_code
    assert (results[1].error_code, results[1].error_reason) == ("PERMISSION_DENIED",
                                                                "BAD_SIGNATURE")
    assert results[2].escrow.state == settlement_pb2.AGREEMENT_STATE_VERIFIED
    assert market.settlement.get(deals[1].agreement_id)["state"] == "active"
    again = market.settlement.redeem_batch([requests[0]])  # retried items replay
    assert again[0].escrow == results[0].escrow
    with pytest.raises(AgentmarketError):
        market.settlement.redeem_batch([])


# ---- bad input at OpenEscrow ------------------------------------------------------------------


def test_bad_agreements_are_refused_at_escrow_and_change_nothing(market: Harness):
    cases = {
        ("NOT_FOUND", "UNKNOWN_SKILL"): market.deal(skill="no.such.skill"),
        ("FAILED_PRECONDITION", "CURRENCY_NOT_ACCEPTED"): market.deal(currency="ECNY"),
        ("FAILED_PRECONDITION", "VERIFICATION_NOT_OFFERED"): market.deal(
            method=registry_pb2.VERIFICATION_METHOD_BUYER_ACCEPTANCE),
        ("FAILED_PRECONDITION", "TERMS_MISMATCH"): market.deal(
            unit=registry_pb2.PRICE_UNIT_UNIT, unit_name="page"),
        ("PERMISSION_DENIED", "BAD_SIGNATURE"): make_deal(
            market.buyer, market.seller, make_terms(), market.clock(),
            seller_signer=market.buyer),
        ("FAILED_PRECONDITION", "INSUFFICIENT_FUNDS"): market.deal(
            price_atomic=FUNDS // 10, quantity=20),
    }
    for (status, reason), deal in cases.items():
        _refused(market, lambda d=deal: market.open(d), status, reason)
    lapsed = make_deal(market.buyer, market.seller, make_terms(), market.clock(),
                       offer_ttl_ms=1_000)
    market.clock.advance(2)
    _refused(market, lambda: market.open(lapsed), "FAILED_PRECONDITION", "OFFER_EXPIRED")
    unknown = market.deal(currency="XYZ")
    _refused(market, lambda: market.open(unknown), "INVALID_ARGUMENT", "UNKNOWN_CURRENCY")


def test_a_listing_cannot_advertise_bad_prices_or_schemas(market: Harness):
    for skill, reason in [
        (make_skill(currency="XYZ"), "UNKNOWN_CURRENCY"),
        (make_skill(output_schema={"type": 12}), "SCHEMA_VIOLATION"),
        (make_skill(price_atomic=0), "INVALID_ARGUMENT"),
        (make_skill(unit=registry_pb2.PRICE_UNIT_UNIT), "INVALID_ARGUMENT"),  # no unit name
        (make_skill(tiers=[(10, 900), (5, 800)]), "INVALID_ARGUMENT"),
    ]:
        with pytest.raises(AgentmarketError) as caught:
            market.advertise(skill, seller=AgentKey.generate())
        assert caught.value.reason == reason


# ---- over gRPC --------------------------------------------------------------------------------


def test_redeem_and_redeem_batch_over_grpc(tmp_path: Path):
    buyer, seller = AgentKey.generate(), AgentKey.generate()
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600,
                           require_auth=False).start()  # raw unsigned stubs
    channel = grpc.insecure_channel(node.address)
    try:
        node.registry.advertise(make_listing(seller, make_skill(price_atomic=PRICE)), 3600)
        account = node.ledger.open_account(buyer.agent_id, "USD").account_id
        node.wallets.deposit("fund", account, FUNDS, "USD")
        stub = settlement_pb2_grpc.SettlementServiceStub(channel)
        deals = []
        for i in range(2):
            deal = make_deal(buyer, seller, make_terms(price_atomic=PRICE),
                             node.ledger.clock_ms())
            stub.OpenEscrow(settlement_pb2.OpenEscrowRequest(
                idempotency_key=f"open-{i}", agreement=deal.signed), timeout=10)
            deals.append(deal)
        receipts = [deals[0].receipt(seller, 1, OK)]
        forged = ag.signed_redeem(buyer, deals[0].agreement_id, deals[0].voucher(1), receipts,
                                  "by-the-buyer")
        with pytest.raises(grpc.RpcError) as caught:
            stub.Redeem(forged, timeout=10)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(caught.value) == "BAD_SIGNATURE"
        batch = settlement_pb2.RedeemBatchRequest(idempotency_key="batch", redeems=[
            ag.signed_redeem(seller, d.agreement_id, d.voucher(1),
                             [d.receipt(seller, 1, OK)], f"redeem-{i}")
            for i, d in enumerate(deals)])
        results = stub.RedeemBatch(batch, timeout=10).results
        assert [r.escrow.state for r in results] == [settlement_pb2.AGREEMENT_STATE_VERIFIED] * 2
        assert all(r.escrow.earned_atomic == PRICE for r in results)
        with pytest.raises(grpc.RpcError) as caught:
            stub.RedeemBatch(settlement_pb2.RedeemBatchRequest(redeems=batch.redeems),
                             timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # no idempotency key
    finally:
        channel.close()
        node.stop(0)
