"""Market metrics reach an OpenTelemetry metrics reader: paid calls, volume and fees per
currency, open holds and the amount they hold, refusals by reason."""

from __future__ import annotations

import json

import grpc
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, per_call, skill
from agents.payments import VOUCHER_METADATA_KEY
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace import MarketplaceNode
from marketplace.tracing import setup_metrics
from wallets.currencies import split


class Out(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def shout(text: str) -> Out:
    """Upper-case."""
    return Out(text=text.upper())


def _points(reader: InMemoryMetricReader) -> dict[str, list]:
    found: dict[str, list] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def _total(points: list, **attributes: object) -> int:
    return sum(p.value for p in points
               if all(p.attributes.get(k) == v for k, v in attributes.items()))


@pytest.fixture(scope="module")
def reader() -> InMemoryMetricReader:
    reader = InMemoryMetricReader()
    setup_metrics("metrics-test", readers=[reader])
    return reader


def test_a_task_shows_up_in_the_metrics(reader: InMemoryMetricReader, tmp_path):
    before = _points(reader)
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600).start()
    seller = SellerAgent("shouter", skills=[shout], marketplace=node.address).serve()
    buyer = BuyerAgent("buyer", marketplace=node.address)
    try:
        buyer.fund("1.00", "USD")
        deal = buyer.negotiate(buyer.discover("shout", currency="USD")[0], "shout",
                               quantity=4, budget="0.01", currency="USD")
        buyer.hire(deal)
        during = _points(reader)
        held = _total(during.get("agentmarket.holds.held", []), currency="USD")
        assert held == deal.body.terms.max_total_atomic
        assert _total(during.get("agentmarket.holds.open", []), currency="USD") == 1
        for word in ("a", "b", "c"):
            buyer.call(deal, {"text": word})
        with grpc.insecure_channel(seller.endpoint) as channel, pytest.raises(grpc.RpcError):
            agent_pb2_grpc.AgentServiceStub(channel).Invoke(
                agent_pb2.InvokeRequest(agreement_id=deal.agreement_id,
                                        input_json=json.dumps({"text": "x"})),
                metadata=[(VOUCHER_METADATA_KEY, b"\x00garbage")], timeout=5)
        escrow = buyer.finish(deal)
        assert escrow.captured_atomic == 3 * deal.body.terms.unit_price_atomic
    finally:
        buyer.close()
        seller.stop(0)
        node.stop(0)
    after = _points(reader)

    def grew(name: str, **attributes: object) -> int:
        return _total(after.get(name, []), **attributes) - _total(before.get(name, []),
                                                                   **attributes)

    seller_part, fee = split(escrow.captured_atomic, 250)
    assert grew("agentmarket.paid_calls", currency="USD", skill="shout") == 3
    assert grew("agentmarket.volume", currency="USD") == seller_part
    assert grew("agentmarket.fees", currency="USD") == fee
    assert grew("agentmarket.refusals") >= 1
    assert after["agentmarket.settlement.duration"], "settlement latency recorded"


def test_with_no_reader_nothing_is_installed(monkeypatch: pytest.MonkeyPatch):
    from opentelemetry import metrics

    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    before = metrics.get_meter_provider()
    assert setup_metrics("no-reader") is None  # measurements nobody reads are not built
    assert metrics.get_meter_provider() is before
