"""`call` returns only an answer that passed its checks: a seller whose output breaks the
skill's schema, or whose receipt charges more than the terms, makes `call` raise the SDK's
own error (SchemaViolation; ServerError BAD_RECEIPT) instead of handing the user data it
already knows is wrong. The call is booked at no more than the terms allow either way, the
problem stays on the deal (finish keeps the confirm back), and `invoke` returns the result."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel

from agents import AsyncBuyerAgent, BuyerAgent, SellerAgent, per_call, skill
from agents.errors import SchemaViolation, ServerError
from marketplace import agreements as ag
from marketplace.node import MarketplaceNode


class Text(BaseModel):
    text: str


@skill(price=per_call("0.01", "USD"))
def echo(text: str) -> Text:
    """Echo."""
    return Text(text=text)


@pytest.fixture
def market(tmp_path):
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            SellerAgent("hostile", skills=[echo], marketplace=node.address) as seller:
        yield node, seller


def _tamper(response, seller: SellerAgent, mode: str, price: int) -> None:  # type: ignore[no-untyped-def]
    """What a hostile seller can send: its own key re-signs whatever it likes."""
    receipt = response.receipt
    if mode == "overcharge":
        receipt.charged_atomic = response.usage.charged_atomic = 3 * price
        ag.chain_receipt(receipt, receipt.chain_index, receipt.previous_sha256, seller.key)
        return
    output = json.dumps({"text": 12345})
    fresh = ag.new_receipt(receipt.agreement_id, receipt.sequence, output,
                           receipt.charged_atomic)
    ag.chain_receipt(fresh, receipt.chain_index, receipt.previous_sha256, seller.key)
    response.receipt.CopyFrom(fresh)
    response.output_json = output


@pytest.mark.parametrize(("mode", "error"), [("schema", SchemaViolation),
                                             ("overcharge", ServerError)])
def test_call_raises_on_an_answer_that_fails_its_checks(market, monkeypatch, mode, error):
    node, seller = market
    with BuyerAgent("victim", marketplace=node.address) as buyer:
        buyer.fund("1.00", "USD")
        deal = buyer.negotiate(buyer.discover("echo", currency="USD"), "echo", quantity=4,
                               budget="0.10", currency="USD")
        buyer.hire(deal)
        price = deal.body.terms.unit_price_atomic
        real = BuyerAgent._send

        def send(self, planned):  # type: ignore[no-untyped-def]
            response = real(self, planned)
            _tamper(response, seller, mode, price)
            return response

        monkeypatch.setattr(BuyerAgent, "_send", send)
        with pytest.raises(error) as raised:
            buyer.call(deal, {"text": "hi"})
        assert raised.value.result.verified is False
        assert deal.problems == [raised.value.result.problem]
        assert buyer.sessions[deal.agreement_id].charged_atomic <= price  # booked at the terms


def test_the_error_names_the_calls_trace_when_tracing_is_set_up(market, monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    node, seller = market
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    with BuyerAgent("victim", marketplace=node.address, tracer_provider=provider) as buyer:
        buyer.fund("1.00", "USD")
        deal = buyer.negotiate(buyer.discover("echo", currency="USD"), "echo", quantity=4,
                               budget="0.10", currency="USD")
        buyer.hire(deal)
        assert buyer.invoke(deal, {"text": "fine"}).trace_id  # a verified call names it too
        real = BuyerAgent._send

        def send(self, planned):  # type: ignore[no-untyped-def]
            response = real(self, planned)
            _tamper(response, seller, "schema", deal.body.terms.unit_price_atomic)
            return response

        monkeypatch.setattr(BuyerAgent, "_send", send)
        with pytest.raises(SchemaViolation) as raised:
            buyer.call(deal, {"text": "hi"})
    paid = [s for s in spans.get_finished_spans() if s.name == "paid_call"]
    assert raised.value.trace_id == raised.value.result.trace_id \
        == format(paid[-1].context.trace_id, "032x")


def test_the_async_buyer_raises_the_same(market, monkeypatch):
    node, seller = market
    from agents.async_buyer import AsyncBuyerAgent as Async

    async def main() -> None:
        async with AsyncBuyerAgent("victim", marketplace=node.address) as buyer:
            await buyer.fund("1.00", "USD")
            deal = await buyer.negotiate((await buyer.discover("echo", currency="USD")),
                                         "echo", quantity=4, budget="0.10", currency="USD")
            await buyer.hire(deal)
            real = Async._send

            async def send(self, planned):  # type: ignore[no-untyped-def]
                response = await real(self, planned)
                _tamper(response, seller, "schema", deal.body.terms.unit_price_atomic)
                return response

            monkeypatch.setattr(Async, "_send", send)
            with pytest.raises(SchemaViolation):
                await buyer.call(deal, {"text": "hi"})

    asyncio.run(main())
