"""A trace as a waterfall: one row per span, in tree order, with its bar placed on the trace's
time axis, its service's colour, and the money and tokens it carried.

Built on `marketplace.trace_tree` (the same tree and the same facts as `agentmarket trace`),
so the page and the command line never disagree about a trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from marketplace.spanstore import StoredSpan
from marketplace.trace_tree import span_facts, span_tree
from wallets import attributes as attrs

MAX_DEPTH = 24
MIN_BAR_PCT = 0.4
STYLE_CLASSES = {"green": "money", "magenta": "agreement", "yellow": "tokens"}


@dataclass(frozen=True, slots=True)
class Row:
    span: StoredSpan
    depth: int
    offset_pct: float
    width_pct: float
    service_index: int
    facts: list[tuple[str, str]]  # (text, css class)
    attributes: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Waterfall:
    trace_id: str
    rows: list[Row]
    services: list[str]
    start_ns: int
    duration_ms: float
    agreements: list[str]
    errors: int


def _attribute_text(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 300 else text[:300] + "…"


def waterfall(trace_id: str, spans: list[StoredSpan]) -> Waterfall:
    roots, children = span_tree(spans)
    if not roots:
        return Waterfall(trace_id, [], [], 0, 0.0, [], 0)
    start = min(s.start_ns for s in spans)
    end = max(s.end_ns for s in spans)
    total = max(end - start, 1)
    services: list[str] = []
    rows: list[Row] = []

    def visit(span: StoredSpan, depth: int) -> None:
        if span.service_name not in services:
            services.append(span.service_name)
        rows.append(Row(
            span=span, depth=min(depth, MAX_DEPTH),
            offset_pct=round((span.start_ns - start) * 100 / total, 3),
            width_pct=round(max(span.duration_ns * 100 / total, MIN_BAR_PCT), 3),
            service_index=services.index(span.service_name),
            facts=[(text, STYLE_CLASSES.get(style, "")) for text, style in span_facts(span)],
            attributes=sorted((k, _attribute_text(v)) for k, v in span.attributes.items())))
        for child in children.get(span.span_id, []):
            visit(child, depth + 1)

    for root in roots:
        visit(root, 0)
    agreements = sorted({str(s.attributes[attrs.AGREEMENT_ID]) for s in spans
                         if s.attributes.get(attrs.AGREEMENT_ID)})
    return Waterfall(trace_id, rows, services, start, total / 1_000_000, agreements,
                     sum(1 for s in spans if s.is_error))
