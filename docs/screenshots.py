"""Screenshots of the operator console for the README, from a seeded market.

Seeds a market with real agents on loopback (sellers priced per call and per token through
litellm's offline mock, buyers that discover, negotiate, hire, make paid calls and settle; one
buyer's spend waiting for approval, one dispute, one frozen wallet), opens the console in
headless Chromium (Debian's /usr/bin/chromium), logs in with the printed one-time token and
saves the main pages as PNGs in docs/console/. Run: `make screenshots`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from typing import Any  # noqa: E402

from opentelemetry import trace  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from agents import BuyerAgent, SellerAgent, model_price, per_call, skill  # noqa: E402
from agents.errors import ApprovalRequired  # noqa: E402
from agents.llm import complete, text_of  # noqa: E402
from marketplace.console import ConsoleOptions  # noqa: E402
from marketplace.node import MarketplaceNode  # noqa: E402
from marketplace.tracing import force_flush, setup_tracing  # noqa: E402
from wallets import currency  # noqa: E402
from wallets.v1 import wallet_pb2  # noqa: E402

OUT = ROOT / "docs" / "console"
CHROMIUM = Path(os.environ.get("AGENTMARKET_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--force-color-profile=srgb", "--hide-scrollbars"]
MODEL = "gpt-4o-mini"
USD = currency("USD")


class Summary(BaseModel):
    summary: str


class Translation(BaseModel):
    text: str


@skill(price=model_price(MODEL, "USD", markup_bps=2_000), max_input_tokens=1_000,
       max_output_tokens=100)
def summarize(text: str) -> Summary:
    """Summarise a text in one sentence."""
    reply = complete(MODEL, [{"role": "system", "content": "Summarise in one sentence."},
                             {"role": "user", "content": text}],
                     mock_response=f"In short: {text[:60]}")
    return Summary(summary=text_of(reply))


@skill(price=per_call("0.002", "USD"), tags=["text", "translation"])
def translate(text: str) -> Translation:
    """Translate a text into French."""
    return Translation(text=f"[fr] {text}")


TEXTS = ["Agents buy work from each other thousands of times a day.",
         "Escrow holds the buyer's money until the work is verified.",
         "A hash-chain voucher makes each payment a few hashes.",
         "Every posting stores the trace that caused it."]


def seed(workdir: Path) -> tuple[MarketplaceNode, list, list]:  # type: ignore[type-arg]
    """The market; returns the node, the sellers, and the buyers, the disputed deal and the
    trace id of one whole task."""
    spans = workdir / "spans.db"
    names = ("marketplace", "summarizer", "translator", "research-bot", "support-agent",
             "pricing-agent", "ops-agent")
    providers = {n: setup_tracing(n, span_store_path=spans, synchronous=True) for n in names}
    node = MarketplaceNode(f"sqlite:///{workdir / 'market.db'}",
                           tracer_provider=providers["marketplace"],
                           console=ConsoleOptions(arbiter=True, span_store=spans)).start()
    sellers = [SellerAgent("summarizer", skills=[summarize], marketplace=node.address,
                           dispute_window_s=3600, tracer_provider=providers["summarizer"]).serve(),
               SellerAgent("translator", skills=[translate], marketplace=node.address,
                           dispute_window_s=3600, tracer_provider=providers["translator"]).serve()]
    buyers = {n: BuyerAgent(n, marketplace=node.address, tracer_provider=providers[n])
              for n in ("research-bot", "support-agent", "pricing-agent", "ops-agent")}
    for name, buyer in buyers.items():
        buyer.fund("2.00" if name != "ops-agent" else "0.50", "USD")
    # one task under one root span: the trace the README shows
    research = buyers["research-bot"]
    tracer = trace.get_tracer("screenshots", tracer_provider=providers["research-bot"])
    with tracer.start_as_current_span("research task") as root:
        listing = research.discover("summarize", currency="USD")[0]
        deal = research.negotiate(listing, "summarize", quantity=4, budget="0.05",
                                  currency="USD")
        research.hire(deal)
        for text in TEXTS[:3]:
            research.call(deal, {"text": text})
        research.finish(deal)
    task_trace = format(root.get_span_context().trace_id, "032x")
    # more settled work, per token and per call
    for round_ in range(3):
        for name, skill_name in (("research-bot", "summarize"), ("support-agent", "translate"),
                                 ("pricing-agent", "summarize")):
            buyer = buyers[name]
            listing = buyer.discover(skill_name, currency="USD")[0]
            deal = buyer.negotiate(listing, skill_name, quantity=4, budget="0.05",
                                   currency="USD")
            buyer.hire(deal)
            for text in TEXTS[: 2 + round_]:
                buyer.call(deal, {"text": text})
            buyer.finish(deal)
    # work in progress, and a dispute
    support = buyers["support-agent"]
    listing = support.discover("translate", currency="USD")[0]
    active = support.negotiate(listing, "translate", quantity=5, budget="0.05", currency="USD")
    support.hire(active)
    support.call(active, {"text": TEXTS[0]})
    listing = research.discover("translate", currency="USD")[0]
    disputed = research.negotiate(listing, "translate", quantity=3, budget="0.05",
                                  currency="USD")
    research.hire(disputed)
    for text in TEXTS[:3]:
        research.call(disputed, {"text": text})
    research.finish(disputed, confirm=False)
    research.dispute(disputed, "The translations are not French: they copy the input with a "
                               "prefix.")
    # a spend above the owner's approval threshold, waiting for a person
    ops = buyers["ops-agent"]
    ops.wallets.SetPolicy(wallet_pb2.SetPolicyRequest(
        idempotency_key="ops-policy", account_id=ops.wallet("USD").account_id,
        policy=wallet_pb2.WalletPolicy(approval_threshold_atomic=USD.atomic("0.02"),
                                       daily_cap_atomic=USD.atomic("1.00"))))
    listing = ops.discover("translate", currency="USD")[0]
    big = ops.negotiate(listing, "translate", quantity=20, budget="0.05", currency="USD")
    with contextlib.suppress(ApprovalRequired):  # the approval now waits for a person
        ops.hire(big)
    for provider in providers.values():
        force_flush(provider)
    return node, sellers, [*buyers.values(), disputed, task_trace]


def _full(page: Any, path: Path) -> None:
    """The whole page, with the sidebar as tall as it (a taller window, not a stitched one)."""
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": 1440, "height": max(900, int(height))})
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1440, "height": 900})


def shoot(node: MarketplaceNode, disputed_id: str, frozen_owner: str, trace_id: str) -> None:
    from playwright.sync_api import sync_playwright

    assert node.console is not None and node.http is not None
    base = f"{node.http.url}/console"
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900},
                                device_scale_factor=1)
        page.goto(node.console.login_url())
        page.fill("#operator", "Ada Lovelace")
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/")
        page.goto(f"{base}/wallets/{frozen_owner}")  # an action, for the audit trail
        page.fill("input[name=reason]", "spend pattern under review")
        page.click("button:has-text('Freeze wallet')")
        page.wait_for_selector(".flash.ok")
        shots = [("overview", "/", False), ("approvals", "/approvals", False),
                 ("agreements", "/agreements", False),
                 ("dispute", f"/agreements/{disputed_id}", True),
                 ("wallet", f"/wallets/{frozen_owner}", False), ("ledger", "/ledger", False),
                 ("audit", "/audit", False)]
        for name, path, full in shots:
            page.goto(base + path)
            if full:
                _full(page, OUT / f"{name}.png")
            else:
                page.screenshot(path=str(OUT / f"{name}.png"))
        page.goto(f"{base}/traces/{trace_id}")
        page.wait_for_selector("#waterfall")
        _full(page, OUT / "trace.png")
        browser.close()


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="agentmarket-screens-"))
    node, sellers, rest = seed(workdir)
    *buyers, disputed, task_trace = rest
    try:
        owner = next(b for b in buyers if b.name == "pricing-agent").agent_id
        shoot(node, disputed.agreement_id, owner, task_trace)
    finally:
        for seller in sellers:
            seller.stop()
        for buyer in buyers:
            buyer.close()
        node.stop()
    print(f"screenshots in {OUT}")


if __name__ == "__main__":
    main()
