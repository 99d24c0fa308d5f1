"""Operator commands over a node's database: postings, wallets, agreements.

Each prints a table for a person by default and JSON with `--json`. Amounts are shown exactly
(`Currency.format`); ids are never cut, so they can be pasted into the next command.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Column, Table

from wallets.currencies import currency
from wallets.ledger import Ledger
from wallets.models import Balance, Posting

console = Console()
DEFAULT_DB = "sqlite:///.agentmarket/marketplace.db"


def open_ledger(db: str) -> Ledger:
    """A ledger over an existing database; a missing SQLite file is a one-line error."""
    from marketplace.cli.main import fail
    from wallets.store import make_engine

    if db.startswith("sqlite:///") and not Path(db.removeprefix("sqlite:///")).exists():
        fail(f"no database at {db}")
    return Ledger(make_engine(db), group_commit=False)


def _money(amount_atomic: int, code: str) -> str:
    return currency(code).format(amount_atomic)


def _since_ms(since: str | None) -> int | None:
    """'15m', '2h', '3d' ago, or None."""
    if not since:
        return None
    from marketplace.cli.main import fail

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if since[-1:] not in units or not since[:-1].isdigit():
        fail(f"--since takes a number and a unit (s, m, h, d), like 15m; got {since!r}")
    return time.time_ns() // 1_000_000 - int(since[:-1]) * units[since[-1]] * 1000


def posting_json(p: Posting) -> dict[str, Any]:
    return p.to_json()


def print_postings(postings: list[Posting], as_json: bool) -> None:
    if as_json:
        print(json.dumps([posting_json(p) for p in postings], indent=2))
        return
    table = Table("seq", "kind", "legs", Column("trace id", no_wrap=True, min_width=32),
                  "key", title="Ledger postings")
    for p in postings:
        legs = "\n".join(
            f"{leg.account_id[:8]} {_money(leg.posted_atomic, leg.currency)}"
            + (f" (pending {_money(-leg.pending_debit_atomic, leg.currency)})"
               if leg.pending_debit_atomic else "")
            for leg in p.legs if leg.posted_atomic or leg.pending_debit_atomic)
        table.add_row(str(p.sequence), p.kind, legs or "-", p.trace_id or "-",
                      p.idempotency_key)
    console.print(table)


def resolve_owner(ledger: Ledger, agent: str) -> str:
    """An owner by its full id or a unique prefix of it."""
    from marketplace.cli.main import fail

    owners = sorted({b.owner for b in ledger.accounts() if b.owner.startswith(agent)})
    if not owners:
        fail(f"no wallet belongs to {agent!r}")
    if len(owners) > 1:
        fail(f"{agent!r} matches {len(owners)} owners; give more of the id")
    return owners[0]


def balance_json(b: Balance) -> dict[str, Any]:
    return {"account_id": b.account_id, "owner": b.owner, "currency": b.currency,
            "kind": b.kind, "posted_atomic": b.posted_atomic,
            "pending_debits_atomic": b.pending_debits_atomic,
            "pending_credits_atomic": b.pending_credits_atomic,
            "available_atomic": b.available_atomic}


def show_wallet(ledger: Ledger, owner: str, as_json: bool) -> None:
    accounts = ledger.accounts(owner)
    holds = [h for a in accounts for h in ledger.holds(account_id=a.account_id, status="open")]
    if as_json:
        print(json.dumps({"owner": owner, "accounts": [balance_json(a) for a in accounts],
                          "open_holds": [h.to_json() for h in holds]}, indent=2))
        return
    table = Table("account", "currency", "posted", "held", "incoming", "available",
                  title=f"Wallet of {owner}")
    for a in accounts:
        table.add_row(a.account_id, a.currency, _money(a.posted_atomic, a.currency),
                      _money(a.pending_debits_atomic, a.currency),
                      _money(a.pending_credits_atomic, a.currency),
                      _money(a.available_atomic, a.currency))
    console.print(table)
    if holds:
        held = Table("hold", "amount", "captured", "released", "expires", title="Open holds")
        for h in holds:
            held.add_row(h.hold_id, _money(h.amount_atomic, h.currency),
                         _money(h.captured_atomic, h.currency),
                         _money(h.voided_atomic, h.currency),
                         time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(h.expires_at_ms / 1000)))
        console.print(held)


def print_agreements(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(Column("agreement", no_wrap=True, min_width=64), "state", "skill", "held",
                  "paid", "fee", "refunded", title="Agreements")
    for e in rows:
        code = e["currency"]
        table.add_row(e["agreement_id"], e["state"], e.get("skill", ""),
                      _money(e["held_atomic"], code), _money(e["captured_atomic"], code),
                      _money(e["fee_atomic"], code), _money(e["refunded_atomic"], code))
    console.print(table)
