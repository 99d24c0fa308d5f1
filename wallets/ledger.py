"""The double-entry ledger: accounts, postings, two-phase holds, idempotent and atomic.

Holds (reserve, capture, void, expire) are `wallets._holds`; the operator's reads are
`wallets._ledger_reads`.

Every money movement is one posting whose legs sum to zero per currency (posted, and pending
debits against pending credits). Rails and the marketplace's fee income are accounts too, so the
sum of every account's posted balance in a currency is always zero.

Concurrency: on SQLite every write transaction is BEGIN IMMEDIATE (one writer per process,
group commit), and each posting is sealed into the hash chain as it is written. On PostgreSQL a
write transaction locks exactly the rows it depends on: debits change balances only by
conditional UPDATEs that refuse to take an account below its limit (each locks its account row,
legs in account order), while legs that only add to an account are appended and folded into it
after the commit (`wallets._credits`), so a payee many postings share is no row they queue
behind; a hold being captured or voided is read FOR UPDATE, as are the wallets whose
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

from wallets import _credits, _idempotency, _pg_hot, _totals
from wallets import _sqlite_hot as hot
from wallets._bulk import TransferRequest, post_transfers
from wallets._chain import GENESIS_HASH, posting_hash
from wallets._group_commit import GroupCommitter
from wallets._holds import LedgerHolds
from wallets._ledger_reads import ACCOUNTS, ENTRIES, POSTINGS, LedgerReads, balance_from_row
from wallets._ledger_reads import HOLDS as HOLDS  # the hold table, for those that read it here
from wallets._mutation import MutationRunner, transaction_postings, transaction_sealed
from wallets.currencies import INT64_MAX, MAX_AMOUNT_ATOMIC, check_amount, currency
from wallets.errors import (
    AgentmarketError,
    InsufficientFunds,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from wallets.guard import SpendContext, SpendGuard  # spend-guard hook
from wallets.models import MAX_LEGS, Balance, Leg, Posting, Transfer
from wallets.sealer import Sealer, seal
from wallets.store import WriteSerializer, create_schema, insert_unless_present, is_sqlite
from wallets.tables import IdempotencyRow, LedgerHeadRow

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
# An account's row by id, and a wallet by owner: prepared on SQLite, where an account's row is
# its whole balance (PostgreSQL adds credits not yet folded: `_credits.accounts_select`)
_ACCOUNT = hot.Prepared(select(ACCOUNTS).where(ACCOUNTS.c.id == bindparam("account")))
_ACCOUNT_OF_OWNER = hot.Prepared(select(ACCOUNTS).where(
    ACCOUNTS.c.owner == bindparam("owner"), ACCOUNTS.c.currency == bindparam("currency"),
    ACCOUNTS.c.kind == bindparam("kind")))
_SELECT_ACCOUNTS = select(ACCOUNTS).where(ACCOUNTS.c.id.in_(bindparam("ids", expanding=True)))
_INSERT_UNSEALED = (insert(POSTINGS).values(sequence=func.nextval("ledger_posting_seq"))
                    .returning(POSTINGS.c.sequence))
_NEXT_SEQUENCES = text("SELECT nextval('ledger_posting_seq') FROM generate_series(1, :n)")
_INSERT_ENTRY = insert(ENTRIES)
MAX_MEMO = 256


def next_sequences(conn: Connection, n: int) -> list[int]:
    """`n` fresh posting numbers on PostgreSQL (never reused; gaps where a writer rolls back)."""
    return sorted(int(v) for v in conn.execute(_NEXT_SEQUENCES, {"n": n}).scalars())


def _current_trace() -> tuple[str, str]:
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return "", ""
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class Ledger(LedgerHolds, LedgerReads, MutationRunner):
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
            insert_unless_present(conn, HEAD, id=1, sequence=0, hash=GENESIS_HASH)
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

    # ---- accounts -----------------------------------------------------------------------

    def open_account(
        self, owner: str, currency_code: str, kind: str = "wallet", *, credit_limit_atomic: int = 0
    ) -> Balance:
        """The account of (owner, currency, kind), created if missing: naturally idempotent."""
        code = currency(currency_code).code
        if kind not in ACCOUNT_KINDS:
            raise InvalidArgument(f"unknown account kind {kind!r}; use one of {ACCOUNT_KINDS}")
        if not owner or len(owner) > 128 or not owner.isprintable() or owner != owner.strip():
            # another spelling of an owner ("<id>\n", " <id>") would be an account of its own
            raise InvalidArgument("owner must be 1..128 printable characters, with no space "
                                  "at either end")
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
        code = currency(currency_code).code
        if self._sqlite:  # prepared: a gateway asks before every session it opens
            with hot.reading(self.engine) as reader:
                row = _ACCOUNT_OF_OWNER.first(reader, {"owner": owner, "currency": code,
                                                       "kind": kind})
            return balance_from_row(row) if row else None
        with self._read() as conn:
            row = conn.execute(
                _credits.accounts_select(conn).where(
                    ACCOUNTS.c.owner == owner,
                    ACCOUNTS.c.currency == code,
                    ACCOUNTS.c.kind == kind,
                )
            ).first()
        return balance_from_row(row) if row else None

    def balance(self, account_id: str) -> Balance:
        """Current balances; holds past their timeout are expired first, so none outlives it."""
        self.expire_holds(account_id=account_id)
        if self._sqlite:
            with hot.reading(self.engine) as reader:
                row = _ACCOUNT.first(reader, {"account": account_id})
        else:
            with self._read() as conn:
                row = conn.execute(_credits.accounts_select(conn)
                                   .where(ACCOUNTS.c.id == account_id)).first()
        if row is None:
            raise NotFound(f"account {account_id!r} does not exist")
        return balance_from_row(row)

    def accounts(self, owner: str | None = None) -> list[Balance]:
        query = _credits.accounts_select(self.engine).order_by(
            ACCOUNTS.c.kind, ACCOUNTS.c.owner, ACCOUNTS.c.currency)
        if owner is not None:
            query = query.where(ACCOUNTS.c.owner == owner)
        with self._read() as conn:
            return [balance_from_row(row) for row in conn.execute(query)]

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
                       spend: SpendContext | None = None, guarded: bool = True) -> Posting:
        """`post_linked` inside a caller's transaction (FX posts one per currency in one); the
        caller has checked the transfers as `post_linked` does. `guarded` False: debits the
        wallets' controls already passed once (work whose escrow hold lapsed before it was
        paid: the hold was checked when placed), not put to them again, as a capture is not."""
        deltas: dict[str, int] = {}
        for t in transfers:
            deltas[t.debit_account_id] = deltas.get(t.debit_account_id, 0) - t.amount_atomic
            deltas[t.credit_account_id] = deltas.get(t.credit_account_id, 0) + t.amount_atomic
        if self._sqlite:  # one statement: the accounts, and which wallets have controls
            accounts, controlled = hot.accounts_with_controls(conn, deltas)
            if guarded and not self.spend_guard.idle(transfers, accounts, spend, controlled):
                self.spend_guard.check(conn, key, kind, transfers, accounts, spend)
        else:
            accounts = self._accounts_for(conn, deltas)
            if guarded:
                self.spend_guard.check(conn, key, kind, transfers, accounts, spend)
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
        found = {row.id: balance_from_row(row) for row in rows}
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
            if posted != 0 or pending != 0:  # a raise, not an assert: python -O keeps it
                raise RuntimeError(f"unbalanced posting in {code}: {legs}")
        # PostgreSQL: legs that only add to an account are appended, not applied (its row stays
        # unlocked: `wallets._credits`); SQLite applies every leg, its writers take turns.
        credits = [] if self._sqlite else [leg for leg in legs if _credits.defers(leg)]
        for leg in sorted(legs, key=lambda leg: leg.account_id):
            if leg not in credits:
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
        if credits:
            _credits.append(conn, credits)
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
        changed = self._run_leg(conn, params)
        if changed != 1 and not self._sqlite and _credits.fold_in(conn, [leg.account_id],
                                                                   wait=True):
            changed = self._run_leg(conn, params)  # credits it had not counted
        if changed != 1:
            self._refused_leg(conn, leg, increments, params)

    def _run_leg(self, conn: Connection, params: dict[str, Any]) -> int:
        return (hot.apply_leg(conn, _APPLY_LEG_SQLITE, params) if self._sqlite
                else conn.execute(_APPLY_LEG, params).rowcount)

    def _refused_leg(self, conn: Connection, leg: Leg, increments: dict[str, int],
                     params: dict[str, Any]) -> None:
        """Raise why a leg did not apply, unless its account's running totals only needed
        rewinding (`wallets._totals`): then it is applied."""
        row = conn.execute(select(ACCOUNTS).where(ACCOUNTS.c.id == leg.account_id)).first()
        if row is None:
            raise NotFound(f"account {leg.account_id!r} does not exist")
        if row.currency != leg.currency:
            raise InvalidArgument(f"account {leg.account_id!r} holds {row.currency}")

        def full(row: Any) -> bool:
            return any(getattr(row, name) > INT64_MAX - d
                       for name, d in increments.items() if d > 0)

        if full(row) and _totals.rewind(conn, leg.account_id):
            if self._run_leg(conn, params) == 1:
                return  # the totals had room once rewound
            row = conn.execute(select(ACCOUNTS).where(ACCOUNTS.c.id == leg.account_id)).one()
        if full(row):
            raise ResourceExhausted(
                f"account {leg.account_id}'s balance or holds would pass {INT64_MAX} "
                "atomic; move part of it to a new account",
                reason="ACCOUNT_TOTALS_EXHAUSTED")
        have = balance_from_row(row)
        need = -(leg.posted_atomic - leg.pending_debit_atomic)
        raise InsufficientFunds(
            f"account {leg.account_id} has {have.available_atomic} atomic "
            f"{have.currency} available, {need} needed"
        )


assert MAX_AMOUNT_ATOMIC < 2**63
