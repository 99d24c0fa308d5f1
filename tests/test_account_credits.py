"""Credits that only add to an account are appended and folded after the commit on PostgreSQL
(`wallets._credits`), so a payee shared by many postings (the market's fee account, a busy
seller) is never a row every settlement queues behind; and yet balances, the audit and the
payee's own spending see every credit at once, whether or not it has been folded."""

from __future__ import annotations

import threading

import psycopg
import pytest
from sqlalchemy import Engine, func, select

from wallets import _credits
from wallets.audit import check_balances, verify_chain
from wallets.ledger import Ledger
from wallets.models import Balance

FUNDS = 1_000_000


class Market:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.rail = ledger.open_account("bank", "USD", "rail",
                                        credit_limit_atomic=10**12).account_id
        self.buyer = ledger.open_account("buyer", "USD").account_id
        self.seller = ledger.open_account("seller", "USD").account_id
        self.fees = ledger.open_account("market", "USD", "fees").account_id
        ledger.transfer("fund", self.rail, self.buyer, FUNDS)

    def settle(self, name: str, amount: int, fee: int) -> None:
        """A task's money: a hold for the seller, captured with the market's fee."""
        hold = self.ledger.hold(f"{name}-hold", self.buyer, self.seller, amount + 10,
                                timeout_s=60)
        self.ledger.capture(f"{name}-capture", hold.hold_id, amount,
                            [(self.seller, amount - fee), (self.fees, fee)], final=True)

    def balance(self, account_id: str) -> Balance:
        return self.ledger.balance(account_id)


@pytest.fixture
def market(ledger: Ledger) -> Market:
    return Market(ledger)


def _unfolded(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(_credits.CREDITS)).scalar_one()


def _books_ok(ledger: Ledger) -> None:
    assert check_balances(ledger).ok and verify_chain(ledger).ok


@pytest.fixture
def no_fold_after_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if every node died between a posting's commit and the fold after it."""
    monkeypatch.setattr(_credits, "after_commit", lambda conn, work: True)


def test_payees_are_paid_exactly_and_folded_before_the_caller_hears_back(market: Market):
    market.settle("t1", 700, 20)
    market.settle("t2", 300, 10)
    assert market.balance(market.seller).posted_atomic == 970
    assert market.balance(market.seller).pending_credits_atomic == 0
    assert market.balance(market.fees).posted_atomic == 30
    assert market.balance(market.buyer).posted_atomic == FUNDS - 1000
    assert _unfolded(market.ledger.engine) == 0
    _books_ok(market.ledger)


def test_unfolded_credits_count_everywhere_and_are_spendable_at_once(
        market: Market, no_fold_after_commit: None):
    ledger = market.ledger
    market.settle("t1", 700, 20)
    postgres = ledger.engine.dialect.name == "postgresql"
    assert _unfolded(ledger.engine) == (3 if postgres else 0)  # hold, then seller and fee
    assert market.balance(market.seller).posted_atomic == 680
    assert market.balance(market.fees).posted_atomic == 20
    assert {b.account_id: b.posted_atomic for b in ledger.accounts()}[market.seller] == 680
    _books_ok(ledger)  # the audit counts them too
    # The seller spends everything it was just paid: the refusal its row alone would cause
    # folds its credits first.
    ledger.transfer("spend", market.seller, market.buyer, 680)
    assert market.balance(market.seller).posted_atomic == 0
    # left to the sweep: the fee's, and the buyer's from this transfer
    assert _unfolded(ledger.engine) == (2 if postgres else 0)
    assert _credits.fold_pending(ledger.engine) == (2 if postgres else 0)
    assert _unfolded(ledger.engine) == 0
    assert market.balance(market.fees).posted_atomic == 20
    _books_ok(ledger)


def test_a_batch_of_transfers_spends_unfolded_credits(market: Market,
                                                      no_fold_after_commit: None):
    from wallets._bulk import TransferRequest
    from wallets.models import Transfer

    market.settle("t1", 500, 0)
    results = market.ledger.transfer_many([
        TransferRequest("b1", Transfer(market.seller, market.buyer, 300)),
        TransferRequest("b2", Transfer(market.seller, market.buyer, 200))])
    assert all(not isinstance(r, Exception) for r in results), results
    assert market.balance(market.seller).posted_atomic == 0
    _books_ok(market.ledger)


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_settlements_do_not_wait_for_a_locked_seller_or_fee_account(market: Market):
    """Another transaction holds the seller's and the fee account's rows (a fold, the seller
    spending, an operator's payout): holds for the seller and captures paying both go through
    meanwhile; their credits fold once it lets go."""
    url = market.ledger.engine.url.set(drivername="postgresql").render_as_string(
        hide_password=False)
    with psycopg.connect(url) as blocker:
        blocker.execute("SELECT 1 FROM ledger_accounts WHERE id = ANY(%s) FOR UPDATE",
                        ([market.fees, market.seller],))
        done = threading.Event()
        errors: list[BaseException] = []

        def settle() -> None:
            try:
                for i in range(5):
                    market.settle(f"t{i}", 100, 3)
                done.set()
            except BaseException as error:
                errors.append(error)

        worker = threading.Thread(target=settle, daemon=True)
        worker.start()
        finished = done.wait(30)
        assert not errors, errors
        assert finished, "a settlement waited for the fee account's row"
        assert market.balance(market.fees).posted_atomic == 15  # counted, not yet folded
        assert market.balance(market.seller).posted_atomic == 5 * 97
        assert _unfolded(market.ledger.engine) >= 10
        blocker.rollback()
    worker.join(5)
    assert _credits.fold_pending(market.ledger.engine) >= 10
    assert _unfolded(market.ledger.engine) == 0
    assert market.balance(market.fees).posted_atomic == 15
    assert market.balance(market.seller).posted_atomic == 5 * 97
    _books_ok(market.ledger)


def test_concurrent_settlements_to_one_seller_and_fee_account_add_up(market: Market):
    threads, per_thread = 4, 10
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(per_thread):
                market.settle(f"w{n}-{i}", 100, 5)
                if i % 4 == 0:
                    _credits.fold_pending(market.ledger.engine)  # a sweeping node races
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors
    tasks = threads * per_thread
    assert market.balance(market.seller).posted_atomic == 95 * tasks
    assert market.balance(market.fees).posted_atomic == 5 * tasks
    assert market.balance(market.seller).pending_credits_atomic == 0
    assert market.balance(market.buyer).posted_atomic == FUNDS - 100 * tasks
    _credits.fold_pending(market.ledger.engine)
    assert _unfolded(market.ledger.engine) == 0
    _books_ok(market.ledger)


def test_the_console_shows_unfolded_credits_as_whole_numbers(market: Market,
                                                             no_fold_after_commit: None):
    from marketplace.console.reads import ConsoleReads

    market.settle("t1", 700, 20)
    rows, _next = ConsoleReads(market.ledger).wallets()
    seller = next(b for row in rows for b in row.accounts if b.account_id == market.seller)
    assert seller.posted_atomic == 680 and type(seller.posted_credits_atomic) is int


def test_downgrading_the_schema_keeps_unfolded_credits_and_outcomes(
        market: Market, no_fold_after_commit: None, monkeypatch: pytest.MonkeyPatch):
    """The migrations that add the appended tables fold them into the rows before dropping
    them: money and ratings survive a downgrade."""
    from alembic import command
    from sqlalchemy import insert

    from marketplace.reputation import PENDING, REPUTATION
    from wallets.schema import _config, upgrade

    ledger = market.ledger
    market.settle("t1", 700, 20)
    before = {b.account_id: b for b in ledger.accounts()}
    upgrade(ledger.engine, "marketplace")
    with ledger.engine.begin() as conn:
        conn.execute(insert(PENDING), [dict(seller_id="s1", score_permille=1000),
                                       dict(seller_id="s1", score_permille=0)])
    for package, revision in (("wallets", "3c8f1b6d9e20"), ("marketplace", "8a41f0c6d2e7")):
        config = _config(package)
        with ledger.engine.begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, revision)
    with ledger.engine.connect() as conn:
        c = _credits.ACCOUNTS.c  # the columns of that revision
        rows = {r.id: r for r in conn.execute(select(c.id, c.posted_credits_atomic,
                                                     c.pending_credits_atomic))}
        rated = conn.execute(select(REPUTATION.c.rated, REPUTATION.c.score_sum)
                             .where(REPUTATION.c.seller_id == "s1")).one()
    for account_id, balance in before.items():
        row = rows[account_id]
        assert (row.posted_credits_atomic, row.pending_credits_atomic) == (
            balance.posted_credits_atomic, balance.pending_credits_atomic)
    assert tuple(rated) == (2, 1000)
