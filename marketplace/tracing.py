"""The one place that sets up the OpenTelemetry SDK; libraries use the API only.

Applications (the CLI, the demo, `agentmarket serve`) call `setup_tracing` once per service and
pass the provider to the components they build. It returns a *new* provider rather than setting
the global one, so several services can live in one process (the demo, the tests) and still show
up as distinct services in one trace. Spans go to the embedded span store when a path is given
and to any OTLP backend named by the standard OTEL_EXPORTER_OTLP_* environment variables.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from marketplace.home import default_span_store
from marketplace.spanstore import SqliteSpanExporter

__all__ = ["default_span_store", "force_flush", "setup_metrics", "setup_tracing",
           "tracing_enabled"]

ENV_TRACING = "AGENTMARKET_TRACING"
_OFF_VALUES = frozenset({"off", "0", "false", "no", "disabled"})
_OTLP_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def tracing_enabled(enabled: bool | None = None) -> bool:
    """An explicit choice wins; otherwise AGENTMARKET_TRACING (off/0/false/no disable it)."""
    if enabled is not None:
        return enabled
    return os.environ.get(ENV_TRACING, "on").strip().lower() not in _OFF_VALUES


def _otlp_configured() -> bool:
    return any(os.environ.get(name, "").strip() for name in _OTLP_ENDPOINT_VARS)


def setup_tracing(
    service_name: str,
    *,
    span_store_path: str | Path | None = None,
    enabled: bool | None = None,
    synchronous: bool = False,
    set_global: bool = False,
    exporters: Sequence[SpanExporter] = (),
) -> TracerProvider:
    """A new SDK provider for one service, exporting to the span store, OTLP and `exporters`.

    `synchronous=True` exports each span as it ends (the demo prints the trace right after);
    otherwise spans are batched off the hot path. OTLP is always batched: a remote collector must
    never slow a call down. When tracing is disabled the provider samples nothing, so callers'
    code stays identical and spans cost almost nothing.
    """
    resource = Resource.create({SERVICE_NAME: service_name})
    if not tracing_enabled(enabled):
        provider = TracerProvider(resource=resource, sampler=ALWAYS_OFF)
    else:
        provider = TracerProvider(resource=resource)
        local: list[SpanExporter] = list(exporters)
        if span_store_path is not None:
            local.append(SqliteSpanExporter(span_store_path))
        for exporter in local:
            processor: SpanProcessor = (
                SimpleSpanProcessor(exporter) if synchronous else BatchSpanProcessor(exporter)
            )
            provider.add_span_processor(processor)
        if _otlp_configured():
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def force_flush(
    tracer_provider: trace.TracerProvider | None = None, timeout_millis: int = 5_000
) -> bool:
    """Export every span ended so far (before printing a trace or exiting); True when done.

    Works on any provider: the API's no-op and proxy providers have nothing to flush.
    """
    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    flush = getattr(provider, "force_flush", None)
    return bool(flush(timeout_millis)) if callable(flush) else True


def setup_metrics(service_name: str, *, readers: Sequence[MetricReader] = (),
                  enabled: bool | None = None) -> MeterProvider | None:
    """Install the global meter provider for this process: OTLP when OTEL_EXPORTER_OTLP_*
    names an endpoint, plus `readers` (tests pass an InMemoryMetricReader). With no reader at
    all nothing is installed (None): an SDK provider would still build every measurement on
    the hot path (about 9% of a node's ledger writer) for nobody to read."""
    from opentelemetry import metrics

    all_readers = list(readers)
    if tracing_enabled(enabled) and (_otlp_configured() or os.environ.get(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip()):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        all_readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if not all_readers:
        return None
    provider = MeterProvider(resource=Resource.create({SERVICE_NAME: service_name}),
                             metric_readers=all_readers)
    metrics.set_meter_provider(provider)
    return provider
