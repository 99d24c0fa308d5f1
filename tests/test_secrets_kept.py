"""What must not reach an observer who should not see it: the PayWord seed in a deal's repr, a
skill's private input in the seller's spans (an OTLP collector, the span store, `agentmarket
trace`), a database password in the node's start-up line or the operator CLI's errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel
from typer.testing import CliRunner

from agents import BuyerAgent, SellerAgent, per_call, skill
from agents.errors import ServerError
from marketplace.cli.main import app
from marketplace.node import MarketplaceNode
from wallets.store import shown_url

PRIVATE = "PATIENT-RECORD-1234"


class Text(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def diagnose(text: str) -> Text:
    """Fails with its input in the message, as careless code does."""
    raise ValueError(f"cannot process {text}")


@pytest.fixture
def market(tmp_path: Path) -> Iterator[tuple[MarketplaceNode, InMemorySpanExporter, BuyerAgent]]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            SellerAgent("careless", skills=[diagnose], marketplace=node.address,
                        tracer_provider=provider), \
            BuyerAgent("patient", marketplace=node.address, tracer_provider=provider) as buyer:
        buyer.fund("1.00", "USD")
        yield node, spans, buyer


def test_a_skills_exception_text_stays_out_of_every_span(market):
    _node, spans, buyer = market
    deal = buyer.negotiate(buyer.discover("diagnose"), "diagnose", quantity=2, budget="0.01",
                           currency="USD")
    buyer.hire(deal)
    with pytest.raises(ServerError) as refused:
        buyer.call(deal, {"text": PRIVATE})
    assert PRIVATE not in str(refused.value)
    recorded = spans.get_finished_spans()
    failed = [s for s in recorded if s.name == "skill.diagnose"]
    assert failed and failed[0].status.description == "ValueError"
    assert [dict(e.attributes) for e in failed[0].events if e.name == "exception"] == \
        [{"exception.type": "ValueError"}]
    assert PRIVATE not in json.dumps([json.loads(s.to_json()) for s in recorded])
    assert deal.seed_hex and deal.seed_hex not in repr(deal)


def test_a_database_password_is_never_printed():
    assert shown_url("postgresql://amuser:S3cret@127.0.0.1:1/market") == \
        "postgresql://amuser:***@127.0.0.1:1/market"
    result = CliRunner().invoke(app, ["ledger", "verify", "--db",
                                      "postgresql://amuser:S3cret@127.0.0.1:1/market"])
    assert result.exit_code != 0 and "cannot open the database" in result.output
    assert "S3cret" not in result.output and "amuser:***@" in result.output
