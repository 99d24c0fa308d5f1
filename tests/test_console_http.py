"""The console's HTTP edge without a browser: the login token is one-time, sessions and CSRF
guard every action, cookies and headers are strict, the Host header is checked; actions are
signed gRPC requests the node authorises like any other (and are audited either way); the
agreements list pages through every agreement exactly once; the HTTP server starts and stops
with the node on a free port."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from marketplace.console.sessions import MAX_FAILURES, LoginRefused, Sessions
from marketplace.http import HttpPart, HttpServer, build_app
from marketplace.node import MarketplaceNode
from tests.console_market import ConsoleMarket, build_console_market


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleMarket]:
    built = build_console_market(tmp_path_factory.mktemp("console-http"), arbiter=False)
    yield built
    built.close()


def _client(market: ConsoleMarket) -> httpx.Client:
    assert market.node.http is not None
    return httpx.Client(base_url=market.node.http.url, follow_redirects=False, timeout=10)


def _log_in(market: ConsoleMarket, name: str = "Ada") -> tuple[httpx.Client, str]:
    """A client with a session; returns it and the session's CSRF token."""
    assert market.node.console is not None
    client = _client(market)
    page = client.get("/console/login", params={"token": market.node.console.sessions.token})
    nonce = re.search(r'name="login_nonce" value="([^"]+)"', page.text).group(1)  # type: ignore
    answer = client.post("/console/login", data={
        "token": market.node.console.sessions.token, "operator": name, "login_nonce": nonce,
        "next": "/console/approvals"})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/approvals"
    home = client.get("/console/")
    csrf = re.search(r'"X-CSRF-Token": "([^"]+)"', home.text).group(1)  # type: ignore
    return client, csrf


def test_cookies_and_headers_are_strict(market: ConsoleMarket):
    client = _client(market)
    login = client.get("/console/login")
    assert "HttpOnly" in login.headers["set-cookie"]
    assert "SameSite=strict" in login.headers["set-cookie"]
    headers = login.headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    assert headers["x-content-type-options"] == "nosniff"
    logged_in, _ = _log_in(market)
    session_cookie = next(c for c in logged_in.cookies.jar if c.name == "agentmarket_console")
    assert session_cookie.path == "/console" and session_cookie.has_nonstandard_attr("HttpOnly")
    assert client.get("/console/static/htmx.min.js").status_code == 200
    assert client.get("/healthz").text == "ok"


def test_the_login_token_is_one_time():
    announced: list[str] = []
    sessions = Sessions(announce=announced.append)
    first = sessions.token
    session = sessions.login(first, "Ada")
    assert sessions.get(session.session_id) == session
    assert announced == [first, sessions.token] and sessions.token != first
    with pytest.raises(LoginRefused, match="wrong or already used"):
        sessions.login(first, "Mallory")
    with pytest.raises(LoginRefused, match="give your name"):
        sessions.login(sessions.token, "<script>")
    sessions.logout(session.session_id)
    assert sessions.get(session.session_id) is None


def test_wrong_tokens_are_refused_as_too_many_yet_cannot_keep_the_operator_out(caplog):
    now = [1000.0]
    sessions = Sessions(clock=lambda: now[0])
    for _ in range(MAX_FAILURES):
        with pytest.raises(LoginRefused, match="wrong"):
            sessions.login("guess", "Mallory")
    for _ in range(3):
        with pytest.raises(LoginRefused, match="too many"):
            sessions.login("guess", "Mallory")
    assert "wrong console login tokens" in caplog.text  # the operator is told, once
    assert caplog.text.count("wrong console login tokens") == 1
    assert sessions.login(sessions.token, "Ada").operator == "Ada"  # no lock-out
    now[0] += 61
    with pytest.raises(LoginRefused, match="wrong"):
        sessions.login("guess", "Mallory")


def test_sessions_expire():
    now = [1000.0]
    sessions = Sessions(clock=lambda: now[0], ttl_s=60)
    session = sessions.login(sessions.token, "Ada")
    now[0] += 61
    assert sessions.get(session.session_id) is None


def test_every_action_needs_a_session_this_origin_and_the_csrf_token(market: ConsoleMarket):
    target = f"/console/approvals/{market.approval_id}/deny"
    assert _client(market).post(target, data={"note": "x"}).status_code == 401
    client, csrf = _log_in(market)
    _, other_csrf = _log_in(market, "Bob")
    form = {"note": "x", "form_key": "k" * 20}
    assert client.post(target, data=form).status_code == 403
    assert client.post(target, data={**form, "csrf_token": other_csrf}).status_code == 403
    assert client.post(target, data={**form, "csrf_token": csrf},
                       headers={"sec-fetch-site": "same-site"}).status_code == 403
    assert client.post(target, data={**form, "csrf_token": csrf},
                       headers={"origin": "http://evil.example"}).status_code == 403
    login_forged = _client(market).post("/console/login", data={
        "token": "x", "operator": "Mallory", "login_nonce": "n"})
    assert login_forged.status_code == 403
    assert market.approval().status == "pending"
    chunked = client.post(target, content=iter([urlencode({**form, "csrf_token": csrf}).encode()]),
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert chunked.status_code == 403  # no Content-Length: the body of unknown size is unread
    assert market.approval().status == "pending"
    denied = client.post(target, data={**form, "csrf_token": csrf})
    assert denied.status_code == 303
    assert market.approval().status == "denied"
    assert market.approval().decided_by.startswith("Ada (console, key ")


def test_an_action_the_node_refuses_is_shown_and_audited(market: ConsoleMarket):
    """This console's key is an operator but no arbiter (the node has none): the node
    refuses its decision, and the console says why and records it."""
    client, csrf = _log_in(market, "Eve")
    agreement = market.disputed.agreement_id
    page = client.get(f"/console/agreements/{agreement}")
    assert "not an arbiter of this node" in page.text and "resolve-form" not in page.text
    answer = client.post(f"/console/agreements/{agreement}/resolve", data={
        "csrf_token": csrf, "form_key": "r" * 20, "to": "buyer", "note": "refund"})
    assert answer.status_code == 303
    shown = client.get(answer.headers["location"]).text
    assert "FAILED_PRECONDITION: this marketplace has no arbiter configured" in shown
    assert market.node.settlement.disputes.get(agreement).status == "open"
    assert market.node.console is not None
    row = market.node.console.pages.audit.records(target=agreement)[0]
    assert (row.operator, row.action, row.outcome) == ("Eve", "resolve", "refused")
    assert "no arbiter" in row.message and len(row.trace_id) == 32


def test_a_resubmitted_form_acts_once(market: ConsoleMarket):
    client, csrf = _log_in(market, "Ada")
    account = market.accounts["idle"]
    form = {"csrf_token": csrf, "form_key": "same-form-key-0001", "reason": "check"}
    for _ in range(2):
        assert client.post(f"/console/accounts/{account}/freeze", data=form).status_code == 303
    alerts = market.node.wallets.controls.alerts(account)
    assert [a.kind for a in alerts].count("freeze") == 1
    client.post(f"/console/accounts/{account}/unfreeze", data={
        **form, "form_key": "another-form-key-01", "reason": "fine"})


def test_other_hosts_and_bad_input_get_clear_answers(market: ConsoleMarket):
    client, _ = _log_in(market)
    assert client.get("/console/", headers={"host": "evil.example"}).status_code == 400
    assert client.get("/console/agreements/" + "ab" * 32).status_code == 404
    assert client.get("/console/traces/" + "0" * 32).status_code == 404
    assert client.get("/console/wallets/nobody").status_code == 404
    assert client.get("/console/agreements?state=bogus&cursor=zz").status_code == 200
    assert client.get("/console/ledger?before=x&kind=bogus").status_code == 200
    for odd in ("%C2%B2", "99999999999999999999"):  # a digit int() refuses; past 2**63
        for path in (f"/console/ledger?before={odd}", f"/console/audit?before={odd}",
                     f"/console/agreements?cursor={odd}:" + "ab" * 32):
            assert client.get(path).status_code == 200, path
    assert _client(market).get("/console/login", params={"next": "//evil.example"}) \
        .text.count('value="/console/"') == 1


def test_the_agreement_list_pages_through_everything_once(tmp_path: Path):
    from marketplace.console.agreement_reads import AgreementReads
    from marketplace.console.reads import ConsoleReads
    from marketplace.testing import Harness, make_skill
    from wallets.store import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    now = [1_700_000_000_000]
    harness = Harness(engine, lambda: now[0])
    harness.advertise(make_skill(price_atomic=1000))
    harness.fund(harness.buyer, 10**9)
    opened = set()
    for i in range(23):
        now[0] += i % 3  # ties in created_at_ms are ordered by id
        opened.add(harness.open(harness.deal(price_atomic=1000, quantity=2))["agreement_id"])
    reads = AgreementReads(ConsoleReads(harness.ledger), harness.settlement)
    seen, cursor = [], ""
    while True:
        page = reads.page(cursor=cursor, limit=5)
        seen += [r.agreement_id for r in page.rows]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert len(seen) == len(set(seen)) == 23 and set(seen) == opened
    assert page.total == 23 and page.by_state == {"active": 23}
    harness.close()
    engine.dispose()


def test_the_http_server_runs_with_the_node_on_a_free_port(tmp_path: Path):
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}")
    assert node.http is None and node.console is None  # no parts: no HTTP server
    node.stop()
    with pytest.raises(ValueError, match="share a prefix"):
        build_app([HttpPart("/a", build_app([])), HttpPart("/a", build_app([]))])
    server = HttpServer(build_app([]), port=0).start()
    try:
        assert server.port > 0
        assert httpx.get(f"{server.url}/healthz").text == "ok"
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz", timeout=2)


def test_the_overview_counts_refusals_by_reason_from_the_span_store(market: ConsoleMarket):
    client, _ = _log_in(market)
    live = client.get("/console/overview/live").text
    assert 'hx-trigger="every' in live  # the fragment polls itself: live without a reload
    refusals = live.split('id="refusals"')[1]
    assert "APPROVAL_REQUIRED" in refusals  # the payer's spend waiting for a person


@pytest.mark.parametrize("args", [
    ["--console-host", "0.0.0.0", "--console"],
    ["--console-arbiter"],
    ["--console", "--console-key-file", "/nonexistent/key"],
])
def test_serve_console_options_are_checked_in_one_line(args: list[str]):
    from typer.testing import CliRunner

    from marketplace.cli.main import app

    result = CliRunner().invoke(app, ["serve", "--port", "0", *args], terminal_width=250)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error:"), \
        result.output


def test_the_audit_pager_reaches_every_action_once_when_many_share_a_millisecond(
        market: ConsoleMarket):
    """The "Older" link carries the last row's time and id: actions of one millisecond that
    do not fit on a page are on the next one, not on none."""
    audit = market.node.console.pages.audit
    for i in range(101):  # long ago: after every other test's actions
        audit.begin(at_ms=1_000, operator="Ada", session="s", key_id="k", action="freeze",
                    target=f"pager-{i:03d}", detail={}, trace_id="")
    client, _ = _log_in(market)
    seen: list[str] = []
    url = "/console/audit"
    for _ in range(50):
        page = client.get(url).text
        seen += re.findall(r"pager-\d{3}", page)
        older = re.search(r'href="(/console/audit\?before=[0-9]+:[0-9a-f]{32})"', page)
        if older is None:
            break
        url = older.group(1)
    assert sorted(set(seen)) == [f"pager-{i:03d}" for i in range(101)]
    assert len(seen) == len(set(seen)) * seen.count("pager-000")  # each on one page only


def test_every_waiting_approval_is_on_a_page_however_many_another_wallet_files(
        tmp_path: Path, monkeypatch):
    """A wallet owner who sends 200 spends of its own to a person cannot push an older
    request of another wallet off the Approvals page: "Older" pages reach it. (One caller
    keeps 32 waiting on a wallet at most; many callers together can file as many as here.)"""
    import uuid

    import grpc

    from tests.console_market import TIMEOUT_S, usd
    from wallets import approvals
    from wallets.v1 import wallet_pb2

    monkeypatch.setattr(approvals, "MAX_PENDING_PER_SPENDER", 1000)
    built = build_console_market(tmp_path)
    try:
        hostile = built.wallets("idle")
        hostile.SetPolicy(wallet_pb2.SetPolicyRequest(
            idempotency_key=uuid.uuid4().hex, account_id=built.accounts["idle"],
            policy=wallet_pb2.WalletPolicy(approval_threshold_atomic=1)), timeout=TIMEOUT_S)
        for _ in range(200):
            with pytest.raises(grpc.RpcError):
                hostile.Transfer(wallet_pb2.TransferRequest(
                    idempotency_key=uuid.uuid4().hex, debit_account_id=built.accounts["idle"],
                    credit_account_id=built.accounts["seller"], amount=usd(2)),
                    timeout=TIMEOUT_S)
        client, _ = _log_in(built)
        seen: list[str] = []
        url = "/console/approvals?status=pending"
        for _ in range(10):
            page = client.get(url)
            assert page.status_code == 200
            seen += re.findall(r'data-approval="([^"]+)"', page.text)
            older = re.search(r'id="next-page" href="([^"]+)"', page.text)
            if older is None:
                break
            url = older.group(1).replace("&amp;", "&")
        assert len(seen) == len(set(seen)) == 201
        assert built.approval_id in seen
    finally:
        built.close()
