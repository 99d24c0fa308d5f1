"""`agentmarket demo`: one paid task, end to end, on loopback gRPC and an embedded SQLite file.

A marketplace node, two sellers offering the same skill at different prices, and a buyer whose
LangGraph workflow funds its wallet, discovers, negotiates, hires with escrow, makes paid calls
(each output checked against the skill's schema) and settles. Prints every account's balance
before and after, and the task's trace as a tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from opentelemetry import trace
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from agents.buyer import BuyerAgent
from agents.seller import SellerAgent
from agents.skills import Skill, per_call, skill
from agents.workflow import buyer_graph
from marketplace.node import MarketplaceNode
from marketplace.spanstore import SpanStore
from marketplace.trace_tree import render_trace
from marketplace.tracing import force_flush, setup_tracing
from wallets import attributes as attr
from wallets.audit import check_balances, verify_chain
from wallets.currencies import currency
from wallets.models import Balance

DOCUMENTS = [
    "Agents buy work from each other thousands of times a day, each call worth a fraction "
    "of a cent, so card rails cannot carry the payments.",
    "Escrow holds the buyer's money until the task is verified, then pays the seller and "
    "returns the rest.",
    "A hash-chain voucher makes the per-call payment check a few hashes instead of a "
    "signature verification.",
    "OpenTelemetry traces follow one task and its money across every agent and service.",
    "Double-entry postings keep every currency summing to zero across all accounts.",
]


class Summary(BaseModel):
    summary: str
    words: int


def summarizer(price: str) -> Skill:
    @skill(price=per_call(price, "USD"), name="summarize", tags=["text", "summary"])
    def summarize(text: str, max_words: int = 12) -> Summary:
        """Summarise a text to at most max_words words."""
        words = text.split()[:max_words]
        return Summary(summary=" ".join(words), words=len(words))

    return summarize


@dataclass
class DemoResult:
    before: dict[str, Balance]
    after: dict[str, Balance]
    names: dict[str, str]
    state: dict[str, Any]
    trace_id: str
    span_store: Path
    db_path: Path
    problems: list[str] = field(default_factory=list)


def run_demo(workdir: Path, console: Console | None = None, calls: int = 5) -> DemoResult:
    """Run the scenario in `workdir` (its database and span store go there); return balances
    before anything moved and after, the workflow's final state and the trace id."""
    console = console or Console(markup=False)
    workdir = Path(workdir)
    db_path, spans_path = workdir / "marketplace.db", workdir / "spans.db"
    providers = {name: setup_tracing(name, span_store_path=spans_path, synchronous=True)
                 for name in ("marketplace", "seller-a", "seller-b", "buyer")}
    node = MarketplaceNode(f"sqlite:///{db_path}", tracer_provider=providers["marketplace"],
                           fee_bps=250).start()
    sellers = [
        SellerAgent("seller-a", skills=[summarizer("0.002")], marketplace=node.address,
                    tracer_provider=providers["seller-a"]).serve(),
        SellerAgent("seller-b", skills=[summarizer("0.003")], marketplace=node.address,
                    tracer_provider=providers["seller-b"]).serve(),
    ]
    buyer = BuyerAgent("buyer", marketplace=node.address, tracer_provider=providers["buyer"])
    names = {buyer.agent_id: "buyer", "marketplace": "marketplace",
             **{s.agent_id: s.name for s in sellers}}
    try:
        before = _balances(node)  # before the deposit: nothing has moved yet
        state, trace_id = _run_task(buyer, calls, console, workdir)
        after = _balances(node)
    finally:
        for seller in sellers:
            seller.stop()
        buyer.close()
        node.stop()
        for provider in providers.values():
            force_flush(provider)
    problems = [*check_balances(node.ledger).problems, *verify_chain(node.ledger).problems]
    return DemoResult(before, after, names, state, trace_id, spans_path, db_path, problems)


def _run_task(buyer: BuyerAgent, calls: int, console: Console, workdir: Path
              ) -> tuple[dict[str, Any], str]:
    """The buyer's task under one root span."""
    tracer = trace.get_tracer("agentmarket.demo", tracer_provider=buyer.tracer_provider)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"))
    steps = ["fund", "discover", "negotiate", "hire", "call", "settle"]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("starting", total=len(steps) - 1 + calls)

        def on_step(step: str, update: dict[str, Any]) -> None:
            text = {
                "discover": lambda: f"found {len(update['candidates'])} sellers",
                "negotiate": lambda: (f"agreed {_usd(update['unit_price_atomic'])} per call "
                                      f"after {update['rounds']} rounds"),
                "hire": lambda: "escrow hold placed",
                "call": lambda: f"paid call {len(update['outputs'])}/{calls}",
                "settle": lambda: (f"settled: the seller received "
                                   f"{_usd(update['captured_atomic'] - update['fee_atomic'])} "
                                   f"after the {_usd(update['fee_atomic'])} fee"),
            }.get(step)
            if text is not None:
                progress.update(task, advance=1, description=text())

        with tracer.start_as_current_span("task", attributes={attr.SKILL: "summarize"}) as span:
            buyer.fund("1.00", "USD", idempotency_key=f"demo-fund:{buyer.agent_id}")
            progress.update(task, advance=1, description="wallet funded with 1.00 USD")
            graph = buyer_graph(buyer, on_step=on_step,
                                checkpoint_path=workdir / "buyer-checkpoints.sqlite")
            inputs = [{"text": DOCUMENTS[i % len(DOCUMENTS)]} for i in range(calls)]
            state = graph.invoke({"skill": "summarize", "currency": "USD",
                                  "budget": demo_budget(calls),
                                  "inputs": inputs, "max_rounds": 6, "max_sellers": 1},
                                 {"configurable": {"thread_id": f"demo-{buyer.agent_id[:16]}"}})
            return state, format(span.get_span_context().trace_id, "032x")


def demo_budget(calls: int) -> str:
    """The buyer's budget for `calls` calls: 0.05 USD, or 0.002 USD a call when that is more
    (the demo's sellers ask about 0.00175 a call; more calls need more budget to agree)."""
    return str(max(Decimal("0.05"), Decimal("0.002") * calls))


def _usd(amount_atomic: int) -> str:
    return currency("USD").format(amount_atomic)


def _balances(node: MarketplaceNode) -> dict[str, Balance]:
    return {b.account_id: b for b in node.ledger.accounts()}


def _label(balance: Balance, names: dict[str, str]) -> str:
    if balance.kind == "rail":
        return balance.owner.removeprefix("rail:")
    return names.get(balance.owner, balance.owner[:12])


def rows(result: DemoResult) -> list[tuple[str, str, int, int, str]]:
    """(account, kind, before, after, currency): every account, and every agent of the demo,
    an agent that was never paid (the seller not chosen) with its empty wallet."""
    found = []
    for account_id, after in result.after.items():
        before = result.before.get(account_id)
        found.append((_label(after, result.names), after.kind,
                      before.posted_atomic if before else 0, after.posted_atomic,
                      after.currency))
    owners = {b.owner for b in result.after.values()}
    found += [(name, "wallet", 0, 0, "USD") for owner, name in result.names.items()
              if owner not in owners and owner != "marketplace"]
    return sorted(found, key=lambda row: (row[1], row[0]))


def print_report(result: DemoResult, console: Console, *, kept: bool = True) -> None:
    table = Table(title="Balances before and after the task (exact)")
    for column in ("account", "kind", "before", "after", "change"):
        table.add_column(column, justify="left" if column in ("account", "kind") else "right")
    for label, kind, start, end, code in rows(result):
        fmt = currency(code).format
        table.add_row(label, kind, fmt(start), fmt(end), fmt(end - start))
    total = sum(b.posted_atomic for b in result.after.values())
    table.caption = f"sum over all accounts: {total} (double entry: always zero)"
    console.print(table)
    state = result.state
    if state.get("captured_atomic"):
        net = state["captured_atomic"] - state["fee_atomic"]
        console.print(f"the seller received {_usd(net)} (paid {_usd(state['captured_atomic'])}"
                      f", less the marketplace's {_usd(state['fee_atomic'])} fee); the buyer "
                      f"got {_usd(state['refunded_atomic'])} of the escrow back",
                      highlight=False)
    with SpanStore(result.span_store) as store:
        console.print(render_trace(store.spans(result.trace_id)))
    if kept:
        console.print(f"trace id {result.trace_id}  (agentmarket trace show {result.trace_id} "
                      f"--spans {result.span_store})")
    else:
        console.print(f"trace id {result.trace_id}  (the demo's files were removed; keep them "
                      "with --workdir DIR)")
    if result.problems:
        console.print(f"ledger problems: {result.problems}", style="red", markup=False)
    else:
        console.print("books balanced, hash chain intact", style="green")
