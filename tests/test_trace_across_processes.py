"""One task across three processes (marketplace, seller, buyer) is one trace, exported both to
the embedded span store and to a real OTLP/gRPC receiver, and every posting of the task points
at a span of that trace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from agents import BuyerAgent
from marketplace.spanstore import SpanStore
from marketplace.tracing import force_flush, setup_tracing
from tests.processes.node import free_port as _free_port  # a port bind(0) never hands out
from wallets import Ledger, make_engine

ROOT = Path(__file__).resolve().parent.parent
SELLER = ROOT / "examples" / "node-client" / "seller.py"  # sells upper and spell


def _wait_serving(address: str, deadline_s: float = 20) -> None:
    channel = grpc.insecure_channel(address)
    stub = health_pb2_grpc.HealthStub(channel)
    end = time.monotonic() + deadline_s
    try:
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                if time.monotonic() > end:
                    raise
            time.sleep(0.1)
    finally:
        channel.close()


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC endpoint keeping (service, span name, trace id, parent span id)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str, str]] = []

    def Export(self, request, context):  # type: ignore[no-untyped-def]
        for resource_spans in request.resource_spans:
            service = next(a.value.string_value for a in resource_spans.resource.attributes
                           if a.key == "service.name")
            for scope in resource_spans.scope_spans:
                self.spans.extend((service, span.name, span.trace_id.hex(),
                                   span.parent_span_id.hex()) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_one_trace_spans_three_processes(tmp_path: Path, monkeypatch):
    spans, db = tmp_path / "spans.db", tmp_path / "market.db"
    port = _free_port()
    collector = _Collector()
    receiver = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    otlp = f"http://127.0.0.1:{receiver.add_insecure_port('127.0.0.1:0')}"
    receiver.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTMARKET_TRACING": "on"}
    node = subprocess.Popen(
        [sys.executable, "-m", "marketplace.cli.main", "serve", "--db", f"sqlite:///{db}",
         "--port", str(port), "--spans", str(spans)], env=env, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seller = None
    try:
        address = f"127.0.0.1:{port}"
        _wait_serving(address)
        seller = subprocess.Popen([sys.executable, str(SELLER),
                                   address, str(spans)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert seller.stdout is not None
        seller.stdout.readline()  # its endpoint: it is serving and advertised
        provider = setup_tracing("buyer-process", span_store_path=spans, synchronous=True)
        buyer = BuyerAgent("buyer", marketplace=address, tracer_provider=provider)
        tracer = trace.get_tracer("test", tracer_provider=provider)
        with tracer.start_as_current_span("task") as root:
            buyer.fund("1.00", "USD")
            listing = buyer.discover("upper", currency="USD")[0]
            deal = buyer.negotiate(listing, "upper", quantity=3, budget="0.01", currency="USD")
            buyer.hire(deal)
            for word in ("one", "two"):
                buyer.call(deal, {"text": word})
            buyer.finish(deal)
        trace_id = format(root.get_span_context().trace_id, "032x")
        buyer.close()
        force_flush(provider)
        provider.shutdown()
    finally:
        if seller is not None:
            seller.send_signal(signal.SIGTERM)
            seller.wait(timeout=20)
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=20)

    receiver.stop(None)
    exported = {service for service, _, tid, _ in collector.spans if tid == trace_id}
    assert {"marketplace", "seller-process", "buyer-process"} <= exported, exported
    exported_roots = [name for _, name, tid, parent in collector.spans
                      if tid == trace_id and not parent]
    assert exported_roots == ["task"]
    with SpanStore(spans) as store:
        found = store.spans(trace_id)
    services = {s.service_name for s in found}
    assert {"marketplace", "seller-process", "buyer-process"} <= services, services
    roots = [s for s in found if not s.parent_span_id]
    assert [r.name for r in roots] == ["task"]
    span_ids = {s.span_id for s in found}
    ledger = Ledger(make_engine(f"sqlite:///{db}"), group_commit=False)
    postings = ledger.postings(limit=1000)
    assert postings, "the task moved money"
    for posting in postings:
        assert posting.trace_id == trace_id, posting
        assert posting.span_id in span_ids, posting
