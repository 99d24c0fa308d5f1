"""The console's pages and actions: each handler reads through `ConsoleReads` /
`AgreementReads`, or acts through `OperatorActions`, and renders one template.

Database reads and gRPC calls block, so they run on Starlette's thread pool, never on the
event loop. An action answers with a redirect back to the page it came from (post, redirect,
get), carrying its outcome as a one-time message with a link to the action's trace.
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from marketplace.agreement_states import STATES
from marketplace.console.actions import ActionRefused, ActionResult, OperatorActions
from marketplace.console.agreement_reads import AgreementReads, parse_cursor, query_int
from marketplace.console.audit import AuditTrail
from marketplace.console.reads import ConsoleReads
from marketplace.console.sessions import Session
from marketplace.console.waterfall import waterfall
from marketplace.console.web import Web
from marketplace.errors import NotFound
from marketplace.escrows import read_row
from wallets.approvals import STATUSES as APPROVAL_STATUSES
from wallets.errors import AgentmarketError

APPROVALS_PAGE = 200
APPROVAL_ID_CHARS = 32  # wallets.approvals.approval_id
ACTION_ID_CHARS = 32  # marketplace.console.audit: a uuid4's hex
POSTING_KINDS = ("deposit", "withdraw", "transfer", "hold", "capture", "void", "expire",
                 "convert")


def form_key() -> str:
    """A fresh idempotency key for one rendered form (a resubmission reuses it)."""
    return secrets.token_urlsafe(18)


def _hex(value: str, length: int) -> str:
    value = (value or "").strip().lower()
    if len(value) != length or any(c not in "0123456789abcdef" for c in value):
        return ""
    return value


class Pages:
    def __init__(self, web: Web, reads: ConsoleReads, agreements: AgreementReads,
                 actions: OperatorActions, audit: AuditTrail, *, can_resolve: bool,
                 refresh_s: float) -> None:
        self.web = web
        self.reads = reads
        self.agreements = agreements
        self.actions = actions
        self.audit = audit
        self.can_resolve = can_resolve
        self.refresh_s = refresh_s

    def _render(self, request: Request, session: Session, template: str, **values: Any
                ) -> Response:
        return self.web.render(request, template, session=session, form_key=form_key,
                               **values)

    def _back(self, request: Request, session: Session, result: ActionResult | None,
              fallback: str, error: str = "") -> Response:
        if result is not None:
            self.web.flash(session, "ok" if result.ok else "error", result.message,
                           result.trace_id)
        elif error:
            self.web.flash(session, "error", error)
        target = str(request.state.form.get("back") or "")
        base = self.web.base(request)
        if not target.startswith(f"{base}/") or target.startswith("//"):
            target = f"{base}{fallback}"
        return RedirectResponse(target, status_code=303)

    # ---- overview -----------------------------------------------------------------------

    async def overview(self, request: Request, session: Session) -> Response:
        data = await run_in_threadpool(self.reads.overview)
        return self._render(request, session, "overview.html", overview=data,
                            refresh_s=self.refresh_s, title="Overview", nav="overview")

    async def overview_live(self, request: Request, session: Session) -> Response:
        data = await run_in_threadpool(self.reads.overview)
        return self._render(request, session, "overview_live.html", overview=data,
                            refresh_s=self.refresh_s)

    # ---- approvals ----------------------------------------------------------------------

    async def approvals(self, request: Request, session: Session) -> Response:
        status = request.query_params.get("status", "pending")
        status = status if status in APPROVAL_STATUSES or status == "" else "pending"
        after = parse_cursor(request.query_params.get("after", ""), APPROVAL_ID_CHARS)
        rows = await run_in_threadpool(self.reads.approvals, status, APPROVALS_PAGE, after)
        names = await run_in_threadpool(self.reads.names, [r.owner for r in rows] + [
            c for r in rows for c in r.approval.counterparty.split(", ")])
        return self._render(request, session, "approvals.html", rows=rows, status=status,
                            statuses=APPROVAL_STATUSES, names=names, title="Approvals",
                            nav="approvals", more=len(rows) == APPROVALS_PAGE,
                            paged=after is not None)

    async def decide(self, request: Request, session: Session) -> Response:
        form = request.state.form
        if request.path_params["decision"] not in ("approve", "deny"):
            return self.web.refuse(request, 404, "No such action.", session)
        approve = request.path_params["decision"] == "approve"
        try:
            result = await run_in_threadpool(
                self.actions.decide, session, request.path_params["approval_id"],
                approve=approve, note=form.get("note", ""), form_key=form.get("form_key", ""))
        except ActionRefused as error:
            return self._back(request, session, None, "/approvals", str(error))
        return self._back(request, session, result, "/approvals")

    # ---- wallets ------------------------------------------------------------------------

    async def wallets(self, request: Request, session: Session) -> Response:
        query = request.query_params.get("q", "")[:64]
        after = request.query_params.get("after", "")[:128]
        frozen = request.query_params.get("frozen") == "1"
        rows, next_after = await run_in_threadpool(
            lambda: self.reads.wallets(query=query, after=after, frozen_only=frozen))
        names = await run_in_threadpool(self.reads.names, [r.owner for r in rows])
        return self._render(request, session, "wallets.html", rows=rows, q=query,
                            frozen=frozen, next_after=next_after, names=names,
                            title="Wallets", nav="wallets")

    async def wallet(self, request: Request, session: Session) -> Response:
        owner = request.path_params["owner"][:128]
        wallets = await run_in_threadpool(self.reads.wallet, owner)
        if not wallets:
            return self.web.render(request, "refused.html", status_code=404, session=session,
                                   message=f"No wallet belongs to {owner!r}.",
                                   title="Not found")
        names = await run_in_threadpool(self.reads.names, [owner])
        postings = await run_in_threadpool(lambda: [
            (w.account.account_id, self.reads.postings(account=w.account.account_id,
                                                       limit=15)) for w in wallets])
        history = await run_in_threadpool(lambda: sorted(
            (r for w in wallets for r in self.audit.records(target=w.account.account_id,
                                                            limit=10)),
            key=lambda r: r.at_ms, reverse=True))
        return self._render(request, session, "wallet.html", owner=owner, wallets=wallets,
                            names=names, postings=dict(postings), history=history,
                            title=f"Wallet {names.get(owner, owner[:12])}", nav="wallets")

    async def freeze(self, request: Request, session: Session) -> Response:
        form = request.state.form
        account = request.path_params["account_id"]
        if request.path_params["change"] not in ("freeze", "unfreeze"):
            return self.web.refuse(request, 404, "No such action.", session)
        try:
            result = await run_in_threadpool(
                self.actions.freeze, session, account, reason=form.get("reason", ""),
                frozen=request.path_params["change"] == "freeze",
                form_key=form.get("form_key", ""))
        except ActionRefused as error:
            return self._back(request, session, None, "/wallets", str(error))
        return self._back(request, session, result, "/wallets")

    # ---- agreements ---------------------------------------------------------------------

    async def agreements_page(self, request: Request, session: Session) -> Response:
        state = request.query_params.get("state", "")
        state = state if state in STATES else ""
        party = _hex(request.query_params.get("party", ""), 64)
        page = await run_in_threadpool(lambda: self.agreements.page(
            state=state, cursor=request.query_params.get("cursor", "")[:100], party=party))
        return self._render(request, session, "agreements.html", page=page, state=state,
                            states=STATES, party=party, title="Agreements",
                            nav="agreements")

    async def agreement(self, request: Request, session: Session) -> Response:
        agreement_id = _hex(request.path_params["agreement_id"], 64)
        try:
            detail = await run_in_threadpool(self.agreements.detail, agreement_id)
        except (NotFound, AgentmarketError):
            return self.web.render(request, "refused.html", status_code=404, session=session,
                                   message="No agreement has that id.", title="Not found")
        history = await run_in_threadpool(self.audit.records, target=agreement_id, limit=10)
        return self._render(request, session, "agreement.html", a=detail, history=history,
                            title=f"Agreement {agreement_id[:12]}", nav="agreements")

    async def resolve(self, request: Request, session: Session) -> Response:
        form = request.state.form
        agreement_id = _hex(request.path_params["agreement_id"], 64)
        try:
            currency_code = await run_in_threadpool(
                lambda: read_row(self.reads.engine, agreement_id).currency)
            result = await run_in_threadpool(
                self.actions.resolve, session, agreement_id, to=form.get("to", ""),
                seller_amount=form.get("seller_amount", ""), currency_code=currency_code,
                note=form.get("note", ""), form_key=form.get("form_key", ""))
        except (ActionRefused, AgentmarketError) as error:
            return self._back(request, session, None, f"/agreements/{agreement_id}",
                              str(error))
        return self._back(request, session, result, f"/agreements/{agreement_id}")

    # ---- ledger and traces --------------------------------------------------------------

    async def ledger(self, request: Request, session: Session) -> Response:
        params = request.query_params
        before = query_int(params.get("before", "")) or 0
        kind = params.get("kind", "") if params.get("kind", "") in POSTING_KINDS else ""
        trace_id = _hex(params.get("trace", ""), 32)
        account = params.get("account", "")[:40]
        page = await run_in_threadpool(lambda: self.reads.postings(
            before=before, kind=kind, account=account, trace_id=trace_id))
        names = await run_in_threadpool(self.reads.names, {o for o, _ in page.owners.values()})
        return self._render(request, session, "ledger.html", page=page, kind=kind,
                            kinds=POSTING_KINDS, trace_id=trace_id, account=account,
                            names=names, title="Ledger", nav="ledger")

    async def traces(self, request: Request, session: Session) -> Response:
        rows = (await run_in_threadpool(lambda: self.reads.spans.traces(limit=100))
                if self.reads.spans else [])
        return self._render(request, session, "traces.html", rows=rows,
                            spans_available=self.reads.spans is not None, title="Traces",
                            nav="traces")

    async def trace(self, request: Request, session: Session) -> Response:
        trace_id = _hex(request.path_params["trace_id"], 32)
        spans = (await run_in_threadpool(self.reads.spans.spans, trace_id)
                 if self.reads.spans and trace_id else [])
        if not spans:
            return self.web.render(request, "refused.html", status_code=404, session=session,
                                   message="The span store holds no trace with that id.",
                                   title="Not found")
        postings = await run_in_threadpool(lambda: self.reads.postings(trace_id=trace_id,
                                                                       limit=200))
        names = await run_in_threadpool(self.reads.names,
                                        {o for o, _ in postings.owners.values()})
        return self._render(request, session, "trace.html", w=waterfall(trace_id, spans),
                            postings=postings, names=names, title=f"Trace {trace_id[:12]}",
                            nav="traces")

    async def audit_page(self, request: Request, session: Session) -> Response:
        raw = request.query_params.get("before", "")  # <ms>:<action id>, or <ms> alone
        before, before_id = parse_cursor(raw, ACTION_ID_CHARS) or (query_int(raw) or 0, "")
        rows = await run_in_threadpool(lambda: self.audit.records(
            limit=100, before_ms=before, before_id=before_id))
        return self._render(request, session, "audit.html", rows=rows, title="Audit trail",
                            nav="audit")
