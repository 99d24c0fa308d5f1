"""Hash-locked holds (wallets.conditional): the preimage captures, nothing else does; the
timeout voids; every step is idempotent. On SQLite and PostgreSQL."""

from __future__ import annotations

import os

import pytest

from wallets.audit import check_balances, verify_chain
from wallets.conditional import ConditionalHolds, condition_of
from wallets.errors import HoldClosed, HoldLocked, InvalidArgument, NotFound
from wallets.ledger import Ledger
from wallets.service import WalletService


@pytest.fixture
def world(ledger: Ledger, wallets: WalletService):
    return funded_pair(ledger, wallets)


def funded_pair(ledger: Ledger, wallets: WalletService):  # type: ignore[no-untyped-def]
    """Hash-locked holds over `ledger`, a payer holding 1,000 atomic and a payee."""
    payer = ledger.open_account("payer", "USD").account_id
    payee = ledger.open_account("payee", "USD").account_id
    ledger.transfer("fund", wallets.rail_account(wallets.rail("", "USD")).account_id, payer, 1_000)
    return ConditionalHolds(ledger), payer, payee


def _state(ledger: Ledger) -> list:
    return [(b.owner, b.posted_atomic, b.pending_debits_atomic, b.pending_credits_atomic)
            for b in ledger.accounts()] + [len(ledger.postings(limit=10_000))]


def test_the_preimage_captures_the_whole_hold_to_the_payee(world, ledger: Ledger, clock):
    holds, payer, payee = world
    preimage = os.urandom(32)
    locked = holds.hold("h1", payer, payee, 400, condition_sha256=condition_of(preimage),
                        expires_at_ms=clock() + 30_000)
    assert locked.hold.status == "open" and locked.hold.expires_at_ms == clock() + 30_000
    assert ledger.balance(payer).available_atomic == 600
    done, posting = holds.fulfil("f1", locked.hold.hold_id, preimage)
    assert done.hold.status == "captured" and done.fulfilment == preimage.hex()
    assert posting.kind == "capture" and posting.hold_id == locked.hold.hold_id
    assert ledger.balance(payee).posted_atomic == 400
    assert ledger.balance(payer).posted_atomic == 600
    assert holds.get(locked.hold.hold_id).fulfilment == preimage.hex()  # the next leg learns it
    assert holds.fulfil("f1", locked.hold.hold_id, preimage)[1] == posting  # a retry replays
    assert check_balances(ledger).ok and verify_chain(ledger).ok


def test_no_capture_or_void_without_the_preimage(world, ledger: Ledger, clock):
    holds, payer, payee = world
    preimage = os.urandom(32)
    hold_id = holds.hold("h1", payer, payee, 400, condition_sha256=condition_of(preimage),
                         expires_at_ms=clock() + 30_000).hold.hold_id
    before = _state(ledger)
    with pytest.raises(HoldLocked):
        ledger.capture("c1", hold_id, 400)
    with pytest.raises(HoldLocked):
        ledger.capture("c2", hold_id, 0, final=True)
    with pytest.raises(HoldLocked):
        ledger.void("v1", hold_id)
    with pytest.raises(InvalidArgument, match="does not hash"):
        holds.fulfil("f1", hold_id, os.urandom(32))
    with pytest.raises(InvalidArgument, match="32 bytes"):
        holds.fulfil("f2", hold_id, preimage[:31])
    assert _state(ledger) == before
    holds.fulfil("f1", hold_id, preimage)  # a refused malformed try left the key unused
    assert ledger.balance(payee).posted_atomic == 400


def test_the_timeout_voids_and_the_preimage_then_comes_too_late(world, ledger: Ledger, clock):
    holds, payer, payee = world
    preimage = os.urandom(32)
    hold_id = holds.hold("h1", payer, payee, 400, condition_sha256=condition_of(preimage),
                         expires_at_ms=clock() + 5_000).hold.hold_id
    clock.advance(4.999)
    assert holds.get(hold_id).hold.status == "open"
    clock.advance(0.001)
    assert holds.get(hold_id).hold.status == "expired"
    assert ledger.balance(payer).available_atomic == 1_000
    with pytest.raises(HoldClosed):
        holds.fulfil("f1", hold_id, preimage)
    assert ledger.balance(payee).posted_atomic == 0
    assert holds.get(hold_id).fulfilment == ""


def test_a_hold_retried_under_its_key_is_placed_once(world, ledger: Ledger, clock):
    holds, payer, payee = world
    condition = condition_of(os.urandom(32))
    first = holds.hold("h1", payer, payee, 400, condition_sha256=condition,
                       expires_at_ms=clock() + 30_000)
    clock.advance(1)
    again = holds.hold("h1", payer, payee, 400, condition_sha256=condition,
                       expires_at_ms=first.hold.expires_at_ms)
    assert again == first and ledger.balance(payer).available_atomic == 600


@pytest.mark.parametrize("change", [
    {"condition_sha256": "00" * 31}, {"condition_sha256": "AB" * 32},
    {"expires_at_ms": "soon"}, {"expires_at_ms": 500}, {"expires_at_ms": 10**15},
])
def test_malformed_holds_are_refused_and_change_nothing(world, ledger: Ledger, clock, change):
    holds, payer, payee = world
    args = {"condition_sha256": condition_of(os.urandom(32)), "expires_at_ms": clock() + 30_000}
    if change.get("expires_at_ms") == 500:
        change = {"expires_at_ms": clock() + 500}
    before = _state(ledger)
    with pytest.raises(InvalidArgument):
        holds.hold("h1", payer, payee, 400, **{**args, **change})
    assert _state(ledger) == before


def test_plain_holds_are_not_conditional(world, ledger: Ledger):
    holds, payer, payee = world
    plain = ledger.hold("p1", payer, payee, 100, timeout_s=60)
    with pytest.raises(NotFound):
        holds.get(plain.hold_id)
    with pytest.raises(Exception, match="no condition"):
        holds.fulfil("f1", plain.hold_id, os.urandom(32))
    ledger.capture("c1", plain.hold_id, 100)  # ordinary holds are unaffected by the lock
    assert ledger.balance(payee).posted_atomic == 100
