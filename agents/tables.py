"""The seller's tables: its usage journal (`agents.usage_journal`).

One row per agreement the seller opened (its terms, whether it is closed to calls and the
marketplace's answer to its redeem) and one row per paid call it answered (the voucher that
paid it, the signed receipt and the first response, so a retried call id is answered again
without charging twice). Values are serialized protobuf messages, opaque to the database.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, LargeBinary
from sqlmodel import Field, SQLModel


def _big() -> Column:  # type: ignore[type-arg]
    return Column(BigInteger, nullable=False)


def _blob(*, nullable: bool = False) -> Column:  # type: ignore[type-arg]
    return Column(LargeBinary, nullable=nullable)


class SellerAgreementRow(SQLModel, table=True):
    """An agreement a seller serves; `escrow` is set once the marketplace answered its redeem."""

    __tablename__ = "agentmarket_seller_agreements"

    agreement_id: str = Field(primary_key=True, max_length=64)
    seller_id: str = Field(max_length=64)
    body: bytes = Field(sa_column=_blob())  # serialized AgreementBody
    opened_at_ms: int = Field(sa_column=_big())
    opened_seq: int = Field(sa_column=_big())  # order of opening: load() replays in this order
    closed: bool = Field(default=False)  # closed to calls (a redeem in flight or done)
    escrow: bytes | None = Field(default=None, sa_column=_blob(nullable=True))  # Escrow


class SellerCallRow(SQLModel, table=True):
    """One answered paid call. The agreement's latest voucher is the one with the highest
    `sequence`; `position` is the order in which the seller completed its calls."""

    __tablename__ = "agentmarket_seller_calls"

    agreement_id: str = Field(primary_key=True, max_length=64, ondelete="CASCADE",
                              foreign_key="agentmarket_seller_agreements.agreement_id")
    call_id: str = Field(primary_key=True, max_length=128)
    position: int = Field(sa_column=_big())
    sequence: int = Field(sa_column=_big())  # the paying voucher's sequence
    voucher: bytes = Field(sa_column=_blob())  # serialized Voucher
    receipt: bytes = Field(sa_column=_blob())  # serialized Receipt
    response: bytes = Field(sa_column=_blob())  # the first response, serialized
