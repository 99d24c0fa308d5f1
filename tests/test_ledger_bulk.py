"""`Ledger.transfer_many`: the bulk path keeps every rule of `Ledger.transfer`."""

from __future__ import annotations

import pytest

from wallets import Ledger, Transfer, WalletService
from wallets._bulk import TransferRequest
from wallets.audit import check_balances, verify_chain
from wallets.errors import IdempotencyConflict, InsufficientFunds, InvalidAmount, NotFound
from wallets.models import Posting


@pytest.fixture
def funded(ledger: Ledger, wallets: WalletService) -> list[str]:
    ids = [ledger.open_account(f"bulk-{i}", "USD").account_id for i in range(3)]
    wallets.deposit("fund-0", ids[0], 1_000_000_000, "USD")
    return ids


def _posted(ledger: Ledger, ids: list[str]) -> list[int]:
    return [ledger.balance(a).posted_atomic for a in ids]


def test_each_transfer_succeeds_or_fails_on_its_own(ledger: Ledger, funded: list[str]):
    a, b, c = funded
    results = ledger.transfer_many([
        TransferRequest("t1", Transfer(a, b, 600_000_000)),
        TransferRequest("t2", Transfer(a, c, 600_000_000)),  # only 400_000_000 left
        TransferRequest("t3", Transfer(b, c, 100_000_000)),
        TransferRequest("t4", Transfer(a, "missing", 1)),
        TransferRequest("t5", Transfer(a, b, 0)),
    ])
    assert isinstance(results[0], Posting) and isinstance(results[2], Posting)
    assert isinstance(results[1], InsufficientFunds)
    assert isinstance(results[3], NotFound)
    assert isinstance(results[4], InvalidAmount)
    assert _posted(ledger, funded) == [400_000_000, 500_000_000, 100_000_000]
    assert check_balances(ledger).ok and verify_chain(ledger).ok


def test_keys_are_shared_with_the_single_path(ledger: Ledger, funded: list[str]):
    a, b, _ = funded
    single = ledger.transfer("k1", a, b, 5)
    again = ledger.transfer_many([TransferRequest("k1", Transfer(a, b, 5)),
                                  TransferRequest("k2", Transfer(a, b, 7)),
                                  TransferRequest("k2", Transfer(a, b, 7)),
                                  TransferRequest("k2", Transfer(a, b, 8))])
    assert isinstance(again[0], Posting) and again[0].sequence == single.sequence
    assert isinstance(again[1], Posting) and again[2] == again[1]
    assert isinstance(again[3], IdempotencyConflict)
    assert ledger.transfer("k2", a, b, 7).sequence == again[1].sequence
    assert _posted(ledger, funded)[1] == 12
    failed = ledger.transfer_many([TransferRequest("k3", Transfer(b, a, 10**12))])
    assert isinstance(failed[0], InsufficientFunds)
    with pytest.raises(InsufficientFunds):  # the recorded failure is replayed
        ledger.transfer("k3", b, a, 10**12)
    assert check_balances(ledger).ok and verify_chain(ledger).ok


def test_bulk_debits_of_governed_wallets_obey_their_policy(ledger: Ledger, funded: list[str]):
    from wallets import Policy, PolicyDenied

    a, b, c = funded
    WalletService(ledger).controls.set_policy("p1", a, Policy(per_call_cap_atomic=10))
    results = ledger.transfer_many([TransferRequest("g1", Transfer(a, b, 11)),
                                    TransferRequest("g2", Transfer(a, c, 10)),
                                    TransferRequest("g3", Transfer(a, c, 5))])
    assert isinstance(results[0], PolicyDenied)
    assert isinstance(results[1], Posting) and isinstance(results[2], Posting)
    assert _posted(ledger, funded)[1:] == [0, 15]
    assert check_balances(ledger).ok and verify_chain(ledger).ok
