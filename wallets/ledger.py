"""The double-entry ledger: accounts, postings, two-phase holds, idempotent and atomic.

Every money movement is one posting whose legs sum to zero per currency (posted, and pending
debits against pending credits). Rails and the marketplace's fee income are accounts too, so the
sum of every account's posted balance in a currency is always zero.

Concurrency: on SQLite every write transaction is BEGIN IMMEDIATE (one writer per process,
group commit), and each posting is sealed into the hash chain as it is written. On PostgreSQL a
write transaction locks exactly the rows it depends on: balances change only by conditional
UPDATEs that refuse to take an account below its limit (each locks its account row, legs in
account order); a hold being captured or voided is read FOR UPDATE, as are the wallets whose
spend controls a debit checks (`wallets.guard`) and other state a decision reads; idempotency
keys are unique, so a concurrent duplicate loses and replays. Postings are numbered at insert
and commit unsealed; the sealer (`wallets.sealer`) links them into the chain afterwards. So
postings on different accounts commit in parallel, and no double spend relies on isolation
levels alone.

How a mutation runs once per idempotency key, alone or group-committed, is `wallets._mutation`;
on SQLite the hot statements run on the DB-API cursor (`wallets._sqlite_hot`). On PostgreSQL a
plain transfer is one call of a server function (`wallets._pg_hot`), which leaves whatever it
does not handle to the general path.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry import trace
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    false,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from wallets import _idempotency, _pg_hot
from wallets import _sqlite_hot as hot
from wallets._bulk import TransferRequest, post_transfers
from wallets._chain import GENESIS_HASH, posting_hash
from wallets._group_commit import GroupCommitter
from wallets._mutation import MutationRunner, transaction_postings, transaction_sealed
from wallets.currencies import MAX_AMOUNT_ATOMIC, check_amount, currency
from wallets.errors import (
    AgentmarketError,
    HoldClosed,
    HoldExceeded,
    HoldLocked,
    InsufficientFunds,
    InvalidAmount,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from wallets.guard import SpendContext, SpendGuard  # spend-guard hook
from wallets.models import Balance, Hold, Leg, Posting, Transfer
from wallets.sealer import Sealer, seal
from wallets.store import WriteSerializer, create_schema, is_sqlite
from wallets.tables import (
    AccountRow,
    EntryRow,
    HoldRow,
    IdempotencyRow,
    LedgerHeadRow,
    PostingRow,
)

ACCOUNTS = AccountRow.__table__  # type: ignore[attr-defined]
POSTINGS = PostingRow.__table__  # type: ignore[attr-defined]
ENTRIES = EntryRow.__table__  # type: ignore[attr-defined]
HOLDS = HoldRow.__table__  # type: ignore[attr-defined]
HEAD = LedgerHeadRow.__table__  # type: ignore[attr-defined]
KEYS = IdempotencyRow.__table__  # type: ignore[attr-defined]

ACCOUNT_KINDS = ("wallet", "rail", "fees", "fx", "escrow")


def _apply_leg_statement() -> Any:
    """One static, cached UPDATE for every leg: it refuses, in the same statement, to take an
    account below its limit (when the leg spends) or a running total past int64."""
    c = ACCOUNTS.c
    available_after = (c.posted_credits_atomic + bindparam("a_cr") - c.posted_debits_atomic
                       - bindparam("a_dr") - c.pending_debits_atomic - bindparam("a_pd"))
    totals = ("posted_credits_atomic", "posted_debits_atomic", "pending_debits_atomic",
              "pending_credits_atomic")
    return (update(ACCOUNTS)
            .where(c.id == bindparam("a_id"), c.currency == bindparam("a_currency"),
                   or_(bindparam("a_spends") == false(),
                       available_after + c.credit_limit_atomic >= 0),
                   *(c[name] <= bindparam(f"a_max_{name}") for name in totals))
            .values(posted_credits_atomic=c.posted_credits_atomic + bindparam("a_cr"),
                    posted_debits_atomic=c.posted_debits_atomic + bindparam("a_dr"),
                    pending_debits_atomic=c.pending_debits_atomic + bindparam("a_pd"),
                    pending_credits_atomic=c.pending_credits_atomic + bindparam("a_pc")))


_APPLY_LEG = _apply_leg_statement()
_APPLY_LEG_SQLITE = hot.compile_for_sqlite(_APPLY_LEG)
_SELECT_ACCOUNTS = select(ACCOUNTS).where(ACCOUNTS.c.id.in_(bindparam("ids", expanding=True)))
_INSERT_UNSEALED = (insert(POSTINGS).values(sequence=func.nextval("ledger_posting_seq"))
                    .returning(POSTINGS.c.sequence))
_NEXT_SEQUENCES = text("SELECT nextval('ledger_posting_seq') FROM generate_series(1, :n)")
_INSERT_ENTRY = insert(ENTRIES)
# The hold statements of every escrow step: prepared on SQLite (`wallets._sqlite_hot`)
_HOLD_FOR_UPDATE = hot.Statement(select(HOLDS).where(HOLDS.c.id == bindparam("hold"))
                                 .with_for_update())  # SQLite: writers are serialised
_SETTLE_HOLD = hot.Statement(update(HOLDS).where(HOLDS.c.id == bindparam("hold")).values(
    captured_atomic=bindparam("captured"), voided_atomic=bindparam("voided"),
    status=bindparam("status")))
_DUE_HOLDS = hot.Statement(select(HOLDS.c.id).where(
    HOLDS.c.status == "open", HOLDS.c.expires_at_ms <= bindparam("now")).limit(bindparam("limit")))
_VOID_HOLD = hot.Statement(update(HOLDS).where(HOLDS.c.id == bindparam("hold")).values(
    voided_atomic=bindparam("voided"), status=bindparam("status")))
MAX_HOLD_TIMEOUT_S = 30 * 24 * 3600
MAX_LEGS = 64
MAX_MEMO = 256
INT64_MAX = 2**63 - 1  # the BIGINT columns' limit


def next_sequences(conn: Connection, n: int) -> list[int]:
    """`n` fresh posting numbers on PostgreSQL (never reused; gaps where a writer rolls back)."""
    return sorted(int(v) for v in conn.execute(_NEXT_SEQUENCES, {"n": n}).scalars())


def _current_trace() -> tuple[str, str]:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def _balance(row: Any) -> Balance:
    return Balance(
        account_id=row.id,
        owner=row.owner,
        currency=row.currency,
        kind=row.kind,
        posted_credits_atomic=row.posted_credits_atomic,
        posted_debits_atomic=row.posted_debits_atomic,
        pending_debits_atomic=row.pending_debits_atomic,
        pending_credits_atomic=row.pending_credits_atomic,
        credit_limit_atomic=row.credit_limit_atomic,
    )


def _hold(row: Any) -> Hold:
    return Hold(
        hold_id=row.id,
        debit_account_id=row.debit_account_id,
        credit_account_id=row.credit_account_id,
        currency=row.currency,
        amount_atomic=row.amount_atomic,
        captured_atomic=row.captured_atomic,
        voided_atomic=row.voided_atomic,
        status=row.status,
        expires_at_ms=row.expires_at_ms,
    )


class Ledger(MutationRunner):
    """The ledger over one database. Thread-safe; share one per process and engine."""

    def __init__(self, engine: Engine, *, clock_ms: Callable[[], int] | None = None,
                 group_commit: bool | None = None, guard: SpendGuard | None = None,
                 sealer: bool | None = None) -> None:
        """`group_commit`: concurrent writers share transactions and commits (see
        `wallets._group_commit`); off, each mutation commits on its own. By default on for
        SQLite (one writer at a time anyway) and off for PostgreSQL, where writes commit in
        parallel: a shared batch would take its items' row locks in no global order and deadlock
        against another node's batches. `guard`: checks every
        wallet debit against its policy and mandates (`wallets.guard`; one is made by default).
        `sealer`: run a background sealer (`wallets.sealer`; one process at a time holds its
        lease); by default on PostgreSQL (SQLite seals as it writes)."""
        self.engine = engine
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.spend_guard = (guard or SpendGuard()).attach(self)  # spend-guard hook
        self._serial = WriteSerializer(engine)
        self._sqlite = is_sqlite(engine)
        create_schema(engine)
        with self._write() as conn:
            if conn.execute(select(HEAD.c.id)).first() is None:
                conn.execute(insert(HEAD).values(id=1, sequence=0, hash=GENESIS_HASH))
            # Rows from before keys were scoped are looked up as a fallback, so a request made
            # before the upgrade still gets its first outcome; none are ever written again.
            self._legacy_keys = conn.execute(select(KEYS.c.key).where(
                KEYS.c.scope == _idempotency.LEGACY_SCOPE).limit(1)).first() is not None
        if group_commit is None:
            group_commit = self._sqlite
        self._committer = GroupCommitter(self._run_batch) if group_commit else None
        self._plain = (_pg_hot.PlainPostings(self)  # PostgreSQL: plain postings in one call
                       if _pg_hot.available(self, group_commit) else None)
        run_sealer = (not self._sqlite) if sealer is None else sealer
        self._sealer = Sealer(engine, f"agentmarket ledger sealer {uuid.uuid4().hex[:8]}"
                              ).start() if run_sealer else None

    def close(self) -> None:
        """Stop the writer and sealer threads after the queued writes, and give back the writers'
        connection (the engine stays open)."""
        if self._committer is not None:
            self._committer.close()
            self._committer = None
        if self._plain is not None:
            self._plain.close()
        if self._sealer is not None:
            self._sealer.close()
            self._sealer = None
        self._serial.close()

    def seal(self) -> int:
        """Seal every posting committed so far into the hash chain now (`wallets.sealer`);
        returns how many were waiting."""
        return seal(self.engine)

    # ---- transactions -------------------------------------------------------------------

    def _read(self) -> Connection:
        return self.engine.connect().execution_options(agentmarket_read=True)

    # ---- accounts -----------------------------------------------------------------------

    def open_account(
        self, owner: str, currency_code: str, kind: str = "wallet", *, credit_limit_atomic: int = 0
    ) -> Balance:
        """The account of (owner, currency, kind), created if missing: naturally idempotent."""
        code = currency(currency_code).code
        if kind not in ACCOUNT_KINDS:
            raise InvalidArgument(f"unknown account kind {kind!r}; use one of {ACCOUNT_KINDS}")
        if not owner or len(owner) > 128:
            raise InvalidArgument("owner must be 1..128 characters")
        check_amount(credit_limit_atomic, allow_zero=True)
        existing = self.find_account(owner, code, kind)
        if existing is not None:
            return existing
        try:
            with self._write() as conn:
                conn.execute(
                    insert(ACCOUNTS).values(
                        id=uuid.uuid4().hex,
                        owner=owner,
                        currency=code,
                        kind=kind,
                        posted_debits_atomic=0,
                        posted_credits_atomic=0,
                        pending_debits_atomic=0,
                        pending_credits_atomic=0,
                        credit_limit_atomic=credit_limit_atomic,
                        created_at_ms=self.clock_ms(),
                    )
                )
        except IntegrityError:
            pass  # opened concurrently by someone else: same result
        found = self.find_account(owner, code, kind)
        assert found is not None
        return found

    def find_account(self, owner: str, currency_code: str, kind: str = "wallet") -> Balance | None:
        with self._read() as conn:
            row = conn.execute(
                select(ACCOUNTS).where(
                    ACCOUNTS.c.owner == owner,
                    ACCOUNTS.c.currency == currency(currency_code).code,
                    ACCOUNTS.c.kind == kind,
                )
            ).first()
        return _balance(row) if row else None

    def balance(self, account_id: str) -> Balance:
        """Current balances; holds past their timeout are expired first, so none outlives it."""
        self.expire_holds(account_id=account_id)
        with self._read() as conn:
            row = conn.execute(select(ACCOUNTS).where(ACCOUNTS.c.id == account_id)).first()
        if row is None:
            raise NotFound(f"account {account_id!r} does not exist")
        return _balance(row)

    def accounts(self, owner: str | None = None) -> list[Balance]:
        query = select(ACCOUNTS).order_by(ACCOUNTS.c.kind, ACCOUNTS.c.owner, ACCOUNTS.c.currency)
        if owner is not None:
            query = query.where(ACCOUNTS.c.owner == owner)
        with self._read() as conn:
            return [_balance(row) for row in conn.execute(query)]

    # ---- postings -----------------------------------------------------------------------

    def transfer(self, key: str, debit_account_id: str, credit_account_id: str,
                 amount_atomic: int, *, memo: str = "", kind: str = "transfer",
                 spend: SpendContext | None = None) -> Posting:
        """Move money between two accounts of the same currency."""
        return self.post_linked(
            key, [Transfer(debit_account_id, credit_account_id, amount_atomic)],
            memo=memo, kind=kind, spend=spend,
        )

    def post_linked(self, key: str, transfers: Sequence[Transfer], *, memo: str = "",
                    kind: str = "transfer", spend: SpendContext | None = None) -> Posting:
        """Several transfers that succeed or fail together, as one posting."""
        if not transfers or len(transfers) > MAX_LEGS:
            raise InvalidArgument(f"a posting needs 1..{MAX_LEGS} transfers")
        for t in transfers:
            check_amount(t.amount_atomic)
            if t.debit_account_id == t.credit_account_id:
                raise InvalidArgument("debit and credit accounts must differ")
        request: dict[str, Any] = {
            "transfers": [[t.debit_account_id, t.credit_account_id, t.amount_atomic]
                          for t in transfers], "memo": memo, "kind": kind}
        if spend is not None:  # spend-guard hook: the context is part of the request
            request["spend"] = spend.request()

        if self._plain is not None and len(memo) <= MAX_MEMO:
            posting = self._plain.post(key, kind, request, transfers, memo, spend,
                                       _current_trace())
            if posting is not None:
                return posting

        def apply(conn: Connection) -> Posting:
            return self.post_linked_in(conn, key, transfers, memo=memo, kind=kind, spend=spend)

        return self.mutate(key, kind, request, apply, Posting.to_json, Posting.from_json)

    def post_linked_in(self, conn: Connection, key: str, transfers: Sequence[Transfer], *,
                       memo: str = "", kind: str = "transfer",
                       spend: SpendContext | None = None) -> Posting:
        """`post_linked` inside a caller's transaction (FX posts one per currency in one); the
        caller has checked the transfers as `post_linked` does."""
        deltas: dict[str, int] = {}
        for t in transfers:
            deltas[t.debit_account_id] = deltas.get(t.debit_account_id, 0) - t.amount_atomic
            deltas[t.credit_account_id] = deltas.get(t.credit_account_id, 0) + t.amount_atomic
        if self._sqlite:  # one statement: the accounts, and which wallets have controls
            accounts, controlled = hot.accounts_with_controls(conn, deltas)
            if not self.spend_guard.idle(transfers, accounts, spend, controlled):
                self.spend_guard.check(conn, key, kind, transfers, accounts, spend)
        else:
            accounts = self._accounts_for(conn, deltas)
            self.spend_guard.check(conn, key, kind, transfers, accounts, spend)  # spend-guard
        legs = [Leg(a, accounts[a].currency, posted_atomic=d) for a, d in deltas.items()]
        return self._post(conn, key, kind, legs, memo=memo)

    def transfer_many(self, requests: Sequence[TransferRequest]
                      ) -> list[Posting | AgentmarketError]:
        """Many independent transfers in one transaction with bulk statements (the hot path
        for batched settlement); each gets its own result or error, as `transfer` would."""
        return post_transfers(self, requests)

    def _accounts_for(self, conn: Connection, account_ids: Iterable[str]) -> dict[str, Balance]:
        ids = sorted(set(account_ids))
        rows = conn.execute(_SELECT_ACCOUNTS, {"ids": ids}).all()
        found = {row.id: _balance(row) for row in rows}
        for account_id in ids:
            if account_id not in found:
                raise NotFound(f"account {account_id!r} does not exist")
        if len({b.currency for b in found.values()}) > 1:
            codes = ", ".join(sorted({b.currency for b in found.values()}))
            raise InvalidArgument(f"accounts are in different currencies ({codes}); use FX")
        return found

    def _post(self, conn: Connection, key: str, kind: str, legs: list[Leg], *,
              hold_id: str = "", memo: str = "") -> Posting:
        """Append one posting and apply its legs; the caller's transaction makes it atomic."""
        if len(memo) > MAX_MEMO:
            raise InvalidArgument(f"memo is longer than {MAX_MEMO} characters")
        for code in {leg.currency for leg in legs}:
            same = [leg for leg in legs if leg.currency == code]
            posted = sum(leg.posted_atomic for leg in same)
            pending = sum(leg.pending_debit_atomic - leg.pending_credit_atomic for leg in same)
            assert posted == 0 and pending == 0, f"unbalanced posting in {code}: {legs}"
        for leg in sorted(legs, key=lambda leg: leg.account_id):
            self._apply_leg(conn, leg)
        now_ms = self.clock_ms()
        trace_id, span_id = _current_trace()
        fields: dict[str, Any] = dict(idempotency_key=key, kind=kind, hold_id=hold_id,
                                      created_at_ms=now_ms, memo=memo, trace_id=trace_id,
                                      span_id=span_id)
        if self._sqlite:  # writers are serialised: seal as we write, position = sequence
            prev_sequence, prev_hash = hot.head(conn)
            sequence = fields["sequence"] = prev_sequence + 1
            digest = posting_hash(prev_hash, legs=legs, **fields)
            hot.append_sealed(conn, fields, prev_hash, digest, legs)
            transaction_postings(conn).append(sequence)
            posting = Posting(legs=tuple(legs), hash=digest, **fields)
            transaction_sealed(conn)[sequence] = (posting, prev_hash)
            return posting
        # PostgreSQL: numbered now, sealed into the chain after commit (`wallets.sealer`)
        sequence = fields["sequence"] = conn.execute(
            _INSERT_UNSEALED, {**fields, "prev_hash": "", "hash": ""}).scalar_one()
        transaction_postings(conn).append(sequence)
        conn.execute(_INSERT_ENTRY, [
            dict(sequence=sequence, account_id=leg.account_id, currency=leg.currency,
                 posted_atomic=leg.posted_atomic, pending_debit_atomic=leg.pending_debit_atomic,
                 pending_credit_atomic=leg.pending_credit_atomic) for leg in legs
        ])
        return Posting(legs=tuple(legs), hash="", **fields)

    def _apply_leg(self, conn: Connection, leg: Leg) -> None:
        """Change one account's balances; refuse (atomically) to go below its limit."""
        credit = max(leg.posted_atomic, 0)
        debit = max(-leg.posted_atomic, 0)
        # The totals are running BIGINT sums: refuse to pass int64 (SQLite would silently turn
        # the column into a float, PostgreSQL raise a bare DataError).
        increments = {"posted_credits_atomic": credit, "posted_debits_atomic": debit,
                      "pending_debits_atomic": leg.pending_debit_atomic,
                      "pending_credits_atomic": leg.pending_credit_atomic}
        params = {
            "a_id": leg.account_id, "a_currency": leg.currency,
            "a_spends": leg.posted_atomic - leg.pending_debit_atomic < 0,
            "a_cr": credit, "a_dr": debit, "a_pd": leg.pending_debit_atomic,
            "a_pc": leg.pending_credit_atomic,
            **{f"a_max_{name}": INT64_MAX - max(d, 0) for name, d in increments.items()},
        }
        changed = (hot.apply_leg(conn, _APPLY_LEG_SQLITE, params) if self._sqlite
                   else conn.execute(_APPLY_LEG, params).rowcount)
        if changed != 1:
            row = conn.execute(select(ACCOUNTS).where(ACCOUNTS.c.id == leg.account_id)).first()
            if row is None:
                raise NotFound(f"account {leg.account_id!r} does not exist")
            if row.currency != leg.currency:
                raise InvalidArgument(f"account {leg.account_id!r} holds {row.currency}")
            if any(getattr(row, name) > INT64_MAX - d for name, d in increments.items() if d > 0):
                raise ResourceExhausted(
                    f"account {leg.account_id}'s running totals would pass {INT64_MAX} atomic; "
                    "move its balance to a new account", reason="ACCOUNT_TOTALS_EXHAUSTED")
            have = _balance(row)
            need = -(leg.posted_atomic - leg.pending_debit_atomic)
            raise InsufficientFunds(
                f"account {leg.account_id} has {have.available_atomic} atomic "
                f"{have.currency} available, {need} needed"
            )

    # ---- holds --------------------------------------------------------------------------

    def hold(self, key: str, debit_account_id: str, credit_account_id: str, amount_atomic: int,
             *, timeout_s: int, spend: SpendContext | None = None) -> Hold:
        """Reserve money on the debit account for the credit account until captured or voided."""
        check_amount(amount_atomic)
        if not 1 <= timeout_s <= MAX_HOLD_TIMEOUT_S:
            raise InvalidArgument(f"timeout_s must be 1..{MAX_HOLD_TIMEOUT_S}, got {timeout_s}")
        if debit_account_id == credit_account_id:
            raise InvalidArgument("debit and credit accounts must differ")
        request: dict[str, Any] = {"debit": debit_account_id, "credit": credit_account_id,
                                   "amount": amount_atomic, "timeout_s": timeout_s}
        if spend is not None:  # spend-guard hook: the context is part of the request
            request["spend"] = spend.request()

        def apply(conn: Connection) -> Hold:
            return self.hold_in(conn, key, debit_account_id, credit_account_id, amount_atomic,
                                timeout_s=timeout_s, spend=spend)

        return self.mutate(key, "hold", request, apply, Hold.to_json, Hold.from_json)

    def hold_in(self, conn: Connection, key: str, debit_account_id: str, credit_account_id: str,
                amount_atomic: int, *, timeout_s: int,
                spend: SpendContext | None = None) -> Hold:
        """`hold` inside a caller's transaction (escrow opens one atomically with its record)."""
        transfers = [Transfer(debit_account_id, credit_account_id, amount_atomic)]
        if self._sqlite:  # one statement: the accounts, and which wallets have controls
            accounts, controlled = hot.accounts_with_controls(
                conn, [debit_account_id, credit_account_id])
            if not self.spend_guard.idle(transfers, accounts, spend, controlled):
                self.spend_guard.check(conn, key, "hold", transfers, accounts, spend)
        else:
            accounts = self._accounts_for(conn, [debit_account_id, credit_account_id])
            self.spend_guard.check(  # spend-guard hook
                conn, key, "hold", transfers, accounts, spend)
        code = accounts[debit_account_id].currency
        hold_id = uuid.uuid4().hex
        self._post(conn, key, "hold", [
            Leg(debit_account_id, code, pending_debit_atomic=amount_atomic),
            Leg(credit_account_id, code, pending_credit_atomic=amount_atomic),
        ], hold_id=hold_id)
        expires_at_ms = self.clock_ms() + timeout_s * 1000
        row = dict(
            id=hold_id, debit_account_id=debit_account_id, credit_account_id=credit_account_id,
            currency=code, amount_atomic=amount_atomic, captured_atomic=0, voided_atomic=0,
            status="open", expires_at_ms=expires_at_ms, condition_sha256="", fulfilment="",
        )
        hot.insert(conn, HOLDS, row)
        return Hold(hold_id, debit_account_id, credit_account_id, code, amount_atomic, 0, 0,
                    "open", expires_at_ms)

    def get_hold(self, hold_id: str) -> Hold:
        self.expire_holds(hold_id=hold_id)
        with self._read() as conn:
            row = conn.execute(select(HOLDS).where(HOLDS.c.id == hold_id)).first()
        if row is None:
            raise NotFound(f"hold {hold_id!r} does not exist")
        return _hold(row)

    def capture(self, key: str, hold_id: str, amount_atomic: int,
                splits: Sequence[tuple[str, int]] | None = None, *, final: bool = False) -> Posting:
        """Pay `amount_atomic` out of a hold, split over credit accounts (default: the hold's).

        Several partial captures are allowed up to the held amount; `final=True` voids whatever
        is left in the same posting, so capture and release are one atomic step.
        """
        check_amount(amount_atomic, allow_zero=final)
        request = {"hold": hold_id, "amount": amount_atomic,
                   "splits": [list(s) for s in splits or []], "final": final}
        self.expire_holds(hold_id=hold_id)

        def apply(conn: Connection) -> Posting:
            return self.capture_in(conn, key, hold_id, amount_atomic, splits, final=final)

        return self.mutate(key, "capture", request, apply, Posting.to_json, Posting.from_json)

    def capture_in(self, conn: Connection, key: str, hold_id: str, amount_atomic: int,
                   splits: Sequence[tuple[str, int]] | None = None, *,
                   final: bool = False, preimage: bytes = b"") -> Posting:
        """`preimage`: unlocks a hash-locked hold (`wallets.conditional`); others ignore it."""
        hold = self._open_hold(conn, hold_id, preimage)
        splits = list(splits) if splits else [(hold.credit_account_id, amount_atomic)]
        if len(splits) > MAX_LEGS or any(a < 0 for _, a in splits) \
                or sum(a for _, a in splits) != amount_atomic:
            raise InvalidAmount(f"splits must be positive and sum to {amount_atomic}")
        if amount_atomic > hold.open_atomic:
            raise HoldExceeded(
                f"capture of {amount_atomic} exceeds the {hold.open_atomic} still held"
            )
        release = hold.open_atomic - amount_atomic if final else 0
        if self._sqlite:  # the same checks (each exists, one currency), one statement
            hot.accounts_with_controls(conn, [hold.debit_account_id, *(a for a, _ in splits)])
        else:
            self._accounts_for(conn, [hold.debit_account_id, *(a for a, _ in splits)])
        moved = amount_atomic + release
        legs: dict[str, list[int]] = {
            hold.debit_account_id: [-amount_atomic, -moved, 0],
            hold.credit_account_id: [0, 0, -moved],
        }
        for account_id, part in splits:
            if part:
                legs.setdefault(account_id, [0, 0, 0])[0] += part
        posting = self._post(conn, key, "capture", [
            Leg(a, hold.currency, posted_atomic=p, pending_debit_atomic=pd,
                pending_credit_atomic=pc) for a, (p, pd, pc) in legs.items()
        ], hold_id=hold_id)
        captured = hold.captured_atomic + amount_atomic
        voided = hold.voided_atomic + release
        status = "open" if captured + voided < hold.amount_atomic else (
            "captured" if captured else "voided")
        _SETTLE_HOLD.run(conn, {"hold": hold_id, "captured": captured, "voided": voided,
                                "status": status})
        return posting

    def void(self, key: str, hold_id: str) -> Posting:
        """Release everything still held back to the debit account."""
        self.expire_holds(hold_id=hold_id)

        def apply(conn: Connection) -> Posting:
            return self.void_in(conn, key, hold_id)

        return self.mutate(key, "void", {"hold": hold_id}, apply,
                           Posting.to_json, Posting.from_json)

    def void_in(self, conn: Connection, key: str, hold_id: str, *, kind: str = "void") -> Posting:
        hold = self._open_hold(conn, hold_id) if kind == "void" else self._hold_row(conn, hold_id)
        left = hold.open_atomic
        posting = self._post(conn, key, kind, [
            Leg(hold.debit_account_id, hold.currency, pending_debit_atomic=-left),
            Leg(hold.credit_account_id, hold.currency, pending_credit_atomic=-left),
        ], hold_id=hold_id)
        status = "expired" if kind == "expire" else ("voided" if not hold.captured_atomic
                                                     else "captured")
        _VOID_HOLD.run(conn, {"hold": hold_id, "voided": hold.voided_atomic + left,
                              "status": status})
        return posting

    def _hold_row(self, conn: Connection, hold_id: str) -> Hold:
        row = self._hold_for_update(conn, hold_id)
        if row is None:
            raise NotFound(f"hold {hold_id!r} does not exist")
        return _hold(row)

    def _open_hold(self, conn: Connection, hold_id: str, preimage: bytes = b"") -> Hold:
        """The hold, FOR UPDATE: concurrent captures of one hold queue here and each sees what
        the one before left (1000 concurrent captures of one hold all succeeded without it)."""
        row = self._hold_for_update(conn, hold_id)
        if row is None:
            raise NotFound(f"hold {hold_id!r} does not exist")
        hold = _hold(row)
        if hold.status == "open" and hold.expires_at_ms <= self.clock_ms():
            raise HoldClosed(f"hold {hold_id} has expired; its money goes back to the payer")
        if hold.status != "open":
            raise HoldClosed(f"hold {hold_id} is already {hold.status}")
        # A hash-locked hold (wallets.conditional) is captured only with its preimage and
        # voided only by its timeout: a plain capture or void is refused.
        if row.condition_sha256 and hashlib.sha256(preimage).hexdigest() != \
                row.condition_sha256:
            raise HoldLocked(f"hold {hold_id} is locked by a SHA-256 condition: only its "
                             "preimage captures it, and only its timeout voids it")
        return hold

    def _hold_for_update(self, conn: Connection, hold_id: str) -> Any:
        """The hold's row, locked (SQLite: writers are serialised, a plain read)."""
        return _HOLD_FOR_UPDATE.first(conn, {"hold": hold_id})

    def expire_holds(self, *, account_id: str | None = None, hold_id: str | None = None,
                     limit: int = 1000) -> int:
        """Void every open hold past its timeout (the sweeper; also run on access)."""
        now = self.clock_ms()
        if account_id is None and hold_id is None:  # the sweeper's, every round: built once
            with hot.reading(self.engine) as reader:
                due = [row.id for row in _DUE_HOLDS.all(reader, {"now": now, "limit": limit})]
            return self._expire(due)
        query = select(HOLDS.c.id).where(HOLDS.c.status == "open", HOLDS.c.expires_at_ms <= now)
        if account_id is not None:  # either side: the payee's pending credits expire too
            query = query.where(or_(HOLDS.c.debit_account_id == account_id,
                                    HOLDS.c.credit_account_id == account_id))
        if hold_id is not None:
            query = query.where(HOLDS.c.id == hold_id)
        with self._read() as conn:
            due = [row.id for row in conn.execute(query.limit(limit))]
        return self._expire(due)

    def _expire(self, due: list[str]) -> int:
        expired = 0
        for due_id in due:
            with self._write() as conn:
                hold = self._hold_row(conn, due_id)
                if hold.status == "open" and hold.expires_at_ms <= self.clock_ms():
                    self.void_in(conn, f"expire:{due_id}", due_id, kind="expire")
                    expired += 1
        return expired

    # ---- reading ------------------------------------------------------------------------

    def history(self, account_id: str, *, limit: int = 100,
                before_sequence: int = 0) -> list[Posting]:
        """Postings touching an account, newest first."""
        if not 1 <= limit <= 1000:
            raise InvalidArgument("limit must be 1..1000")
        seq_query = select(ENTRIES.c.sequence).where(ENTRIES.c.account_id == account_id)
        if before_sequence:
            seq_query = seq_query.where(ENTRIES.c.sequence < before_sequence)
        seq_query = seq_query.order_by(ENTRIES.c.sequence.desc()).limit(limit)
        with self._read() as conn:
            if conn.execute(select(ACCOUNTS.c.id).where(ACCOUNTS.c.id == account_id)).first() \
                    is None:
                raise NotFound(f"account {account_id!r} does not exist")
            sequences = [row.sequence for row in conn.execute(seq_query)]
            return self._postings(conn, sequences)

    def postings(self, *, trace_id: str | None = None, hold_id: str | None = None,
                 account_id: str | None = None, kind: str | None = None,
                 since_ms: int | None = None, limit: int = 1000,
                 newest_first: bool = False,
                 before_sequence: int | None = None) -> list[Posting]:
        """Postings matching every filter given (the operator's view of the ledger);
        `before_sequence` pages back from a sequence number."""
        order = POSTINGS.c.sequence.desc() if newest_first else POSTINGS.c.sequence
        query = select(POSTINGS.c.sequence).order_by(order).limit(limit)
        if before_sequence is not None:
            query = query.where(POSTINGS.c.sequence < before_sequence)
        if trace_id:
            query = query.where(POSTINGS.c.trace_id == trace_id)
        if hold_id:
            query = query.where(POSTINGS.c.hold_id == hold_id)
        if kind:
            query = query.where(POSTINGS.c.kind == kind)
        if since_ms is not None:
            query = query.where(POSTINGS.c.created_at_ms >= since_ms)
        if account_id:
            query = query.where(POSTINGS.c.sequence.in_(
                select(ENTRIES.c.sequence).where(ENTRIES.c.account_id == account_id)))
        with self._read() as conn:
            return self._postings(conn, [row.sequence for row in conn.execute(query)])

    def open_hold_totals(self) -> list[tuple[str, int, int]]:
        """(currency, open holds, amount still held) for the metrics gauges."""
        still_held = HOLDS.c.amount_atomic - HOLDS.c.captured_atomic - HOLDS.c.voided_atomic
        query = (select(HOLDS.c.currency, func.count(), func.coalesce(func.sum(still_held), 0))
                 .where(HOLDS.c.status == "open").group_by(HOLDS.c.currency))
        with self._read() as conn:
            return [(code, int(n), int(amount)) for code, n, amount in conn.execute(query)]

    def holds(self, *, account_id: str | None = None, status: str | None = None,
              limit: int = 1000) -> list[Hold]:
        """Holds on an account (either side), newest expiry first."""
        query = select(HOLDS).order_by(HOLDS.c.expires_at_ms.desc()).limit(limit)
        if account_id:
            query = query.where(or_(HOLDS.c.debit_account_id == account_id,
                                    HOLDS.c.credit_account_id == account_id))
        if status:
            query = query.where(HOLDS.c.status == status)
        with self._read() as conn:
            return [_hold(row) for row in conn.execute(query)]

    def _postings(self, conn: Connection, sequences: list[int]) -> list[Posting]:
        if not sequences:
            return []
        legs: dict[int, list[Leg]] = {}
        for e in conn.execute(select(ENTRIES).where(ENTRIES.c.sequence.in_(sequences))
                              .order_by(ENTRIES.c.id)):
            legs.setdefault(e.sequence, []).append(Leg(
                e.account_id, e.currency, e.posted_atomic, e.pending_debit_atomic,
                e.pending_credit_atomic))
        rows = conn.execute(select(POSTINGS).where(POSTINGS.c.sequence.in_(sequences))).all()
        by_seq = {
            r.sequence: Posting(
                sequence=r.sequence, idempotency_key=r.idempotency_key, kind=r.kind,
                legs=tuple(legs.get(r.sequence, ())), created_at_ms=r.created_at_ms,
                hold_id=r.hold_id, memo=r.memo, trace_id=r.trace_id, span_id=r.span_id,
                hash=r.hash)
            for r in rows
        }
        return [by_seq[s] for s in sequences if s in by_seq]


assert MAX_AMOUNT_ATOMIC < 2**63
