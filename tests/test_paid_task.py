"""One paid task over real gRPC servers on loopback: the money and the refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from pydantic import BaseModel

from agents.buyer import BuyerAgent, Deal
from agents.payments import VOUCHER_METADATA_KEY
from agents.seller import SellerAgent
from agents.skills import per_call, skill
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace.auth import signed_channel
from marketplace.node import MarketplaceNode
from marketplace.v1 import agreement_pb2
from wallets.audit import check_balances, verify_chain
from wallets.currencies import split
from wallets.grpc_errors import error_reason

PRICE = "0.002"


class Echo(BaseModel):
    text: str
    length: int


@dataclass
class Market:
    node: MarketplaceNode
    seller: SellerAgent
    buyer: BuyerAgent
    runs: list[str]

    def balances(self) -> dict[str, int]:
        return {b.account_id: b.posted_atomic for b in self.node.ledger.accounts()}

    def deal(self, quantity: int = 3) -> Deal:
        listing = self.buyer.discover("echo", currency="USD")[0]
        deal = self.buyer.negotiate(listing, "echo", quantity=quantity, budget="0.05",
                                    currency="USD")
        self.buyer.hire(deal)
        return deal


@pytest.fixture
def market(db_url: str) -> Iterator[Market]:
    runs: list[str] = []

    @skill(price=per_call(PRICE, "USD"))
    def echo(text: str) -> Echo:
        """Return the text and its length."""
        runs.append(text)
        return Echo(text=text, length=len(text))

    node = MarketplaceNode(db_url, sweep_interval_s=3600).start()
    seller = SellerAgent("echoer", skills=[echo], marketplace=node.address).serve()
    buyer = BuyerAgent("buyer", marketplace=node.address)
    buyer.fund("1.00", "USD")
    yield Market(node, seller, buyer, runs)
    seller.stop(0)
    buyer.close()
    node.stop(0)


def _sums_to_zero(market: Market) -> None:
    assert sum(market.balances().values()) == 0
    assert check_balances(market.node.ledger).ok
    assert verify_chain(market.node.ledger).ok


def test_seller_is_paid_price_times_calls_minus_fee_and_buyer_gets_the_rest(market: Market):
    _sums_to_zero(market)
    buyer_account = market.buyer.wallet("USD").account_id
    start = market.node.ledger.balance(buyer_account).posted_atomic
    deal = market.deal(quantity=5)
    price = deal.body.terms.unit_price_atomic
    assert market.node.ledger.balance(buyer_account).available_atomic == \
        start - deal.body.terms.max_total_atomic
    for i in range(3):
        assert market.buyer.call(deal, {"text": f"call {i}"})["length"] == 6
    escrow = market.buyer.finish(deal)

    seller_part, fee = split(3 * price, market.node.settlement.fee_bps)
    assert (escrow.captured_atomic, escrow.fee_atomic) == (3 * price, fee)
    assert escrow.refunded_atomic == deal.body.terms.max_total_atomic - 3 * price
    seller_wallet = market.node.ledger.find_account(market.seller.agent_id, "USD")
    fees = market.node.ledger.find_account("marketplace", "USD", "fees")
    assert seller_wallet is not None and fees is not None
    assert seller_wallet.posted_atomic == seller_part
    assert fees.posted_atomic == fee
    buyer_after = market.node.ledger.balance(buyer_account)
    assert buyer_after.posted_atomic == start - 3 * price
    assert buyer_after.pending_debits_atomic == 0
    _sums_to_zero(market)


def test_negotiation_has_a_counter_offer_and_respects_the_sellers_floor(market: Market):
    deal = market.deal()
    assert deal.rounds >= 2
    list_price = market.seller.skills["echo"].prices[0].amount_atomic
    assert list_price * 3 // 4 <= deal.body.terms.unit_price_atomic <= list_price


def _raw_invoke(market: Market, deal: Deal, metadata: list[tuple[str, bytes]]):
    channel = signed_channel(market.seller.endpoint, market.buyer.key)  # the buyer, no voucher
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    try:
        return stub.Invoke(agent_pb2.InvokeRequest(agreement_id=deal.agreement_id,
                                                   input_json=json.dumps({"text": "x"})),
                           metadata=metadata, timeout=5)
    finally:
        channel.close()


def _refused(market: Market, deal: Deal, metadata, code: grpc.StatusCode, reason: str) -> None:
    before = market.balances()
    with pytest.raises(grpc.RpcError) as caught:
        _raw_invoke(market, deal, metadata)
    assert caught.value.code() == code, caught.value.details()
    assert error_reason(caught.value) == reason
    assert market.runs == [] or market.runs[-1] != "x"
    assert market.balances() == before


def test_missing_voucher_is_refused_and_the_skill_does_not_run(market: Market):
    deal = market.deal()
    _refused(market, deal, [], grpc.StatusCode.UNAUTHENTICATED, "PAYMENT_REQUIRED")


def test_forged_voucher_is_refused(market: Market):
    deal = market.deal()
    session = market.buyer.sessions[deal.agreement_id]
    forged = agreement_pb2.Voucher(agreement_id=deal.agreement_id, sequence=1,
                                   cumulative_atomic=session.link_value_atomic,
                                   payword_index=1, payword=b"\x01" * 32)
    _refused(market, deal, [(VOUCHER_METADATA_KEY, forged.SerializeToString())],
             grpc.StatusCode.PERMISSION_DENIED, "INVALID_VOUCHER")
    garbage = [(VOUCHER_METADATA_KEY, b"\xff\x00not a voucher")]
    _refused(market, deal, garbage, grpc.StatusCode.PERMISSION_DENIED, "INVALID_VOUCHER")


def test_replayed_voucher_is_refused(market: Market):
    deal = market.deal()
    voucher = market.buyer.sessions[deal.agreement_id].next_voucher(
        deal.body.terms.unit_price_atomic)
    metadata = [(VOUCHER_METADATA_KEY, voucher.SerializeToString())]
    assert json.loads(_raw_invoke(market, deal, metadata).output_json)["text"] == "x"
    market.runs.clear()
    _refused(market, deal, metadata, grpc.StatusCode.PERMISSION_DENIED, "INVALID_VOUCHER")


def test_call_past_the_budget_is_refused(market: Market):
    deal = market.deal(quantity=2)
    for _ in range(2):
        market.buyer.call(deal, {"text": "ok"})
    session = market.buyer.sessions[deal.agreement_id]
    last = agreement_pb2.Voucher(agreement_id=deal.agreement_id, sequence=session.sequence + 1,
                                 cumulative_atomic=session.paid_atomic,
                                 payword_index=session.index,
                                 payword=session.chain.word(session.index))
    market.runs.clear()
    _refused(market, deal, [(VOUCHER_METADATA_KEY, last.SerializeToString())],
             grpc.StatusCode.PERMISSION_DENIED, "INVALID_VOUCHER")  # same word again: replay
    beyond = agreement_pb2.Voucher(
        agreement_id=deal.agreement_id, sequence=session.sequence + 1,
        cumulative_atomic=(session.index + 1) * session.link_value_atomic,
        payword_index=session.index + 1, payword=b"\x02" * 32)
    _refused(market, deal, [(VOUCHER_METADATA_KEY, beyond.SerializeToString())],
             grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")
    with pytest.raises(Exception, match="exceed the agreement's maximum"):
        market.buyer.call(deal, {"text": "one too many"})


def test_unknown_agreement_is_refused(market: Market):
    deal = market.deal()
    other = Deal(deal.agreement, deal.body, "ab" * 32, deal.output_schema, deal.rounds)
    voucher = agreement_pb2.Voucher(agreement_id=other.agreement_id, sequence=1,
                                    cumulative_atomic=1, payword_index=1, payword=b"\x00" * 32)
    _refused(market, other, [(VOUCHER_METADATA_KEY, voucher.SerializeToString())],
             grpc.StatusCode.NOT_FOUND, "NOT_FOUND")


def test_a_failed_call_is_not_charged(market: Market):
    deal = market.deal(quantity=3)
    market.buyer.call(deal, {"text": "fine"})
    with pytest.raises(grpc.RpcError) as caught:
        market.buyer._seller(market.seller.endpoint).Invoke(agent_pb2.InvokeRequest(
            agreement_id=deal.agreement_id, input_json='{"wrong": 1}'), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    escrow = market.buyer.finish(deal)
    assert escrow.captured_atomic == deal.body.terms.unit_price_atomic
    assert escrow.verified_outputs == 1
    _sums_to_zero(market)


def test_escrow_refuses_an_agreement_signed_by_the_wrong_key(market: Market):
    deal = market.deal()
    tampered = agreement_pb2.SignedAgreement()
    tampered.CopyFrom(deal.agreement)
    tampered.seller_signature = market.buyer.key.sign(b"agreement|" + tampered.body)
    before = market.balances()
    with pytest.raises(grpc.RpcError) as caught:
        market.buyer.settlement.OpenEscrow(agreement_pb2_open(tampered), timeout=5)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert market.balances() == before


def agreement_pb2_open(signed: agreement_pb2.SignedAgreement):
    from marketplace.v1 import settlement_pb2

    return settlement_pb2.OpenEscrowRequest(idempotency_key="tampered", agreement=signed)
