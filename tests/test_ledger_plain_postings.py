"""Plain transfers on PostgreSQL in one call of `ledger_post_plain` (`wallets._pg_hot`).

The call is the whole transaction: a transfer it posts is committed, recorded under its key and
replayed from it; whatever it does not handle (too little money, a wallet with controls, a key
already used) goes through the general path, which refuses, records and replays as before.
Concurrent spends from one wallet never overdraw it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from tests.conftest import FakeClock, postgres_schema
from wallets import Ledger, WalletService, make_engine
from wallets.audit import check_balances, verify_chain
from wallets.errors import IdempotencyConflict, InsufficientFunds, PolicyDenied
from wallets.ledger import POSTINGS
from wallets.policies import Policy

pytestmark = pytest.mark.postgres
FUNDS = 10_000_000  # one cent of USD in atomic units


@pytest.fixture
def ledger(postgres_url: str) -> Iterator[Ledger]:
    with postgres_schema(postgres_url) as url:
        engine = make_engine(url)
        ledger = Ledger(engine, clock_ms=FakeClock())
        try:
            yield ledger
        finally:
            ledger.close()
            engine.dispose()


def _general_path_calls(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    general = ledger.post_linked_in

    def counted(conn, key, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(key)
        return general(conn, key, *args, **kwargs)

    monkeypatch.setattr(ledger, "post_linked_in", counted)
    return calls


def _wallet(ledger: Ledger, owner: str, cents: int) -> str:
    account = ledger.open_account(owner, "USD").account_id
    if cents:
        WalletService(ledger).deposit(f"fund-{owner}", account, cents * FUNDS, "USD")
    return account


def _postings(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(POSTINGS)).scalar_one())


def test_a_plain_transfer_is_one_call_and_replays_from_its_key(ledger: Ledger,
                                                              monkeypatch: pytest.MonkeyPatch):
    assert ledger._plain is not None
    alice, bob = _wallet(ledger, "alice", 3), ledger.open_account("bob", "USD").account_id
    general = _general_path_calls(ledger, monkeypatch)
    before = _postings(ledger)
    posting = ledger.transfer("t1", alice, bob, FUNDS, memo="lunch")
    assert general == []
    assert [(leg.account_id, leg.currency, leg.posted_atomic) for leg in posting.legs] == [
        (alice, "USD", -FUNDS), (bob, "USD", FUNDS)]
    assert posting.memo == "lunch" and posting.hash == ""
    assert ledger.transfer("t1", alice, bob, FUNDS, memo="lunch") == posting  # replayed
    assert general == []  # replayed by the general path from the key, without applying
    assert _postings(ledger) == before + 1
    with pytest.raises(IdempotencyConflict):
        ledger.transfer("t1", alice, bob, 2 * FUNDS)
    assert ledger.balance(alice).available_atomic == 2 * FUNDS
    assert ledger.balance(bob).available_atomic == FUNDS
    ledger.seal()
    assert not check_balances(ledger).problems and not verify_chain(ledger).problems


def test_a_refusal_goes_through_the_general_path_and_is_recorded(ledger: Ledger):
    alice, bob = _wallet(ledger, "alice", 1), ledger.open_account("bob", "USD").account_id
    before = _postings(ledger)
    for _attempt in range(2):  # refused, then the recorded refusal replayed
        with pytest.raises(InsufficientFunds):
            ledger.transfer("t1", alice, bob, 2 * FUNDS)
    assert ledger.balance(alice).available_atomic == FUNDS
    assert _postings(ledger) == before


def test_a_wallet_with_controls_takes_the_general_path(ledger: Ledger,
                                                       monkeypatch: pytest.MonkeyPatch):
    alice, bob = _wallet(ledger, "alice", 3), ledger.open_account("bob", "USD").account_id
    WalletService(ledger).controls.set_policy("p1", alice, Policy(daily_cap_atomic=FUNDS))
    general = _general_path_calls(ledger, monkeypatch)
    ledger.transfer("t1", alice, bob, FUNDS)
    with pytest.raises(PolicyDenied):
        ledger.transfer("t2", alice, bob, FUNDS)
    assert general == ["t1", "t2"]
    assert ledger.balance(alice).available_atomic == 2 * FUNDS


def test_concurrent_spends_never_overdraw(ledger: Ledger):
    alice = _wallet(ledger, "alice", 10)
    payees = [ledger.open_account(f"payee-{n}", "USD").account_id for n in range(4)]
    outcomes: list[str] = []

    def spend(n: int) -> None:
        try:
            ledger.transfer(f"s{n}", alice, payees[n % 4], FUNDS)
            outcomes.append("ok")
        except InsufficientFunds:
            outcomes.append("refused")

    threads = [threading.Thread(target=spend, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == 10 and outcomes.count("refused") == 14
    assert ledger.balance(alice).available_atomic == 0
    assert sum(ledger.balance(p).available_atomic for p in payees) == 10 * FUNDS
    ledger.seal()
    assert not check_balances(ledger).problems and not verify_chain(ledger).problems


def _batch_sizes(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    plain = ledger._plain
    assert plain is not None
    run = plain._call_batch

    def counted(batch):  # type: ignore[no-untyped-def]
        sizes.append(len(batch))
        return run(batch)

    monkeypatch.setattr(plain._combiner, "_run_batch", counted)
    return sizes


def _concurrently(work, n: int) -> None:  # type: ignore[no-untyped-def]
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_concurrent_plain_transfers_go_together_and_each_is_answered(
        ledger: Ledger, monkeypatch: pytest.MonkeyPatch):
    payers = [_wallet(ledger, f"payer-{n}", 1) for n in range(8)]
    payee = ledger.open_account("payee", "USD").account_id
    sizes = _batch_sizes(ledger, monkeypatch)
    answers: dict[int, int] = {}

    def pay(i: int) -> None:
        for round_ in range(5):
            answers[i * 10 + round_] = ledger.transfer(
                f"p{i}-{round_}", payers[i], payee, FUNDS // 10).sequence

    before = _postings(ledger)
    _concurrently(pay, 8)
    assert len(answers) == 40 and len(set(answers.values())) == 40
    assert sum(sizes) == 40 and max(sizes) > 1, sizes  # some went together
    assert _postings(ledger) == before + 40
    assert ledger.balance(payee).available_atomic == 40 * FUNDS // 10
    assert ledger.transfer("p0-0", payers[0], payee, FUNDS // 10).sequence == answers[0]
    ledger.seal()
    assert not check_balances(ledger).problems and not verify_chain(ledger).problems


def test_a_batch_declines_what_one_call_would_and_an_error_rolls_it_back_whole(
        ledger: Ledger):
    """In a batch, a posting the function declines (too little money, a missing account)
    changes nothing and the others commit; an error in any of them rolls the whole batch back,
    and every posting of it is then left to the general path."""
    alice, bob = _wallet(ledger, "alice", 2), ledger.open_account("bob", "USD").account_id
    plain = ledger._plain
    assert plain is not None

    def params(key: str, accounts: list[str], deltas: list[int], kind: str = "transfer"
               ) -> tuple:  # type: ignore[type-arg]
        return ("", kind, key, "digest", accounts, deltas, kind, "", 1, "", "")

    before = _postings(ledger)
    rows = plain._call_batch([params(f"b{n}", [alice, bob], [-FUNDS, FUNDS])
                              for n in range(3)] + [params("m", [alice, "missing"], [-1, 1])])
    assert [row[0] is None for row in rows] == [False, False, True, True]
    assert ledger.balance(alice).available_atomic == 0
    assert _postings(ledger) == before + 2
    rows = plain._call_batch([params("c1", [bob, alice], [-1, 1]),
                              params("c2", [bob, alice], [-1, 1], kind="k" * 200)])
    assert rows == [None, None]  # the second's kind is too long for its column: an error
    assert _postings(ledger) == before + 2 and ledger.balance(alice).available_atomic == 0


def test_two_plain_transfers_with_one_key_at_once_post_once(ledger: Ledger):
    alice, bob = _wallet(ledger, "alice", 4), ledger.open_account("bob", "USD").account_id
    answers: list[int] = []
    _concurrently(lambda i: answers.append(
        ledger.transfer("same", alice, bob, FUNDS).sequence), 6)
    assert len(set(answers)) == 1
    assert ledger.balance(bob).available_atomic == FUNDS
