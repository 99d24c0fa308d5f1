"""Tracing with real parts: a gRPC server on loopback, two services, one SQLite span store.

A buyer and a seller each get their own tracer provider (as in the demo, where both live in one
process) and export to the same store; the trace must come back as one tree.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console

from marketplace.grpc_tracing import client_interceptors, server_interceptor
from marketplace.spanstore import SpanStore, SqliteSpanExporter, StoredSpan
from marketplace.trace_tree import render_trace, trace_to_json
from marketplace.tracing import force_flush, setup_tracing
from wallets import attributes as attrs

SERVICE = "agentmarket.test.v1.Echo"
AGREEMENT_ID = "3f2a9c1e-0000-4000-8000-000000000001"
AMOUNT_ATOMIC = 12_500_000  # 0.0125 USD
TIMEOUT_S = 5


def _hex(trace_id: int) -> str:
    return format(trace_id, "032x")


def _wait_for(predicate: Callable[[], bool], timeout_s: float = TIMEOUT_S) -> None:
    """Client spans end in gRPC's done callback, which may run just after the caller returns."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for spans"
        time.sleep(0.01)


class _Seller:
    """Servicer behaviours over raw bytes; `settle` is a child span the servicer makes itself."""

    def __init__(self, provider: TracerProvider) -> None:
        self._tracer = trace.get_tracer("agentmarket.test", tracer_provider=provider)
        self.metadata: dict[str, str] = {}

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self._tracer.start_as_current_span("settle") as span:
            span.set_attribute(attrs.AGREEMENT_ID, AGREEMENT_ID)
            span.set_attribute(attrs.AMOUNT_ATOMIC, AMOUNT_ATOMIC)
            span.set_attribute(attrs.CURRENCY, "USD")
            span.set_attribute("gen_ai.usage.input_tokens", 120)
            span.set_attribute("gen_ai.usage.output_tokens", 45)
        return request

    def refuse(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "hold expired")
        raise AssertionError("abort raises")

    def crash(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        raise ValueError("a bug in the servicer")

    def count(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(3):
            yield bytes([i])


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "spans.db"


@pytest.fixture
def providers(store_path: Path) -> Iterator[tuple[TracerProvider, TracerProvider]]:
    exporter = SqliteSpanExporter(store_path)
    buyer = setup_tracing("buyer", enabled=True, synchronous=True, exporters=[exporter])
    seller = setup_tracing("seller", enabled=True, synchronous=True, exporters=[exporter])
    yield buyer, seller
    buyer.shutdown()
    seller.shutdown()


@pytest.fixture
def seller(providers: tuple[TracerProvider, TracerProvider]) -> _Seller:
    return _Seller(providers[1])


@pytest.fixture
def channel(
    providers: tuple[TracerProvider, TracerProvider], seller: _Seller
) -> Iterator[grpc.Channel]:
    buyer_provider, seller_provider = providers
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(seller.echo),
            "Refuse": grpc.unary_unary_rpc_method_handler(seller.refuse),
            "Crash": grpc.unary_unary_rpc_method_handler(seller.crash),
            "Count": grpc.unary_stream_rpc_method_handler(seller.count),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[server_interceptor(seller_provider)],
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    raw = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield grpc.intercept_channel(raw, *client_interceptors(buyer_provider))
    raw.close()
    server.stop(None)


def _unary(channel: grpc.Channel, method: str) -> Callable[..., Any]:
    return channel.unary_unary(f"/{SERVICE}/{method}")


def _by_name(spans: list[StoredSpan]) -> dict[str, StoredSpan]:
    return {span.name: span for span in spans}


def test_trace_crosses_a_grpc_hop_into_one_tree(
    providers: tuple[TracerProvider, TracerProvider],
    seller: _Seller,
    channel: grpc.Channel,
    store_path: Path,
) -> None:
    buyer_tracer = trace.get_tracer("agentmarket.test", tracer_provider=providers[0])
    with buyer_tracer.start_as_current_span("buy") as root:
        reply = _unary(channel, "Echo")(
            b"ping", timeout=TIMEOUT_S, metadata=(("x-agent", "buyer-1"),)
        )
    assert reply == b"ping"
    assert seller.metadata["x-agent"] == "buyer-1", "caller metadata is kept"
    assert "traceparent" in seller.metadata
    trace_id = _hex(root.get_span_context().trace_id)

    with SpanStore(store_path) as store:
        assert store.last_trace_id() == trace_id
        spans = store.spans(trace_id)
        summaries = store.traces(limit=5)
        assert [s.trace_id for s in store.traces(agreement_id=AGREEMENT_ID)] == [trace_id]
        assert store.traces(service="nobody") == []
        assert store.traces(since_ms=time.time_ns() // 1_000_000 + 60_000) == []

    named = _by_name(spans)
    assert set(named) == {"buy", f"{SERVICE}/Echo", "settle"} and len(spans) == 4
    roots = [s for s in spans if s.parent_span_id is None]
    assert [r.name for r in roots] == ["buy"]
    client, server = (s for s in spans if s.name == f"{SERVICE}/Echo" and s.kind != "INTERNAL")
    if client.kind == "SERVER":
        client, server = server, client
    assert (client.kind, client.service_name) == ("CLIENT", "buyer")
    assert (server.kind, server.service_name) == ("SERVER", "seller")
    assert client.parent_span_id == named["buy"].span_id
    assert server.parent_span_id == client.span_id
    assert named["settle"].parent_span_id == server.span_id, "the server span is current"
    assert client.attributes["rpc.system"] == "grpc"
    assert client.attributes["rpc.service"] == SERVICE
    assert client.attributes["rpc.method"] == "Echo"
    assert client.attributes["rpc.grpc.status_code"] == 0
    assert named["settle"].attributes[attrs.AMOUNT_ATOMIC] == AMOUNT_ATOMIC

    (summary,) = summaries
    assert (summary.trace_id, summary.root_name, summary.span_count) == (trace_id, "buy", 4)
    assert summary.services == ["buyer", "seller"] and not summary.error

    console = Console(record=True, width=120)
    console.print(render_trace(spans))
    text = console.export_text()
    for expected in ("buy", f"{SERVICE}/Echo", "settle", "[buyer]", "[seller]", "0.0125 USD"):
        assert expected in text
    assert f"agreement {AGREEMENT_ID[:8]}" in text
    assert "tokens 120 in / 45 out" in text
    assert " ms" in text

    tree = trace_to_json(spans)
    assert tree["trace_id"] == trace_id and tree["span_count"] == 4
    (buy,) = tree["roots"]
    (rpc_client,) = buy["children"]
    (rpc_server,) = rpc_client["children"]
    (settle,) = rpc_server["children"]
    assert settle["attributes"][attrs.CURRENCY] == "USD"


def test_an_aborted_call_records_its_status_on_both_sides(
    providers: tuple[TracerProvider, TracerProvider], channel: grpc.Channel, store_path: Path
) -> None:
    buyer_tracer = trace.get_tracer("agentmarket.test", tracer_provider=providers[0])
    with buyer_tracer.start_as_current_span("buy") as root, pytest.raises(grpc.RpcError) as info:
        _unary(channel, "Refuse")(b"", timeout=TIMEOUT_S)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION

    with SpanStore(store_path) as store:
        spans = store.spans(_hex(root.get_span_context().trace_id))
        (summary,) = store.traces()
    rpc_spans = {s.kind: s for s in spans if s.name == f"{SERVICE}/Refuse"}
    for kind in ("CLIENT", "SERVER"):
        span = rpc_spans[kind]
        assert span.status_code == "ERROR", kind
        assert (
            span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
        )
        assert "hold expired" in (span.status_message or "")
    assert summary.error

    console = Console(record=True, width=120)
    console.print(render_trace(spans))
    assert "ERROR FAILED_PRECONDITION: hold expired" in console.export_text()


def test_an_unexpected_exception_is_unknown_with_the_exception_recorded(
    channel: grpc.Channel, store_path: Path
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _unary(channel, "Crash")(b"", timeout=TIMEOUT_S)
    assert info.value.code() is grpc.StatusCode.UNKNOWN

    with SpanStore(store_path) as store:
        trace_id = store.last_trace_id()
        assert trace_id is not None
        spans = store.spans(trace_id)
    server = next(s for s in spans if s.kind == "SERVER")
    assert server.status_code == "ERROR"
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNKNOWN.value[0]
    assert [e["name"] for e in server.events] == ["exception"]
    assert server.events[0]["attributes"]["exception.type"] == "ValueError"


def test_a_server_stream_is_one_client_and_one_server_span(
    channel: grpc.Channel, store_path: Path
) -> None:
    responses = channel.unary_stream(f"/{SERVICE}/Count")(b"", timeout=TIMEOUT_S)
    assert list(responses) == [b"\x00", b"\x01", b"\x02"]

    with SpanStore(store_path) as store:
        _wait_for(lambda: len(store.traces()) == 1 and store.traces()[0].span_count == 2)
        trace_id = store.last_trace_id()
        assert trace_id is not None
        spans = {s.kind: s for s in store.spans(trace_id)}
    assert spans["CLIENT"].parent_span_id is None
    assert spans["SERVER"].parent_span_id == spans["CLIENT"].span_id
    for span in spans.values():
        assert span.status_code == "UNSET"
        assert span.attributes["rpc.grpc.status_code"] == 0


def test_writers_on_separate_connections_share_one_file(store_path: Path) -> None:
    """Separate exporters lock the file like separate processes do; no span may be lost."""
    writers, spans_each = 4, 50
    barrier = threading.Barrier(writers)

    def write(index: int) -> None:
        provider = setup_tracing(f"svc-{index}", span_store_path=store_path, enabled=True)
        tracer = provider.get_tracer("agentmarket.test")
        barrier.wait()
        for _ in range(spans_each):
            with tracer.start_as_current_span("root"), tracer.start_as_current_span("child"):
                pass
        assert force_flush(provider)
        provider.shutdown()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S * 4)

    with SpanStore(store_path) as store:
        summaries = store.traces(limit=1_000)
    assert len(summaries) == writers * spans_each
    assert {s.span_count for s in summaries} == {2}
    assert {svc for s in summaries for svc in s.services} == {f"svc-{i}" for i in range(writers)}


def test_setup_tracing_exports_to_memory_and_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    memory = InMemorySpanExporter()
    provider = setup_tracing("buyer", enabled=True, synchronous=True, exporters=[memory])
    with provider.get_tracer("t").start_as_current_span("work"):
        pass
    (span,) = memory.get_finished_spans()
    assert span.resource.attributes["service.name"] == "buyer"
    assert trace.get_tracer_provider() is not provider, "the global provider is left alone"

    monkeypatch.setenv("AGENTMARKET_TRACING", "off")
    memory.clear()
    disabled = setup_tracing("buyer", exporters=[memory])
    with disabled.get_tracer("t").start_as_current_span("work") as quiet:
        assert not quiet.is_recording()
    assert force_flush(disabled)
    assert memory.get_finished_spans() == ()


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC endpoint that keeps the span names it receives, by service."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str]] = []

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        for resource_spans in request.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource_spans.scope_spans:
                self.spans.extend((service, span.name) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_otlp_export_follows_the_standard_endpoint_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collector = _Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        provider = setup_tracing("buyer", enabled=True)
        with provider.get_tracer("t").start_as_current_span("work"):
            pass
        assert force_flush(provider)
        provider.shutdown()
    finally:
        server.stop(None)
    assert collector.spans == [("buyer", "work")]


def test_force_flush_works_on_api_providers() -> None:
    assert force_flush(trace.NoOpTracerProvider())
