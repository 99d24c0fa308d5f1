"""One trace as a tree: what `agentmarket trace` prints, and its `--json` form.

Each node shows what an operator asks first about a paid call: how long it took, which service
did it, how much money moved (formatted exactly from atomic units, never through float), for
which agreement, and how many LLM tokens it used. Spans whose parent is not in the set (a
remote caller that exports elsewhere, or a span still running) are shown as roots.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text
from rich.tree import Tree

from marketplace.spanstore import StoredSpan
from wallets import attributes as attrs
from wallets.currencies import currency
from wallets.errors import UnknownCurrency

GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
AGREEMENT_SHORT_CHARS = 8


def _duration_ms(span: StoredSpan) -> str:
    return f"{span.duration_ns / 1_000_000:.1f} ms"


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def _money(amount: Any, code: Any) -> str | None:
    """'0.0125 USD' from atomic units; unknown currencies shown raw rather than guessed."""
    amount_atomic = _as_int(amount)
    if amount_atomic is None or not isinstance(code, str):
        return None
    try:
        return currency(code).format(amount_atomic)
    except UnknownCurrency:
        return f"{amount_atomic} atomic {code}"


def span_facts(span: StoredSpan) -> list[tuple[str, str]]:
    """The business facts of a span as (text, style), in the order they are shown."""
    found = span.attributes
    parts: list[tuple[str, str]] = []
    code = found.get(attrs.CURRENCY)
    if (amount := _money(found.get(attrs.AMOUNT_ATOMIC), code)) is not None:
        parts.append((amount, "green"))
    if (fee := _money(found.get(attrs.FEE_ATOMIC), code)) is not None:
        parts.append((f"fee {fee}", "green"))
    agreement = found.get(attrs.AGREEMENT_ID)
    if agreement:
        parts.append((f"agreement {str(agreement)[:AGREEMENT_SHORT_CHARS]}", "magenta"))
    tokens_in = _as_int(found.get(GEN_AI_INPUT_TOKENS))
    tokens_out = _as_int(found.get(GEN_AI_OUTPUT_TOKENS))
    if tokens_in or tokens_out:  # a skill priced per call or unit reports 0 of each
        parts.append((f"tokens {tokens_in or 0} in / {tokens_out or 0} out", "yellow"))
    return parts


def _label(span: StoredSpan) -> Text:
    # Text.assemble, not markup: span names and attributes come from peers and may contain '['.
    label = Text.assemble(
        (span.name, "bold red" if span.is_error else "bold"),
        "  ",
        (f"[{span.service_name}]", "cyan"),
        "  ",
        (_duration_ms(span), "dim"),
    )
    for text, style in span_facts(span):
        label.append("  ")
        label.append(text, style=style)
    if span.is_error:
        label.append(f"  ERROR {span.status_message or ''}".rstrip(), style="red")
    return label


def span_tree(spans: Iterable[StoredSpan]
              ) -> tuple[list[StoredSpan], dict[str, list[StoredSpan]]]:
    """(roots, children by parent id), each list in start order; duplicates dropped."""
    unique = {span.span_id: span for span in spans}
    ordered = sorted(unique.values(), key=lambda s: (s.start_ns, s.span_id))
    roots: list[StoredSpan] = []
    children: dict[str, list[StoredSpan]] = {}
    for span in ordered:
        parent = span.parent_span_id
        if parent is None or parent not in unique or parent == span.span_id:
            roots.append(span)
        else:
            children.setdefault(parent, []).append(span)
    return roots, children


def render_trace(spans: list[StoredSpan]) -> Tree:
    """A rich Tree of one trace; several roots hang under a line naming the trace."""
    roots, children = span_tree(spans)
    if not roots:
        return Tree(Text("(no spans)", style="dim"))

    def add(node: Tree, span: StoredSpan) -> None:
        for child in children.get(span.span_id, []):
            add(node.add(_label(child)), child)

    if len(roots) == 1:
        tree = Tree(_label(roots[0]))
        add(tree, roots[0])
        return tree
    tree = Tree(Text(f"trace {roots[0].trace_id}  ({len(roots)} roots)", style="bold"))
    for root in roots:
        add(tree.add(_label(root)), root)
    return tree


def _node(span: StoredSpan, children: dict[str, list[StoredSpan]]) -> dict[str, Any]:
    return {
        "span_id": span.span_id,
        "parent_span_id": span.parent_span_id,
        "name": span.name,
        "service_name": span.service_name,
        "kind": span.kind,
        "start_ns": span.start_ns,
        "end_ns": span.end_ns,
        "duration_ns": span.duration_ns,
        "status_code": span.status_code,
        "status_message": span.status_message,
        "attributes": span.attributes,
        "events": span.events,
        "children": [_node(child, children) for child in children.get(span.span_id, [])],
    }


def trace_to_json(spans: list[StoredSpan]) -> dict[str, Any]:
    """The same tree as plain data: {"trace_id", "span_count", "roots": [span with children]}."""
    roots, children = span_tree(spans)
    return {
        "trace_id": roots[0].trace_id if roots else None,
        "span_count": len({span.span_id for span in spans}),
        "roots": [_node(root, children) for root in roots],
    }
