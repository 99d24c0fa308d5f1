"""WalletService over gRPC: a thin adapter from messages to `wallets.service`."""

from __future__ import annotations

import grpc

from wallets.currencies import CURRENCIES
from wallets.errors import InvalidArgument
from wallets.grpc_errors import grpc_method
from wallets.models import Balance, Hold, Posting
from wallets.service import WalletService
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

_KINDS = {wallet_pb2.ACCOUNT_KIND_WALLET: "wallet", wallet_pb2.ACCOUNT_KIND_RAIL: "rail",
          wallet_pb2.ACCOUNT_KIND_FEES: "fees"}
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


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    def __init__(self, wallets: WalletService) -> None:
        self.wallets = wallets
        self.ledger = wallets.ledger

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
            request.idempotency_key, request.account_id, amount, code, request.rail))

    @grpc_method
    def Transfer(self, request, context):  # type: ignore[no-untyped-def]
        amount, code = _money(request.amount)
        self.wallets.check_currency(request.debit_account_id, code)
        return posting_message(self.ledger.transfer(
            request.idempotency_key, request.debit_account_id, request.credit_account_id,
            amount, memo=request.memo))

    @grpc_method
    def Hold(self, request, context):  # type: ignore[no-untyped-def]
        amount, code = _money(request.amount)
        self.wallets.check_currency(request.debit_account_id, code)
        return hold_message(self.ledger.hold(
            request.idempotency_key, request.debit_account_id, request.credit_account_id,
            amount, timeout_s=request.timeout_s))

    @grpc_method
    def Capture(self, request, context):  # type: ignore[no-untyped-def]
        splits = [(s.account_id, s.amount_atomic) for s in request.splits] or None
        return posting_message(self.ledger.capture(
            request.idempotency_key, request.hold_id, request.amount_atomic, splits))

    @grpc_method
    def Void(self, request, context):  # type: ignore[no-untyped-def]
        return posting_message(self.ledger.void(request.idempotency_key, request.hold_id))

    @grpc_method
    def History(self, request, context):  # type: ignore[no-untyped-def]
        postings = self.ledger.history(request.account_id, limit=request.limit or 100,
                                       before_sequence=request.before_sequence)
        return wallet_pb2.HistoryResponse(postings=[posting_message(p) for p in postings])
