"""The operator console in a real headless Chromium (Playwright driving Debian's chromium):
log in with the one-time token, approve a waiting payment and see the money move, resolve a
dispute, follow a posting to its trace, freeze a wallet, watch the overview refresh itself;
refused without the token, and a forged form post from another site refused."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.console_market import CENT, TIMEOUT_S, ConsoleMarket, build_console_market, key, usd
from wallets.grpc_errors import error_info, error_reason
from wallets.v1 import wallet_pb2

CHROMIUM = Path(os.environ.get("AGENTMARKET_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 10_000

pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = (f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium with "
                   "apt-get where it can; or set AGENTMARKET_CHROMIUM")
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleMarket]:
    built = build_console_market(tmp_path_factory.mktemp("console"), refresh_s=1.0)
    yield built
    built.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    ctx.set_default_timeout(WAIT_MS)
    yield ctx
    ctx.close()


def base(market: ConsoleMarket) -> str:
    assert market.node.http is not None
    return f"{market.node.http.url}/console"


def log_in(context: BrowserContext, market: ConsoleMarket, name: str = "Ada Lovelace") -> Page:
    assert market.node.console is not None
    page = context.new_page()
    page.goto(market.node.console.login_url())
    page.fill("#operator", name)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{base(market)}/")
    return page


def test_log_in_with_the_one_time_token_and_see_the_overview(context: BrowserContext,
                                                             market: ConsoleMarket,
                                                             browser: Browser):
    assert market.node.console is not None
    spent = market.node.console.login_url()
    page = log_in(context, market)
    expect(page.locator("#stat-approvals")).to_have_text("1")
    expect(page.locator("#stat-disputes")).to_have_text("1")
    expect(page.locator("#currencies")).to_contain_text("USD")
    expect(page.locator("#refusals")).to_contain_text("APPROVAL_REQUIRED")
    cookie = next(c for c in context.cookies() if c["name"] == "agentmarket_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"

    other = browser.new_context()  # the same link again: the token is spent
    try:
        again = other.new_page()
        again.goto(spent)
        again.fill("#operator", "Mallory")
        again.click("button[type=submit]")
        expect(again.locator(".flash.error")).to_contain_text("wrong or already used")
        expect(again).to_have_url(re.compile(r"/console/login"))
    finally:
        other.close()


def test_refused_without_the_token(context: BrowserContext, market: ConsoleMarket):
    page = context.new_page()
    for path in ("/", "/approvals", f"/agreements/{market.disputed.agreement_id}", "/ledger"):
        page.goto(base(market) + path)
        expect(page).to_have_url(re.compile(r"/console/login\?next="))
        expect(page.locator("#token")).to_be_visible()
    page.fill("#token", "not-the-token")
    page.fill("#operator", "Mallory")
    page.click("button[type=submit]")
    expect(page.locator(".flash.error")).to_contain_text("wrong or already used")
    answer = context.request.post(f"{base(market)}/approvals/{market.approval_id}/approve",
                                  form={"note": "let me"}, max_redirects=0)
    assert answer.status == 401
    assert market.approval().status == "pending"


def test_approve_a_pending_payment_and_see_the_money_move(context: BrowserContext,
                                                          market: ConsoleMarket):
    page = log_in(context, market, "Grace Hopper")
    payer = market.keys["payer"].agent_id
    page.goto(f"{base(market)}/wallets/{payer}")
    expect(page.locator(".wallet .balance")).to_have_text("0.10 USD")
    page.goto(f"{base(market)}/approvals")
    row = page.locator(f"tr[data-approval='{market.approval_id}']")
    expect(row).to_contain_text("0.02 USD")
    expect(row).to_contain_text("approval above 0.01 USD")  # the policy that triggered it
    row.locator("input[name=note]").fill("known supplier, checked by phone")
    row.locator("button", has_text="Approve").click()
    expect(page.locator(".flash.ok")).to_contain_text("approved")
    seller_before = market.balance("seller")

    market.big_spend()  # the payer's retry under the same key now goes through, once
    assert market.balance("seller") == seller_before + 2 * CENT
    page.goto(f"{base(market)}/wallets/{payer}")
    expect(page.locator(".wallet .balance")).to_have_text("0.08 USD")
    expect(page.locator(".wallet")).to_contain_text("transfer")
    page.goto(f"{base(market)}/approvals?status=used")
    expect(page.locator("#approvals")).to_contain_text("Grace Hopper (console")
    page.goto(f"{base(market)}/audit")
    audit = page.locator("table.audit tbody tr").first
    expect(audit).to_contain_text("Grace Hopper")
    expect(audit).to_contain_text("approve")
    expect(audit).to_contain_text("done")
    assert market.approval().decided_by.startswith("Grace Hopper (console, key ")


def test_resolve_a_dispute(context: BrowserContext, market: ConsoleMarket):
    page = log_in(context, market, "Judge Judy")
    agreement = market.disputed.agreement_id
    seller_before, buyer_before = market.balance("seller"), market.balance("buyer")
    page.goto(f"{base(market)}/agreements/{agreement}")
    expect(page.locator("#agreement-state")).to_have_text("disputed")
    expect(page.locator("#dispute")).to_contain_text("I asked for French")
    expect(page.locator("#receipts")).to_contain_text("passed")
    form = page.locator("#resolve-form")
    form.locator("input[value=split]").check()
    form.locator("input[name=seller_amount]").fill("0.002")
    form.locator("input[name=note]").fill("two of three outputs were usable")
    form.locator("button[type=submit]").click()
    expect(page.locator(".flash.ok")).to_contain_text("resolved to the split")
    expect(page.locator("#agreement-state")).to_have_text("resolved")
    expect(page.locator("#dispute")).to_contain_text("two of three outputs were usable")
    fee = 2 * 1_000_000 * 250 // 10_000
    assert market.balance("seller") == seller_before + 2_000_000 - fee
    assert market.balance("buyer") == buyer_before + 1_000_000
    record = market.node.settlement.disputes.get(agreement)
    assert record.status == "resolved" and record.seller_atomic == 2_000_000
    assert "Judge Judy" in record.note


def test_follow_a_posting_to_its_trace(context: BrowserContext, market: ConsoleMarket):
    page = log_in(context, market)
    page.goto(f"{base(market)}/ledger?kind=capture")
    link = page.locator("a.trace-link").last  # the oldest capture: the confirmed agreement
    trace_id = link.get_attribute("href").rsplit("/", 1)[1]  # type: ignore[union-attr]
    link.click()
    expect(page).to_have_url(f"{base(market)}/traces/{trace_id}")
    waterfall = page.locator("#waterfall")
    expect(waterfall.locator(".span-row").first).to_contain_text("buyer")
    expect(waterfall).to_contain_text("marketplace")
    expect(waterfall).to_contain_text("USD")  # spans carry amounts and currencies
    expect(page.locator(".legend")).to_contain_text("buyer")
    expect(page.locator("table.postings")).to_contain_text("capture")  # the posting again


def test_a_forged_form_post_is_refused(context: BrowserContext, market: ConsoleMarket):
    approval = _new_waiting_spend(market)
    page = log_in(context, market)
    target = f"{base(market)}/approvals/{approval}/approve"
    with _attacker_site(target) as attacker_url:
        page.goto(attacker_url)  # auto-submits the forged form with the operator's cookie
        expect(page.locator("p.refused")).to_contain_text("came from another site")
    answer = context.request.post(target, form={"note": "no token"}, max_redirects=0)
    assert answer.status == 403 and "security token" in answer.text()
    assert market.approval(approval).status == "pending"


def test_freeze_and_unfreeze_a_wallet(context: BrowserContext, market: ConsoleMarket):
    page = log_in(context, market, "Ops On Call")
    idle = market.keys["idle"].agent_id
    page.goto(f"{base(market)}/wallets/{idle}")
    page.fill("input[name=reason]", "key reported stolen")
    page.click("button:has-text('Freeze wallet')")
    expect(page.locator(".flash.ok")).to_contain_text("is frozen")
    expect(page.locator(".wallet")).to_contain_text("key reported stolen")
    with pytest.raises(grpc.RpcError) as refused:
        _spend(market, "idle", CENT // 2)
    assert error_reason(refused.value) == "WALLET_FROZEN"
    page.fill("input[name=reason]", "new key issued")
    page.click("button:has-text('Unfreeze wallet')")
    expect(page.locator(".flash.ok")).to_contain_text("not frozen")
    _spend(market, "idle", CENT // 2)


def test_the_overview_refreshes_itself(context: BrowserContext, market: ConsoleMarket):
    page = log_in(context, market)
    before = int(page.locator("#stat-approvals").inner_text())
    page.evaluate("window.notReloaded = true")
    _new_waiting_spend(market)
    expect(page.locator("#stat-approvals")).to_have_text(str(before + 1))
    assert page.evaluate("window.notReloaded") is True


# ---- helpers --------------------------------------------------------------------------------


def _spend(market: ConsoleMarket, role: str, amount_atomic: int, spend_key: str = "") -> Any:
    return market.wallets(role).Transfer(wallet_pb2.TransferRequest(
        idempotency_key=spend_key or key("spend"), debit_account_id=market.accounts[role],
        credit_account_id=market.accounts["seller"], amount=usd(amount_atomic)),
        timeout=TIMEOUT_S)


def _new_waiting_spend(market: ConsoleMarket) -> str:
    with pytest.raises(grpc.RpcError) as waiting:
        _spend(market, "payer", 3 * CENT)
    return error_info(waiting.value).metadata["approval_id"]


class _attacker_site:
    """Another site on loopback whose page posts a form to the console as soon as it loads."""

    def __init__(self, target: str) -> None:
        page = (f"<!doctype html><html><body><form id='f' method='post' action='{target}'>"
                "<input name='note' value='pwned'><input name='csrf_token' value='guess'>"
                "</form><script>document.getElementById('f').submit()</script></body></html>")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.end_headers()
                self.wfile.write(page.encode())

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
