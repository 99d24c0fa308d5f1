"""Background work runs once across nodes: the node holding the sweep lease sweeps, the others
take over when it goes.

Three real nodes over one PostgreSQL schema: exactly one holds the advisory lock (PostgreSQL's
own pg_locks says which, by the node's application_name), a hold whose timeout passes while the
sweeping node is gone is expired by the node that took over, and the lease of one schema is not
another's (each test's market runs in its own schema of one database).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from marketplace.node import MarketplaceNode
from tests.conftest import postgres_schema

USD = "USD"
DOLLAR = 1_000_000_000


def _sweepers(url: str) -> list[str]:
    """The application names of the sessions holding this schema's sweep lease."""
    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as conn:
        return [row[0] for row in conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.classid::int = hashtext('agentmarket-sweeper') "
            "AND l.objid::int = hashtext(current_schema())")]


def _wait(condition, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


@pytest.fixture
def market(postgres_url: str) -> Iterator[tuple[str, list[MarketplaceNode]]]:
    with postgres_schema(postgres_url) as db:
        nodes = [MarketplaceNode(db, sweep_interval_s=0.1).start() for _ in range(3)]
        try:
            yield db, nodes
        finally:
            for node in nodes:
                node.stop(0)


def test_one_node_sweeps_and_another_takes_over(market: tuple[str, list[MarketplaceNode]]):
    db, nodes = market
    _wait(lambda: sum(n.sweep_lease.holding for n in nodes) == 1)
    time.sleep(0.3)  # several rounds later, still one
    leaders = [n for n in nodes if n.sweep_lease.holding]
    assert len(leaders) == 1
    assert _sweepers(db) == [f"agentmarket sweeper {leaders[0].address}"]

    ledger = nodes[0].ledger
    payer = ledger.open_account("payer", USD).account_id
    payee = ledger.open_account("payee", USD).account_id
    nodes[0].wallets.deposit("fund", payer, 5 * DOLLAR, USD)
    hold = ledger.hold("h1", payer, payee, DOLLAR, timeout_s=1)
    leaders[0].stop(0)  # its session closes: the lock is free
    rest = [n for n in nodes if n is not leaders[0]]
    nodes[:] = rest
    _wait(lambda: sum(n.sweep_lease.holding for n in rest) == 1)
    _wait(lambda: rest[0].ledger.get_hold(hold.hold_id).status == "expired")
    assert rest[0].ledger.balance(payer).available_atomic == 5 * DOLLAR
    assert len(rest[0].ledger.postings(hold_id=hold.hold_id)) == 2  # the hold, one expiry


def test_each_schema_has_its_own_lease(market: tuple[str, list[MarketplaceNode]],
                                       postgres_url: str):
    _, nodes = market
    with postgres_schema(postgres_url) as other, \
            MarketplaceNode(other, sweep_interval_s=0.1) as alone:
        _wait(lambda: alone.sweep_lease.holding)
        _wait(lambda: sum(n.sweep_lease.holding for n in nodes) == 1)
