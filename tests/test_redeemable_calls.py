"""A delivered, charged call is always redeemable.

Redeem takes a receipt chain whose outputs are at most `MAX_OUTPUT_BYTES` of UTF-8 each, at
most `MAX_RECEIPTS` receipts, and (so that the request fits a node's message limit) at most
`MAX_REDEEM_RECEIPTS_BYTES` of receipts. The seller enforces each of these when it answers,
before it books a charge: an answer too large is refused (RESOURCE_EXHAUSTED RECEIPT_LIMIT) and
not charged, a stream stops before its output passes the limit (STOP_REASON_SIZE) and is billed
for what it delivered, a call past the chain's limits is refused. So every call the buyer pays
for redeems, and the agreement settles exactly, on SQLite and PostgreSQL. Byte limits count
bytes: 700k 'é' is 1.4 MB of input, past the 1 MiB limit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, per_call, skill
from agents._serving import MAX_INPUT_BYTES, utf8_bytes_over
from agents.payments import VOUCHER_METADATA_KEY
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace import agreements as ag
from marketplace.auth import signed_channel
from marketplace.errors import ReceiptLimit
from marketplace.node import MarketplaceNode
from marketplace.v1 import settlement_pb2
from wallets import audit
from wallets.currencies import split

USD = "USD"


class Text(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def produce(size: int, char: str = "x") -> Text:
    """`size` copies of `char`."""
    return Text(text=char * size)


@skill(price=per_call("0.001", "USD"))
def chatter(pieces: int) -> Iterator[str]:
    """A stream of `pieces` pieces of 1,000 'é' each (6 bytes each once escaped in JSON)."""
    for _ in range(pieces):
        yield "é" * 1000


@pytest.fixture
def market(db_url: str, tmp_path) -> Iterator[tuple[MarketplaceNode, SellerAgent, BuyerAgent]]:
    with MarketplaceNode(db_url, sweep_interval_s=3600) as node:
        seller = SellerAgent("producer", skills=[produce, chatter], marketplace=node.address,
                             journal=tmp_path / "journal.db").serve()
        buyer = BuyerAgent("buyer", marketplace=node.address)
        try:
            buyer.fund("1.00", USD)
            yield node, seller, buyer
        finally:
            buyer.close()
            seller.stop(0)


def hire(buyer: BuyerAgent, skill_name: str, quantity: int):  # type: ignore[no-untyped-def]
    deal = buyer.negotiate(buyer.discover(skill_name, currency=USD)[0], skill_name,
                           quantity=quantity, budget="0.05", currency=USD)
    buyer.hire(deal)
    return deal


def settles_exactly(node: MarketplaceNode, seller: SellerAgent, buyer: BuyerAgent, deal,  # type: ignore[no-untyped-def]
                    charged_atomic: int) -> None:
    before = node.ledger.find_account(seller.agent_id, USD)
    seller_before = before.posted_atomic if before else 0
    escrow = buyer.finish(deal)
    assert escrow.state == settlement_pb2.AGREEMENT_STATE_SETTLED
    assert escrow.captured_atomic == charged_atomic
    after = node.ledger.find_account(seller.agent_id, USD)
    assert after is not None
    assert after.posted_atomic - seller_before == split(charged_atomic, 250)[0]
    assert audit.check_balances(node.ledger).ok and audit.verify_chain(node.ledger).ok


def test_an_answer_no_receipt_can_carry_is_refused_uncharged_and_the_rest_redeems(market):
    node, seller, buyer = market
    deal = hire(buyer, "produce", 5)
    price = deal.body.terms.unit_price_atomic
    fits = ag.MAX_OUTPUT_BYTES - len(json.dumps({"text": ""}, sort_keys=True))
    assert len(buyer.call(deal, {"size": fits})["text"]) == fits  # exactly at the limit
    for char, size in (("x", fits + 1), ("é", fits // 6 + 1)):  # 'é' escapes to 6 bytes
        with pytest.raises(ReceiptLimit) as caught:
            buyer.call(deal, {"size": size, "char": char})
        assert caught.value.status == "RESOURCE_EXHAUSTED"
        assert caught.value.reason == "RECEIPT_LIMIT"
    buyer.call(deal, {"size": 10})
    assert seller.gate.unspent(deal.agreement_id) >= 0
    settles_exactly(node, seller, buyer, deal, 2 * price)


def test_a_stream_stops_before_its_output_passes_the_limit_and_redeems(market):
    node, seller, buyer = market
    deal = hire(buyer, "chatter", 3)
    stream = buyer.stream(deal, {"pieces": 100})  # 600 KB of escaped JSON if let run
    text = "".join(stream)
    assert stream.stop_reason == "size"
    assert stream.end is not None and stream.end.receipt.output_json == stream.end.output_json
    assert len(stream.end.output_json.encode()) <= ag.MAX_OUTPUT_BYTES
    assert json.loads(stream.end.output_json) == {"text": text} and len(text) == 10_000
    settles_exactly(node, seller, buyer, deal, deal.body.terms.unit_price_atomic)


def test_an_input_limit_in_bytes_counts_bytes(market):
    """700k 'é' sent as UTF-8 (not escaped, as the SDK would) is 1.4 MB: refused, and not
    charged; the agreement's other call settles."""
    node, seller, buyer = market
    deal = hire(buyer, "produce", 2)
    raw = json.dumps({"size": 1, "char": "é" * 700_000}, ensure_ascii=False)
    session = buyer.sessions[deal.agreement_id]
    voucher = session.next_voucher(deal.call_max_atomic)
    channel = signed_channel(deal.body.seller_endpoint, buyer.key,
                             options=[("grpc.max_send_message_length", 4 * 1024 * 1024)])
    try:
        with pytest.raises(grpc.RpcError) as caught:
            agent_pb2_grpc.AgentServiceStub(channel).Invoke(agent_pb2.InvokeRequest(
                agreement_id=deal.agreement_id, input_json=raw, call_id="wide"),
                metadata=[(VOUCHER_METADATA_KEY, voucher.SerializeToString())], timeout=10)
    finally:
        session.settle(deal.call_max_atomic, 0)
        channel.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bytes" in (caught.value.details() or "")
    assert not utf8_bytes_over("é" * (MAX_INPUT_BYTES // 2), MAX_INPUT_BYTES)
    assert utf8_bytes_over("é" * (MAX_INPUT_BYTES // 2 + 1), MAX_INPUT_BYTES)
    buyer.call(deal, {"size": 3})  # signed: it spends the refused call's carried-over word
    settles_exactly(node, seller, buyer, deal, deal.body.terms.unit_price_atomic)


def test_past_the_chains_limits_a_call_is_refused_before_it_is_charged(market, monkeypatch):
    """MAX_RECEIPTS and the redeem's byte budget, made small so the test stays short: the
    calls past them are refused and not charged, and everything charged before redeems."""
    node, seller, buyer = market
    deal = hire(buyer, "produce", 10)
    price = deal.body.terms.unit_price_atomic
    monkeypatch.setattr(ag, "MAX_REDEEM_RECEIPTS_BYTES", 3 * 1024)
    buyer.call(deal, {"size": 1000})
    buyer.call(deal, {"size": 1000})
    with pytest.raises(ReceiptLimit) as too_big:  # a third would pass 3 KiB of receipts
        buyer.call(deal, {"size": 1000})
    assert too_big.value.reason == "RECEIPT_LIMIT"
    monkeypatch.setattr(ag, "MAX_RECEIPTS", 3)
    buyer.call(deal, {"size": 10})  # small enough for the budget: the chain's third receipt
    with pytest.raises(ReceiptLimit) as too_many:
        buyer.call(deal, {"size": 10})
    assert too_many.value.reason == "RECEIPT_LIMIT"
    settles_exactly(node, seller, buyer, deal, 3 * price)


def test_a_node_accepts_every_redeem_a_seller_may_send():
    """The node's request limit holds a redeem at the receipt budget, and cannot be set
    lower."""
    from marketplace.node import MAX_MESSAGE_BYTES, MIN_MESSAGE_BYTES

    assert MIN_MESSAGE_BYTES <= MAX_MESSAGE_BYTES
    assert ag.MAX_REDEEM_RECEIPTS_BYTES + 64 * 1024 < MIN_MESSAGE_BYTES
