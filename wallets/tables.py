"""The ledger's tables. Postings and entries are append-only; accounts and holds carry maintained
balances that `Ledger.check()` proves equal to the sum of their entries."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def _money() -> Column:  # type: ignore[type-arg]
    return Column(BigInteger, nullable=False, default=0)


class AccountRow(SQLModel, table=True):
    __tablename__ = "ledger_accounts"
    __table_args__ = (UniqueConstraint("owner", "currency", "kind"),)

    id: str = Field(primary_key=True, max_length=40)
    owner: str = Field(index=True, max_length=128)
    currency: str = Field(max_length=8)
    kind: str = Field(max_length=16)
    posted_debits_atomic: int = Field(sa_column=_money())
    posted_credits_atomic: int = Field(sa_column=_money())
    pending_debits_atomic: int = Field(sa_column=_money())
    pending_credits_atomic: int = Field(sa_column=_money())
    credit_limit_atomic: int = Field(sa_column=_money())
    created_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class PostingRow(SQLModel, table=True):
    __tablename__ = "ledger_postings"

    sequence: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    idempotency_key: str = Field(index=True, max_length=200)
    kind: str = Field(max_length=16)
    hold_id: str = Field(default="", index=True, max_length=40)
    created_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    trace_id: str = Field(default="", index=True, max_length=32)
    span_id: str = Field(default="", max_length=16)
    memo: str = Field(default="", max_length=256)
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class EntryRow(SQLModel, table=True):
    """One leg: posted change (credit +, debit -) and pending debit/credit changes."""

    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_entries_account_seq", "account_id", "sequence"),)

    id: int | None = Field(default=None, primary_key=True)
    sequence: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    account_id: str = Field(max_length=40)
    currency: str = Field(max_length=8)
    posted_atomic: int = Field(sa_column=_money())
    pending_debit_atomic: int = Field(sa_column=_money())
    pending_credit_atomic: int = Field(sa_column=_money())


class HoldRow(SQLModel, table=True):
    __tablename__ = "ledger_holds"

    id: str = Field(primary_key=True, max_length=40)
    debit_account_id: str = Field(index=True, max_length=40)
    credit_account_id: str = Field(max_length=40)
    currency: str = Field(max_length=8)
    amount_atomic: int = Field(sa_column=_money())
    captured_atomic: int = Field(sa_column=_money())
    voided_atomic: int = Field(sa_column=_money())
    status: str = Field(index=True, max_length=16)
    expires_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))


class IdempotencyRow(SQLModel, table=True):
    """The first outcome of each mutating request, so a retry returns it again."""

    __tablename__ = "idempotency_keys"

    key: str = Field(primary_key=True, max_length=200)
    operation: str = Field(max_length=64)
    request_digest: str = Field(max_length=64)
    outcome: str = Field(max_length=8)  # ok | error
    result_json: str = Field(sa_column=Column(Text, nullable=False))
    created_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class LedgerHeadRow(SQLModel, table=True):
    """The single row every posting locks: the chain's last sequence and hash."""

    __tablename__ = "ledger_head"

    id: int = Field(primary_key=True)
    sequence: int = Field(sa_column=Column(BigInteger, nullable=False))
    hash: str = Field(max_length=64)
