"""Operator commands over a node's database: postings, wallets, agreements.

Each prints a table for a person by default and JSON with `--json`. Amounts are shown exactly
(`Currency.format`); ids are never cut, so they can be pasted into the next command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Column, Table

from marketplace.cli.keys import load_key
from marketplace.home import default_database_url
from wallets.currencies import currency
from wallets.ledger import Ledger
from wallets.models import Balance, Posting
from wallets.store import shown_url

console = Console(markup=False)
DEFAULT_DB = default_database_url()


def open_ledger(db: str) -> Ledger:
    """A ledger over an existing agentmarket database. Anything else (no file, a URL that
    does not parse or answer, a database without the ledger) is a one-line error, and a read
    command never writes a schema into a file it was wrongly given."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from marketplace.cli.output import fail
    from wallets.store import make_engine
    from wallets.tables import PostingRow

    has_ledger = _sqlite_has_table(db, PostingRow.__tablename__) \
        if db.startswith("sqlite:///") else None
    try:
        engine = make_engine(db)
        if has_ledger is None:
            with engine.connect() as conn:
                has_ledger = inspect(conn).has_table(PostingRow.__tablename__)
    except (SQLAlchemyError, ModuleNotFoundError, ValueError) as error:
        cause = getattr(error, "orig", None) or error
        fail(f"cannot open the database {shown_url(db)}: {str(cause).splitlines()[0][:200]}")
    if not has_ledger:
        fail(f"{shown_url(db)} holds no agentmarket ledger (a node's database: agentmarket "
             "serve --db)")
    return Ledger(engine, group_commit=False)


def _sqlite_has_table(db: str, table: str) -> bool:
    """Whether the SQLite file holds `table` (fails when there is no such file, or it is no
    database), looked at read-only: the engine would switch a wrongly given file to WAL (a
    write) before anything could refuse it."""
    from sqlalchemy.engine import make_url

    from marketplace.cli.output import fail

    path = Path(make_url(db).database or "")  # as the engine reads it: %-escapes, a query
    if not path.is_file():
        fail(f"no database at {db}")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro",
                                                uri=True)) as conn:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                 (table,)).fetchone()
    except sqlite3.DatabaseError as error:
        fail(f"cannot open the database {db}: {str(error)[:200]}")
    return found is not None


def posting_kinds(ledger: Ledger) -> list[str]:
    """The kinds of posting this ledger holds (what `--kind` can name)."""
    from sqlalchemy import select

    from wallets.tables import PostingRow

    with ledger.engine.connect() as conn:
        return sorted(conn.execute(select(PostingRow.kind).distinct()).scalars())


def _money(amount_atomic: int, code: str) -> str:
    return currency(code).format(amount_atomic)


def _since_ms(since: str | None) -> int | None:
    """'15m', '2h', '3d' ago, or None."""
    if not since:
        return None
    from marketplace.cli.output import bad_value

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if since[-1:] not in units or not since[:-1].isdigit():
        bad_value(f"--since takes a number and a unit (s, m, h, d), like 15m; got {since!r}")
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
    """An owner by its full id, a unique prefix of it, or the name of a key kept in this home
    (`agentmarket keys list`)."""
    from agents import keystore
    from marketplace.cli.output import fail
    from marketplace.identity import AgentKey

    if agent in keystore.names():
        agent = AgentKey.load(keystore.key_path(agent)).agent_id
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
    from wallets.controls import WalletControls

    controls = WalletControls(ledger)
    accounts = ledger.accounts(owner)
    holds = [h for a in accounts for h in ledger.holds(account_id=a.account_id, status="open")]
    states = {a.account_id: controls.policy(a.account_id) for a in accounts
              if a.kind == "wallet"}
    if as_json:
        print(json.dumps({"owner": owner, "accounts": [balance_json(a) for a in accounts],
                          "open_holds": [h.to_json() for h in holds],
                          "controls": [c.to_json() for c in states.values()]}, indent=2))
        return
    table = Table("account", "currency", "posted", "held", "incoming", "available",
                  title=f"Wallet of {owner}")
    for a in accounts:
        table.add_row(a.account_id, a.currency, _money(a.posted_atomic, a.currency),
                      _money(a.pending_debits_atomic, a.currency),
                      _money(a.pending_credits_atomic, a.currency),
                      _money(a.available_atomic, a.currency))
    console.print(table)
    for account_id, state in states.items():
        console.print(f"{account_id}: {_describe(state)}", highlight=False)
    if holds:
        held = Table("hold", "amount", "captured", "released", "expires", title="Open holds")
        for h in holds:
            held.add_row(h.hold_id, _money(h.amount_atomic, h.currency),
                         _money(h.captured_atomic, h.currency),
                         _money(h.voided_atomic, h.currency),
                         time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(h.expires_at_ms / 1000)))
        console.print(held)


def _describe(state: Any) -> str:
    """One line of a wallet's controls: its caps and lists, and whether it is frozen."""
    p, code = state.policy, state.currency
    parts = [f"{label} {_money(getattr(p, name), code)}" for name, label in (
        ("per_call_cap_atomic", "per call"), ("daily_cap_atomic", "per day"),
        ("counterparty_daily_cap_atomic", "per counterparty a day"),
        ("approval_threshold_atomic", "approval above")) if getattr(p, name)]
    parts += [f"{name.replace('_', ' ')}: {len(getattr(p, name))}" for name in (
        "allow_counterparties", "deny_counterparties", "allow_skills", "deny_skills")
        if getattr(p, name)]
    if p.velocity_factor_pct:
        parts.append(f"freeze above {p.velocity_factor_pct}% of its usual spend rate")
    policy = "policy: " + (", ".join(parts) if parts else "none")
    return policy + (f"; FROZEN ({state.frozen_reason})" if state.frozen else "")


def print_agreements(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(Column("agreement", overflow="fold", min_width=16), "state", "skill", "held",
                  "paid", "fee", "refunded", title="Agreements")
    for e in rows:
        code = e["currency"]
        table.add_row(e["agreement_id"], e["state"], e.get("skill", ""),
                      _money(e["held_atomic"], code), _money(e["captured_atomic"], code),
                      _money(e["fee_atomic"], code), _money(e["refunded_atomic"], code))
    console.print(table)


# ---- agreements, approvals, disputes: read the database, act over signed gRPC -----------

agreements_app = typer.Typer(help="Agreements and their escrow states.")
approvals_app = typer.Typer(help="Payments waiting for a person.", no_args_is_help=True)
disputes_app = typer.Typer(help="Disputed agreements.", no_args_is_help=True)
keys_app = typer.Typer(help="Agent and operator keys.", no_args_is_help=True)
NODE = "127.0.0.1:7000"


def _settlement(db: str) -> Any:
    from marketplace.registry import Registry
    from marketplace.settlement import Settlement

    ledger = open_ledger(db)
    return Settlement(ledger, Registry(ledger.engine))


def _call(what: str, fn: Any) -> Any:
    """Run an RPC; a refusal prints its status and message on one line."""
    import grpc

    from marketplace.cli.output import fail

    try:
        return fn()
    except grpc.RpcError as error:
        fail(f"{what} refused: {error.code().name}: {error.details()}")


@agreements_app.callback(invoke_without_command=True)
def agreements(state: str = typer.Option(None, help="active, verified, delivered, settled, "
                                                    "refunded, disputed, resolved, expired"),
               db: str = typer.Option(DEFAULT_DB, help="Database URL."),
               limit: int = typer.Option(100, min=1, max=10_000),
               as_json: bool = typer.Option(False, "--json", help="JSON for scripts.")) -> None:
    """Agreements, newest first, with what was held, paid, charged and refunded."""
    from marketplace.cli.output import bad_value
    from marketplace.escrows import STATES

    if state is not None and state not in STATES:
        bad_value(f"no state {state!r}: one of {', '.join(STATES)}")
    print_agreements(_settlement(db).agreements(state=state, limit=limit), as_json)


@approvals_app.command("list")
def approvals_list(status: str = typer.Option("pending", help="pending, approved, denied, "
                                                               "used, expired ('' for all)"),
                   db: str = typer.Option(DEFAULT_DB, help="Database URL."),
                   as_json: bool = typer.Option(False, "--json", help="JSON for scripts.")
                   ) -> None:
    """Spends above a wallet's approval threshold, waiting for an operator."""
    from wallets.controls import WalletControls

    rows = WalletControls(open_ledger(db)).approvals(status=status)
    if as_json:
        print(json.dumps([dataclasses.asdict(r) for r in rows], indent=2, default=str))
        return
    table = Table(Column("approval", no_wrap=True, min_width=32), "status", "amount",
                  "counterparty", "skill", title="Approvals")
    for r in rows:
        table.add_row(r.approval_id, r.status, _money(r.amount_atomic, r.currency),
                      (r.counterparty or "-")[:16], r.skill or "-")
    console.print(table)


def _decide(approval_id: str, approve: bool, node: str, key_file: Path, note: str) -> None:
    import uuid

    from marketplace.auth import signed_channel
    from wallets.v1 import wallet_pb2, wallet_pb2_grpc

    key = load_key(key_file)
    with signed_channel(node, key) as channel:
        stub = wallet_pb2_grpc.WalletServiceStub(channel)
        request = wallet_pb2.DecideApprovalRequest(
            idempotency_key=f"decide:{uuid.uuid4().hex}", approval_id=approval_id,
            decided_by=key.agent_id, note=note)
        method = stub.Approve if approve else stub.Deny
        result = _call("the decision", lambda: method(request, timeout=10))
    console.print(f"approval {result.approval_id}: {result.status}", highlight=False)


@approvals_app.command("approve")
def approvals_approve(approval_id: str, node: str = typer.Option(NODE, help="Node address."),
                      key_file: Path = typer.Option(..., help="The operator's key file."),
                      note: str = typer.Option("", help="Why, for the record.")) -> None:
    """Let a waiting payment through (as an operator of the node)."""
    _decide(approval_id, True, node, key_file, note)


@approvals_app.command("deny")
def approvals_deny(approval_id: str, node: str = typer.Option(NODE, help="Node address."),
                   key_file: Path = typer.Option(..., help="The operator's key file."),
                   note: str = typer.Option("", help="Why, for the record.")) -> None:
    """Refuse a waiting payment for good."""
    _decide(approval_id, False, node, key_file, note)


@disputes_app.command("list")
def disputes_list(db: str = typer.Option(DEFAULT_DB, help="Database URL."),
                  as_json: bool = typer.Option(False, "--json", help="JSON for scripts.")
                  ) -> None:
    """Agreements in dispute, with the frozen amounts."""
    print_agreements(_settlement(db).agreements(state="disputed"), as_json)


@disputes_app.command("resolve")
def disputes_resolve(agreement: str,
                     to: str = typer.Option(..., help="seller, buyer or split"),
                     seller_amount: str = typer.Option("0", help="For a split: the seller's "
                                                                 "share, e.g. 0.004"),
                     currency_code: str = typer.Option("USD", "--currency"),
                     note: str = typer.Option("", help="The decision's reasons."),
                     node: str = typer.Option(NODE, help="Node address."),
                     key_file: Path = typer.Option(..., help="The arbiter's key file.")) -> None:
    """Pay a frozen amount out as the arbiter decides."""
    import uuid

    from marketplace import agreements as ag
    from marketplace.auth import signed_channel
    from marketplace.cli.output import bad_value
    from marketplace.v1 import dispute_pb2, dispute_pb2_grpc

    outcomes = {"seller": dispute_pb2.DISPUTE_OUTCOME_SELLER,
                "buyer": dispute_pb2.DISPUTE_OUTCOME_BUYER,
                "split": dispute_pb2.DISPUTE_OUTCOME_SPLIT}
    if to not in outcomes:
        bad_value(f"--to must be seller, buyer or split, not {to!r}")
    if to == "split" and seller_amount in ("", "0"):
        bad_value("--to split needs --seller-amount: what of the frozen amount the seller gets")
    seller_atomic = currency(currency_code).atomic(seller_amount) if to == "split" else 0
    key = load_key(key_file)
    signature = key.sign(ag.resolve_message(agreement, outcomes[to], seller_atomic, note))
    with signed_channel(node, key) as channel:
        escrow = _call("the resolution", lambda: dispute_pb2_grpc.ArbitrationServiceStub(
            channel).ResolveDispute(dispute_pb2.ResolveDisputeRequest(
                idempotency_key=f"resolve:{uuid.uuid4().hex}", agreement_id=agreement,
                outcome=outcomes[to], seller_atomic=seller_atomic, note=note,
                arbiter_id=key.agent_id, arbiter_signature=signature), timeout=10))
    console.print(f"agreement {agreement}: resolved, seller paid "
                  f"{_money(escrow.captured_atomic, escrow.currency)}", highlight=False)


@keys_app.command("new")
def keys_new(out: Path = typer.Argument(help="File to write the key seed to (mode 600).")
             ) -> None:
    """Make an agent or operator key; prints its public id."""
    from marketplace.cli.output import fail
    from marketplace.errors import InvalidArgument
    from marketplace.identity import AgentKey

    key = AgentKey.generate()
    try:
        key.save(out)
    except InvalidArgument as error:
        fail(error.message)
    console.print(key.agent_id, highlight=False)


@keys_app.command("list")
def keys_list(as_json: bool = typer.Option(False, "--json", help="JSON for scripts.")) -> None:
    """The named agent keys kept in this home (AGENTMARKET_HOME), with their public ids: an
    agent made with `key="<name>"` keeps its key here."""
    from agents import keystore
    from marketplace.cli.output import fail
    from marketplace.errors import InvalidArgument
    from marketplace.identity import AgentKey

    found = []
    for name in keystore.names():
        try:
            found.append((name, AgentKey.load(keystore.key_path(name)).agent_id))
        except InvalidArgument as error:
            fail(f"key {name!r}: {error.message}")
    if as_json:
        print(json.dumps([{"name": n, "agent_id": i} for n, i in found], indent=2))
        return
    if not found:
        console.print(f"no named keys in {keystore.keys_folder()}", highlight=False)
        return
    table = Table("name", Column("agent id", overflow="fold"), title="Agent keys")
    for name, agent_id in found:
        table.add_row(name, agent_id)
    console.print(table)
