"""The ledger's tables. Postings and entries are append-only; accounts and holds carry maintained
balances that `Ledger.check()` proves equal to the sum of their entries."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
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
    # REWIND_UNITs taken off both posted totals, which stay within int64 (`wallets._totals`)
    totals_rewinds: int = Field(sa_column=Column(BigInteger, nullable=False, default=0,
                                                 server_default=text("0")))


class AccountCreditRow(SQLModel, table=True):
    """A credit to an account not yet added to its row (PostgreSQL): a leg that only adds
    to an account (a payee's credit, a pending credit coming or going) is appended here and
    folded into the row after its commit, so payees shared by many postings (the market's fee
    account, a busy seller) are never locked by them (`wallets._credits`)."""

    __tablename__ = "ledger_account_credits"

    id: int | None = Field(default=None, sa_column=Column(  # SQLite: a rowid, numbered
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True))
    account_id: str = Field(index=True, max_length=40)
    posted_credits_atomic: int = Field(sa_column=_money())
    pending_credits_atomic: int = Field(sa_column=_money())  # signed: released holds lower it


class PostingRow(SQLModel, table=True):
    """A posting, numbered at insert (`sequence`). The sealer (`wallets.sealer`) links it into
    the hash chain after it commits: its `position` there, `prev_hash` and `hash` ('' and
    NULL until then)."""

    __tablename__ = "ledger_postings"
    __table_args__ = (
        Index("ix_ledger_postings_position", "position", unique=True),
        Index("ix_ledger_postings_unsealed", "sequence",
              postgresql_where=text("position IS NULL"), sqlite_where=text("position IS NULL")),
    )

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
    position: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class EntryRow(SQLModel, table=True):
    """One leg: posted change (credit +, debit -) and pending debit/credit changes."""

    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_entries_account_seq", "account_id", "sequence"),)

    id: int | None = Field(default=None, sa_column=Column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True))
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
    # A hash lock (wallets.conditional): captured only with the preimage of this SHA-256
    # (hex; '' = an ordinary hold), which is kept once it has been shown.
    condition_sha256: str = Field(sa_column=Column(String(64), nullable=False, default="",
                                                   server_default=""))
    fulfilment: str = Field(sa_column=Column(String(64), nullable=False, default="",
                                             server_default=""))


class IdempotencyRow(SQLModel, table=True):
    """The first outcome of each mutating request, so a retry returns it again. A key names a
    request only within its scope (the caller's agent id, or the node's own) and operation
    (`wallets._idempotency`)."""

    __tablename__ = "idempotency_keys"

    scope: str = Field(primary_key=True, max_length=80)
    operation: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=200)
    request_digest: str = Field(max_length=64)
    outcome: str = Field(max_length=8)  # ok | error
    result_json: str = Field(sa_column=Column(Text, nullable=False))
    created_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class LedgerHeadRow(SQLModel, table=True):
    """The sealed chain's end: the last position and its hash (only the sealer locks it)."""

    __tablename__ = "ledger_head"

    id: int = Field(primary_key=True)
    sequence: int = Field(sa_column=Column(BigInteger, nullable=False))
    hash: str = Field(max_length=64)


# ---- programmable wallets (wallets.policies, .approvals, .anomaly, .mandates) -----------------


def _ms() -> Column:  # type: ignore[type-arg]
    return Column(BigInteger, nullable=False, default=0)


class WalletPolicyRow(SQLModel, table=True):
    """A wallet's controls: the owner's policy (0 = no limit) and whether it is frozen.

    No row: no policy and not frozen (the guard's fast path: one primary-key lookup)."""

    __tablename__ = "wallet_policies"

    account_id: str = Field(primary_key=True, max_length=40)
    per_call_cap_atomic: int = Field(sa_column=_money())
    daily_cap_atomic: int = Field(sa_column=_money())
    counterparty_daily_cap_atomic: int = Field(sa_column=_money())
    approval_threshold_atomic: int = Field(sa_column=_money())
    approval_ttl_s: int = Field(sa_column=_ms())
    velocity_window_s: int = Field(sa_column=_ms())
    velocity_baseline_s: int = Field(sa_column=_ms())
    velocity_factor_pct: int = Field(sa_column=_ms())
    velocity_min_atomic: int = Field(sa_column=_money())
    lists_json: str = Field(sa_column=Column(Text, nullable=False, default="{}"))
    frozen: bool = Field(default=False)
    frozen_reason: str = Field(default="", max_length=256)
    frozen_by: str = Field(default="", max_length=128)
    frozen_at_ms: int = Field(sa_column=_ms())
    updated_at_ms: int = Field(sa_column=_ms())


class SpendCounterRow(SQLModel, table=True):
    """Spent per wallet and UTC day (counterparty '' = all), for the daily caps."""

    __tablename__ = "wallet_spend_counters"

    account_id: str = Field(primary_key=True, max_length=40)
    day: int = Field(primary_key=True)
    counterparty: str = Field(primary_key=True, max_length=128)
    spent_atomic: int = Field(sa_column=_money())


class SpendBucketRow(SQLModel, table=True):
    """Spent per wallet in short time buckets (a sixth of the velocity window each)."""

    __tablename__ = "wallet_spend_buckets"

    account_id: str = Field(primary_key=True, max_length=40)
    bucket_ms: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    spent_atomic: int = Field(sa_column=_money())


class WalletAlertRow(SQLModel, table=True):
    """An event an operator should see: a velocity freeze, a manual freeze, an unfreeze."""

    __tablename__ = "wallet_alerts"

    id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(index=True, max_length=40)
    kind: str = Field(max_length=16)  # velocity | freeze | unfreeze
    message: str = Field(sa_column=Column(Text, nullable=False))
    window_spent_atomic: int = Field(sa_column=_money())
    threshold_atomic: int = Field(sa_column=_money())
    actor: str = Field(default="", max_length=128)
    created_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))


class ApprovalRow(SQLModel, table=True):
    """A spend above its wallet's approval threshold, waiting for (or given) a decision."""

    __tablename__ = "wallet_approvals"
    __table_args__ = (UniqueConstraint("account_id", "spend_scope", "spend_key"),
                      # a spender's waiting approvals (the cap), and the queue, newest first
                      Index("ix_wallet_approvals_waiting", "account_id", "spend_scope",
                            "status", "expires_at_ms"),
                      Index("ix_wallet_approvals_queue", "status", "created_at_ms", "id"))

    id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(index=True, max_length=40)
    currency: str = Field(max_length=8)
    counterparty: str = Field(max_length=512)
    skill: str = Field(default="", max_length=128)
    amount_atomic: int = Field(sa_column=_money())
    spend_key: str = Field(max_length=200)  # the spend's idempotency key
    spend_scope: str = Field(default="", max_length=80)  # ... and the scope it lives in
    operation: str = Field(max_length=64)
    mandate_id: str = Field(default="", max_length=64)
    spender_id: str = Field(default="", max_length=128)
    status: str = Field(index=True, max_length=16)  # pending | approved | denied | used
    created_at_ms: int = Field(sa_column=_ms())
    expires_at_ms: int = Field(sa_column=_ms())
    decided_by: str = Field(default="", max_length=128)
    decided_at_ms: int = Field(sa_column=_ms())
    note: str = Field(default="", max_length=512)


class MandateRow(SQLModel, table=True):
    """An owner-signed delegation of bounded spending on one wallet to an agent key."""

    __tablename__ = "wallet_mandates"

    id: str = Field(primary_key=True, max_length=64)
    account_id: str = Field(index=True, max_length=40)
    owner: str = Field(max_length=128)
    agent_key: str = Field(max_length=64)
    currency: str = Field(max_length=8)
    total_limit_atomic: int = Field(sa_column=_money())
    per_call_limit_atomic: int = Field(sa_column=_money())
    expires_at_ms: int = Field(sa_column=_ms())
    counterparties_json: str = Field(sa_column=Column(Text, nullable=False, default="[]"))
    terms: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    owner_signature: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    spent_atomic: int = Field(sa_column=_money())
    status: str = Field(max_length=16)  # active | revoked
    created_at_ms: int = Field(sa_column=_ms())
    revoked_at_ms: int = Field(sa_column=_ms())


# ---- FX and rails (wallets.fx, wallets.rails) --------------------------------------------------


class FxQuoteRow(SQLModel, table=True):
    """A quote: 1 unit of from_currency = numerator/denominator units of to_currency."""

    __tablename__ = "fx_quotes"

    id: str = Field(primary_key=True, max_length=32)
    from_currency: str = Field(max_length=8)
    to_currency: str = Field(max_length=8)
    rate_numerator: int = Field(sa_column=Column(BigInteger, nullable=False))
    rate_denominator: int = Field(sa_column=Column(BigInteger, nullable=False))
    provider: str = Field(max_length=64)
    created_at_ms: int = Field(sa_column=_ms())
    expires_at_ms: int = Field(sa_column=_ms())


class RailWithdrawalRow(SQLModel, table=True):
    """A withdrawal waiting for its rail's settlement delay: a hold from the wallet to the rail
    account, captured by `WalletService.settle_due` once due. `reference` is what the rail is
    told (unique: derived from the request's scope and key, `wallets.rails.payout_reference`)."""

    __tablename__ = "rail_withdrawals"
    __table_args__ = (UniqueConstraint("scope", "idempotency_key"),)

    hold_id: str = Field(primary_key=True, max_length=40)
    scope: str = Field(max_length=80)
    idempotency_key: str = Field(max_length=200)
    reference: str = Field(unique=True, max_length=200)
    rail: str = Field(max_length=64)
    account_id: str = Field(index=True, max_length=40)
    currency: str = Field(max_length=8)
    amount_atomic: int = Field(sa_column=_money())
    due_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    status: str = Field(index=True, max_length=16)  # pending | captured | paid | returned
    created_at_ms: int = Field(sa_column=_ms())
    settled_at_ms: int = Field(sa_column=_ms())


class RailDepositRow(SQLModel, table=True):
    """An external deposit credited to a wallet: a wallet is credited once per rail reference,
    whoever asks (idempotency keys are per caller; the money a reference names exists once).
    That the reference was made out to this wallet is the rail's to check (`wallets.rails`)."""

    __tablename__ = "rail_deposits"

    rail: str = Field(primary_key=True, max_length=64)
    account_id: str = Field(primary_key=True, max_length=40)
    reference: str = Field(primary_key=True, max_length=200)
    scope: str = Field(max_length=80)
    amount_atomic: int = Field(sa_column=_money())
    created_at_ms: int = Field(sa_column=_ms())
# ---- e-CNY wallet rules (wallets.ecny) ---------------------------------------------------------


class EcnyWalletRow(SQLModel, table=True):
    """An e-CNY wallet's tier (category 1-4 by identity strength) and its pseudonym; no row:
    the default (anonymous) tier."""

    __tablename__ = "ecny_wallets"

    account_id: str = Field(primary_key=True, max_length=40)
    category: int = Field(default=4)
    pseudonym: str = Field(unique=True, max_length=16)
    identity_ref: str = Field(default="", max_length=128)  # the operator's KYC reference
    registered_at_ms: int = Field(sa_column=_ms())
    updated_at_ms: int = Field(sa_column=_ms())


class EcnyCounterRow(SQLModel, table=True):
    """Paid per e-CNY wallet and period ('d<day>' in China time, 'y<year>')."""

    __tablename__ = "ecny_spend_counters"

    account_id: str = Field(primary_key=True, max_length=40)
    period: str = Field(primary_key=True, max_length=16)
    spent_atomic: int = Field(sa_column=_money())


class EcnyPaymentRow(SQLModel, table=True):
    """A payment from an e-CNY wallet as the operator records it: pseudonyms, and the payer's
    identity reference only above the anonymous limit (controllable anonymity)."""

    __tablename__ = "ecny_payments"

    id: int | None = Field(default=None, sa_column=Column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True))
    spend_key: str = Field(max_length=200)
    account_id: str = Field(index=True, max_length=40)
    operation: str = Field(max_length=64)
    payer_pseudonym: str = Field(max_length=16)
    payee_pseudonym: str = Field(max_length=128)
    amount_atomic: int = Field(sa_column=_money())
    identity_ref: str = Field(default="", max_length=128)
    created_at_ms: int = Field(sa_column=_ms())


# ---- the USDC rail on an EVM chain (wallets.evm) -----------------------------------------------


class EvmAddressRow(SQLModel, table=True):
    """An address whose token transfers to the rail credit this wallet (proven by a signature
    of the address's key)."""

    __tablename__ = "evm_addresses"

    rail: str = Field(primary_key=True, max_length=64)
    address: str = Field(primary_key=True, max_length=42)  # lowercase 0x-hex
    account_id: str = Field(index=True, max_length=40)
    registered_at_ms: int = Field(sa_column=_ms())


class EvmDepositRow(SQLModel, table=True):
    """A token transfer to the rail's address seen on chain: credited once confirmed."""

    __tablename__ = "evm_deposits"

    rail: str = Field(primary_key=True, max_length=64)
    tx_hash: str = Field(primary_key=True, max_length=66)
    log_index: int = Field(primary_key=True)
    block_number: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    block_hash: str = Field(max_length=66)
    sender: str = Field(max_length=42)
    amount_units: int = Field(sa_column=_money())  # token units (6 decimals)
    account_id: str = Field(default="", max_length=40)  # '' = a sender nobody registered
    status: str = Field(index=True, max_length=16)  # seen | credited | orphaned | unclaimed
    seen_at_ms: int = Field(sa_column=_ms())
    credited_at_ms: int = Field(sa_column=_ms())


class EvmWithdrawalRow(SQLModel, table=True):
    """A payout: the signed token transfer is stored with the debit, so a crash between them
    resends the very same transaction (same nonce, same hash)."""

    __tablename__ = "evm_withdrawals"

    # payout_reference(caller scope, idempotency key): one row per caller's request
    idempotency_key: str = Field(primary_key=True, max_length=200)
    rail: str = Field(max_length=64)
    account_id: str = Field(index=True, max_length=40)
    to_address: str = Field(max_length=42)
    amount_units: int = Field(sa_column=_money())
    nonce: int = Field(sa_column=Column(BigInteger, nullable=False))
    tx_hash: str = Field(unique=True, max_length=66)
    raw_tx: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(index=True, max_length=16)  # signed|sent|mined|confirmed|reverted
    block_number: int = Field(sa_column=_ms())
    created_at_ms: int = Field(sa_column=_ms())


class EvmRailStateRow(SQLModel, table=True):
    """Per rail: the next nonce of its hot wallet and the last block scanned for deposits."""

    __tablename__ = "evm_rail_state"

    rail: str = Field(primary_key=True, max_length=64)
    next_nonce: int = Field(sa_column=Column(BigInteger, nullable=False))
    scanned_block: int = Field(sa_column=Column(BigInteger, nullable=False))
