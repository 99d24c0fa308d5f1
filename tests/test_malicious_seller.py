"""A seller that lies to its buyer: the buyer never books more than it may owe, raises only the
project's exceptions, and records every lie as a problem, so it does not confirm the deal.

The seller is a real SellerAgent whose answers are tampered with after it made them, each
receipt rebuilt so that it hashes and chains (only what the test changes is false).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from a2a.types import a2a_pb2
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, per_1k_tokens, per_call, per_unit, skill
from agents import _a2a_buyer as _a2a
from agents import _a2a_door as door
from agents.errors import InvalidArgument, SellerUnavailable, ServerError
from agents.metering import current_meter
from agents.v1 import agent_pb2
from marketplace import a2a_extension as ext
from marketplace import agreements as ag
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.v1 import registry_pb2


class Text(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def shout(text: str) -> Text:
    """Upper-case a text."""
    return Text(text=text.upper())


@skill(price=per_unit("0.0005", "USD", "gpu_second"), max_units=10)
def train(steps: int) -> Text:
    """Billed per unit, at most 10 a call."""
    current_meter().add_units(min(steps, 10))
    return Text(text=str(steps))


@skill(price=per_1k_tokens("0.001", "0.002", "USD"), max_input_tokens=200,
       max_output_tokens=400)
def write(topic: str) -> Iterator[str]:
    """Streamed, priced per 1k tokens."""
    yield from (f"{topic}{i} " for i in range(5))


@pytest.fixture
def market(tmp_path: Path) -> Iterator[tuple[SellerAgent, BuyerAgent]]:
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            SellerAgent("liar", skills=[shout, train, write], marketplace=node.address,
                        server="threaded") as seller, \
            BuyerAgent("me", marketplace=node.address) as buyer:
        buyer.fund("1.00", "USD")
        yield seller, buyer


def _deal(buyer: BuyerAgent, skill_name: str, quantity: int = 3) -> Any:
    listing = buyer.discover(skill_name, currency="USD")[0]
    deal = buyer.negotiate(listing, skill_name, quantity=quantity, budget="0.05",
                           currency="USD")
    buyer.hire(deal)
    return deal


def _tamper(seller: SellerAgent, change: Callable[[Any], Any]) -> None:
    real = seller.invoke
    seller.invoke = lambda request, context: change(real(request, context))  # type: ignore


def _rebuilt(response: Any, output_json: str | None = None, **usage: int) -> Any:
    """The response with another output or usage, its receipt rebuilt to match."""
    old = response.receipt
    output = old.output_json if output_json is None else output_json
    receipt = ag.new_receipt(old.agreement_id, old.sequence, output,
                             usage.get("charged_atomic", old.charged_atomic),
                             units=usage.get("units", old.units))
    ag.chain_receipt(receipt, old.chain_index, old.previous_sha256, None)
    response.receipt.CopyFrom(receipt)
    response.output_json = output
    for name, value in usage.items():
        setattr(response.usage, name, value)
    return response


def test_a_seller_that_reserves_and_charges_past_the_call_maximum_is_not_paid_it(market):
    seller, buyer = market
    deal = _deal(buyer, "train")
    most = deal.call_max_atomic
    _tamper(seller, lambda r: _rebuilt(r, units=20, charged_atomic=2 * most,
                                       reserved_atomic=2 * most))
    result = buyer.invoke(deal, {"steps": 20})
    assert not result.verified and "tariff says" in result.problem
    assert buyer.sessions[deal.agreement_id].charged_atomic == most  # booked: at most the cap


@pytest.mark.parametrize("output", ["not json", "", "[" * 100_000, "1" * 5_000])
def test_an_output_that_is_not_json_is_a_server_error_and_a_problem(market, output):
    seller, buyer = market
    deal = _deal(buyer, "shout")
    _tamper(seller, lambda r: _rebuilt(r, output_json=output))
    with pytest.raises(ServerError):
        buyer.invoke(deal, {"text": "hi"})
    assert deal.problems == ["the seller's output is not JSON"]


def test_an_answer_to_another_call_is_a_problem(market):
    seller, buyer = market
    deal = _deal(buyer, "shout")
    first: list[Any] = []

    def replay(response: Any) -> Any:
        first.append(first[0] if first else response)
        return first[0]

    _tamper(seller, replay)
    assert buyer.invoke(deal, {"text": "one"}).verified
    again = buyer.invoke(deal, {"text": "two"})
    assert not again.verified and "answers call 1, not this call (2)" in again.problem


def test_a_chain_whose_16th_receipt_is_unsigned_is_a_problem(market):
    seller, buyer = market
    deal = _deal(buyer, "shout", quantity=16)

    def strip(response: Any) -> Any:
        if response.receipt.chain_index % ag.RECEIPT_SIGN_EVERY == 0:
            response.receipt.seller_signature = b""
        return response

    _tamper(seller, strip)
    for n in range(16):
        buyer.invoke(deal, {"text": str(n)})
    assert any("carries no seller signature" in p for p in buyer.check_receipt_signatures(deal))


def _end(request: Any, output_json: str, *, charged: int = 1, tokens: int = 1,
         reserved: int | None = None, sequence: int = 1) -> agent_pb2.StreamChunk:
    receipt = ag.new_receipt(request.agreement_id, sequence, output_json, charged,
                             output_tokens=tokens)
    ag.chain_receipt(receipt, 1, ag.CHAIN_GENESIS, None)
    usage = agent_pb2.Usage(calls=1, output_tokens=tokens, charged_atomic=charged,
                            reserved_atomic=charged if reserved is None else reserved)
    return agent_pb2.StreamChunk(end=agent_pb2.StreamEnd(
        stop_reason=1, output_json=output_json, usage=usage, receipt=receipt))


@pytest.mark.parametrize("output", ["not json", "[1, 2]", "[" * 50_000 + "]" * 50_000])
def test_a_stream_ending_in_an_output_that_is_no_json_object_is_refused(market, output):
    seller, buyer = market

    def stream(request: Any, context: Any) -> Iterator[agent_pb2.StreamChunk]:
        yield agent_pb2.StreamChunk(text_delta="hi", charged_atomic=1)
        yield _end(request, output)

    seller.calls.invoke_stream = stream  # type: ignore[method-assign]
    deal = _deal(buyer, "write")
    with contextlib.suppress(ServerError):  # anything else would fail the test
        "".join(buyer.stream(deal, {"topic": "x"}))
    assert deal.problems


def test_a_stream_charging_past_its_budget_is_booked_at_most_the_budget(market):
    seller, buyer = market

    def stream(request: Any, context: Any) -> Iterator[agent_pb2.StreamChunk]:
        yield agent_pb2.StreamChunk(text_delta="hi", charged_atomic=1)
        yield _end(request, json.dumps({"text": "hi"}, sort_keys=True), charged=1_583_334,
                   tokens=1000, reserved=1_583_334)

    seller.calls.invoke_stream = stream  # type: ignore[method-assign]
    deal = _deal(buyer, "write")
    streamed = buyer.stream(deal, {"topic": "x"})
    assert "".join(streamed) == "hi"
    assert "tariff says" in streamed.problem
    assert buyer.sessions[deal.agreement_id].charged_atomic <= streamed.budget_atomic


def _overlong(request: Any, context: Any, voucher: Any = None
              ) -> Iterator[agent_pb2.StreamChunk]:
    """20 MB of text: past what a receipt carries."""
    for _ in range(200):
        yield agent_pb2.StreamChunk(text_delta="x" * 100_000, charged_atomic=1)
    yield _end(request, json.dumps({"text": "x"}))


def test_a_stream_past_what_a_receipt_carries_is_cut(market):
    seller, buyer = market
    seller.calls.invoke_stream = _overlong  # type: ignore[method-assign]
    deal = _deal(buyer, "write")
    streamed = buyer.stream(deal, {"topic": "x"})
    with pytest.raises(ServerError):
        "".join(streamed)
    assert len(streamed.text) <= ag.MAX_OUTPUT_BYTES
    assert any("streamed more than" in p for p in deal.problems)


def test_a_stream_whose_receipt_names_another_call_is_a_problem(market):
    seller, buyer = market

    def stream(request: Any, context: Any) -> Iterator[agent_pb2.StreamChunk]:
        yield agent_pb2.StreamChunk(text_delta="hi", charged_atomic=1)
        yield _end(request, json.dumps({"text": "hi"}, sort_keys=True), sequence=7)

    seller.calls.invoke_stream = stream  # type: ignore[method-assign]
    deal = _deal(buyer, "write")
    streamed = buyer.stream(deal, {"topic": "x"})
    assert "".join(streamed) == "hi"
    assert "answers call 7, not this call (1)" in streamed.problem


def test_the_usdc_rails_libraries_leave_the_recursion_limit_where_deep_json_is_refused():
    """py_ecc (eth_account) raises the limit to 100,000 on import, where JSON nested that
    deep crashed the process in the C decoder; our modules that import it put it back."""
    import sys

    from wallets import _stack
    from wallets.evm import sandbox_chain

    sandbox_chain()  # py-evm too
    assert sys.getrecursionlimit() <= _stack.LIMIT <= 10_000
    with pytest.raises(RecursionError):
        json.loads("[" * 100_000)


# ---- over A2A, at Finish, and behind someone else's listing ----------------------------------

@pytest.mark.parametrize("meta", [
    {ext.USAGE_KEY: {"chargedAtomic": "abc"}}, {ext.USAGE_KEY: {"chargedAtomic": "9" * 30}},
    {ext.USAGE_KEY: "x"}, {ext.RECEIPT_KEY: "!!!"}, {ext.RECEIPT_KEY: "//////8="},
    {ext.RECEIPT_KEY: 5}], ids=["nan", "huge", "not-a-map", "not-b64", "not-a-receipt",
                                "a-number"])
def test_an_a2a_answer_with_malformed_payment_metadata_is_booked_at_most_and_a_problem(
        market, monkeypatch, meta):
    _seller, buyer = market
    real = door.paid_task_of

    def lying(*args: Any) -> Any:
        task = real(*args)
        task.metadata.update(meta)
        return task

    monkeypatch.setattr(door, "paid_task_of", lying)
    deal = _deal(buyer, "shout")
    with pytest.raises(ServerError, match="malformed payment metadata"):
        buyer.send(deal, {"text": "hi"})
    session = buyer.sessions[deal.agreement_id]
    assert session.reserved_atomic == 0  # nothing left reserved ...
    assert session.charged_atomic == deal.call_max_atomic  # ... booked at the most it may cost
    assert deal.problems and "malformed" in deal.problems[0]


def test_an_a2a_stream_with_a_malformed_charge_is_cut_booked_and_a_problem(market,
                                                                            monkeypatch):
    _seller, buyer = market
    real = door.A2ADoor._relay

    def lying(self: Any, *args: Any) -> Any:
        for event in real(self, *args):
            if event.HasField("artifact_update"):
                event.artifact_update.metadata.update({"chargedAtomic": "lots"})
            yield event

    monkeypatch.setattr(door.A2ADoor, "_relay", lying)
    deal = _deal(buyer, "write")
    streamed = buyer.send_stream(deal, {"topic": "x"})
    with pytest.raises(ServerError, match="malformed payment metadata"):
        "".join(streamed)
    session = buyer.sessions[deal.agreement_id]
    assert session.reserved_atomic == 0 and session.charged_atomic == streamed.budget_atomic
    assert deal.problems


def test_an_overlong_a2a_stream_is_cut(market):
    seller, buyer = market
    seller.calls.paid_stream = _overlong  # type: ignore[method-assign]
    deal = _deal(buyer, "write")
    streamed = buyer.send_stream(deal, {"topic": "x"})
    with pytest.raises(ServerError, match="stream was cut"):
        "".join(streamed)
    assert buyer.sessions[deal.agreement_id].reserved_atomic == 0
    assert any("streamed more than" in p for p in deal.problems)


@pytest.mark.parametrize("lie", ["state", "agreement"])
def test_a_finish_answer_with_another_escrow_is_a_server_error_and_a_problem(market, lie):
    seller, buyer = market
    deal = _deal(buyer, "shout")
    buyer.invoke(deal, {"text": "hi"})
    real = seller.finish

    def lying(request: Any) -> Any:
        response = real(request)
        if lie == "state":
            response.escrow.state = 99
        else:
            response.escrow.agreement_id, response.escrow.captured_atomic = "f" * 64, 10**15
        return response

    seller.finish = lying  # type: ignore[method-assign]
    with pytest.raises(ServerError, match="not this agreement's escrow"):
        buyer.finish(deal)
    assert deal.problems == ["the seller's Finish answer is not this agreement's escrow"]
    assert buyer.escrow(deal).agreement_id == deal.agreement_id  # the marketplace's own


def test_a_listing_parked_at_another_sellers_endpoint_is_skipped(market):
    seller, buyer = market
    impostor = AgentKey.generate()
    honest = buyer.discover("shout", currency="USD")[0]
    fake = registry_pb2.Listing()
    fake.CopyFrom(honest)
    fake.agent_id = impostor.agent_id
    deal = buyer.negotiate([fake, honest], "shout", quantity=2, budget="0.05", currency="USD",
                           failover=False)
    assert deal.body.seller_id == seller.agent_id  # the next listing, the real one
    with pytest.raises(SellerUnavailable, match="the listing is not its own"):
        buyer.negotiate([fake], "shout", quantity=2, budget="0.05", currency="USD",
                        failover=False)


def test_a_card_with_malformed_payment_params_is_invalid(market):
    _seller, _buyer = market
    for params in ({"agentId": "a" * 64, "skills": {"x": {"prices": [{"amountAtomic": "abc"}]}}},
                   {"agentId": "a" * 64, "skills": ["x"]}, {"skills": {}}):
        card = a2a_pb2.AgentCard(name="liar")
        extension = card.capabilities.extensions.add(uri=ext.URI)
        extension.params.update(params)
        with pytest.raises(InvalidArgument, match="malformed payment params"):
            _a2a.card_listing(card)
