"""The HTTP caller's W3C traceparent continues through the gateway into the gRPC hops (the
seller's countersignature, call and redeem) and into the postings of the hold and capture."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from x402.http.utils import decode_payment_required_header, encode_payment_signature_header

from agents.x402 import buyer_client
from tests.x402_market import Market, open_market

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.fixture
def traced(tmp_path) -> Iterator[tuple[Market, InMemorySpanExporter]]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    yield from ((market, memory) for market in open_market(tmp_path, provider))


def test_the_callers_trace_reaches_the_grpc_hops_and_the_postings(traced):
    import asyncio

    market, memory = traced
    unpaid = httpx.post(market.url("shout"), json={"text": "hi"})
    required = decode_payment_required_header(unpaid.headers["payment-required"])
    client, _ = buyer_client(market.key, market.network)
    payload = asyncio.run(client.create_payment_payload(required))
    paid = httpx.post(market.url("shout"), json={"text": "hi"}, headers={
        "PAYMENT-SIGNATURE": encode_payment_signature_header(payload),
        "traceparent": TRACEPARENT})
    assert paid.status_code == 200, paid.text
    names = {s.name for s in memory.get_finished_spans()
             if format(s.context.trace_id, "032x") == TRACE_ID}
    assert "gateway.call" in names
    assert {"agents.v1.AgentService/Negotiate", "agents.v1.AgentService/Invoke",
            "agents.v1.AgentService/Finish"} <= names, names
    kinds = {p.kind for p in market.node.ledger.postings(trace_id=TRACE_ID)}
    assert {"hold", "capture"} <= kinds, kinds
