"""The ledger conformance suite: every storage backend (SQLite, PostgreSQL) runs all of it.

Each test gets a fresh database from the parametrised ``db_url`` fixture (see conftest.py), and
after each test the books must still balance and the hash chain must verify.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select, update

from wallets import audit
from wallets._bulk import TransferRequest
from wallets.caller import ANONYMOUS_SCOPE
from wallets.currencies import MAX_AMOUNT_ATOMIC, currency
from wallets.errors import (
    HoldClosed,
    HoldExceeded,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    UnknownCurrency,
)
from wallets.ledger import ACCOUNTS, ENTRIES, POSTINGS, Ledger
from wallets.models import Balance, Posting, Transfer
from wallets.rails import payout_reference
from wallets.service import WalletService

USD = currency("USD")


def usd(amount: str) -> int:
    return USD.atomic(amount)


@pytest.fixture(autouse=True)
def books_stay_sound(ledger: Ledger) -> Any:
    """After every test: maintained balances equal their entries, and the chain verifies."""
    yield
    balances = audit.check_balances(ledger)
    assert balances.ok, balances.problems
    chain = audit.verify_chain(ledger)
    assert chain.ok, chain.problems


def open_wallet(wallets: WalletService, owner: str, amount: str = "0", code: str = "USD") -> str:
    account_id = wallets.ledger.open_account(owner, code).account_id
    if Decimal(amount):
        wallets.deposit(f"fund:{owner}:{code}", account_id, currency(code).atomic(amount), code)
    return account_id


def snapshot(ledger: Ledger) -> tuple[list[Balance], int]:
    """Every account's balances and the number of postings: to prove nothing changed."""
    return ledger.accounts(), len(ledger.postings())


# ---- accounts and deposits -----------------------------------------------------------------


def test_open_account_is_idempotent(ledger: Ledger) -> None:
    first = ledger.open_account("alice", "USD")
    again = ledger.open_account("alice", "usd")
    assert again.account_id == first.account_id
    assert ledger.find_account("alice", "USD") == first
    assert ledger.find_account("nobody", "USD") is None
    assert first.posted_atomic == first.available_atomic == 0
    assert [b.account_id for b in ledger.accounts("alice")] == [first.account_id]
    assert ledger.open_account("alice", "e-CNY").currency == "ECNY"


def test_open_account_refuses_bad_arguments(ledger: Ledger) -> None:
    with pytest.raises(UnknownCurrency):
        ledger.open_account("alice", "XYZ")
    with pytest.raises(InvalidArgument):
        ledger.open_account("alice", "USD", kind="piggybank")
    with pytest.raises(InvalidArgument):
        ledger.open_account("", "USD")
    for other_spelling in ("alice\n", " alice", "alice\t", "al\x00ice"):  # no second account
        with pytest.raises(InvalidArgument):                           # for the same owner
            ledger.open_account(other_spelling, "USD")
    assert ledger.accounts() == []


def test_deposit_credits_the_wallet_and_debits_the_rail(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice = ledger.open_account("alice", "USD").account_id
    posting = wallets.deposit("dep-1", alice, usd("12.34"), "USD")
    assert posting.kind == "deposit"
    assert posting.idempotency_key == "dep-1"
    assert posting.sequence == 1
    assert sum(leg.posted_atomic for leg in posting.legs) == 0
    assert ledger.balance(alice).posted_atomic == usd("12.34")
    assert ledger.balance(alice).available_atomic == usd("12.34")
    rail = wallets.rail_account(wallets.rail("", "USD"))
    assert rail.kind == "rail"
    assert rail.posted_atomic == -usd("12.34")


def test_deposit_refuses_amounts_finer_than_the_rail(wallets: WalletService) -> None:
    alice = wallets.ledger.open_account("alice", "USD").account_id
    before = snapshot(wallets.ledger)
    with pytest.raises(InvalidAmount):
        wallets.deposit("dep-fine", alice, usd("0.001"), "USD")
    assert snapshot(wallets.ledger) == before


def test_deposit_in_another_currency_than_the_wallet(wallets: WalletService) -> None:
    alice = wallets.ledger.open_account("alice", "USD").account_id
    with pytest.raises(InvalidArgument):
        wallets.deposit("dep-ecny", alice, usd("1"), "ECNY")
    with pytest.raises(UnknownCurrency):
        wallets.deposit("dep-xyz", alice, usd("1"), "XYZ")
    with pytest.raises(NotFound):
        wallets.deposit("dep-rail", alice, usd("1"), "USD", rail_name="swift")
    with pytest.raises(NotFound):
        wallets.deposit("dep-nobody", "no-such-account", usd("1"), "USD")
    assert wallets.ledger.balance(alice).posted_atomic == 0


# ---- transfers -----------------------------------------------------------------------------


def test_transfer_moves_money(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    posting = ledger.transfer("t-1", alice, bob, usd("2.5"), memo="lunch")
    assert posting.kind == "transfer"
    assert posting.memo == "lunch"
    assert {leg.account_id: leg.posted_atomic for leg in posting.legs} == {
        alice: -usd("2.5"), bob: usd("2.5")}
    assert ledger.balance(alice).available_atomic == usd("7.5")
    assert ledger.balance(bob).available_atomic == usd("2.5")
    assert ledger.balance(alice).posted_debits_atomic == usd("2.5")


def test_insufficient_funds_changes_nothing(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "1"), open_wallet(wallets, "bob")
    before = snapshot(ledger)
    with pytest.raises(InsufficientFunds):
        ledger.transfer("t-big", alice, bob, usd("1") + 1)
    assert snapshot(ledger) == before
    ledger.transfer("t-all", alice, bob, usd("1"))
    assert ledger.balance(alice).available_atomic == 0


@pytest.mark.parametrize(
    "amount",
    [0, -1, -usd("1"), MAX_AMOUNT_ATOMIC + 1, 2**63, 2**64, 1.5, 1.0, "10", Decimal(10), True,
     None],
    ids=repr,
)
def test_invalid_amounts_are_refused_and_not_recorded(wallets: WalletService,
                                                      amount: Any) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    before = snapshot(ledger)
    with pytest.raises(InvalidAmount):
        ledger.transfer("k", alice, bob, amount)
    with pytest.raises(InvalidAmount):
        ledger.post_linked("k", [Transfer(alice, bob, 1), Transfer(alice, bob, amount)])
    with pytest.raises(InvalidAmount):
        ledger.hold("k", alice, bob, amount, timeout_s=60)
    with pytest.raises(InvalidAmount):
        wallets.deposit("k", alice, amount, "USD")
    with pytest.raises(InvalidAmount):
        wallets.withdraw("k", alice, amount, "USD")
    with pytest.raises(InvalidAmount):
        ledger.open_account("carol", "USD", credit_limit_atomic=amount if amount != 0 else -1)
    assert snapshot(ledger) == before
    # A refused request never started, so its key stays free for a valid one.
    ledger.transfer("k", alice, bob, 1)


def test_the_largest_amount_is_accepted(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice"), open_wallet(wallets, "bob")
    biggest = MAX_AMOUNT_ATOMIC - MAX_AMOUNT_ATOMIC % USD.rail_step_atomic
    wallets.deposit("max", alice, biggest, "USD")
    ledger.transfer("all", alice, bob, biggest)
    assert ledger.balance(bob).available_atomic == biggest
    # The rail's credit limit caps the money that can come in at all.
    with pytest.raises(InsufficientFunds):
        wallets.deposit("more", alice, biggest, "USD")


def _rewinds(ledger: Ledger) -> dict[str, int]:
    with ledger.engine.connect() as conn:
        return dict(conn.execute(select(ACCOUNTS.c.id, ACCOUNTS.c.totals_rewinds)).all())


def test_round_trips_never_fill_the_running_totals(wallets: WalletService) -> None:
    """Debit and credit totals only grow: money going back and forth, one transfer at a time
    or in bulk, passes int64 many times over, and neither party is ever refused (the totals
    are rewound together; the audit, run after the test, counts the rewound units)."""
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice"), open_wallet(wallets, "bob")
    biggest = MAX_AMOUNT_ATOMIC - MAX_AMOUNT_ATOMIC % USD.rail_step_atomic
    wallets.deposit("max", alice, biggest, "USD")
    for n in range(6):
        ledger.transfer(f"ab{n}", alice, bob, biggest)
        ledger.transfer(f"ba{n}", bob, alice, biggest)
    for n in range(3):
        posted = ledger.transfer_many([
            TransferRequest(f"bulk-ab{n}", Transfer(alice, bob, biggest)),
            TransferRequest(f"bulk-ba{n}", Transfer(bob, alice, biggest))])
        assert all(isinstance(p, Posting) for p in posted), posted
    assert ledger.balance(alice).available_atomic == biggest
    assert ledger.balance(bob).available_atomic == 0
    for balance in ledger.accounts():
        assert all(type(v) is int and 0 <= v < 2**63 for v in (
            balance.posted_credits_atomic, balance.posted_debits_atomic))
    rewinds = _rewinds(ledger)
    assert rewinds[alice] > 0 and rewinds[bob] > 0


def test_a_balance_past_int64_is_refused(wallets: WalletService) -> None:
    """What rewinding cannot make room for is money really there: a balance past int64."""
    ledger = wallets.ledger
    bob = open_wallet(wallets, "bob")
    biggest = MAX_AMOUNT_ATOMIC - MAX_AMOUNT_ATOMIC % USD.rail_step_atomic
    mints = [ledger.open_account(f"mint-{n}", "USD", kind="rail",
                                 credit_limit_atomic=biggest).account_id for n in range(3)]
    ledger.transfer("m0", mints[0], bob, biggest)
    ledger.transfer("m1", mints[1], bob, biggest // 2)
    before = snapshot(ledger)
    with pytest.raises(ResourceExhausted) as caught:
        ledger.transfer("m2", mints[2], bob, biggest)  # bob's credits would pass 2**63 - 1
    assert caught.value.reason == "ACCOUNT_TOTALS_EXHAUSTED"
    assert snapshot(ledger) == before
    assert ledger.balance(bob).available_atomic == biggest + biggest // 2


def test_unknown_account(ledger: Ledger) -> None:
    alice = ledger.open_account("alice", "USD").account_id
    with pytest.raises(NotFound):
        ledger.transfer("t-1", alice, "missing", 1)
    with pytest.raises(NotFound):
        ledger.transfer("t-2", "missing", alice, 1)
    with pytest.raises(NotFound):
        ledger.hold("h-1", alice, "missing", 1, timeout_s=60)
    with pytest.raises(NotFound):
        ledger.balance("missing")
    with pytest.raises(NotFound):
        ledger.history("missing")
    with pytest.raises(NotFound):
        ledger.get_hold("missing")
    with pytest.raises(NotFound):
        ledger.capture("c-1", "missing", 1)
    with pytest.raises(NotFound):
        ledger.void("v-1", "missing")
    assert ledger.postings() == []


def test_currencies_must_match(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice = open_wallet(wallets, "alice", "10")
    bob_cny = open_wallet(wallets, "bob", code="ECNY")
    before = snapshot(ledger)
    with pytest.raises(InvalidArgument):
        ledger.transfer("t-fx", alice, bob_cny, 1)
    with pytest.raises(InvalidArgument):
        ledger.hold("h-fx", alice, bob_cny, 1, timeout_s=60)
    with pytest.raises(InvalidArgument):
        ledger.transfer("t-self", alice, alice, 1)
    assert snapshot(ledger) == before


# ---- holds ---------------------------------------------------------------------------------


def test_hold_reserves_without_moving(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    hold = ledger.hold("h", alice, bob, usd("8"), timeout_s=60)
    assert (hold.status, hold.amount_atomic, hold.open_atomic) == ("open", usd("8"), usd("8"))
    assert ledger.get_hold(hold.hold_id) == hold
    a, b = ledger.balance(alice), ledger.balance(bob)
    assert (a.posted_atomic, a.pending_debits_atomic, a.available_atomic) == (
        usd("10"), usd("8"), usd("2"))
    assert (b.posted_atomic, b.pending_credits_atomic, b.available_atomic) == (0, usd("8"), 0)
    # Held money cannot be spent twice.
    with pytest.raises(InsufficientFunds):
        ledger.transfer("t", alice, bob, usd("3"))
    with pytest.raises(InsufficientFunds):
        ledger.hold("h2", alice, bob, usd("3"), timeout_s=60)
    ledger.transfer("t-ok", alice, bob, usd("2"))


def test_hold_refuses_bad_timeouts_and_missing_funds(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "1"), open_wallet(wallets, "bob")
    for timeout_s in (0, -5, 31 * 24 * 3600):
        with pytest.raises(InvalidArgument):
            ledger.hold(f"h{timeout_s}", alice, bob, 1, timeout_s=timeout_s)
    before = snapshot(ledger)
    with pytest.raises(InsufficientFunds):
        ledger.hold("h-big", alice, bob, usd("1") + 1, timeout_s=60)
    assert snapshot(ledger) == before


def test_capture_partially_several_times_up_to_the_hold(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    hold = ledger.hold("h", alice, bob, usd("6"), timeout_s=60)
    for i, amount in enumerate(("1", "2", "3")):
        posting = ledger.capture(f"c{i}", hold.hold_id, usd(amount))
        assert posting.kind == "capture"
        assert posting.hold_id == hold.hold_id
    closed = ledger.get_hold(hold.hold_id)
    assert (closed.status, closed.captured_atomic, closed.voided_atomic) == (
        "captured", usd("6"), 0)
    a, b = ledger.balance(alice), ledger.balance(bob)
    assert (a.posted_atomic, a.pending_debits_atomic, a.available_atomic) == (usd("4"), 0, usd("4"))
    assert (b.posted_atomic, b.pending_credits_atomic) == (usd("6"), 0)
    with pytest.raises(HoldClosed):
        ledger.capture("c-after", hold.hold_id, 1)
    assert [p.kind for p in ledger.postings(hold_id=hold.hold_id)] == [
        "hold", "capture", "capture", "capture"]


def test_capture_above_the_hold_is_refused(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    hold = ledger.hold("h", alice, bob, usd("5"), timeout_s=60)
    ledger.capture("c1", hold.hold_id, usd("4"))
    before = snapshot(ledger)
    with pytest.raises(HoldExceeded) as exceeded:  # well formed: the hold's state refuses it
        ledger.capture("c2", hold.hold_id, usd("1") + 1)
    assert exceeded.value.status == "FAILED_PRECONDITION"
    with pytest.raises(InvalidAmount):
        ledger.capture("c3", hold.hold_id, usd("1"), splits=[(bob, usd("2"))])
    with pytest.raises(InvalidAmount):
        ledger.capture("c4", hold.hold_id, 0)
    assert snapshot(ledger) == before
    with pytest.raises(HoldExceeded):  # a state refusal is the key's outcome: replayed
        ledger.capture("c2", hold.hold_id, usd("1") + 1)
    ledger.capture("c3", hold.hold_id, usd("1"))  # a malformed request's key stays free
    assert ledger.get_hold(hold.hold_id).status == "captured"


def test_capture_with_splits_pays_a_fee(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    fees = ledger.open_account("market", "USD", "fees").account_id
    hold = ledger.hold("h", alice, bob, usd("5"), timeout_s=60)
    posting = ledger.capture("c", hold.hold_id, usd("4"),
                             splits=[(bob, usd("3.9")), (fees, usd("0.1"))], final=True)
    assert sum(leg.posted_atomic for leg in posting.legs) == 0
    assert ledger.balance(bob).posted_atomic == usd("3.9")
    assert ledger.balance(fees).posted_atomic == usd("0.1")
    assert ledger.balance(alice).available_atomic == usd("6")
    closed = ledger.get_hold(hold.hold_id)
    assert (closed.status, closed.captured_atomic, closed.voided_atomic) == (
        "captured", usd("4"), usd("1"))


def test_final_capture_voids_the_rest(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    hold = ledger.hold("h", alice, bob, usd("5"), timeout_s=60)
    ledger.capture("c1", hold.hold_id, usd("1"))
    ledger.capture("c2", hold.hold_id, usd("1.5"), final=True)
    closed = ledger.get_hold(hold.hold_id)
    assert (closed.status, closed.captured_atomic, closed.voided_atomic, closed.open_atomic) == (
        "captured", usd("2.5"), usd("2.5"), 0)
    a, b = ledger.balance(alice), ledger.balance(bob)
    assert (a.available_atomic, a.pending_debits_atomic) == (usd("7.5"), 0)
    assert (b.available_atomic, b.pending_credits_atomic) == (usd("2.5"), 0)
    with pytest.raises(HoldClosed):
        ledger.void("v", hold.hold_id)


def test_final_capture_of_nothing_is_a_void(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    hold = ledger.hold("h", alice, bob, usd("5"), timeout_s=60)
    ledger.capture("c", hold.hold_id, 0, final=True)
    closed = ledger.get_hold(hold.hold_id)
    assert (closed.status, closed.captured_atomic, closed.voided_atomic) == (
        "voided", 0, usd("5"))
    assert ledger.balance(alice).available_atomic == usd("10")


def test_void_releases_and_closes(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    hold = ledger.hold("h", alice, bob, usd("5"), timeout_s=60)
    ledger.capture("c", hold.hold_id, usd("2"))
    posting = ledger.void("v", hold.hold_id)
    assert posting.kind == "void"
    closed = ledger.get_hold(hold.hold_id)
    # Partly captured, then voided: it ends as captured, the rest released.
    assert (closed.status, closed.captured_atomic, closed.voided_atomic) == (
        "captured", usd("2"), usd("3"))
    assert ledger.balance(alice).available_atomic == usd("8")
    assert ledger.balance(bob).pending_credits_atomic == 0
    with pytest.raises(HoldClosed):
        ledger.capture("c-after", hold.hold_id, 1)
    with pytest.raises(HoldClosed):
        ledger.void("v-again", hold.hold_id)
    untouched = ledger.hold("h2", alice, bob, usd("1"), timeout_s=60)
    ledger.void("v2", untouched.hold_id)
    assert ledger.get_hold(untouched.hold_id).status == "voided"


def test_expiry_releases_the_money_on_access(wallets: WalletService, clock: Any) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    hold = ledger.hold("h", alice, bob, usd("4"), timeout_s=60)
    assert hold.expires_at_ms == clock.now_ms + 60_000
    clock.advance(59.999)
    assert ledger.balance(alice).available_atomic == usd("6")
    assert ledger.get_hold(hold.hold_id).status == "open"
    clock.advance(0.001)  # exactly at the deadline: expired
    assert ledger.balance(alice).available_atomic == usd("10")
    expired = ledger.get_hold(hold.hold_id)
    assert (expired.status, expired.voided_atomic, expired.captured_atomic) == (
        "expired", usd("4"), 0)
    assert ledger.balance(bob).pending_credits_atomic == 0
    assert [p.kind for p in ledger.postings(hold_id=hold.hold_id)] == ["hold", "expire"]
    assert ledger.expire_holds() == 0


def test_get_hold_expires_on_access(wallets: WalletService, clock: Any) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    hold = ledger.hold("h", alice, bob, usd("4"), timeout_s=60)
    clock.advance(61)
    assert ledger.get_hold(hold.hold_id).status == "expired"
    assert ledger.balance(alice).pending_debits_atomic == 0


def test_the_payees_balance_expires_on_access_too(wallets: WalletService, clock: Any) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    hold = ledger.hold("h", alice, bob, usd("4"), timeout_s=60)
    assert ledger.balance(bob).pending_credits_atomic == usd("4")
    clock.advance(60)
    assert ledger.balance(bob).pending_credits_atomic == 0  # read before the payer's
    assert ledger.get_hold(hold.hold_id).status == "expired"
    assert ledger.balance(alice).available_atomic == usd("10")


def test_capture_and_void_after_expiry_are_refused(wallets: WalletService, clock: Any) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    first = ledger.hold("h1", alice, bob, usd("4"), timeout_s=60)
    second = ledger.hold("h2", alice, bob, usd("1"), timeout_s=60)
    ledger.capture("c0", first.hold_id, usd("1"))
    clock.advance(60)
    with pytest.raises(HoldClosed):
        ledger.capture("c1", first.hold_id, usd("1"))
    with pytest.raises(HoldClosed):
        ledger.void("v2", second.hold_id)
    assert ledger.get_hold(first.hold_id).status == "expired"
    assert ledger.get_hold(first.hold_id).voided_atomic == usd("3")
    assert ledger.balance(alice).available_atomic == usd("9")
    assert ledger.balance(bob).posted_atomic == usd("1")


def test_expire_holds_sweeps_everything_due(wallets: WalletService, clock: Any) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    carol = open_wallet(wallets, "carol", "10")
    holds = [ledger.hold(f"h{i}", payer, bob, usd("1"), timeout_s=10 * (i + 1))
             for i, payer in enumerate((alice, carol, alice))]
    clock.advance(20)
    assert ledger.expire_holds() == 2
    assert [ledger.get_hold(h.hold_id).status for h in holds] == ["expired", "expired", "open"]
    assert ledger.expire_holds() == 0
    clock.advance(10)
    assert ledger.expire_holds(account_id=carol) == 0
    assert ledger.expire_holds(account_id=alice) == 1
    accounts = {b.account_id: b for b in ledger.accounts()}
    assert accounts[alice].available_atomic == accounts[carol].available_atomic == usd("10")
    assert accounts[bob].pending_credits_atomic == 0


# ---- linked postings -----------------------------------------------------------------------


def test_linked_postings_are_one_posting(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    fees = ledger.open_account("market", "USD", "fees").account_id
    posting = ledger.post_linked("pay", [Transfer(alice, bob, usd("3")),
                                         Transfer(alice, fees, usd("0.5"))], memo="job 7")
    assert len(posting.legs) == 3
    assert ledger.balance(alice).available_atomic == usd("6.5")
    assert ledger.balance(bob).available_atomic == usd("3")
    assert ledger.balance(fees).available_atomic == usd("0.5")


def test_linked_postings_are_all_or_nothing(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob", "1")
    carol = open_wallet(wallets, "carol")
    before = snapshot(ledger)
    with pytest.raises(InsufficientFunds):
        ledger.post_linked("pay", [Transfer(alice, carol, usd("5")),
                                   Transfer(bob, carol, usd("2"))])
    assert snapshot(ledger) == before
    with pytest.raises(InvalidArgument):
        ledger.post_linked("empty", [])
    with pytest.raises(InvalidArgument):
        ledger.post_linked("self", [Transfer(alice, carol, 1), Transfer(bob, bob, 1)])
    with pytest.raises(InvalidArgument):
        ledger.post_linked("many", [Transfer(alice, carol, 1)] * 65)
    assert snapshot(ledger) == before


# ---- idempotency ---------------------------------------------------------------------------


def test_retry_returns_the_first_posting_without_a_second_effect(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    first = ledger.transfer("t", alice, bob, usd("1"), memo="m")
    count = len(ledger.postings())
    again = ledger.transfer("t", alice, bob, usd("1"), memo="m")
    assert again == first
    assert again.sequence == first.sequence
    assert len(ledger.postings()) == count
    assert ledger.balance(alice).available_atomic == usd("9")
    stored = ledger.postings()[-1]  # what is stored is what was returned, sealed or not yet
    assert replace(stored, hash="") == replace(first, hash="")
    assert first.hash in ("", stored.hash)


def test_retry_of_a_deposit_and_a_withdrawal(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice = ledger.open_account("alice", "USD").account_id
    first = wallets.deposit("d", alice, usd("5"), "USD")
    assert wallets.deposit("d", alice, usd("5"), "USD") == first
    out = wallets.withdraw("w", alice, usd("2"), "USD")
    assert wallets.withdraw("w", alice, usd("2"), "USD") == out
    assert ledger.balance(alice).available_atomic == usd("3")
    reference = payout_reference(ANONYMOUS_SCOPE, "w")  # one payout per (caller, key)
    assert wallets.rails["sandbox-usd"].payouts == {reference: usd("2")}


def test_retry_of_holds_captures_and_voids(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    hold = ledger.hold("h", alice, bob, usd("5"), timeout_s=60)
    assert ledger.hold("h", alice, bob, usd("5"), timeout_s=60) == hold
    capture = ledger.capture("c", hold.hold_id, usd("2"))
    assert ledger.capture("c", hold.hold_id, usd("2")) == capture
    void = ledger.void("v", hold.hold_id)
    assert ledger.void("v", hold.hold_id) == void
    closed = ledger.get_hold(hold.hold_id)
    assert (closed.captured_atomic, closed.voided_atomic) == (usd("2"), usd("3"))
    assert ledger.balance(alice).available_atomic == usd("8")
    assert len(ledger.postings(hold_id=hold.hold_id)) == 3


def test_a_recorded_failure_is_replayed(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "1"), open_wallet(wallets, "bob")
    with pytest.raises(InsufficientFunds) as first:
        ledger.transfer("t", alice, bob, usd("2"))
    wallets.deposit("top-up", alice, usd("5"), "USD")
    before = snapshot(ledger)
    with pytest.raises(InsufficientFunds) as again:
        ledger.transfer("t", alice, bob, usd("2"))
    assert again.value.message == first.value.message
    assert again.value.reason == "INSUFFICIENT_FUNDS"
    assert snapshot(ledger) == before
    hold = ledger.hold("h", alice, bob, usd("1"), timeout_s=60)
    ledger.void("v", hold.hold_id)
    with pytest.raises(HoldClosed):
        ledger.capture("c", hold.hold_id, 1)
    with pytest.raises(HoldClosed):
        ledger.capture("c", hold.hold_id, 1)


@pytest.mark.parametrize("group_commit", [True, False])
def test_a_refused_linked_posting_leaves_no_leg_and_is_replayed(
        wallets: WalletService, group_commit: bool) -> None:
    """Some legs apply before a later one is refused: none of them stays, alone in its
    transaction (no savepoint: the whole transaction rolls back) or group-committed, and the
    refusal is recorded for the key."""
    ledger = Ledger(wallets.ledger.engine, clock_ms=wallets.ledger.clock_ms,
                    group_commit=group_commit)
    try:
        alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
        carol, dave = open_wallet(wallets, "carol"), open_wallet(wallets, "dave", "1")
        before = snapshot(ledger)
        linked = [Transfer(alice, bob, usd("1")), Transfer(dave, carol, usd("1")),
                  Transfer(carol, bob, usd("3"))]  # carol gets 1 and owes 3
        with pytest.raises(InsufficientFunds) as first:
            ledger.post_linked("linked", linked)
        assert snapshot(ledger) == before
        wallets.deposit("top-up", carol, usd("5"), "USD")
        with pytest.raises(InsufficientFunds) as again:
            ledger.post_linked("linked", linked)
        assert again.value.message == first.value.message
        assert ledger.balance(bob).available_atomic == 0
        assert audit.check_balances(ledger).ok and audit.verify_chain(ledger).ok
    finally:
        ledger.close()


def test_same_key_different_request_conflicts(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    ledger.transfer("t", alice, bob, usd("1"))
    with pytest.raises(InsufficientFunds):
        ledger.transfer("failed", alice, bob, usd("100"))
    before = snapshot(ledger)
    conflicting = [
        lambda: ledger.transfer("t", alice, bob, usd("2")),
        lambda: ledger.transfer("t", bob, alice, usd("1")),
        lambda: ledger.transfer("t", alice, bob, usd("1"), memo="other"),
        lambda: ledger.transfer("failed", alice, bob, usd("1")),
    ]
    for call in conflicting:
        with pytest.raises(IdempotencyConflict) as caught:
            call()
        assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert snapshot(ledger) == before
    # A key names a request within its operation: a hold under "t" is a request of its own.
    assert ledger.hold("t", alice, bob, usd("1"), timeout_s=60).amount_atomic == usd("1")


def test_idempotency_keys_are_required_and_bounded(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    for key in ("", "   ", "k" * 201):
        with pytest.raises(InvalidArgument):
            ledger.transfer(key, alice, bob, 1)
    ledger.transfer("k" * 200, alice, bob, 1)


# ---- withdrawals ---------------------------------------------------------------------------


def test_withdraw_rounds_down_to_the_rail_and_keeps_the_remainder(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice = open_wallet(wallets, "alice", "10")
    posting = wallets.withdraw("w", alice, usd("1.239999999"), "USD")
    assert posting.kind == "withdrawal"
    assert {leg.posted_atomic for leg in posting.legs} == {-usd("1.23"), usd("1.23")}
    assert ledger.balance(alice).available_atomic == usd("8.77")
    assert wallets.rails["sandbox-usd"].payouts == {
        payout_reference(ANONYMOUS_SCOPE, "w"): usd("1.23")}
    with pytest.raises(InvalidAmount):
        wallets.withdraw("w-tiny", alice, usd("0.009999999"), "USD")
    with pytest.raises(InsufficientFunds):
        wallets.withdraw("w-big", alice, usd("9"), "USD")
    with pytest.raises(InvalidArgument):
        wallets.withdraw("w-cny", alice, usd("1"), "ECNY")
    assert ledger.balance(alice).available_atomic == usd("8.77")
    usdc = currency("USDC")
    bob = open_wallet(wallets, "bob", "1", code="USDC")
    wallets.withdraw("w-usdc", bob, usdc.atomic("0.1234567"), "USDC")
    assert ledger.balance(bob).available_atomic == usdc.atomic("0.876544")


# ---- reading -------------------------------------------------------------------------------


def test_history_is_newest_first_and_pages(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    carol = open_wallet(wallets, "carol", "10")
    for i in range(5):
        ledger.transfer(f"t{i}", alice, bob, usd("1"), memo=str(i))
        ledger.transfer(f"u{i}", carol, bob, usd("1"))
    ledger.seal()  # so the reads below see the same hashes (PostgreSQL seals after commit)
    history = ledger.history(alice)
    assert [p.memo for p in history] == ["4", "3", "2", "1", "0", "deposit via sandbox-usd"]
    sequences = [p.sequence for p in history]
    assert sequences == sorted(sequences, reverse=True)
    assert ledger.history(alice, limit=2) == history[:2]
    assert ledger.history(alice, before_sequence=history[1].sequence) == history[2:]
    assert len(ledger.history(bob)) == 10
    with pytest.raises(InvalidArgument):
        ledger.history(alice, limit=0)


def test_trace_id_is_stored_when_a_span_is_current(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    untraced = ledger.transfer("t0", alice, bob, 1)
    assert (untraced.trace_id, untraced.span_id) == ("", "")
    with tracer.start_as_current_span("pay") as span:
        posting = ledger.transfer("t1", alice, bob, 1)
        ctx = span.get_span_context()
    (finished,) = exporter.get_finished_spans()
    provider.shutdown()
    assert finished.context.trace_id == ctx.trace_id
    assert posting.trace_id == format(ctx.trace_id, "032x")
    assert posting.span_id == format(ctx.span_id, "016x")
    same = replace(posting, hash="")  # sealed since it was returned (PostgreSQL), or already
    assert [replace(p, hash="") for p in ledger.postings(trace_id=posting.trace_id)] == [same]
    assert [replace(p, hash="") for p in ledger.history(alice, limit=1)] == [same]


# ---- the hash chain ------------------------------------------------------------------------


def test_the_chain_links_every_posting(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    hold = ledger.hold("h", alice, bob, usd("1"), timeout_s=60)
    ledger.capture("c", hold.hold_id, usd("1"))
    ledger.seal()  # PostgreSQL seals after commit; SQLite as it writes
    report = audit.verify_chain(ledger)
    assert report.ok, report.problems
    assert report.postings == len(ledger.postings()) == 3
    assert len({p.hash for p in ledger.postings()}) == 3


@pytest.mark.parametrize("column", ["memo", "entry_amount"])
def test_tampering_breaks_the_chain(wallets: WalletService, column: str) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    target = ledger.transfer("t1", alice, bob, usd("1"), memo="honest")
    ledger.transfer("t2", alice, bob, usd("1"))
    ledger.seal()  # PostgreSQL seals after commit; SQLite as it writes
    assert audit.verify_chain(ledger).ok
    if column == "memo":
        change = update(POSTINGS).where(POSTINGS.c.sequence == target.sequence)
        forged, honest = change.values(memo="forged"), change.values(memo="honest")
    else:
        change = update(ENTRIES).where(ENTRIES.c.sequence == target.sequence,
                                       ENTRIES.c.account_id == bob)
        forged = change.values(posted_atomic=usd("100"))
        honest = change.values(posted_atomic=usd("1"))
    with ledger.engine.begin() as conn:
        conn.execute(forged)
    report = audit.verify_chain(ledger)
    assert report.problems == [f"posting {target.sequence}: hash chain broken"]
    if column == "entry_amount":
        assert not audit.check_balances(ledger).ok
    with ledger.engine.begin() as conn:
        conn.execute(honest)  # restored: the books verify again (checked after the test)
    assert audit.verify_chain(ledger).ok


def test_deleting_the_last_posting_is_detected(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = open_wallet(wallets, "alice", "10"), open_wallet(wallets, "bob")
    last = ledger.transfer("t1", alice, bob, usd("1"))
    ledger.seal()  # PostgreSQL seals after commit; SQLite as it writes
    with ledger.engine.connect() as conn:
        row = conn.execute(POSTINGS.select().where(POSTINGS.c.sequence == last.sequence)).one()
        entries = conn.execute(ENTRIES.select().where(ENTRIES.c.sequence == last.sequence)).all()
    with ledger.engine.begin() as conn:
        conn.execute(ENTRIES.delete().where(ENTRIES.c.sequence == last.sequence))
        conn.execute(POSTINGS.delete().where(POSTINGS.c.sequence == last.sequence))
    assert audit.verify_chain(ledger).problems == ["ledger head does not match the last posting"]
    with ledger.engine.begin() as conn:
        conn.execute(POSTINGS.insert().values(**row._asdict()))
        conn.execute(ENTRIES.insert(), [e._asdict() for e in entries])
