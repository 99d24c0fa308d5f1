"""Escrow proofs: the seller takes the node's signed word that the money is held instead of
asking the marketplace, and anything it cannot check sends it back to asking."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from agents import AsyncBuyerAgent, BuyerAgent, SellerAgent, per_call, skill
from marketplace import MarketplaceNode
from marketplace import escrow_proof as ep
from marketplace.identity import AgentKey
from marketplace.v1 import settlement_pb2
from wallets.audit import check_balances

NODE, SELLER, BUYER = AgentKey.generate(), AgentKey.generate(), AgentKey.generate()
AGREEMENT = "ab" * 32


def _escrow(**changes: Any) -> settlement_pb2.Escrow:
    fields: dict[str, Any] = dict(
        agreement_id=AGREEMENT, state=settlement_pb2.AGREEMENT_STATE_ACTIVE, hold_id="h1",
        currency="USD", held_atomic=1000, deadline_ms=_now_ms() + 3_600_000,
        buyer_id=BUYER.agent_id, seller_id=SELLER.agent_id, skill="echo")
    fields.update(changes)
    return settlement_pb2.Escrow(**fields)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _proven(raw: bytes, node: str = NODE.agent_id, agreement: str = AGREEMENT) -> bool:
    return ep.proven(raw, node, agreement, SELLER.agent_id, _now_ms())


def test_a_proof_signed_by_the_node_for_this_agreement_and_seller_holds() -> None:
    assert _proven(ep.signed(NODE, _escrow()))


def test_with_proof_signs_only_an_active_escrow_and_leaves_the_proof_out_of_what_it_signs(
        ) -> None:
    escrow = ep.with_proof(NODE, _escrow())
    assert _proven(escrow.proof)
    inner = settlement_pb2.Escrow.FromString(
        settlement_pb2.EscrowProof.FromString(escrow.proof).escrow)
    assert not inner.proof and inner.agreement_id == AGREEMENT
    settled = ep.with_proof(NODE, _escrow(state=settlement_pb2.AGREEMENT_STATE_SETTLED))
    assert not settled.proof
    assert not ep.with_proof(None, _escrow()).proof


@pytest.mark.parametrize("case", [
    "another node", "another agreement", "another seller", "not active", "deadline passed",
    "deadline too close", "escrow changed after signing", "signature of other bytes",
    "garbage", "empty", "no node key known", "node key not hex", "too large"])
def test_a_proof_the_seller_cannot_rely_on_is_not_taken(case: str) -> None:
    raw = ep.signed(NODE, _escrow())
    node, agreement = NODE.agent_id, AGREEMENT
    if case == "another node":
        raw = ep.signed(AgentKey.generate(), _escrow())
    elif case == "another agreement":
        agreement = "cd" * 32
    elif case == "another seller":
        raw = ep.signed(NODE, _escrow(seller_id=BUYER.agent_id))
    elif case == "not active":
        raw = ep.signed(NODE, _escrow(state=settlement_pb2.AGREEMENT_STATE_DELIVERED))
    elif case == "deadline passed":
        raw = ep.signed(NODE, _escrow(deadline_ms=_now_ms() - 1))
    elif case == "deadline too close":
        raw = ep.signed(NODE, _escrow(deadline_ms=_now_ms() + ep.DEADLINE_MARGIN_MS // 2))
    elif case == "escrow changed after signing":
        proof = settlement_pb2.EscrowProof.FromString(raw)
        proof.escrow = _escrow(held_atomic=10**9).SerializeToString()
        raw = proof.SerializeToString()
    elif case == "signature of other bytes":
        proof = settlement_pb2.EscrowProof.FromString(raw)
        proof.signature = NODE.sign(proof.escrow)  # no domain: not an escrow proof
        raw = proof.SerializeToString()
    elif case == "garbage":
        raw = b"\xff\x01not a proof"
    elif case == "empty":
        raw = b""
    elif case == "no node key known":
        node = ""
    elif case == "node key not hex":
        node = "zz" * 32
    elif case == "too large":
        raw = raw + b"\x00" * ep.MAX_PROOF_BYTES
    assert not _proven(raw, node, agreement)


def test_the_proof_is_read_from_the_call_metadata() -> None:
    assert ep.of_metadata([("x", b"1"), (ep.METADATA_KEY, b"proof")]) == b"proof"
    assert ep.of_metadata([("x", b"1")]) == b"" and ep.of_metadata(None) == b""


class Echoed(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def echo(text: str) -> Echoed:
    """Echo."""
    return Echoed(text=text)


@skill(price=per_call("0.001", "USD"))
def words(text: str) -> Iterator[str]:
    """Stream a text word by word."""
    for word in text.split():
        yield word + " "


class _Market:
    def __init__(self, tmp: Path) -> None:
        self.node = MarketplaceNode(f"sqlite:///{tmp / 'm.db'}").start()
        self.asked: list[str] = []
        get = self.node.settlement.get

        def counted(agreement: str) -> dict[str, Any]:
            self.asked.append(agreement)
            return get(agreement)

        self.node.settlement.get = counted  # type: ignore[method-assign]
        self.seller = SellerAgent("echo", skills=[echo, words], marketplace=self.node.address,
                                  journal=tmp / "seller.db").serve()
        self.buyer = BuyerAgent("buyer", marketplace=self.node.address)
        self.buyer.fund("1.00", "USD")

    def deal(self, skill_name: str = "echo") -> Any:
        deal = self.buyer.negotiate(self.buyer.discover(skill_name, currency="USD"),
                                    skill_name, quantity=3, budget="0.01", currency="USD")
        self.buyer.hire(deal)
        return deal

    def close(self) -> None:
        self.buyer.close()
        self.seller.stop(0)
        self.node.stop(0)


@pytest.fixture
def market(tmp_path: Path) -> Iterator[_Market]:
    m = _Market(tmp_path)
    yield m
    m.close()


def test_a_hired_deal_carries_the_proof_and_the_seller_does_not_ask(market: _Market) -> None:
    assert market.seller.node_id == market.node.agent_id
    deal = market.deal()
    assert _proven_for(market, deal)
    for n in range(3):
        assert market.buyer.call(deal, {"text": f"call {n}"})["text"] == f"call {n}"
    market.buyer.finish(deal)
    assert market.asked == []
    assert check_balances(market.node.ledger).ok


def _proven_for(market: _Market, deal: Any) -> bool:
    return ep.proven(deal.escrow_proof, market.node.agent_id, deal.agreement_id,
                     market.seller.agent_id, _now_ms())


@pytest.mark.parametrize("case", ["forged", "another agreement's", "none", "seller without "
                                  "the node key"])
def test_a_proof_the_seller_cannot_use_makes_it_ask_and_the_call_is_served(
        market: _Market, case: str) -> None:
    deal = market.deal()
    if case == "forged":
        deal.escrow_proof = ep.signed(AgentKey.generate(), _escrow(
            agreement_id=deal.agreement_id, seller_id=market.seller.agent_id))
    elif case == "another agreement's":
        other = market.deal()
        deal.escrow_proof = other.escrow_proof
    elif case == "none":
        deal.escrow_proof = b""
    else:
        market.seller.node_id = ""
    assert market.buyer.call(deal, {"text": "hi"})["text"] == "hi"
    assert market.asked == [deal.agreement_id]
    market.buyer.finish(deal)
    assert check_balances(market.node.ledger).ok


def test_a_streamed_first_call_carries_the_proof_too(market: _Market) -> None:
    deal = market.deal("words")
    streamed = market.buyer.stream(deal, {"text": "one two"})
    assert "".join(streamed) == "one two "
    market.buyer.finish(deal)
    assert market.asked == []


def test_the_async_buyer_hands_over_the_proof(market: _Market) -> None:
    async def run() -> None:
        async with AsyncBuyerAgent("async", marketplace=market.node.address) as buyer:
            await buyer.fund("1.00", "USD")
            for name, arguments in (("echo", {"text": "hi"}), ("words", {"text": "a b"})):
                deal = await buyer.negotiate(await buyer.discover(name, currency="USD"), name,
                                             quantity=2, budget="0.01", currency="USD")
                await buyer.hire(deal)
                if name == "echo":
                    assert (await buyer.call(deal, arguments))["text"] == "hi"
                else:
                    streamed = await buyer.stream(deal, arguments)
                    assert "".join([piece async for piece in streamed]) == "a b "
                await buyer.finish(deal)

    asyncio.run(run())
    assert market.asked == []
