"""The marketplace's tables: listings (with a price index for discovery) and escrows."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, LargeBinary, Text
from sqlmodel import Field, SQLModel


class ListingRow(SQLModel, table=True):
    __tablename__ = "registry_listings"

    agent_id: str = Field(primary_key=True, max_length=64)
    listing: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # serialized Listing
    expires_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    updated_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))


class SkillPriceRow(SQLModel, table=True):
    """One (listing, skill, currency) price: what discovery filters and sorts on."""

    __tablename__ = "registry_skill_prices"
    __table_args__ = (Index("ix_registry_price_lookup", "skill", "currency", "price_atomic"),)

    id: int | None = Field(default=None, primary_key=True)
    agent_id: str = Field(max_length=64, index=True)
    skill: str = Field(max_length=64)
    currency: str = Field(max_length=8)
    unit: int
    price_atomic: int = Field(sa_column=Column(BigInteger, nullable=False))


class EscrowRow(SQLModel, table=True):
    __tablename__ = "escrows"

    agreement_id: str = Field(primary_key=True, max_length=64)
    signed_agreement: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    buyer_id: str = Field(max_length=64, index=True)
    seller_id: str = Field(max_length=64, index=True)
    skill: str = Field(max_length=64)
    currency: str = Field(max_length=8)
    verification: int
    state: str = Field(max_length=16, index=True)
    hold_id: str = Field(max_length=40)
    held_atomic: int = Field(sa_column=Column(BigInteger, nullable=False))
    earned_atomic: int = Field(sa_column=Column(BigInteger, nullable=False, default=0))
    captured_atomic: int = Field(sa_column=Column(BigInteger, nullable=False, default=0))
    fee_atomic: int = Field(sa_column=Column(BigInteger, nullable=False, default=0))
    refunded_atomic: int = Field(sa_column=Column(BigInteger, nullable=False, default=0))
    verified_outputs: int = 0
    failed_outputs: int = 0
    output_schema_json: str = Field(sa_column=Column(Text, nullable=False, default=""))
    deadline_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    delivered_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False, default=0))
    dispute_reason: str = Field(sa_column=Column(Text, nullable=False, default=""))
    created_at_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
