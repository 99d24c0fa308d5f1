"""Sandbox rails with a settlement delay: a withdrawal is a hold until `settle_due` captures it
and pays it out; unsettled past its grace, the money goes back. SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from tests.conftest import FakeClock
from wallets import audit
from wallets.caller import ANONYMOUS_SCOPE
from wallets.currencies import currency
from wallets.errors import InvalidArgument, PolicyDenied
from wallets.ledger import Ledger
from wallets.policies import Policy
from wallets.rails import (
    MAX_SETTLEMENT_DELAY_S,
    SETTLEMENT_GRACE_S,
    SandboxRail,
    payout_reference,
)
from wallets.service import WalletService

USD = currency("USD")


def key() -> str:
    return f"test:{uuid.uuid4().hex}"


class FlakyRail(SandboxRail):
    """Fails its first payout, as a rail that times out after the ledger captured."""

    failures = 1

    def send_payout(self, reference: str, amount_atomic: int) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("rail timed out")
        super().send_payout(reference, amount_atomic)


@pytest.fixture
def rail() -> SandboxRail:
    return FlakyRail(USD, settlement_delay_s=60)


@pytest.fixture
def service(ledger: Ledger, rail: SandboxRail) -> WalletService:
    return WalletService(ledger, rails=[rail])


@pytest.fixture
def alice(service: WalletService) -> str:
    account = service.ledger.open_account("alice", "USD").account_id
    service.deposit(key(), account, USD.atomic("1.00"), "USD")  # deposits: credited at once
    return account


def assert_sound(ledger: Ledger) -> None:
    assert sum(b.posted_atomic for b in ledger.accounts()) == 0
    assert audit.check_balances(ledger).ok and audit.verify_chain(ledger).ok


def test_zero_delay_pays_out_at_once(wallets: WalletService):
    account = wallets.ledger.open_account("bob", "USD").account_id
    wallets.deposit(key(), account, USD.atomic("1.00"), "USD")
    k = key()
    assert wallets.withdraw(k, account, USD.atomic("0.25"), "USD").kind == "withdrawal"
    assert wallets.rails["sandbox-usd"].payouts == {  # type: ignore[attr-defined]
        payout_reference(ANONYMOUS_SCOPE, k): USD.atomic("0.25")}
    assert wallets.withdrawals() == []


def test_a_delayed_withdrawal_is_held_then_captured_and_paid_once_by_the_sweep(
        service: WalletService, rail: SandboxRail, alice: str, clock: FakeClock):
    ledger = service.ledger
    k = key()
    posting = service.withdraw(k, alice, USD.atomic("0.123456789"), "USD")
    assert posting.kind == "hold" and posting.hold_id
    again = service.withdraw(k, alice, USD.atomic("0.123456789"), "USD")  # a retry
    assert replace(again, hash="") == replace(posting, hash="")  # sealed since, or not yet
    wallet = ledger.balance(alice)
    assert (wallet.pending_debits_atomic, wallet.available_atomic) == \
        (USD.atomic("0.12"), USD.atomic("0.88"))  # rounded to the rail; the rest stays
    (pending,) = service.withdrawals(alice)
    assert (pending.status, pending.amount_atomic, pending.due_at_ms) == \
        ("pending", USD.atomic("0.12"), clock.now_ms + 60_000)
    assert service.settle_due() == 0 and rail.payouts == {}

    clock.advance(60)
    assert service.settle_due() == 0  # captured, then the rail failed
    assert service.withdrawals()[0].status == "captured" and rail.payouts == {}
    assert service.settle_due() == 1  # the next sweep pays; the capture is not repeated
    assert rail.payouts == {payout_reference(ANONYMOUS_SCOPE, k): USD.atomic("0.12")}
    assert service.withdrawals()[0].reference == payout_reference(ANONYMOUS_SCOPE, k)
    assert service.withdrawals()[0].status == "paid"
    assert service.settle_due() == 0
    wallet = ledger.balance(alice)
    assert (wallet.posted_debits_atomic, wallet.pending_debits_atomic) == (USD.atomic("0.12"), 0)
    assert [p.kind for p in ledger.history(alice)] == ["capture", "hold", "deposit"]
    assert_sound(ledger)


def test_an_unsettled_withdrawal_goes_back_to_the_wallet(service: WalletService,
                                                         rail: SandboxRail, alice: str,
                                                         clock: FakeClock):
    service.withdraw(key(), alice, USD.atomic("0.50"), "USD")
    clock.advance(60 + SETTLEMENT_GRACE_S)
    assert service.ledger.balance(alice).available_atomic == USD.atomic("1.00")  # expired
    assert service.settle_due() == 0
    assert service.withdrawals()[0].status == "returned" and rail.payouts == {}
    assert_sound(service.ledger)


def test_a_delayed_withdrawal_goes_through_the_wallet_policy(service: WalletService,
                                                             alice: str):
    service.controls.set_policy(key(), alice, Policy(per_call_cap_atomic=USD.atomic("0.10")))
    before = [b for b in service.ledger.accounts()], len(service.ledger.postings())
    with pytest.raises(PolicyDenied, match="per_call_cap_atomic"):
        service.withdraw(key(), alice, USD.atomic("0.50"), "USD")
    assert ([b for b in service.ledger.accounts()], len(service.ledger.postings())) == before
    assert service.withdrawals() == []


@pytest.mark.parametrize("delay", [-1, MAX_SETTLEMENT_DELAY_S + 1, True])
def test_a_bad_settlement_delay_is_refused(delay: int):
    with pytest.raises(InvalidArgument, match="settlement_delay_s"):
        SandboxRail(USD, settlement_delay_s=delay)
