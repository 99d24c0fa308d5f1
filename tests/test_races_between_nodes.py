"""Look-then-write races between nodes of one market over one PostgreSQL database (threads
here, each with its own engine, as two node processes would be). SQLite has one writer at a
time: the interleaving cannot happen there.

Each test widens the window between the look and the write with a barrier, so the
interleaving is the bad one every time: both parties look before either writes.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select

from marketplace.discovery import OFFERS
from marketplace.identity import AgentKey
from marketplace.registry import Registry
from marketplace.testing import make_listing, make_skill
from tests.conftest import postgres_schema
from wallets import approvals, ecny
from wallets.ecny import EcnyGuard, EcnyWallets
from wallets.errors import ApprovalDenied, ApprovalRequired, FailedPrecondition
from wallets.guard import SpendGuard
from wallets.ledger import Ledger, TransferRequest
from wallets.models import Transfer
from wallets.policies import Policy
from wallets.service import WalletService
from wallets.store import make_engine

X = 10_000_000  # 0.1 USD in atomic units of the tests' USD wallets (9 decimals below cents)


def _together(*calls: Callable[[], Any]) -> tuple[dict[int, Any], dict[int, Exception]]:
    """Run each call on its own thread; (results, errors) by the call's index."""
    results: dict[int, Any] = {}
    errors: dict[int, Exception] = {}

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            results[index] = call()
        except Exception as error:  # every outcome is reported
            errors[index] = error

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results, errors


def _first_time_each_thread_waits(barrier: threading.Barrier) -> Callable[[], None]:
    """Waits at `barrier` the first time each thread calls it (a retry runs straight on)."""
    waited: set[int] = set()

    def wait() -> None:
        if threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            barrier.wait()
    return wait


pytestmark = pytest.mark.postgres


@pytest.fixture
def db_url(postgres_url: str) -> Iterator[str]:
    with postgres_schema(postgres_url) as url:
        yield url


@pytest.fixture
def two_ledgers(db_url: str) -> Iterator[list[Ledger]]:
    """Two nodes' ledgers over one database; alice holds 100 X, bob nothing."""
    engines = [make_engine(db_url) for _ in range(2)]
    ledgers = [Ledger(engine, sealer=False) for engine in engines]
    try:
        yield ledgers
    finally:
        for ledger in ledgers:
            ledger.close()
        for engine in engines:
            engine.dispose()


def _funded(ledger: Ledger) -> tuple[str, str]:
    alice = ledger.open_account("alice", "USD").account_id
    bob = ledger.open_account("bob", "USD").account_id
    WalletService(ledger).deposit("fund", alice, 100 * X, "USD")
    return alice, bob


def test_two_nodes_advertising_one_new_listing_both_succeed(db_url: str, monkeypatch):
    """Replicas of a seller share its key and advertise at once through two nodes: each
    deletes then inserts the listing, and the second insert was a duplicate key (INTERNAL)."""
    engines = [make_engine(db_url) for _ in range(2)]
    nodes = [Registry(engine) for engine in engines]
    listing = make_listing(AgentKey.generate(), make_skill("echo"), name="s")
    wait = _first_time_each_thread_waits(threading.Barrier(2, timeout=10))
    real = Registry._reputations

    def reputations_then_wait(conn, ids):  # between the DELETE and the INSERT
        found = real(conn, ids)
        wait()
        return found

    monkeypatch.setattr(Registry, "_reputations", staticmethod(reputations_then_wait))
    try:
        results, errors = _together(*(lambda n=n: n.advertise(listing, 60) for n in nodes))
        assert errors == {}
        assert [len(found.skills) for found in results.values()] == [1, 1]
        monkeypatch.undo()
        assert nodes[1].get(listing.agent_id).name == "s"
        with engines[0].connect() as conn:  # one priced offer, not one per advertise
            offers = conn.execute(select(OFFERS).where(OFFERS.c.agent_id == listing.agent_id))
            assert len(offers.all()) == 1
    finally:
        for engine in engines:
            engine.dispose()


def test_approve_and_deny_at_once_make_one_decision(two_ledgers: list[Ledger], monkeypatch):
    """Two operators decide one approval on two nodes at once: one decision stands, the other
    is refused against it, and the spend's retry follows the decision that stands (before:
    both answered success, the approval overwrote the denial, and the money moved)."""
    ledger = two_ledgers[0]
    alice, bob = _funded(ledger)
    services = [WalletService(each) for each in two_ledgers]
    services[0].controls.set_policy("p", alice, Policy(approval_threshold_atomic=X))
    with pytest.raises(ApprovalRequired) as asked:
        ledger.transfer("spend-1", alice, bob, 50 * X)
    approval = asked.value.approval_id
    wait = _first_time_each_thread_waits(threading.Barrier(2, timeout=10))
    real_from_row = approvals.Approval.from_row.__func__  # type: ignore[attr-defined]

    def from_row_then_wait(cls, row, now_ms):
        found = real_from_row(cls, row, now_ms)
        wait()  # both read "pending" before either writes
        if threading.current_thread().name == "approving":
            time.sleep(0.3)  # the denial commits first
        return found

    def approve() -> Any:
        threading.current_thread().name = "approving"
        return services[0].controls.approve("k-approve", approval, decided_by="ops-1")

    def deny() -> Any:
        return services[1].controls.deny("k-deny", approval, decided_by="ops-2", note="fraud")

    monkeypatch.setattr(approvals.Approval, "from_row", classmethod(from_row_then_wait))
    results, errors = _together(approve, deny)
    monkeypatch.undo()
    assert list(results) == [1] and results[1].status == "denied"
    assert isinstance(errors[0], FailedPrecondition) and "already denied" in str(errors[0])
    stored = services[0].controls.approvals(alice)[0]
    assert (stored.status, stored.decided_by, stored.note) == ("denied", "ops-2", "fraud")
    with pytest.raises(ApprovalDenied):
        ledger.transfer("spend-1", alice, bob, 50 * X)
    assert ledger.balance(bob).posted_atomic == 0


def test_two_first_tries_of_one_spend_record_one_approval_quietly(
        two_ledgers: list[Ledger], monkeypatch, caplog):
    """A spend above the approval threshold, tried on two nodes at once: both are told to
    wait for the same approval, it is written once, and nothing fails in the log."""
    ledger = two_ledgers[0]
    alice, bob = _funded(ledger)
    WalletService(ledger).controls.set_policy("p", alice, Policy(approval_threshold_atomic=X))
    wait = _first_time_each_thread_waits(threading.Barrier(2, timeout=10))
    real_insert = approvals.insert_unless_present

    def insert_after_wait(*args, **kwargs):
        wait()  # both looked and found no approval
        return real_insert(*args, **kwargs)

    monkeypatch.setattr(approvals, "insert_unless_present", insert_after_wait)
    _results, errors = _together(*(lambda each=each: each.transfer("spend-2", alice, bob, 50 * X)
                                   for each in two_ledgers))
    monkeypatch.undo()
    assert len(errors) == 2 and all(isinstance(e, ApprovalRequired) for e in errors.values())
    assert errors[0].approval_id == errors[1].approval_id
    assert [a.approval_id for a in WalletService(ledger).controls.approvals(alice)] == [
        errors[0].approval_id]
    assert [r for r in caplog.records if "could not record" in r.getMessage()] == []


def test_two_nodes_reading_a_new_ecny_wallet_both_succeed(db_url: str, monkeypatch):
    """The operator's first look at an e-CNY wallet writes its registration down; two looks
    at once on two nodes both answer, with the same pseudonym."""
    engines = [make_engine(db_url) for _ in range(2)]
    ledgers = [Ledger(engine, sealer=False, guard=EcnyGuard()) for engine in engines]
    try:
        account = ledgers[0].open_account("holder", "ECNY").account_id
        wait = _first_time_each_thread_waits(threading.Barrier(2, timeout=10))
        real_secrets = ecny.secrets

        class SecretsAfterBoth:  # drawn between the look and the insert
            @staticmethod
            def token_hex(n: int) -> str:
                wait()
                return real_secrets.token_hex(n)

        monkeypatch.setattr(ecny, "secrets", SecretsAfterBoth)
        results, errors = _together(*(lambda each=each: EcnyWallets(each).wallet(account)
                                      for each in ledgers))
        assert errors == {}
        assert results[0].pseudonym == results[1].pseudonym
    finally:
        for ledger in ledgers:
            ledger.close()
        for engine in engines:
            engine.dispose()


def test_a_bulk_batch_sent_twice_at_once_is_posted_once(two_ledgers: list[Ledger],
                                                          monkeypatch):
    """A batch of transfers sent again (a lost answer) while its first try commits, through
    another node: the second replays the first's outcome, it does not fail on the key."""
    ledger = two_ledgers[0]
    alice, bob = _funded(ledger)
    batch = [TransferRequest(f"bulk-{uuid.uuid4().hex}", Transfer(alice, bob, X))]
    wait = _first_time_each_thread_waits(threading.Barrier(2, timeout=10))
    real_controlled = SpendGuard.controlled

    def controlled_then_wait(self, conn, account_ids):  # both in, before the accounts lock
        found = real_controlled(self, conn, account_ids)
        wait()
        return found

    monkeypatch.setattr(SpendGuard, "controlled", controlled_then_wait)
    results, errors = _together(*(lambda each=each: each.transfer_many(batch)
                                  for each in two_ledgers))
    monkeypatch.undo()
    assert errors == {}
    assert results[0][0].sequence == results[1][0].sequence
    assert ledger.balance(bob).posted_atomic == X
