"""Full tasks per second: many concurrent buyers, each discover -> negotiate -> escrow ->
10 paid calls (schema-verified) -> settle, against one marketplace node and five sellers.

Reports tasks/s, p50/p99 latency of a paid call, and the books at the end: every currency sums
to zero, balances equal their entries, the hash chain holds, and no hold is left open.
Runs on SQLite, and on PostgreSQL when one answers at $AGENTMARKET_BENCH_POSTGRES_URL or
127.0.0.1:5432 (a scratch schema, dropped afterwards).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, per_call, skill
from marketplace import MarketplaceNode
from wallets.audit import check_balances, verify_chain

BUYERS = 50
SELLERS = 5
CALLS = 10


class Reply(BaseModel):
    text: str
    length: int


@skill(price=per_call("0.0001", "USD"))
def echo(text: str) -> Reply:
    """Echo a text with its length."""
    return Reply(text=text, length=len(text))


def _task(buyer: BuyerAgent, latencies: list[float], errors: list[str]) -> None:
    try:
        listings = buyer.discover("echo", currency="USD")
        listing = listings[hash(buyer.agent_id) % len(listings)]
        deal = buyer.negotiate(listing, "echo", quantity=CALLS, budget="0.01", currency="USD")
        buyer.hire(deal)
        for i in range(CALLS):
            start = time.perf_counter()
            buyer.call(deal, {"text": f"call {i}"})
            latencies.append(time.perf_counter() - start)
        escrow = buyer.finish(deal)
        if escrow.captured_atomic != CALLS * deal.body.terms.unit_price_atomic:
            errors.append("seller not paid exactly for the calls made")
    except Exception as error:  # counted and reported, never hidden
        errors.append(f"{type(error).__name__}: {error}")


def bench(db_url: str) -> dict[str, Any]:
    node = MarketplaceNode(db_url, max_workers=32).start()
    sellers = [SellerAgent(f"seller-{i}", skills=[echo], marketplace=node.address).serve()
               for i in range(SELLERS)]
    buyers = [BuyerAgent(f"buyer-{i}", marketplace=node.address) for i in range(BUYERS)]
    try:
        for buyer in buyers:
            buyer.fund("1.00", "USD")
        latencies: list[float] = []
        errors: list[str] = []
        threads = [threading.Thread(target=_task, args=(b, latencies, errors)) for b in buyers]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        node.ledger.expire_holds()
        audit = check_balances(node.ledger)
        chain = verify_chain(node.ledger)
        open_holds = [e for e in node.settlement.agreements(limit=1000)
                      if e["state"] in ("active", "delivered")]
        quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0] * 99
        return {
            "tasks_per_s": round((BUYERS - len(errors)) / elapsed, 2),
            "paid_call_p50_ms": round(quantiles[49] * 1000, 2),
            "paid_call_p99_ms": round(quantiles[98] * 1000, 2),
            "failed_tasks": len(errors),
            "books_balanced": audit.ok and chain.ok,
            "open_agreements_left": len(open_holds),
            "first_error": errors[0] if errors else "",
        }
    finally:
        for buyer in buyers:
            buyer.close()
        for seller in sellers:
            seller.stop(0)
        node.stop(0)


def _postgres_url() -> str | None:
    import psycopg

    url = os.environ.get("AGENTMARKET_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.Error:
        return None
    return f"{url}?options=-csearch_path%3D{schema}"


def _drop(url: str) -> None:
    import psycopg

    base, _, options = url.partition("?options=-csearch_path%3D")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {options} CASCADE")


def run(progress: Any = None) -> dict[str, Any]:
    say = progress or (lambda _text: None)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="agentmarket-bench-") as tmp:
        say(f"{BUYERS} concurrent buyers, SQLite")
        sqlite = bench(f"sqlite:///{Path(tmp) / 'tasks.db'}")
    results.update({f"{k}_{BUYERS}_buyers" if k == "tasks_per_s" else f"sqlite_{k}": v
                    for k, v in sqlite.items()})
    url = _postgres_url()
    if url is not None:
        say(f"{BUYERS} concurrent buyers, PostgreSQL")
        try:
            pg = bench(url)
        finally:
            _drop(url)
        results.update({f"postgres_{k}": v for k, v in pg.items()})
    return results


if __name__ == "__main__":
    for name, value in run(print).items():
        print(f"{name}: {value}")
