"""The marketplace's tables: the registry (listings, their offers and search tokens), escrows,
their evidence, disputes and earned reputation.

Discovery reads only `registry_offers` and `registry_terms`, which repeat what it filters and
ranks on (price, expiry, reputation) so that one index range scan answers a query; the listing
itself is a serialized protobuf fetched for the few rows returned.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, Text
from sqlmodel import Field, SQLModel


def _big(**kwargs: object) -> Column:  # type: ignore[type-arg]
    return Column(BigInteger, nullable=False, **kwargs)


class ListingRow(SQLModel, table=True):
    __tablename__ = "registry_listings"

    agent_id: str = Field(primary_key=True, max_length=64)
    listing: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # serialized Listing
    expires_at_ms: int = Field(sa_column=_big(index=True))
    updated_at_ms: int = Field(sa_column=_big())
    ttl_s: int = 60
    reputation_permille: int = Field(default=0)
    rated_agreements: int = Field(default=0)


class OfferRow(SQLModel, table=True):
    """One (listing, skill, currency) list price: what discovery filters and sorts on."""

    __tablename__ = "registry_offers"
    __table_args__ = (
        Index("ix_registry_offers_skill", "skill", "currency", "price_atomic"),
        Index("ix_registry_offers_price", "currency", "price_atomic"),
    )

    id: int | None = Field(default=None, primary_key=True)
    agent_id: str = Field(max_length=64, index=True)
    skill: str = Field(max_length=64)
    currency: str = Field(max_length=8)
    unit: int
    price_atomic: int = Field(sa_column=_big())  # pricing.ranking_price_atomic
    expires_at_ms: int = Field(sa_column=_big())
    reputation_permille: int = Field(default=0)
    latency_ms: int = Field(default=0)


class TermRow(SQLModel, table=True):
    """A search token of an offer's skill (name, description and tag words; '#tag' for tags),
    with the offer's currency, price and seller reputation, so a token's index range is already
    in price order and the reputation filter needs no join."""

    __tablename__ = "registry_terms"
    __table_args__ = (Index("ix_registry_terms_lookup", "token", "currency", "price_atomic",
                            "reputation_permille", "offer_id"),)  # covering: no table reads

    offer_id: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    token: str = Field(sa_column=Column(Text, primary_key=True))
    currency: str = Field(max_length=8)
    price_atomic: int = Field(sa_column=_big())
    reputation_permille: int = Field(default=0)


class EscrowRow(SQLModel, table=True):
    __tablename__ = "escrows"
    __table_args__ = (Index("ix_escrows_due", "state", "release_at_ms"),
                      # newest first, a page at a time (the console), overall and per state
                      Index("ix_escrows_created", "created_at_ms", "agreement_id"),
                      Index("ix_escrows_state_created", "state", "created_at_ms",
                            "agreement_id"))

    agreement_id: str = Field(primary_key=True, max_length=64)
    signed_agreement: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    buyer_id: str = Field(max_length=64, index=True)
    seller_id: str = Field(max_length=64, index=True)
    verifier_id: str = Field(default="", max_length=64)
    skill: str = Field(max_length=64)
    currency: str = Field(max_length=8)
    verification: int
    state: str = Field(max_length=16, index=True)
    hold_id: str = Field(max_length=40)
    held_atomic: int = Field(sa_column=_big())
    earned_atomic: int = Field(sa_column=_big(default=0))
    captured_atomic: int = Field(sa_column=_big(default=0))
    fee_atomic: int = Field(sa_column=_big(default=0))
    refunded_atomic: int = Field(sa_column=_big(default=0))
    verifier_fee_atomic: int = Field(sa_column=_big(default=0))  # agreed; paid when settling
    verifier_paid_atomic: int = Field(sa_column=_big(default=0))
    verified_outputs: int = 0
    failed_outputs: int = 0
    output_schema_json: str = Field(sa_column=Column(Text, nullable=False, default=""))
    deadline_ms: int = Field(sa_column=_big())
    dispute_window_s: int = 0
    delivered_at_ms: int = Field(sa_column=_big(default=0))
    release_at_ms: int = Field(sa_column=_big(default=0))  # 0 until delivered
    created_at_ms: int = Field(sa_column=_big())
    updated_at_ms: int = Field(sa_column=_big())


class EvidenceRow(SQLModel, table=True):
    """What the seller presented at redeem and what verification found: dispute evidence."""

    __tablename__ = "escrow_evidence"

    agreement_id: str = Field(primary_key=True, max_length=64)
    delivery: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # DeliveryEvidence
    created_at_ms: int = Field(sa_column=_big())


class DisputeRow(SQLModel, table=True):
    __tablename__ = "disputes"

    agreement_id: str = Field(primary_key=True, max_length=64)
    status: str = Field(max_length=16, index=True)  # open | resolved
    reason: str = Field(sa_column=Column(Text, nullable=False))
    buyer_evidence: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    frozen_atomic: int = Field(sa_column=_big())
    currency: str = Field(max_length=8)
    opened_at_ms: int = Field(sa_column=_big())
    outcome: int = 0
    seller_atomic: int = Field(sa_column=_big(default=0))
    buyer_atomic: int = Field(sa_column=_big(default=0))
    arbiter_id: str = Field(default="", max_length=64)
    note: str = Field(sa_column=Column(Text, nullable=False, default=""))
    resolved_at_ms: int = Field(sa_column=_big(default=0))


class ReputationRow(SQLModel, table=True):
    """A seller's finished agreements and the sum of their outcomes (per mille each)."""

    __tablename__ = "seller_reputation"
    # the most rated first, a read of the sellers with standing (`marketplace.standing`)
    __table_args__ = (Index("ix_seller_reputation_rated", "rated"),)

    seller_id: str = Field(primary_key=True, max_length=64)
    rated: int = Field(sa_column=_big(default=0))
    score_sum: int = Field(sa_column=_big(default=0))


class PendingOutcomeRow(SQLModel, table=True):
    """A finished agreement's score not yet added to its seller's reputation row (PostgreSQL):
    settlements append here, and a short transaction after their commit folds it in, so the
    seller's row is never locked across a settlement (`marketplace.reputation`)."""

    __tablename__ = "reputation_outcomes"

    id: int | None = Field(default=None, sa_column=Column(  # SQLite: a rowid, numbered
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True))
    seller_id: str = Field(max_length=64, index=True)
    score_permille: int


class OperatorActionRow(SQLModel, table=True):
    """The audit trail of operators' actions from the console: who did what to which object,
    signed with which key, and what came of it ("pending" until the node answered)."""

    __tablename__ = "operator_actions"

    id: str = Field(primary_key=True, max_length=32)
    at_ms: int = Field(sa_column=_big(index=True))
    operator: str = Field(max_length=64)  # the name the person gave at login
    session: str = Field(max_length=16)  # a short, non-secret tag of the login session
    key_id: str = Field(max_length=64)  # the operator key that signed the request
    action: str = Field(max_length=16, index=True)
    target: str = Field(max_length=64, index=True)
    detail: str = Field(sa_column=Column(Text, nullable=False, default=""))  # JSON
    outcome: str = Field(max_length=16)  # pending | done | refused
    message: str = Field(sa_column=Column(Text, nullable=False, default=""))
    trace_id: str = Field(default="", max_length=32)


# ---- settlement receipts and ledger checkpoints (marketplace.receipts, .checkpoints) -----------


class CheckpointRow(SQLModel, table=True):
    """The node's signature over the posting hash chain up to `sequence` (one segment)."""

    __tablename__ = "ledger_checkpoints"

    sequence: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    first_sequence: int = Field(sa_column=_big())
    node: str = Field(max_length=64)
    body_json: str = Field(sa_column=Column(Text, nullable=False))
    signature: str = Field(max_length=128)
    signed_at_ms: int = Field(sa_column=_big())


class ReceiptRow(SQLModel, table=True):
    """A signed settlement receipt, issued in the transaction of the settlement it states."""

    __tablename__ = "settlement_receipts"

    receipt_id: str = Field(primary_key=True, max_length=128)  # subject:kind
    subject: str = Field(index=True, max_length=128)  # agreement id, or PvP condition:hold_id
    kind: str = Field(max_length=32)
    last_sequence: int = Field(sa_column=_big(index=True))
    body_json: str = Field(sa_column=Column(Text, nullable=False))
    signature: str = Field(max_length=128)
    issued_at_ms: int = Field(sa_column=_big())
