"""WalletService over a real gRPC channel to a real marketplace node, on SQLite and PostgreSQL.

The working calls move the right money; every bad request gets its documented status code,
ErrorInfo reason and a message that says what was wrong, and changes nothing: every account's
balances and the ledger's posting count are the same before and after. Nothing is INTERNAL.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from marketplace.node import MarketplaceNode
from wallets.audit import check_balances, verify_chain
from wallets.currencies import MAX_AMOUNT_ATOMIC, currency
from wallets.grpc_errors import error_reason
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

TIMEOUT_S = 10
USD = currency("USD")
FUNDING_KEY = "fund:buyer"


def usd(amount: str) -> int:
    return USD.atomic(amount)


def money(amount_atomic: int, code: str = "USD") -> wallet_pb2.Money:
    return wallet_pb2.Money(amount_atomic=amount_atomic, currency=code)


def new_key() -> str:
    return f"test:{uuid.uuid4().hex}"


class Wallets:
    """The stub with a deadline on every call (unary calls only)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = wallet_pb2_grpc.WalletServiceStub(channel)

    def __getattr__(self, name: str) -> Callable[[Any], Any]:
        method = getattr(self._stub, name)
        return lambda request: method(request, timeout=TIMEOUT_S)


@pytest.fixture
def node(db_url: str) -> Iterator[MarketplaceNode]:
    # the wallet API's own semantics, over raw unsigned stubs: authentication off (the
    # rules for who may call what are tests/test_attacks.py's)
    node = MarketplaceNode(db_url, sweep_interval_s=3600, require_auth=False).start()
    yield node
    node.stop(0)


@pytest.fixture
def stub(node: MarketplaceNode) -> Iterator[Wallets]:
    with grpc.insecure_channel(node.address) as channel:
        yield Wallets(channel)


def agent_id_of(name: str) -> str:
    """An agent id (wallet owners are agents): `name` if it is one, else one made from it."""
    return name if len(name) == 64 else hashlib.sha256(name.encode()).hexdigest()


def open_wallet(stub: Wallets, owner: str, code: str = "USD") -> str:
    return stub.OpenAccount(wallet_pb2.OpenAccountRequest(
        idempotency_key=new_key(), owner=agent_id_of(owner), currency=code)).account_id


def snapshot(node: MarketplaceNode) -> tuple[dict[str, tuple[int, ...]], int]:
    """Every account's balances and the number of postings: to prove nothing changed."""
    balances = {b.account_id: (b.posted_credits_atomic, b.posted_debits_atomic,
                               b.pending_debits_atomic, b.pending_credits_atomic)
                for b in node.ledger.accounts()}
    return balances, len(node.ledger.postings())


def posted_sum(node: MarketplaceNode, code: str = "USD") -> int:
    return sum(b.posted_atomic for b in node.ledger.accounts() if b.currency == code)


# ---- what works ------------------------------------------------------------------------------


def test_lists_currencies_with_their_scales(stub: Wallets):
    found = {c.code: (c.scale, c.rail_scale)
             for c in stub.ListCurrencies(wallet_pb2.ListCurrenciesRequest()).currencies}
    assert found == {"USD": (9, 2), "USDC": (9, 6), "ECNY": (9, 2)}


def test_open_deposit_transfer_hold_capture_void_history(stub: Wallets, node: MarketplaceNode):
    buyer = stub.OpenAccount(wallet_pb2.OpenAccountRequest(
        idempotency_key=new_key(), owner=agent_id_of("buyer"), currency="USD"))
    assert (buyer.currency, buyer.kind, buyer.available_atomic) == \
        ("USD", wallet_pb2.ACCOUNT_KIND_WALLET, 0)
    again = stub.OpenAccount(wallet_pb2.OpenAccountRequest(
        idempotency_key=new_key(), owner=agent_id_of("buyer"), currency="usd"))
    assert again.account_id == buyer.account_id  # one wallet per owner and currency
    seller, platform = open_wallet(stub, "seller"), open_wallet(stub, "platform")
    b = buyer.account_id

    deposit = stub.Deposit(wallet_pb2.DepositRequest(
        idempotency_key=FUNDING_KEY, account_id=b, amount=money(usd("1.00"))))
    assert deposit.kind == "deposit" and deposit.idempotency_key == FUNDING_KEY
    assert {(e.account_id == b, e.amount_atomic) for e in deposit.entries} == \
        {(True, usd("1.00")), (False, -usd("1.00"))}
    balance = stub.GetBalance(wallet_pb2.GetBalanceRequest(account_id=b))
    assert (balance.posted_credits_atomic, balance.available_atomic) == (usd("1.00"),) * 2

    transfer = stub.Transfer(wallet_pb2.TransferRequest(
        idempotency_key=new_key(), debit_account_id=b, credit_account_id=seller,
        amount=money(usd("0.10")), memo="a tip"))
    assert transfer.kind == "transfer" and transfer.memo == "a tip"
    assert transfer.sequence > deposit.sequence
    assert {e.account_id: e.amount_atomic for e in transfer.entries} == \
        {b: -usd("0.10"), seller: usd("0.10")}

    hold = stub.Hold(wallet_pb2.HoldRequest(
        idempotency_key=new_key(), debit_account_id=b, credit_account_id=seller,
        amount=money(usd("0.30")), timeout_s=60))
    assert (hold.status, hold.amount.amount_atomic, hold.amount.currency) == \
        ("open", usd("0.30"), "USD")
    balance = stub.GetBalance(wallet_pb2.GetBalanceRequest(account_id=b))
    assert (balance.pending_debits_atomic, balance.available_atomic) == \
        (usd("0.30"), usd("0.60"))
    seller_balance = stub.GetBalance(wallet_pb2.GetBalanceRequest(account_id=seller))
    assert seller_balance.pending_credits_atomic == usd("0.30")

    capture = stub.Capture(wallet_pb2.CaptureRequest(
        idempotency_key=new_key(), hold_id=hold.hold_id, amount_atomic=usd("0.20"),
        splits=[wallet_pb2.Split(account_id=seller, amount_atomic=usd("0.15")),
                wallet_pb2.Split(account_id=platform, amount_atomic=usd("0.05"))]))
    assert capture.kind == "capture" and capture.hold_id == hold.hold_id
    assert {e.account_id: e.amount_atomic for e in capture.entries} == \
        {b: -usd("0.20"), seller: usd("0.15"), platform: usd("0.05")}

    void = stub.Void(wallet_pb2.VoidRequest(idempotency_key=new_key(), hold_id=hold.hold_id))
    assert void.kind == "void" and void.hold_id == hold.hold_id
    balance = stub.GetBalance(wallet_pb2.GetBalanceRequest(account_id=b))
    assert (balance.posted_debits_atomic, balance.pending_debits_atomic,
            balance.available_atomic) == (usd("0.30"), 0, usd("0.70"))
    seller_balance = stub.GetBalance(wallet_pb2.GetBalanceRequest(account_id=seller))
    assert (seller_balance.available_atomic, seller_balance.pending_credits_atomic) == \
        (usd("0.25"), 0)
    platform_balance = stub.GetBalance(wallet_pb2.GetBalanceRequest(account_id=platform))
    assert platform_balance.available_atomic == usd("0.05")

    node.ledger.seal()  # PostgreSQL links postings into the chain after commit
    history = stub.History(wallet_pb2.HistoryRequest(account_id=b)).postings
    assert [p.kind for p in history] == ["void", "capture", "hold", "transfer", "deposit"]
    assert [p.sequence for p in history] == sorted((p.sequence for p in history), reverse=True)
    older = stub.History(wallet_pb2.HistoryRequest(
        account_id=b, limit=2, before_sequence=history[1].sequence)).postings
    assert [p.kind for p in older] == ["hold", "transfer"]
    assert all(len(p.hash) == 64 for p in history)

    assert posted_sum(node) == 0
    assert check_balances(node.ledger).ok and verify_chain(node.ledger).ok


def test_withdraw_rounds_down_to_the_rail_and_keeps_the_rest(stub: Wallets,
                                                            node: MarketplaceNode):
    b = open_wallet(stub, "buyer")
    stub.Deposit(wallet_pb2.DepositRequest(idempotency_key=new_key(), account_id=b,
                                           amount=money(usd("1.00"))))
    posting = stub.Withdraw(wallet_pb2.WithdrawRequest(
        idempotency_key=new_key(), account_id=b, amount=money(usd("0.123456789"))))
    assert posting.kind == "withdrawal"
    assert {e.amount_atomic for e in posting.entries if e.account_id == b} == {-usd("0.12")}
    balance = stub.GetBalance(wallet_pb2.GetBalanceRequest(account_id=b))
    assert balance.available_atomic == usd("0.88")
    assert posted_sum(node) == 0


# ---- idempotency -----------------------------------------------------------------------------


@dataclass
class World:
    """A funded buyer, a seller, an ECNY wallet, an open hold and a voided one."""

    buyer: str
    seller: str
    ecny: str
    hold_id: str
    voided_hold_id: str


@pytest.fixture
def world(stub: Wallets) -> World:
    buyer, seller, ecny = (open_wallet(stub, "buyer"), open_wallet(stub, "seller"),
                           open_wallet(stub, "buyer", "ECNY"))
    stub.Deposit(wallet_pb2.DepositRequest(idempotency_key=FUNDING_KEY, account_id=buyer,
                                           amount=money(usd("1.00"))))
    holds = [stub.Hold(wallet_pb2.HoldRequest(
        idempotency_key=new_key(), debit_account_id=buyer, credit_account_id=seller,
        amount=money(usd("0.30")), timeout_s=600)).hold_id for _ in range(2)]
    stub.Void(wallet_pb2.VoidRequest(idempotency_key=new_key(), hold_id=holds[1]))
    return World(buyer, seller, ecny, *holds)


def test_same_key_same_deposit_returns_the_first_posting_and_moves_money_once(
        stub: Wallets, node: MarketplaceNode, world: World):
    request = wallet_pb2.DepositRequest(idempotency_key="fund:again", account_id=world.buyer,
                                        amount=money(usd("0.50")))
    first = stub.Deposit(request)
    balances, postings = snapshot(node)
    second = stub.Deposit(request)
    assert second == first  # same sequence, hash and timestamp: the stored outcome
    assert snapshot(node) == (balances, postings)
    assert stub.GetBalance(wallet_pb2.GetBalanceRequest(
        account_id=world.buyer)).posted_credits_atomic == usd("1.50")


def test_same_key_same_transfer_and_capture_apply_once(stub: Wallets, node: MarketplaceNode,
                                                       world: World):
    transfer = wallet_pb2.TransferRequest(
        idempotency_key=new_key(), debit_account_id=world.buyer,
        credit_account_id=world.seller, amount=money(usd("0.05")))
    capture = wallet_pb2.CaptureRequest(idempotency_key=new_key(), hold_id=world.hold_id,
                                        amount_atomic=usd("0.10"))
    firsts = stub.Transfer(transfer), stub.Capture(capture)
    before = snapshot(node)
    assert (stub.Transfer(transfer), stub.Capture(capture)) == firsts
    assert snapshot(node) == before
    seller = stub.GetBalance(wallet_pb2.GetBalanceRequest(account_id=world.seller))
    assert seller.available_atomic == usd("0.15")


def test_a_refused_malformed_request_does_not_use_up_its_key(stub: Wallets, world: World):
    key = new_key()
    with pytest.raises(grpc.RpcError) as refused:
        stub.Transfer(wallet_pb2.TransferRequest(
            idempotency_key=key, debit_account_id=world.buyer, credit_account_id=world.seller,
            amount=money(-1)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    posting = stub.Transfer(wallet_pb2.TransferRequest(
        idempotency_key=key, debit_account_id=world.buyer, credit_account_id=world.seller,
        amount=money(usd("0.01"))))
    assert posting.idempotency_key == key


def test_a_refused_overdraft_is_replayed_for_its_key_even_after_funding(stub: Wallets,
                                                                        world: World):
    request = wallet_pb2.TransferRequest(
        idempotency_key=new_key(), debit_account_id=world.buyer,
        credit_account_id=world.seller, amount=money(usd("5.00")))
    for _attempt in range(2):
        with pytest.raises(grpc.RpcError) as refused:
            stub.Transfer(request)
        assert error_reason(refused.value) == "INSUFFICIENT_FUNDS"
        stub.Deposit(wallet_pb2.DepositRequest(idempotency_key=new_key(),
                                               account_id=world.buyer,
                                               amount=money(usd("10.00"))))


# ---- every bad request: its status, and nothing changed --------------------------------------

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
PRECONDITION, EXISTS = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS
MISSING = "0" * 32


@dataclass(frozen=True)
class Bad:
    call: Callable[[Wallets, World], Any]
    code: grpc.StatusCode
    reason: str
    says: str


def deposit(amount_atomic: int, code: str = "USD", *, key: str | None = None,
            account: Callable[[World], str] = lambda w: w.buyer, rail: str = ""
            ) -> Callable[[Wallets, World], Any]:
    return lambda s, w: s.Deposit(wallet_pb2.DepositRequest(
        idempotency_key=new_key() if key is None else key, account_id=account(w),
        amount=money(amount_atomic, code), rail=rail))


def withdraw(amount_atomic: int, code: str = "USD", *, key: str | None = None,
             account: Callable[[World], str] = lambda w: w.buyer
             ) -> Callable[[Wallets, World], Any]:
    return lambda s, w: s.Withdraw(wallet_pb2.WithdrawRequest(
        idempotency_key=new_key() if key is None else key, account_id=account(w),
        amount=money(amount_atomic, code)))


def transfer(amount_atomic: int, code: str = "USD", *, key: str | None = None,
             credit: Callable[[World], str] = lambda w: w.seller,
             memo: str = "") -> Callable[[Wallets, World], Any]:
    return lambda s, w: s.Transfer(wallet_pb2.TransferRequest(
        idempotency_key=new_key() if key is None else key, debit_account_id=w.buyer,
        credit_account_id=credit(w), amount=money(amount_atomic, code), memo=memo))


def hold(amount_atomic: int, code: str = "USD", timeout_s: int = 60
         ) -> Callable[[Wallets, World], Any]:
    return lambda s, w: s.Hold(wallet_pb2.HoldRequest(
        idempotency_key=new_key(), debit_account_id=w.buyer, credit_account_id=w.seller,
        amount=money(amount_atomic, code), timeout_s=timeout_s))


def capture(amount_atomic: int, *, voided: bool = False, hold_id: str = "",
            splits: Callable[[World], list[tuple[str, int]]] = lambda w: []
            ) -> Callable[[Wallets, World], Any]:
    return lambda s, w: s.Capture(wallet_pb2.CaptureRequest(
        idempotency_key=new_key(),
        hold_id=hold_id or (w.voided_hold_id if voided else w.hold_id),
        amount_atomic=amount_atomic,
        splits=[wallet_pb2.Split(account_id=a, amount_atomic=n) for a, n in splits(w)]))


TOO_MUCH = MAX_AMOUNT_ATOMIC + 1
BAD_REQUESTS = {
    # amounts
    "deposit-negative": Bad(deposit(-usd("1.00")), INVALID, "INVALID_AMOUNT", "positive"),
    "deposit-zero": Bad(deposit(0), INVALID, "INVALID_AMOUNT", "positive"),
    "deposit-above-limit": Bad(deposit(TOO_MUCH), INVALID, "INVALID_AMOUNT", "exceeds the limit"),
    "deposit-finer-than-rail": Bad(deposit(1), INVALID, "INVALID_AMOUNT", "finer"),
    "transfer-negative": Bad(transfer(-1), INVALID, "INVALID_AMOUNT", "positive"),
    "transfer-zero": Bad(transfer(0), INVALID, "INVALID_AMOUNT", "positive"),
    "transfer-above-limit": Bad(transfer(TOO_MUCH), INVALID, "INVALID_AMOUNT", "exceeds"),
    "hold-negative": Bad(hold(-5), INVALID, "INVALID_AMOUNT", "positive"),
    "hold-zero": Bad(hold(0), INVALID, "INVALID_AMOUNT", "positive"),
    "hold-above-limit": Bad(hold(TOO_MUCH), INVALID, "INVALID_AMOUNT", "exceeds"),
    "capture-zero": Bad(capture(0), INVALID, "INVALID_AMOUNT", "positive"),
    "capture-negative": Bad(capture(-1), INVALID, "INVALID_AMOUNT", "positive"),
    "capture-above-limit": Bad(capture(TOO_MUCH), INVALID, "INVALID_AMOUNT", "exceeds"),
    "withdraw-negative": Bad(withdraw(-1), INVALID, "INVALID_AMOUNT", "positive"),
    "withdraw-finer-than-rail": Bad(withdraw(1), INVALID, "INVALID_AMOUNT", "smallest amount"),
    # currencies
    "deposit-unknown-currency": Bad(deposit(usd("1.00"), "XYZ"), INVALID, "UNKNOWN_CURRENCY",
                                    "unknown currency"),
    "deposit-no-currency": Bad(deposit(usd("1.00"), ""), INVALID, "INVALID_ARGUMENT",
                               "currency is required"),
    "deposit-other-currency": Bad(deposit(usd("1.00"), "USDC"), INVALID, "INVALID_ARGUMENT",
                                  "holds USD, not USDC"),
    "deposit-other-currency-rail": Bad(deposit(usd("1.00"), rail="sandbox-ecny"), INVALID,
                                       "INVALID_ARGUMENT", "carries ECNY"),
    "transfer-unknown-currency": Bad(transfer(usd("0.01"), "XYZ"), INVALID, "UNKNOWN_CURRENCY",
                                     "unknown currency"),
    "transfer-other-currency": Bad(transfer(usd("0.01"), "ECNY"), INVALID, "INVALID_ARGUMENT",
                                   "holds USD, not ECNY"),
    "transfer-across-currencies": Bad(transfer(usd("0.01"), credit=lambda w: w.ecny), INVALID,
                                      "INVALID_ARGUMENT", "different currencies"),
    "hold-unknown-currency": Bad(hold(usd("0.01"), "XYZ"), INVALID, "UNKNOWN_CURRENCY",
                                 "unknown currency"),
    "hold-other-currency": Bad(hold(usd("0.01"), "USDC"), INVALID, "INVALID_ARGUMENT",
                               "holds USD, not USDC"),
    "capture-split-across-currencies": Bad(
        capture(usd("0.10"), splits=lambda w: [(w.ecny, usd("0.10"))]), INVALID,
        "INVALID_ARGUMENT", "different currencies"),
    "open-unknown-currency": Bad(lambda s, w: s.OpenAccount(wallet_pb2.OpenAccountRequest(
        idempotency_key=new_key(), owner=agent_id_of("someone"), currency="XYZ")), INVALID,
        "UNKNOWN_CURRENCY", "unknown currency"),
    # what does not exist
    "deposit-unknown-account": Bad(deposit(usd("1.00"), account=lambda w: MISSING), NOT_FOUND,
                                   "NOT_FOUND", "does not exist"),
    "deposit-unknown-rail": Bad(deposit(usd("1.00"), rail="nowhere"), NOT_FOUND, "NOT_FOUND",
                                "does not exist"),
    "transfer-unknown-account": Bad(transfer(usd("0.01"), credit=lambda w: MISSING), NOT_FOUND,
                                    "NOT_FOUND", "does not exist"),
    "balance-unknown-account": Bad(lambda s, w: s.GetBalance(wallet_pb2.GetBalanceRequest(
        account_id=MISSING)), NOT_FOUND, "NOT_FOUND", "does not exist"),
    "history-unknown-account": Bad(lambda s, w: s.History(wallet_pb2.HistoryRequest(
        account_id=MISSING)), NOT_FOUND, "NOT_FOUND", "does not exist"),
    "capture-unknown-hold": Bad(capture(1, hold_id=MISSING), NOT_FOUND, "NOT_FOUND",
                                "does not exist"),
    "capture-split-to-unknown-account": Bad(
        capture(usd("0.10"), splits=lambda w: [(MISSING, usd("0.10"))]), NOT_FOUND,
        "NOT_FOUND", "does not exist"),
    "void-unknown-hold": Bad(lambda s, w: s.Void(wallet_pb2.VoidRequest(
        idempotency_key=new_key(), hold_id=MISSING)), NOT_FOUND, "NOT_FOUND", "does not exist"),
    # state
    "transfer-above-balance": Bad(transfer(usd("0.71")), PRECONDITION, "INSUFFICIENT_FUNDS",
                                  "available"),
    "hold-above-balance": Bad(hold(usd("0.71")), PRECONDITION, "INSUFFICIENT_FUNDS",
                              "available"),
    "withdraw-above-balance": Bad(withdraw(usd("0.71")), PRECONDITION, "INSUFFICIENT_FUNDS",
                                  "available"),
    "capture-after-void": Bad(capture(usd("0.10"), voided=True), PRECONDITION, "HOLD_CLOSED",
                              "already voided"),
    "void-after-void": Bad(lambda s, w: s.Void(wallet_pb2.VoidRequest(
        idempotency_key=new_key(), hold_id=w.voided_hold_id)), PRECONDITION, "HOLD_CLOSED",
        "already voided"),
    # captures that do not fit the hold
    "capture-above-hold": Bad(capture(usd("0.31")), PRECONDITION, "HOLD_EXCEEDED",
                              "exceeds the 300000000 still held"),
    "capture-splits-not-summing": Bad(
        capture(usd("0.10"), splits=lambda w: [(w.seller, usd("0.09"))]), INVALID,
        "INVALID_AMOUNT", "sum to"),
    "capture-negative-split": Bad(
        capture(usd("0.10"), splits=lambda w: [(w.seller, usd("0.20")), (w.buyer, -usd("0.10"))]),
        INVALID, "INVALID_AMOUNT", "positive"),
    # idempotency keys
    "deposit-no-key": Bad(deposit(usd("1.00"), key=""), INVALID, "INVALID_ARGUMENT",
                          "idempotency_key is required"),
    # the first deposit or withdrawal in a currency opens its rail account: not when refused
    "deposit-no-key-first-in-currency": Bad(deposit(usd("1.00"), "ECNY", key="",
                                                    account=lambda w: w.ecny),
                                            INVALID, "INVALID_ARGUMENT", "idempotency_key"),
    "withdraw-no-key-first-in-currency": Bad(withdraw(usd("1.00"), "ECNY", key="",
                                                      account=lambda w: w.ecny),
                                             INVALID, "INVALID_ARGUMENT", "idempotency_key"),
    "transfer-no-key": Bad(transfer(usd("0.01"), key=""), INVALID, "INVALID_ARGUMENT",
                           "idempotency_key is required"),
    "transfer-key-too-long": Bad(transfer(usd("0.01"), key="k" * 201), INVALID,
                                 "INVALID_ARGUMENT", "longer than"),
    "deposit-key-reused-other-amount": Bad(deposit(usd("2.00"), key=FUNDING_KEY), EXISTS,
                                           "IDEMPOTENCY_KEY_REUSED", "already used"),
    "deposit-key-reused-other-wallet": Bad(deposit(usd("1.00"), key=FUNDING_KEY,
                                                   account=lambda w: w.seller), EXISTS,
                                           "IDEMPOTENCY_KEY_REUSED", "already used"),
    # other malformed requests
    "transfer-to-itself": Bad(transfer(usd("0.01"), credit=lambda w: w.buyer), INVALID,
                              "INVALID_ARGUMENT", "must differ"),
    "transfer-memo-too-long": Bad(transfer(usd("0.01"), memo="m" * 257), INVALID,
                                  "INVALID_ARGUMENT", "memo is longer"),
    "hold-no-timeout": Bad(hold(usd("0.01"), timeout_s=0), INVALID, "INVALID_ARGUMENT",
                           "timeout_s must be"),
    "hold-timeout-too-long": Bad(hold(usd("0.01"), timeout_s=2**32 - 1), INVALID,
                                 "INVALID_ARGUMENT", "timeout_s must be"),
    "history-limit-too-high": Bad(lambda s, w: s.History(wallet_pb2.HistoryRequest(
        account_id=w.buyer, limit=1001)), INVALID, "INVALID_ARGUMENT", "limit must be"),
    "open-rail-account": Bad(lambda s, w: s.OpenAccount(wallet_pb2.OpenAccountRequest(
        idempotency_key=new_key(), owner=agent_id_of("rail"), currency="USD",
        kind=wallet_pb2.ACCOUNT_KIND_RAIL)), INVALID, "INVALID_ARGUMENT", "only wallet"),
    "open-no-owner": Bad(lambda s, w: s.OpenAccount(wallet_pb2.OpenAccountRequest(
        idempotency_key=new_key(), owner="", currency="USD")), INVALID, "INVALID_ARGUMENT",
        "owner must be"),
    # ids and amounts are checked on every request, authenticated or not (this node: not)
    "open-owner-not-a-key": Bad(lambda s, w: s.OpenAccount(wallet_pb2.OpenAccountRequest(
        idempotency_key=new_key(), owner="not-a-key", currency="USD")), INVALID,
        "MALFORMED_FIELD", "owner must be an agent id"),
    "balance-malformed-account": Bad(lambda s, w: s.GetBalance(wallet_pb2.GetBalanceRequest(
        account_id="../etc")), INVALID, "MALFORMED_FIELD", "account_id must be an account id"),
    "void-malformed-hold": Bad(lambda s, w: s.Void(wallet_pb2.VoidRequest(
        idempotency_key=new_key(), hold_id="x")), INVALID, "MALFORMED_FIELD",
        "hold_id must be a hold id"),
    "capture-split-negative-amount": Bad(
        capture(usd("0.10"), splits=lambda w: [(w.seller, -1)]), INVALID, "INVALID_AMOUNT",
        "splits[0].amount_atomic must be positive"),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_request_gets_its_status_and_changes_nothing(name: str, stub: Wallets,
                                                         node: MarketplaceNode, world: World):
    bad = BAD_REQUESTS[name]
    before = snapshot(node)
    with pytest.raises(grpc.RpcError) as refused:
        bad.call(stub, world)
    error = refused.value
    assert error.code() != grpc.StatusCode.INTERNAL, error.details()
    assert (error.code(), error_reason(error)) == (bad.code, bad.reason), error.details()
    assert bad.says in error.details()
    assert snapshot(node) == before
    assert posted_sum(node) == 0
