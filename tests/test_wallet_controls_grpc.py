"""Programmable wallets and FX over a real gRPC channel to a real marketplace node, on SQLite and
PostgreSQL: the approval flow end to end, policies, freezes, alerts, mandates, quotes and
conversions, and every bad request with its status, ErrorInfo reason and no change to the books.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from marketplace.node import MarketplaceNode
from wallets.audit import check_balances, verify_chain
from wallets.currencies import currency
from wallets.grpc_errors import error_reason
from wallets.mandates import MandateTerms, sign_mandate, sign_revocation
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

TIMEOUT_S = 10
USD = currency("USD")
OK = grpc.StatusCode.OK


def usd(amount: str) -> int:
    return USD.atomic(amount)


def money(amount_atomic: int, code: str = "USD") -> wallet_pb2.Money:
    return wallet_pb2.Money(amount_atomic=amount_atomic, currency=code)


def new_key() -> str:
    return f"test:{uuid.uuid4().hex}"


def hex_key(private: Ed25519PrivateKey) -> str:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


class Wallets:
    """The stub with a deadline on every call."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = wallet_pb2_grpc.WalletServiceStub(channel)

    def __getattr__(self, name: str) -> Callable[[Any], Any]:
        method = getattr(self._stub, name)
        return lambda request: method(request, timeout=TIMEOUT_S)


@pytest.fixture
def node(db_url: str) -> Iterator[MarketplaceNode]:
    # raw unsigned stubs: authentication off (who may call what: tests/test_attacks.py)
    node = MarketplaceNode(db_url, sweep_interval_s=3600, require_auth=False).start()
    yield node
    node.stop(0)


@pytest.fixture
def stub(node: MarketplaceNode) -> Iterator[Wallets]:
    with grpc.insecure_channel(node.address) as channel:
        yield Wallets(channel)


def books(node: MarketplaceNode) -> tuple[dict[str, tuple[int, ...]], int]:
    return ({b.account_id: (b.posted_credits_atomic, b.posted_debits_atomic,
                            b.pending_debits_atomic, b.pending_credits_atomic)
             for b in node.ledger.accounts()}, len(node.ledger.postings()))


def fails(node: MarketplaceNode, call: Callable[[], Any], code: grpc.StatusCode, reason: str,
          *words: str) -> str:
    """The call fails with `code` and ErrorInfo `reason`, says `words`, changes no money."""
    before = books(node)
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert (error.code(), error_reason(error)) == (code, reason), error.details()
    for word in words:
        assert word in error.details(), (word, error.details())
    assert books(node) == before
    return error.details()


UNKNOWN = "0" * 32  # a well-formed account id no account has


def agent_id_of(name: str) -> str:
    """An agent id (wallet owners are agents): `name` if it is one, else one made from it."""
    return name if len(name) == 64 else hashlib.sha256(name.encode()).hexdigest()


def open_wallet(stub: Wallets, owner: str, code: str = "USD") -> str:
    return stub.OpenAccount(wallet_pb2.OpenAccountRequest(
        idempotency_key=new_key(), owner=agent_id_of(owner), currency=code)).account_id


def assert_sound(node: MarketplaceNode) -> None:
    for code in ("USD", "ECNY", "USDC"):
        assert sum(b.posted_atomic for b in node.ledger.accounts() if b.currency == code) == 0
    assert check_balances(node.ledger).ok and verify_chain(node.ledger).ok


def test_the_approval_flow_end_to_end(stub: Wallets, node: MarketplaceNode):
    buyer, seller = open_wallet(stub, "buyer"), open_wallet(stub, "seller")
    stub.Deposit(wallet_pb2.DepositRequest(idempotency_key=new_key(), account_id=buyer,
                                           amount=money(usd("1.00"))))
    stub.SetPolicy(wallet_pb2.SetPolicyRequest(
        idempotency_key=new_key(), account_id=buyer,
        policy=wallet_pb2.WalletPolicy(approval_threshold_atomic=usd("0.10"))))
    spend = wallet_pb2.TransferRequest(idempotency_key=new_key(), debit_account_id=buyer,
                                       credit_account_id=seller, amount=money(usd("0.30")))

    details = fails(node, lambda: stub.Transfer(spend), grpc.StatusCode.FAILED_PRECONDITION,
                    "APPROVAL_REQUIRED", "approval threshold", "same idempotency key")
    (waiting,) = stub.ListApprovals(wallet_pb2.ListApprovalsRequest(
        account_id=buyer, status="pending")).approvals
    assert waiting.approval_id in details
    assert (waiting.spend_idempotency_key, waiting.amount.amount_atomic, waiting.amount.currency,
            waiting.counterparty, waiting.operation) == \
        (spend.idempotency_key, usd("0.30"), "USD", agent_id_of("seller"), "transfer")
    assert waiting.expires_at_ms > waiting.created_at_ms
    fails(node, lambda: stub.Transfer(spend), grpc.StatusCode.FAILED_PRECONDITION,
          "APPROVAL_REQUIRED", "still pending")

    decided = stub.Approve(wallet_pb2.DecideApprovalRequest(
        idempotency_key=new_key(), approval_id=waiting.approval_id, decided_by="operator-7",
        note="expected"))
    assert (decided.status, decided.decided_by, decided.note) == \
        ("approved", "operator-7", "expected")
    paid = stub.Transfer(spend)
    assert {e.account_id: e.amount_atomic for e in paid.entries} == \
        {buyer: -usd("0.30"), seller: usd("0.30")}
    assert stub.Transfer(spend).sequence == paid.sequence  # exactly once
    (used,) = stub.ListApprovals(wallet_pb2.ListApprovalsRequest(status="used")).approvals
    assert used.approval_id == waiting.approval_id

    other = wallet_pb2.TransferRequest(idempotency_key=new_key(), debit_account_id=buyer,
                                       credit_account_id=seller, amount=money(usd("0.20")))
    fails(node, lambda: stub.Transfer(other), grpc.StatusCode.FAILED_PRECONDITION,
          "APPROVAL_REQUIRED")
    (second,) = stub.ListApprovals(wallet_pb2.ListApprovalsRequest(status="pending")).approvals
    stub.Deny(wallet_pb2.DecideApprovalRequest(idempotency_key=new_key(),
                                               approval_id=second.approval_id, decided_by="me"))
    fails(node, lambda: stub.Transfer(other), grpc.StatusCode.PERMISSION_DENIED,
          "APPROVAL_DENIED", "denied by me")
    assert stub.GetBalance(wallet_pb2.GetBalanceRequest(account_id=buyer)).available_atomic == \
        usd("0.70")
    assert_sound(node)


def test_policies_freezes_mandates_and_fx_over_grpc(stub: Wallets, node: MarketplaceNode):
    owner, agent = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    buyer = open_wallet(stub, hex_key(owner))
    seller, stranger = open_wallet(stub, "seller"), open_wallet(stub, "stranger")
    stub.Deposit(wallet_pb2.DepositRequest(idempotency_key=new_key(), account_id=buyer,
                                           amount=money(usd("5.00"))))
    policy = wallet_pb2.WalletPolicy(
        daily_cap_atomic=usd("3.00"), deny_counterparties=[agent_id_of("stranger")],
        velocity=wallet_pb2.VelocityRule(factor_pct=1000, min_atomic=usd("2.50")))
    set_to = stub.SetPolicy(wallet_pb2.SetPolicyRequest(idempotency_key=new_key(),
                                                        account_id=buyer, policy=policy))
    got = stub.GetPolicy(wallet_pb2.GetPolicyRequest(account_id=buyer))
    assert got == set_to and got.currency == "USD" and not got.frozen
    assert (got.policy.daily_cap_atomic, list(got.policy.deny_counterparties),
            got.policy.velocity.window_s, got.policy.approval_ttl_s) == \
        (usd("3.00"), [agent_id_of("stranger")], 60, 86400)

    def pay(to: str, amount: int, **extra: str) -> wallet_pb2.Posting:
        return stub.Transfer(wallet_pb2.TransferRequest(
            idempotency_key=new_key(), debit_account_id=buyer, credit_account_id=to,
            amount=money(amount), **extra))

    fails(node, lambda: pay(stranger, 1), grpc.StatusCode.PERMISSION_DENIED, "POLICY_DENIED",
          f"denies paying {agent_id_of('stranger')}")
    stub.Freeze(wallet_pb2.FreezeRequest(idempotency_key=new_key(), account_id=buyer,
                                         reason="suspicious", actor="ops"))
    fails(node, lambda: pay(seller, 1), grpc.StatusCode.FAILED_PRECONDITION, "WALLET_FROZEN",
          "suspicious")
    unfrozen = stub.Unfreeze(wallet_pb2.UnfreezeRequest(idempotency_key=new_key(),
                                                        account_id=buyer, reason="ok",
                                                        actor="ops"))
    assert not unfrozen.frozen
    alerts = stub.ListAlerts(wallet_pb2.ListAlertsRequest(account_id=buyer)).alerts
    assert sorted(a.kind for a in alerts) == ["freeze", "unfreeze"]

    terms = MandateTerms(buyer, hex_key(agent), "USD", total_limit_atomic=usd("1.00"),
                         expires_at_ms=int(time.time() * 1000) + 600_000,
                         per_call_limit_atomic=usd("0.60"))
    data, signature = sign_mandate(owner, terms)
    mandate = stub.GrantMandate(wallet_pb2.GrantMandateRequest(
        idempotency_key=new_key(), terms=data, owner_signature=signature))
    assert (mandate.status, mandate.terms.agent_key, mandate.owner) == \
        ("active", hex_key(agent), hex_key(owner))
    under = {"mandate_id": mandate.mandate_id, "spender_id": hex_key(agent)}
    pay(seller, usd("0.60"), **under)
    stub.Hold(wallet_pb2.HoldRequest(idempotency_key=new_key(), debit_account_id=buyer,
                                     credit_account_id=seller, amount=money(usd("0.30")),
                                     timeout_s=60, **under))
    fails(node, lambda: pay(seller, usd("0.20"), **under), grpc.StatusCode.PERMISSION_DENIED,
          "MANDATE_DENIED", "already spent")
    got_mandate = stub.GetMandate(wallet_pb2.GetMandateRequest(mandate_id=mandate.mandate_id))
    assert got_mandate.spent_atomic == usd("0.90")
    stub.RevokeMandate(wallet_pb2.RevokeMandateRequest(
        idempotency_key=new_key(), mandate_id=mandate.mandate_id,
        owner_signature=sign_revocation(owner, mandate.mandate_id)))
    fails(node, lambda: pay(seller, 1, **under), grpc.StatusCode.PERMISSION_DENIED,
          "MANDATE_REVOKED")

    yuan = open_wallet(stub, "seller", "ECNY")
    quote = stub.GetQuote(wallet_pb2.GetQuoteRequest(idempotency_key=new_key(),
                                                     from_currency="USD", to_currency="ECNY"))
    assert (quote.rate_numerator, quote.rate_denominator, quote.provider) == \
        (71, 10, "sandbox-fixed")
    converted = stub.Convert(wallet_pb2.ConvertRequest(
        idempotency_key=new_key(), quote_id=quote.quote_id, from_account_id=buyer,
        to_account_id=yuan, amount=money(usd("1.00"))))
    assert (converted.sold.amount_atomic, converted.bought.amount_atomic,
            converted.bought.currency) == (usd("1.00"), 7_100_000_000, "ECNY")
    assert [p.kind for p in converted.postings] == ["fx", "fx"]
    fx = node.ledger.find_account("fx", "ECNY", "fx")
    assert fx is not None and stub.GetBalance(wallet_pb2.GetBalanceRequest(
        account_id=fx.account_id)).kind == wallet_pb2.ACCOUNT_KIND_FX
    fails(node, lambda: pay(seller, usd("1.50")), grpc.StatusCode.PERMISSION_DENIED,
          "POLICY_DENIED", "daily_cap_atomic")  # the conversion counted toward the cap
    assert_sound(node)


def test_bad_requests_get_their_status_and_change_nothing(stub: Wallets, node: MarketplaceNode):
    owner = Ed25519PrivateKey.generate()
    buyer, seller = open_wallet(stub, hex_key(owner)), open_wallet(stub, "seller")
    stub.Deposit(wallet_pb2.DepositRequest(idempotency_key=new_key(), account_id=buyer,
                                           amount=money(usd("1.00"))))
    quote = stub.GetQuote(wallet_pb2.GetQuoteRequest(idempotency_key=new_key(),
                                                     from_currency="USD", to_currency="USDC"))
    terms, _ = sign_mandate(owner, MandateTerms(
        buyer, "ab" * 32, "USD", total_limit_atomic=5,
        expires_at_ms=int(time.time() * 1000) + 600_000))
    def signed_for(account_id: str) -> tuple[bytes, bytes]:  # terms whose account is bad
        return sign_mandate(owner, MandateTerms(
            account_id, "ab" * 32, "USD", total_limit_atomic=5,
            expires_at_ms=int(time.time() * 1000) + 600_000))

    nul_terms, long_terms = signed_for(buyer + "\x00"), signed_for("a" * 5000)
    invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    denied = grpc.StatusCode.PERMISSION_DENIED
    k = new_key
    cases: list[tuple[str, Callable[[], Any], grpc.StatusCode, str, str]] = [
        ("policy-no-key", lambda: stub.SetPolicy(wallet_pb2.SetPolicyRequest(
            account_id=buyer)), invalid, "INVALID_ARGUMENT", "idempotency_key"),
        ("policy-negative-cap", lambda: stub.SetPolicy(wallet_pb2.SetPolicyRequest(
            idempotency_key=k(), account_id=buyer,
            policy=wallet_pb2.WalletPolicy(per_call_cap_atomic=-1))),
         invalid, "INVALID_AMOUNT", "per_call_cap_atomic"),
        ("policy-unknown-account", lambda: stub.SetPolicy(wallet_pb2.SetPolicyRequest(
            idempotency_key=k(), account_id=UNKNOWN)), not_found, "NOT_FOUND", UNKNOWN),
        ("get-policy-unknown", lambda: stub.GetPolicy(wallet_pb2.GetPolicyRequest(
            account_id=UNKNOWN)), not_found, "NOT_FOUND", UNKNOWN),
        ("get-policy-malformed-id", lambda: stub.GetPolicy(wallet_pb2.GetPolicyRequest(
            account_id="nope")), invalid, "MALFORMED_FIELD", "account_id must be an account id"),
        ("freeze-no-reason", lambda: stub.Freeze(wallet_pb2.FreezeRequest(
            idempotency_key=k(), account_id=buyer, actor="ops")),
         invalid, "INVALID_ARGUMENT", "reason"),
        ("unfreeze-not-frozen", lambda: stub.Unfreeze(wallet_pb2.UnfreezeRequest(
            idempotency_key=k(), account_id=buyer, reason="x", actor="ops")),
         grpc.StatusCode.FAILED_PRECONDITION, "NOT_FROZEN", "not frozen"),
        ("alerts-limit", lambda: stub.ListAlerts(wallet_pb2.ListAlertsRequest(limit=5000)),
         invalid, "INVALID_ARGUMENT", "limit"),
        ("approvals-status", lambda: stub.ListApprovals(wallet_pb2.ListApprovalsRequest(
            status="maybe")), invalid, "INVALID_ARGUMENT", "status"),
        ("approve-unknown", lambda: stub.Approve(wallet_pb2.DecideApprovalRequest(
            idempotency_key=k(), approval_id="f" * 32, decided_by="ops")),
         not_found, "NOT_FOUND", "f" * 32),
        ("deny-no-decider", lambda: stub.Deny(wallet_pb2.DecideApprovalRequest(
            idempotency_key=k(), approval_id="f" * 32)), invalid, "INVALID_ARGUMENT",
         "decided_by"),
        ("grant-garbage", lambda: stub.GrantMandate(wallet_pb2.GrantMandateRequest(
            idempotency_key=k(), terms=b"\xff\xff", owner_signature=b"x")),
         invalid, "INVALID_ARGUMENT", "MandateTerms"),
        ("grant-nul-account", lambda: stub.GrantMandate(wallet_pb2.GrantMandateRequest(
            idempotency_key=k(), terms=nul_terms[0], owner_signature=nul_terms[1])),
         invalid, "MALFORMED_FIELD", "terms.account_id"),
        ("grant-long-account", lambda: stub.GrantMandate(wallet_pb2.GrantMandateRequest(
            idempotency_key=k(), terms=long_terms[0], owner_signature=long_terms[1])),
         invalid, "MALFORMED_FIELD", "terms.account_id"),
        ("grant-forged", lambda: stub.GrantMandate(wallet_pb2.GrantMandateRequest(
            idempotency_key=k(), terms=terms, owner_signature=b"\x00" * 64)),
         denied, "BAD_SIGNATURE", "not the wallet owner's"),
        ("revoke-unknown", lambda: stub.RevokeMandate(wallet_pb2.RevokeMandateRequest(
            idempotency_key=k(), mandate_id="a" * 64)), not_found, "NOT_FOUND", "a" * 64),
        ("get-mandate-bad-id", lambda: stub.GetMandate(wallet_pb2.GetMandateRequest(
            mandate_id="xyz")), invalid, "MALFORMED_FIELD", "64 lowercase hex"),
        ("transfer-mandate-no-spender", lambda: stub.Transfer(wallet_pb2.TransferRequest(
            idempotency_key=k(), debit_account_id=buyer, credit_account_id=seller,
            amount=money(1), mandate_id="a" * 64)), invalid, "INVALID_ARGUMENT", "spender_id"),
        ("hold-unknown-mandate", lambda: stub.Hold(wallet_pb2.HoldRequest(
            idempotency_key=k(), debit_account_id=buyer, credit_account_id=seller,
            amount=money(1), timeout_s=60, mandate_id="a" * 64, spender_id="b" * 64)),
         not_found, "NOT_FOUND", "mandate"),
        ("quote-same-currency", lambda: stub.GetQuote(wallet_pb2.GetQuoteRequest(
            idempotency_key=k(), from_currency="USD", to_currency="USD")),
         invalid, "INVALID_ARGUMENT", "itself"),
        ("quote-unknown-currency", lambda: stub.GetQuote(wallet_pb2.GetQuoteRequest(
            idempotency_key=k(), from_currency="USD", to_currency="XAU")),
         invalid, "UNKNOWN_CURRENCY", "XAU"),
        ("convert-unknown-quote", lambda: stub.Convert(wallet_pb2.ConvertRequest(
            idempotency_key=k(), quote_id="0" * 32, from_account_id=buyer,
            to_account_id=seller, amount=money(1))), not_found, "NOT_FOUND", "0" * 32),
        ("convert-other-currency", lambda: stub.Convert(wallet_pb2.ConvertRequest(
            idempotency_key=k(), quote_id=quote.quote_id, from_account_id=buyer,
            to_account_id=seller, amount=money(1, "ECNY"))),
         invalid, "INVALID_ARGUMENT", "holds USD, not ECNY"),
        ("convert-zero", lambda: stub.Convert(wallet_pb2.ConvertRequest(
            idempotency_key=k(), quote_id=quote.quote_id, from_account_id=buyer,
            to_account_id=seller, amount=money(0))), invalid, "INVALID_AMOUNT", "positive"),
    ]
    for name, call, code, reason, words in cases:
        try:
            fails(node, call, code, reason, words)
        except AssertionError as error:
            raise AssertionError(f"case {name}: {error}") from error
    assert not stub.GetPolicy(wallet_pb2.GetPolicyRequest(account_id=buyer)).frozen
    assert stub.ListApprovals(wallet_pb2.ListApprovalsRequest()).approvals == []
    assert_sound(node)
