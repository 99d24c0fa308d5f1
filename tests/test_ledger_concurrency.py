"""No double spend under concurrency: many threads race for one balance, one hold, one key.

Every test runs on both backends. 16 threads share one Ledger (as a server process does); on
SQLite writers queue on the database lock, on PostgreSQL on row locks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from wallets import audit
from wallets.errors import AgentmarketError, HoldClosed, InsufficientFunds, InvalidAmount
from wallets.ledger import Ledger
from wallets.models import Posting
from wallets.service import WalletService

THREADS = 16
ATTEMPTS = 1000
FUNDED = 100  # the balance covers exactly this many of the ATTEMPTS
X = 10_000_000  # one cent in USD atomic units

pytestmark = pytest.mark.slow


def race(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run every call on THREADS threads; each outcome is a result or the error raised."""

    def attempt(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except AgentmarketError as error:
            return error

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(attempt, calls))


def kinds(outcomes: list[Any]) -> Counter[str]:
    return Counter(type(outcome).__name__ for outcome in outcomes)


def assert_sound(ledger: Ledger) -> None:
    balances = audit.check_balances(ledger)
    assert balances.ok, balances.problems
    chain = audit.verify_chain(ledger)
    assert chain.ok, chain.problems


def funded_pair(wallets: WalletService) -> tuple[str, str]:
    alice = wallets.ledger.open_account("alice", "USD").account_id
    bob = wallets.ledger.open_account("bob", "USD").account_id
    wallets.deposit("fund", alice, FUNDED * X, "USD")
    return alice, bob


def test_concurrent_debits_never_overdraw(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = funded_pair(wallets)
    outcomes = race([
        lambda i=i: ledger.transfer(f"debit-{i}", alice, bob, X) for i in range(ATTEMPTS)
    ])
    assert kinds(outcomes) == {"Posting": FUNDED, "InsufficientFunds": ATTEMPTS - FUNDED}
    assert ledger.balance(alice).posted_atomic == 0
    assert ledger.balance(bob).posted_atomic == FUNDED * X
    sequences = [o.sequence for o in outcomes if isinstance(o, Posting)]
    assert sorted(sequences) == list(range(2, FUNDED + 2))  # gapless after the deposit
    assert_sound(ledger)


def test_concurrent_holds_never_overcommit(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = funded_pair(wallets)
    outcomes = race([
        lambda i=i: ledger.hold(f"hold-{i}", alice, bob, X, timeout_s=3600)
        for i in range(ATTEMPTS)
    ])
    assert kinds(outcomes) == {"Hold": FUNDED, "InsufficientFunds": ATTEMPTS - FUNDED}
    a, b = ledger.balance(alice), ledger.balance(bob)
    assert (a.available_atomic, a.pending_debits_atomic) == (0, FUNDED * X)
    assert b.pending_credits_atomic == FUNDED * X
    assert_sound(ledger)


def test_concurrent_captures_never_exceed_the_hold(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = funded_pair(wallets)
    hold = ledger.hold("hold", alice, bob, FUNDED * X, timeout_s=3600)
    outcomes = race([
        lambda i=i: ledger.capture(f"capture-{i}", hold.hold_id, X) for i in range(ATTEMPTS)
    ])
    counts = kinds(outcomes)
    assert counts["Posting"] == FUNDED
    refused = (HoldClosed, InvalidAmount)
    assert all(isinstance(o, (Posting, *refused)) for o in outcomes), counts
    closed = ledger.get_hold(hold.hold_id)
    assert (closed.status, closed.captured_atomic, closed.voided_atomic) == (
        "captured", FUNDED * X, 0)
    a, b = ledger.balance(alice), ledger.balance(bob)
    assert (a.posted_atomic, a.pending_debits_atomic) == (0, 0)
    assert (b.posted_atomic, b.pending_credits_atomic) == (FUNDED * X, 0)
    assert_sound(ledger)


def test_capture_void_and_expiry_race_resolve_a_hold_once(wallets: WalletService,
                                                          clock: Any) -> None:
    ledger = wallets.ledger
    alice, bob = funded_pair(wallets)
    holds = [ledger.hold(f"hold-{i}", alice, bob, X, timeout_s=60) for i in range(20)]
    clock.advance(59.999)
    calls: list[Callable[[], Any]] = []
    for h in holds:
        calls += [lambda h=h: ledger.capture(f"c-{h.hold_id}", h.hold_id, X // 2),
                  lambda h=h: ledger.capture(f"f-{h.hold_id}", h.hold_id, X // 4, final=True),
                  lambda h=h: ledger.void(f"v-{h.hold_id}", h.hold_id),
                  lambda h=h: ledger.expire_holds(hold_id=h.hold_id)]
    calls.append(lambda: clock.advance(0.001))
    race(calls)
    clock.advance(1)
    ledger.expire_holds()
    for h in holds:
        done = ledger.get_hold(h.hold_id)
        assert done.status != "open"
        assert done.captured_atomic + done.voided_atomic == X
    a, b = ledger.balance(alice), ledger.balance(bob)
    assert (a.pending_debits_atomic, b.pending_credits_atomic) == (0, 0)
    assert a.posted_atomic + b.posted_atomic == FUNDED * X
    assert_sound(ledger)


def test_concurrent_duplicates_of_one_key_post_once(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = funded_pair(wallets)
    outcomes = race([lambda: ledger.transfer("same", alice, bob, X)] * 20)
    assert all(isinstance(o, Posting) for o in outcomes), kinds(outcomes)
    assert len({o.sequence for o in outcomes}) == 1
    assert len(set(outcomes)) == 1
    assert ledger.balance(bob).posted_atomic == X
    assert len(ledger.postings()) == 2
    held = race([lambda: ledger.hold("same-hold", alice, bob, X, timeout_s=60)] * 20)
    assert len(set(held)) == 1
    assert ledger.balance(alice).pending_debits_atomic == X
    assert_sound(ledger)


def test_concurrent_duplicates_replay_one_failure(wallets: WalletService) -> None:
    ledger = wallets.ledger
    alice, bob = funded_pair(wallets)
    outcomes = race([lambda: ledger.transfer("too-much", alice, bob, (FUNDED + 1) * X)] * 20)
    assert all(isinstance(o, InsufficientFunds) for o in outcomes), kinds(outcomes)
    assert len({o.message for o in outcomes}) == 1
    assert len(ledger.postings()) == 1
    assert_sound(ledger)
