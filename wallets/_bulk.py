"""The ledger's bulk path: many transfers checked in memory, written with bulk statements.

Debits of wallets under a policy or freeze (`SpendGuard.controlled`) leave the bulk path and
go through `Ledger.transfer` after it, so no policy is ever skipped.

Inside one write transaction the touched accounts are read once and locked (SQLite: BEGIN
IMMEDIATE; PostgreSQL: FOR UPDATE, in account order), every transfer is checked and applied to
in-memory balances in order, and the results go out as a handful of executemany statements:
postings, entries, idempotency records, one UPDATE per touched account (and on SQLite, which
seals as it writes, one for the chain head; PostgreSQL's sealer links them after commit). Each
transfer still succeeds or fails on its own, with the same rules, idempotency and hash chain as
`Ledger.transfer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, bindparam, insert, select, update

from wallets import _credits, _idempotency, _totals
from wallets import _sqlite_hot as hot
from wallets._chain import posting_hash
from wallets.currencies import INT64_MAX, check_amount
from wallets.errors import (
    AgentmarketError,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidArgument,
    NotFound,
)
from wallets.models import Leg, Posting, Transfer
from wallets.tables import IdempotencyRow

if TYPE_CHECKING:
    from wallets.ledger import Ledger

KEYS = IdempotencyRow.__table__  # type: ignore[attr-defined]
_SET_TOTALS = ("UPDATE ledger_accounts SET posted_credits_atomic = ?, posted_debits_atomic = ?, "
               "totals_rewinds = ? WHERE id = ?")
MAX_BULK = 5000


@dataclass(frozen=True, slots=True)
class TransferRequest:
    """One transfer of a bulk call, with its own idempotency key."""

    idempotency_key: str
    transfer: Transfer
    memo: str = ""

    def digest(self) -> str:
        t = self.transfer
        return _idempotency.digest("transfer", {
            "transfers": [[t.debit_account_id, t.credit_account_id, t.amount_atomic]],
            "memo": self.memo, "kind": "transfer"})


def post_transfers(ledger: Ledger, requests: Sequence[TransferRequest]
                   ) -> list[Posting | AgentmarketError]:
    """Post many independent transfers in one transaction; one result or error per request.
    Their keys live in the scope of the request being served (`wallets._idempotency`)."""
    from wallets.ledger import (
        ACCOUNTS,
        HEAD,
        _current_trace,
        next_sequences,
        transaction_postings,
    )

    if len(requests) > MAX_BULK:
        raise InvalidArgument(f"at most {MAX_BULK} transfers per bulk call")
    scope = _idempotency.request_scope()
    results: list[Posting | AgentmarketError | None] = [None] * len(requests)
    pending: list[int] = []
    for i, request in enumerate(requests):
        try:
            _idempotency.check_key(request.idempotency_key)
            check_amount(request.transfer.amount_atomic)
            if request.transfer.debit_account_id == request.transfer.credit_account_id:
                raise InvalidArgument("debit and credit accounts must differ")
        except AgentmarketError as error:
            results[i] = error
        else:
            pending.append(i)
    now_ms = ledger.clock_ms()
    trace_id, span_id = _current_trace()
    checked: list[int] = []  # debits of wallets under a policy go through the guarded path
    with ledger._write() as conn:
        controlled = ledger.spend_guard.controlled(
            conn, [requests[i].transfer.debit_account_id for i in pending])
        if controlled:
            checked = [i for i in pending
                       if requests[i].transfer.debit_account_id in controlled]
            pending = [i for i in pending if i not in set(checked)]
        ids = {a for i in pending for a in (requests[i].transfer.debit_account_id,
                                            requests[i].transfer.credit_account_id)}
        if not ledger._sqlite:  # locked, with the credits other postings appended to them
            _credits.fold_in(conn, ids, wait=True)
        accounts = {row.id: dict(row._mapping) for row in conn.execute(
            select(ACCOUNTS).where(ACCOUNTS.c.id.in_(sorted(ids))).order_by(ACCOUNTS.c.id)
            .with_for_update())}
        # Looked up once the accounts are locked: a batch sent again while its first try
        # commits (PostgreSQL) waits for it above and then finds its outcomes to replay.
        stored = _stored_outcomes(conn, scope, [requests[i].idempotency_key for i in pending],
                                  legacy=ledger._legacy_keys)
        sealing = ledger._sqlite  # SQLite seals as it writes; PostgreSQL's sealer does later
        if sealing:
            head = conn.execute(select(HEAD).where(HEAD.c.id == 1)).one()
            sequence, prev_hash = head.sequence, head.hash
        postings: list[dict[str, Any]] = []
        entries: list[dict[str, Any]] = []
        records: list[dict[str, Any]] = []
        touched: set[str] = set()
        made: list[tuple[int, str, tuple[Leg, Leg]]] = []  # (request, digest, legs)
        seen: dict[str, tuple[str, Posting | AgentmarketError | None]] = {}
        for i in pending:
            request = requests[i]
            key, digest = request.idempotency_key, request.digest()
            earlier = seen.get(key) or stored.get(key)
            if earlier is not None:
                results[i] = earlier[1] if earlier[0] == digest else IdempotencyConflict(
                    f"idempotency key {key!r} was already used for a different request")
                continue
            try:
                legs = _apply(accounts, request.transfer)
            except AgentmarketError as error:
                results[i] = error
                if _idempotency.is_recorded_failure(error):
                    seen[key] = (digest, error)
                    records.append(_idempotency.row_values(scope, key, "transfer", digest,
                                                           now_ms, error=error))
                continue
            fields = dict(sequence=0, idempotency_key=key, kind="transfer", hold_id="",
                          created_at_ms=now_ms, memo=request.memo, trace_id=trace_id,
                          span_id=span_id)
            postings.append(fields)
            made.append((i, digest, legs))
            for leg in legs:
                touched.add(leg.account_id)
            seen[key] = (digest, None)
        numbers = (list(range(sequence + 1, sequence + 1 + len(postings))) if sealing
                   else next_sequences(conn, len(postings)) if postings else [])
        for fields, number, (i, digest, legs) in zip(postings, numbers, made, strict=True):
            request = requests[i]
            fields["sequence"] = number
            if sealing:
                fields["hash"] = posting_hash(prev_hash, legs=legs, **fields)
                fields.update(prev_hash=prev_hash, position=number)
                prev_hash = fields["hash"]
            else:
                fields.update(prev_hash="", hash="")
            transaction_postings(conn).append(number)
            posting = Posting(legs=legs, hash=fields["hash"], sequence=number,
                              idempotency_key=request.idempotency_key, kind="transfer",
                              hold_id="", created_at_ms=now_ms, memo=request.memo,
                              trace_id=trace_id, span_id=span_id)
            for leg in legs:
                entries.append(dict(sequence=number, account_id=leg.account_id,
                                    currency=leg.currency, posted_atomic=leg.posted_atomic,
                                    pending_debit_atomic=0, pending_credit_atomic=0))
            results[i] = posting
            records.append(_idempotency.row_values(scope, request.idempotency_key, "transfer",
                                                   digest, now_ms, result=posting.to_json()))
        for i in pending:  # a key repeated in this call gets its first transfer's outcome
            if results[i] is None:
                first = next(results[j] for j, d, _ in made
                             if requests[j].idempotency_key == requests[i].idempotency_key)
                results[i] = first
        if sealing:
            _write_sqlite(conn, postings, entries, records, accounts, touched, prev_hash)
        else:
            _write_postgres(conn, postings, entries, records, accounts, touched)
    for i in checked:  # after the bulk commit, each in its own guarded transaction
        request = requests[i]
        t = request.transfer
        try:
            results[i] = ledger.transfer(request.idempotency_key, t.debit_account_id,
                                         t.credit_account_id, t.amount_atomic, memo=request.memo)
        except AgentmarketError as error:
            results[i] = error
    return [r for r in results if r is not None]


def _touched_totals(accounts: dict[str, dict[str, Any]], touched: set[str]
                    ) -> list[tuple[int, int, int, str]]:
    return [(accounts[a]["posted_credits_atomic"], accounts[a]["posted_debits_atomic"],
             accounts[a]["totals_rewinds"], a) for a in sorted(touched)]


def _write_sqlite(conn: Connection, postings: list[dict[str, Any]],
                  entries: list[dict[str, Any]], records: list[dict[str, Any]],
                  accounts: dict[str, dict[str, Any]], touched: set[str], head_hash: str
                  ) -> None:
    """The same rows as `_write_postgres`, executed on the sqlite3 connection of the
    transaction: SQLAlchemy's per-row parameter processing costs more than SQLite's insert."""
    if postings:
        hot.executemany(conn, hot.INSERT_POSTING, [
            (p["sequence"], p["idempotency_key"], p["kind"], p["hold_id"], p["created_at_ms"],
             p["trace_id"], p["span_id"], p["memo"], p["prev_hash"], p["hash"], p["position"])
            for p in postings])
        hot.executemany(conn, hot.INSERT_ENTRY, [
            (e["sequence"], e["account_id"], e["currency"], e["posted_atomic"],
             e["pending_debit_atomic"], e["pending_credit_atomic"]) for e in entries])
        hot.executemany(conn, _SET_TOTALS, _touched_totals(accounts, touched))
        hot.execute(conn, hot.MOVE_HEAD, (postings[-1]["sequence"], head_hash))
    if records:
        hot.executemany(conn, hot.RECORD_KEY, [
            (r["scope"], r["key"], r["operation"], r["request_digest"], r["outcome"],
             r["result_json"], r["created_at_ms"]) for r in records])


def _write_postgres(conn: Connection, postings: list[dict[str, Any]],
                    entries: list[dict[str, Any]], records: list[dict[str, Any]],
                    accounts: dict[str, dict[str, Any]], touched: set[str]) -> None:
    from wallets.ledger import ACCOUNTS, ENTRIES, POSTINGS

    if postings:
        conn.execute(insert(POSTINGS), postings)
        conn.execute(insert(ENTRIES), entries)
        conn.execute(
            update(ACCOUNTS).where(ACCOUNTS.c.id == bindparam("b_id")).values(
                posted_credits_atomic=bindparam("b_cr"),
                posted_debits_atomic=bindparam("b_dr"), totals_rewinds=bindparam("b_rw")),
            [{"b_id": a, "b_cr": cr, "b_dr": dr, "b_rw": rw}
             for cr, dr, rw, a in _touched_totals(accounts, touched)])
    if records:
        conn.execute(insert(KEYS), records)


def _apply(accounts: dict[str, dict[str, Any]], transfer: Transfer) -> tuple[Leg, Leg]:
    debit = accounts.get(transfer.debit_account_id)
    credit = accounts.get(transfer.credit_account_id)
    for account_id, row in ((transfer.debit_account_id, debit),
                            (transfer.credit_account_id, credit)):
        if row is None:
            raise NotFound(f"account {account_id!r} does not exist")
    assert debit is not None and credit is not None
    if debit["currency"] != credit["currency"]:
        raise InvalidArgument(f"accounts are in different currencies ({debit['currency']}, "
                              f"{credit['currency']}); use FX")
    amount = transfer.amount_atomic
    available = (debit["posted_credits_atomic"] - debit["posted_debits_atomic"]
                 - debit["pending_debits_atomic"] + debit["credit_limit_atomic"])
    if available < amount:
        raise InsufficientFunds(
            f"account {transfer.debit_account_id} has {available - debit['credit_limit_atomic']}"
            f" atomic {debit['currency']} available, {amount} needed")
    for row, total in ((debit, "posted_debits_atomic"), (credit, "posted_credits_atomic")):
        if row[total] > INT64_MAX - amount:  # rewound as `wallets._totals.rewind` would
            row["posted_credits_atomic"], row["posted_debits_atomic"], units = \
                _totals.rewound(row["posted_credits_atomic"], row["posted_debits_atomic"])
            row["totals_rewinds"] += units
    if (debit["posted_debits_atomic"] > INT64_MAX - amount
            or credit["posted_credits_atomic"] > INT64_MAX - amount):
        from wallets.errors import ResourceExhausted

        raise ResourceExhausted("an account's running totals would pass int64; move its "
                                "balance to a new account",
                                reason="ACCOUNT_TOTALS_EXHAUSTED")
    debit["posted_debits_atomic"] += amount
    credit["posted_credits_atomic"] += amount
    code = debit["currency"]
    return (Leg(transfer.debit_account_id, code, posted_atomic=-amount),
            Leg(transfer.credit_account_id, code, posted_atomic=amount))


def _stored_outcomes(conn: Connection, scope: str, keys: list[str], *, legacy: bool
                     ) -> dict[str, tuple[str, Posting | AgentmarketError]]:
    """Outcomes already recorded for these transfer keys of `scope` (digest, result or
    error); with `legacy`, rows from before keys were scoped count when the scope has none."""
    found: dict[str, tuple[str, Posting | AgentmarketError]] = {}
    scopes = [scope, _idempotency.LEGACY_SCOPE] if legacy else [scope]
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        rows: dict[str, list[Any]] = {}
        for row in conn.execute(select(KEYS).where(KEYS.c.scope.in_(scopes),
                                                   KEYS.c.operation == "transfer",
                                                   KEYS.c.key.in_(chunk))):
            rows.setdefault(row.key, []).append(row)
        for key, candidates in rows.items():
            row = _idempotency.pick(candidates, scope)
            payload = orjson.loads(row.result_json)
            if row.outcome == "ok":
                found[key] = (row.request_digest, Posting.from_json(payload))
            else:
                cls = _idempotency._error_classes().get(payload["type"], AgentmarketError)
                found[key] = (row.request_digest, cls(payload["message"],
                                                      reason=payload["reason"]))
    return found
