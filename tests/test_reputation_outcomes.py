"""A seller's reputation is exact on both backends, though on PostgreSQL its row is written
after the settlement's commit (so that one busy seller's settlements do not queue behind it):
an outcome is counted once, whether the fold after the commit runs, races another fold, or
never runs because the node died (then the sweep folds it)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, func, select

from marketplace.reputation import PENDING, fold_pending, record_outcome, reputation
from marketplace.testing import Harness, funded_market
from wallets import _mutation

PRICE = 1_000
OK = {"text": "fine"}


@pytest.fixture
def market(engine: Engine, clock) -> Iterator[Harness]:  # type: ignore[no-untyped-def]
    with funded_market(engine, clock, 1_000_000_000, price_atomic=PRICE) as harness:
        yield harness


def _unfolded(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(PENDING)).scalar_one()


def _listed(market: Harness) -> tuple[int, int]:
    listing = market.registry.discover("echo", "USD")[0]
    return listing.reputation_permille, listing.rated_agreements


def _settle(market: Harness, calls: int) -> None:
    deal = market.deal(price_atomic=PRICE, quantity=2)
    market.open(deal)
    market.redeem(deal, [OK] * calls)
    market.confirm(deal)


def test_a_settlement_rates_the_seller_before_its_caller_hears_back(market: Harness):
    _settle(market, 2)  # settled: 1000
    deal = market.deal(price_atomic=PRICE, quantity=2)
    market.open(deal)
    assert market.redeem(deal, [])["state"] == "refunded"  # nothing delivered: 0
    with market.ledger.engine.connect() as conn:
        assert reputation(conn, market.seller.agent_id) == (500, 2)
    assert _listed(market) == (500, 2)  # discovery already ranks on it
    assert _unfolded(market.ledger.engine) == 0


def test_an_outcome_its_node_never_folded_counts_at_once_and_the_sweep_folds_it(
        market: Harness, monkeypatch: pytest.MonkeyPatch):
    _settle(market, 1)
    # The node dies between the settlement's commit and the fold after it.
    monkeypatch.setattr("marketplace.reputation.after_commit", lambda conn, work: True)
    with market.ledger._write() as conn:
        record_outcome(conn, market.seller.agent_id, 0)
    engine = market.ledger.engine
    with engine.connect() as conn:
        assert reputation(conn, market.seller.agent_id) == (500, 2)
    if engine.dialect.name != "postgresql":  # folded in the settlement's own transaction
        assert _unfolded(engine) == 0 and _listed(market) == (500, 2)
        return
    assert _unfolded(engine) == 1 and _listed(market) == (1000, 1)
    assert fold_pending(engine) == 1
    assert fold_pending(engine) == 0
    assert _unfolded(engine) == 0 and _listed(market) == (500, 2)
    with engine.connect() as conn:
        assert reputation(conn, market.seller.agent_id) == (500, 2)


def test_outcomes_recorded_and_folded_concurrently_are_each_counted_once(market: Harness):
    seller, ledger = market.seller.agent_id, market.ledger
    threads, per_thread = 6, 15
    errors: list[BaseException] = []

    def rate(n: int) -> None:
        try:
            for i in range(per_thread):
                with ledger._write() as conn:
                    record_outcome(conn, seller, 1000 if (n + i) % 2 else 0)
                if i % 5 == 0:
                    fold_pending(ledger.engine)  # a sweeping node races the folds
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=rate, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors
    fold_pending(ledger.engine)
    total = threads * per_thread
    ones = sum(1 for n in range(threads) for i in range(per_thread) if (n + i) % 2)
    with ledger.engine.connect() as conn:
        assert reputation(conn, seller) == (ones * 1000 // total, total)
    assert _unfolded(ledger.engine) == 0
    assert _listed(market) == (ones * 1000 // total, total)


def test_work_after_commit_runs_only_once_the_transaction_committed(market: Harness):
    ran: list[str] = []
    with market.ledger._write() as conn:
        assert _mutation.after_commit(conn, lambda folding: ran.append("committed"))
        assert ran == []
    assert ran == ["committed"]
    with pytest.raises(RuntimeError), market.ledger._write() as conn:
        _mutation.after_commit(conn, lambda folding: ran.append("rolled back"))
        raise RuntimeError("the transaction fails")
    assert ran == ["committed"]
    with market.ledger.engine.begin() as conn:  # not a ledger transaction: nothing queued
        assert not _mutation.after_commit(conn, lambda folding: ran.append("never"))
    assert ran == ["committed"]
