"""A database made at the previous schema revision migrates at start-up and keeps every promise.

The rows are what the code of revision 3b327f7029d4 (one namespace of idempotency keys) wrote:
a caller's transfer, the node's settled and failed sweeps, approvals of an owner and of a
delegate, and a delayed withdrawal waiting for its sweep. After `Ledger(engine)` (which
migrates), on SQLite and PostgreSQL:

- the caller's transfer, retried under its key, replays its first outcome (no second posting);
- the node's failed sweep is no longer recorded (its sweep may try again), its settled one is;
- each approval belongs to its spender, and the owner's approved spend goes through;
- the waiting withdrawal is paid under the reference its rail was told before (its key), once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from alembic import command
from sqlalchemy import Engine, column, select, table

from wallets import _idempotency
from wallets.caller import NODE_SCOPE, calling_as
from wallets.ledger import KEYS, Ledger
from wallets.models import Leg, Posting
from wallets.schema import _config
from wallets.service import WITHDRAWALS, WalletService
from wallets.store import make_engine
from wallets.tables import ApprovalRow

PREVIOUS = "3b327f7029d4"
APPROVALS = ApprovalRow.__table__  # type: ignore[attr-defined]
OWNER, DELEGATE = "a" * 64, "d" * 64
NOW_MS = 1_700_000_000_000


def _at_revision(engine: Engine, revision: str) -> None:
    config = _config("wallets")
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def _account(account_id: str, owner: str, kind: str, posted: int) -> dict[str, Any]:
    return dict(id=account_id, owner=owner, currency="USD", kind=kind,
                posted_debits_atomic=max(-posted, 0), posted_credits_atomic=max(posted, 0),
                pending_debits_atomic=0, pending_credits_atomic=0,
                credit_limit_atomic=2**62 if kind == "rail" else 0, created_at_ms=NOW_MS)


def _key_row(key: str, operation: str, request: dict[str, Any], outcome: str,
             result: Any) -> dict[str, Any]:
    return dict(key=key, operation=operation,
                request_digest=_idempotency.digest(operation, request), outcome=outcome,
                result_json=orjson.dumps(result).decode(), created_at_ms=NOW_MS)


def _approval(approval_id: str, spend_key: str, spender: str, status: str) -> dict[str, Any]:
    return dict(id=approval_id, account_id="owner-wallet", currency="USD",
                counterparty="b" * 64, skill="", amount_atomic=500, spend_key=spend_key,
                operation="transfer", mandate_id="m" * 64 if spender else "",
                spender_id=spender, status=status, created_at_ms=NOW_MS,
                expires_at_ms=NOW_MS + 3_600_000, decided_by="ops" if status != "pending"
                else "", decided_at_ms=NOW_MS if status != "pending" else 0, note="")


def _insert(conn: Any, name: str, *rows: dict[str, Any]) -> None:
    """Rows into a table as the previous revision has it (only the columns given)."""
    conn.execute(table(name, *(column(c) for c in rows[0])).insert(), list(rows))


def _previous_database(engine: Engine) -> Posting:
    """The rows revision 3b327f7029d4's code wrote; returns the recorded transfer's posting."""
    _at_revision(engine, PREVIOUS)
    first = Posting(1, "t-1", "transfer", (Leg("owner-wallet", "USD", posted_atomic=-100),
                                          Leg("payee-wallet", "USD", posted_atomic=100)),
                    NOW_MS, hash="f" * 64)
    with engine.begin() as conn:
        _insert(conn, "ledger_head", dict(id=1, sequence=1, hash="f" * 64))
        _insert(conn, "ledger_accounts",
                _account("owner-wallet", OWNER, "wallet", 9_900),
                _account("payee-wallet", "b" * 64, "wallet", 100),
                _account("rail-usd", "rail:sandbox-usd", "rail", -10_000))
        _insert(conn, "idempotency_keys",
            _key_row("t-1", "transfer", {"transfers": [["owner-wallet", "payee-wallet", 100]],
                                         "memo": "", "kind": "transfer"}, "ok", first.to_json()),
            _key_row("auto-release:" + "1" * 64, "sweep", {"agreement": "1" * 64}, "error",
                     {"type": "wallets.errors.InsufficientFunds", "message": "short",
                      "reason": "INSUFFICIENT_FUNDS"}),
            _key_row("settle-withdrawal:h0", "settle_withdrawal", {"hold": "h0"}, "ok",
                     "captured"))
        _insert(conn, "wallet_approvals", _approval("1" * 32, "big-spend", "", "approved"),
                _approval("2" * 32, "delegated-spend", DELEGATE, "pending"))
        _insert(conn, "wallet_policies", dict(
            account_id="owner-wallet", per_call_cap_atomic=0, daily_cap_atomic=0,
            counterparty_daily_cap_atomic=0, approval_threshold_atomic=100,
            approval_ttl_s=3600, velocity_window_s=0, velocity_baseline_s=0,
            velocity_factor_pct=0, velocity_min_atomic=0, lists_json="{}", frozen=False,
            frozen_reason="", frozen_by="", frozen_at_ms=0, updated_at_ms=NOW_MS))
        _insert(conn, "rail_withdrawals", dict(
            hold_id="h1", idempotency_key="w-1", rail="sandbox-usd", account_id="owner-wallet",
            currency="USD", amount_atomic=100, due_at_ms=NOW_MS, status="captured",
            created_at_ms=NOW_MS, settled_at_ms=NOW_MS))
    return first


def test_a_database_at_the_previous_revision_migrates_and_keeps_its_promises(db_url: str):
    engine = make_engine(db_url)
    try:
        first = _previous_database(engine)
        ledger = Ledger(engine, clock_ms=lambda: NOW_MS, group_commit=False)
        try:
            with engine.connect() as conn:
                scopes = dict(conn.execute(select(KEYS.c.key, KEYS.c.scope)).all())
                approvals = dict(conn.execute(select(APPROVALS.c.id,
                                                     APPROVALS.c.spend_scope)).all())
                withdrawal = conn.execute(select(WITHDRAWALS)).one()
            assert scopes == {"t-1": "legacy", "settle-withdrawal:h0": NODE_SCOPE}
            assert approvals == {"1" * 32: OWNER, "2" * 32: DELEGATE}
            assert (withdrawal.scope, withdrawal.reference) == ("legacy", "w-1")

            with calling_as(OWNER):  # a retry across the upgrade: the first outcome, once
                assert ledger.transfer("t-1", "owner-wallet", "payee-wallet", 100) == first
            assert ledger.postings() == []
            assert ledger.balance("owner-wallet").posted_atomic == 9_900
            with calling_as(OWNER):  # approved before the upgrade: it goes through, once
                ledger.transfer("big-spend", "owner-wallet", "payee-wallet", 500)
            assert ledger.balance("owner-wallet").posted_atomic == 9_400

            wallets = WalletService(ledger)
            wallets.settle_due()  # the captured withdrawal is paid under its old reference
            assert wallets.rails["sandbox-usd"].payouts == {"w-1": 100}  # type: ignore[attr-defined]
            assert wallets.withdrawals()[0].status == "paid"
        finally:
            ledger.close()
    finally:
        engine.dispose()


def test_each_package_has_one_line_of_migrations():
    """Migrations form one line per package: a second head would mean two branches each
    assumed the tables their parent left, and a node would upgrade to one of them only."""
    from alembic.script import ScriptDirectory

    for package in ("wallets", "marketplace", "agents"):
        config = _config(package)
        if not (Path(config.get_main_option("script_location")) / "versions").exists():
            continue
        heads = ScriptDirectory.from_config(config).get_heads()
        assert len(heads) == 1, f"{package} has migration heads {heads}"
