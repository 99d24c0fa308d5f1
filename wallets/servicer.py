"""WalletService over gRPC: a thin adapter from messages to `wallets.service`."""

from __future__ import annotations

from typing import Any

import grpc

from wallets import policies
from wallets.anomaly import Alert
from wallets.approvals import Approval
from wallets.caller import current_caller
from wallets.conditional import ConditionalHolds, hash_locked_payee
from wallets.currencies import CURRENCIES
from wallets.ecny import EcnyWallet, EcnyWallets
from wallets.errors import FailedPrecondition, InvalidArgument, NotFound
from wallets.fx import Conversion, FxQuote
from wallets.grpc_errors import grpc_method
from wallets.guard import SpendContext
from wallets.mandates import Mandate
from wallets.models import Balance, Hold, Posting
from wallets.policies import ControlState, Policy
from wallets.service import WalletService
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

_KINDS = {wallet_pb2.ACCOUNT_KIND_WALLET: "wallet", wallet_pb2.ACCOUNT_KIND_RAIL: "rail",
          wallet_pb2.ACCOUNT_KIND_FEES: "fees", wallet_pb2.ACCOUNT_KIND_FX: "fx"}
_KIND_ENUMS = {v: k for k, v in _KINDS.items()}


def account_message(b: Balance) -> wallet_pb2.Account:
    return wallet_pb2.Account(
        account_id=b.account_id, owner=b.owner, currency=b.currency,
        kind=_KIND_ENUMS.get(b.kind, wallet_pb2.ACCOUNT_KIND_UNSPECIFIED),
        posted_credits_atomic=b.posted_credits_atomic, posted_debits_atomic=b.posted_debits_atomic,
        pending_debits_atomic=b.pending_debits_atomic,
        pending_credits_atomic=b.pending_credits_atomic, available_atomic=b.available_atomic,
        credit_limit_atomic=b.credit_limit_atomic)


def posting_message(p: Posting) -> wallet_pb2.Posting:
    return wallet_pb2.Posting(
        sequence=p.sequence, idempotency_key=p.idempotency_key, kind=p.kind,
        entries=[wallet_pb2.Entry(account_id=leg.account_id, amount_atomic=leg.posted_atomic,
                                  currency=leg.currency) for leg in p.legs if leg.posted_atomic],
        hold_id=p.hold_id, created_at_ms=p.created_at_ms, trace_id=p.trace_id,
        span_id=p.span_id, hash=p.hash, memo=p.memo)


def hold_message(h: Hold) -> wallet_pb2.HoldInfo:
    return wallet_pb2.HoldInfo(
        hold_id=h.hold_id, debit_account_id=h.debit_account_id,
        credit_account_id=h.credit_account_id,
        amount=wallet_pb2.Money(amount_atomic=h.amount_atomic, currency=h.currency),
        captured_atomic=h.captured_atomic, voided_atomic=h.voided_atomic, status=h.status,
        expires_at_ms=h.expires_at_ms)


def _money(money: wallet_pb2.Money, field: str = "amount") -> tuple[int, str]:
    if not money.currency:
        raise InvalidArgument(f"{field}.currency is required")
    return money.amount_atomic, money.currency


def _spend(request) -> SpendContext | None:  # type: ignore[no-untyped-def]
    """The mandate a Transfer, Hold or Convert request claims, if any."""
    if not (request.mandate_id or request.spender_id):
        return None
    return SpendContext(mandate_id=request.mandate_id, spender_id=request.spender_id)


def policy_from_message(m: wallet_pb2.WalletPolicy) -> Policy:
    velocity = m.velocity
    return Policy(
        per_call_cap_atomic=m.per_call_cap_atomic, daily_cap_atomic=m.daily_cap_atomic,
        counterparty_daily_cap_atomic=m.counterparty_daily_cap_atomic,
        allow_counterparties=tuple(m.allow_counterparties),
        deny_counterparties=tuple(m.deny_counterparties), allow_skills=tuple(m.allow_skills),
        deny_skills=tuple(m.deny_skills), approval_threshold_atomic=m.approval_threshold_atomic,
        approval_ttl_s=m.approval_ttl_s or policies.DEFAULT_APPROVAL_TTL_S,
        velocity_window_s=velocity.window_s or policies.DEFAULT_VELOCITY_WINDOW_S,
        velocity_baseline_s=velocity.baseline_s or policies.DEFAULT_VELOCITY_BASELINE_S,
        velocity_factor_pct=velocity.factor_pct, velocity_min_atomic=velocity.min_atomic)


def controls_message(c: ControlState) -> wallet_pb2.WalletControls:
    p = c.policy
    return wallet_pb2.WalletControls(
        account_id=c.account_id, currency=c.currency, frozen=c.frozen,
        frozen_reason=c.frozen_reason, frozen_by=c.frozen_by, frozen_at_ms=c.frozen_at_ms,
        updated_at_ms=c.updated_at_ms, policy=wallet_pb2.WalletPolicy(
            per_call_cap_atomic=p.per_call_cap_atomic, daily_cap_atomic=p.daily_cap_atomic,
            counterparty_daily_cap_atomic=p.counterparty_daily_cap_atomic,
            allow_counterparties=p.allow_counterparties,
            deny_counterparties=p.deny_counterparties, allow_skills=p.allow_skills,
            deny_skills=p.deny_skills, approval_threshold_atomic=p.approval_threshold_atomic,
            approval_ttl_s=p.approval_ttl_s, velocity=wallet_pb2.VelocityRule(
                window_s=p.velocity_window_s, baseline_s=p.velocity_baseline_s,
                factor_pct=p.velocity_factor_pct, min_atomic=p.velocity_min_atomic)))


def alert_message(a: Alert) -> wallet_pb2.Alert:
    return wallet_pb2.Alert(
        alert_id=a.alert_id, account_id=a.account_id, kind=a.kind, message=a.message,
        window_spent_atomic=a.window_spent_atomic, threshold_atomic=a.threshold_atomic,
        actor=a.actor, created_at_ms=a.created_at_ms)


def approval_message(a: Approval) -> wallet_pb2.Approval:
    return wallet_pb2.Approval(
        approval_id=a.approval_id, account_id=a.account_id, counterparty=a.counterparty,
        skill=a.skill, amount=wallet_pb2.Money(amount_atomic=a.amount_atomic,
                                               currency=a.currency),
        spend_idempotency_key=a.spend_key, spend_scope=a.spend_scope, operation=a.operation,
        mandate_id=a.mandate_id,
        spender_id=a.spender_id, status=a.status, created_at_ms=a.created_at_ms,
        expires_at_ms=a.expires_at_ms, decided_by=a.decided_by, decided_at_ms=a.decided_at_ms,
        note=a.note)


def mandate_message(m: Mandate) -> wallet_pb2.Mandate:
    return wallet_pb2.Mandate(
        mandate_id=m.mandate_id, terms=wallet_pb2.MandateTerms.FromString(m.terms.to_bytes()),
        owner=m.owner, spent_atomic=m.spent_atomic, status=m.status,
        created_at_ms=m.created_at_ms, revoked_at_ms=m.revoked_at_ms)


def quote_message(q: FxQuote) -> wallet_pb2.FxQuote:
    return wallet_pb2.FxQuote(
        quote_id=q.quote_id, from_currency=q.from_currency, to_currency=q.to_currency,
        rate_numerator=q.rate_numerator, rate_denominator=q.rate_denominator,
        provider=q.provider, created_at_ms=q.created_at_ms, expires_at_ms=q.expires_at_ms)


def conversion_message(c: Conversion) -> wallet_pb2.Conversion:
    return wallet_pb2.Conversion(
        quote_id=c.quote_id, from_account_id=c.from_account_id, to_account_id=c.to_account_id,
        sold=wallet_pb2.Money(amount_atomic=c.sold_atomic, currency=c.from_currency),
        bought=wallet_pb2.Money(amount_atomic=c.bought_atomic, currency=c.to_currency),
        postings=[posting_message(p) for p in c.postings])


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    def __init__(self, wallets: WalletService) -> None:
        self.wallets = wallets
        self.ledger = wallets.ledger
        self.controls = wallets.controls

    @grpc_method
    def ListCurrencies(self, request, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        return wallet_pb2.ListCurrenciesResponse(currencies=[
            wallet_pb2.Currency(code=c.code, scale=c.scale, rail_scale=c.rail_scale)
            for c in CURRENCIES.values()])

    @grpc_method
    def OpenAccount(self, request, context):  # type: ignore[no-untyped-def]
        kind = _KINDS.get(request.kind or wallet_pb2.ACCOUNT_KIND_WALLET)
        if kind != "wallet":
            raise InvalidArgument("only wallet accounts can be opened over the API")
        return account_message(self.ledger.open_account(request.owner, request.currency, kind))

    @grpc_method
    def GetBalance(self, request, context):  # type: ignore[no-untyped-def]
        return account_message(self.ledger.balance(request.account_id))

    @grpc_method
    def Deposit(self, request, context):  # type: ignore[no-untyped-def]
        amount, code = _money(request.amount)
        return posting_message(self.wallets.deposit(
            request.idempotency_key, request.account_id, amount, code, request.rail))

    @grpc_method
    def Withdraw(self, request, context):  # type: ignore[no-untyped-def]
        amount, code = _money(request.amount)
        return posting_message(self.wallets.withdraw(
            request.idempotency_key, request.account_id, amount, code, request.rail,
            request.destination))

    @grpc_method
    def Transfer(self, request, context):  # type: ignore[no-untyped-def]
        amount, code = _money(request.amount)
        self.wallets.check_currency(request.debit_account_id, code)
        return posting_message(self.ledger.transfer(
            request.idempotency_key, request.debit_account_id, request.credit_account_id,
            amount, memo=request.memo, spend=_spend(request)))

    @grpc_method
    def Hold(self, request, context):  # type: ignore[no-untyped-def]
        amount, code = _money(request.amount)
        self.wallets.check_currency(request.debit_account_id, code)
        if self.wallets.ecny is not None and self._to_another_ecny_wallet(request):
            raise FailedPrecondition(
                "under e-CNY rules a hold made out to another's wallet is hash-locked "
                "(ConditionalHoldService.Hold), so that its payee may decline it: a plain one "
                "would count against the payee's balance cap until it expires",
                reason="ECNY_PLAIN_HOLD")
        return hold_message(self.ledger.hold(
            request.idempotency_key, request.debit_account_id, request.credit_account_id,
            amount, timeout_s=request.timeout_s, spend=_spend(request)))

    def _to_another_ecny_wallet(self, request: Any) -> bool:
        """Whether a Hold credits an ECNY wallet of an owner other than the debit account's."""
        try:
            credit = self.ledger.balance(request.credit_account_id)
            debit = self.ledger.balance(request.debit_account_id)
        except NotFound:
            return False  # the ledger refuses it as it is
        return credit.currency == "ECNY" and credit.kind == "wallet" \
            and credit.owner != debit.owner

    @grpc_method
    def Capture(self, request, context):  # type: ignore[no-untyped-def]
        splits = [(s.account_id, s.amount_atomic) for s in request.splits] or None
        return posting_message(self.ledger.capture(
            request.idempotency_key, request.hold_id, request.amount_atomic, splits))

    @grpc_method
    def Void(self, request, context):  # type: ignore[no-untyped-def]
        caller = current_caller()
        if caller and hash_locked_payee(self.ledger, request.hold_id) == caller:  # declines
            return posting_message(ConditionalHolds(self.ledger).decline(
                request.idempotency_key, request.hold_id, caller))
        return posting_message(self.ledger.void(request.idempotency_key, request.hold_id))

    @grpc_method
    def History(self, request, context):  # type: ignore[no-untyped-def]
        postings = self.ledger.history(request.account_id, limit=request.limit or 100,
                                       before_sequence=request.before_sequence)
        return wallet_pb2.HistoryResponse(postings=[posting_message(p) for p in postings])

    # ---- programmable wallets ---------------------------------------------------------------

    @grpc_method
    def SetPolicy(self, request, context):  # type: ignore[no-untyped-def]
        return controls_message(self.controls.set_policy(
            request.idempotency_key, request.account_id, policy_from_message(request.policy)))

    @grpc_method
    def GetPolicy(self, request, context):  # type: ignore[no-untyped-def]
        return controls_message(self.controls.policy(request.account_id))

    @grpc_method
    def Freeze(self, request, context):  # type: ignore[no-untyped-def]
        return controls_message(self.controls.freeze(
            request.idempotency_key, request.account_id, reason=request.reason,
            actor=request.actor))

    @grpc_method
    def Unfreeze(self, request, context):  # type: ignore[no-untyped-def]
        return controls_message(self.controls.unfreeze(
            request.idempotency_key, request.account_id, reason=request.reason,
            actor=request.actor))

    @grpc_method
    def ListAlerts(self, request, context):  # type: ignore[no-untyped-def]
        alerts = self.controls.alerts(request.account_id, limit=request.limit or 100)
        return wallet_pb2.ListAlertsResponse(alerts=[alert_message(a) for a in alerts])

    @grpc_method
    def ListApprovals(self, request, context):  # type: ignore[no-untyped-def]
        found = self.controls.approvals(request.account_id, status=request.status,
                                        limit=request.limit or 100)
        return wallet_pb2.ListApprovalsResponse(approvals=[approval_message(a) for a in found])

    @grpc_method
    def Approve(self, request, context):  # type: ignore[no-untyped-def]
        return approval_message(self.controls.approve(
            request.idempotency_key, request.approval_id, decided_by=request.decided_by,
            note=request.note))

    @grpc_method
    def Deny(self, request, context):  # type: ignore[no-untyped-def]
        return approval_message(self.controls.deny(
            request.idempotency_key, request.approval_id, decided_by=request.decided_by,
            note=request.note))

    @grpc_method
    def GrantMandate(self, request, context):  # type: ignore[no-untyped-def]
        return mandate_message(self.controls.grant_mandate(
            request.idempotency_key, request.terms, request.owner_signature))

    @grpc_method
    def RevokeMandate(self, request, context):  # type: ignore[no-untyped-def]
        return mandate_message(self.controls.revoke_mandate(
            request.idempotency_key, request.mandate_id, request.owner_signature))

    @grpc_method
    def GetMandate(self, request, context):  # type: ignore[no-untyped-def]
        return mandate_message(self.controls.mandate(request.mandate_id))

    # ---- FX ---------------------------------------------------------------------------------

    @grpc_method
    def GetQuote(self, request, context):  # type: ignore[no-untyped-def]
        return quote_message(self.wallets.fx.get_quote(
            request.idempotency_key, request.from_currency, request.to_currency))

    @grpc_method
    def Convert(self, request, context):  # type: ignore[no-untyped-def]
        amount, code = _money(request.amount)
        self.wallets.check_currency(request.from_account_id, code)
        return conversion_message(self.wallets.fx.convert(
            request.idempotency_key, request.quote_id, request.from_account_id,
            request.to_account_id, amount, spend=_spend(request)))

    # ---- chain rails ------------------------------------------------------------------------

    @grpc_method
    def GetDepositInstructions(self, request, context):  # type: ignore[no-untyped-def]
        found = self.wallets.deposit_instructions(request.account_id, request.address,
                                                  request.rail)
        return wallet_pb2.DepositInstructions(
            rail=found.rail, currency=found.currency, rail_address=found.rail_address,
            token_address=found.token_address, chain_id=found.chain_id,
            confirmations=found.confirmations, registration_message=found.message)

    @grpc_method
    def RegisterDepositAddress(self, request, context):  # type: ignore[no-untyped-def]
        found = self.wallets.register_deposit_address(
            request.idempotency_key, request.account_id, request.address, request.signature,
            request.rail)
        return wallet_pb2.DepositAddress(
            rail=found.rail, address=found.address, account_id=found.account_id,
            agent_id=found.agent_id, rail_address=found.rail_address,
            confirmations=found.confirmations)

    # ---- e-CNY tiers ------------------------------------------------------------------------

    @grpc_method
    def SetEcnyTier(self, request, context):  # type: ignore[no-untyped-def]
        registry = self.wallets.ecny_wallets()
        return ecny_wallet_message(registry, registry.register(
            request.idempotency_key, request.account_id, request.category,
            request.identity_ref))

    @grpc_method
    def GetEcnyWallet(self, request, context):  # type: ignore[no-untyped-def]
        registry = self.wallets.ecny_wallets()
        return ecny_wallet_message(registry, registry.wallet(request.account_id))


def ecny_wallet_message(registry: EcnyWallets, w: EcnyWallet) -> wallet_pb2.EcnyWallet:
    tier = registry.rules.tier(w.category)
    return wallet_pb2.EcnyWallet(
        account_id=w.account_id, category=w.category, pseudonym=w.pseudonym,
        identity_ref=w.identity_ref, registered=w.registered,
        verified_identity=tier.verified_identity, balance_cap_atomic=tier.balance_cap_atomic,
        per_payment_cap_atomic=tier.per_payment_cap_atomic,
        daily_cap_atomic=tier.daily_cap_atomic, annual_cap_atomic=tier.annual_cap_atomic)
