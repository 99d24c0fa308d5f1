"""Escrow rows: reading, locking and presenting them (shared by settlement and disputes)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, select, update

from marketplace.errors import InvalidArgument, NotFound
from marketplace.tables import DisputeRow, EscrowRow, EvidenceRow
from marketplace.v1 import agreement_pb2

ESCROWS = EscrowRow.__table__  # type: ignore[attr-defined]
EVIDENCE = EvidenceRow.__table__  # type: ignore[attr-defined]
DISPUTES = DisputeRow.__table__  # type: ignore[attr-defined]
FIELDS = ("agreement_id", "state", "hold_id", "currency", "held_atomic", "captured_atomic",
          "fee_atomic", "refunded_atomic", "verified_outputs", "failed_outputs", "earned_atomic",
          "release_at_ms", "deadline_ms", "buyer_id", "seller_id", "skill")


def check_agreement_id(agreement: str) -> str:
    if not isinstance(agreement, str) or len(agreement) != 64:
        raise InvalidArgument("agreement_id must be 64 hex characters")
    return agreement


def read_row(engine: Engine, agreement: str) -> Any:
    check_agreement_id(agreement)
    with engine.connect().execution_options(agentmarket_read=True) as conn:
        row = conn.execute(select(ESCROWS).where(ESCROWS.c.agreement_id == agreement)).first()
    if row is None:
        raise NotFound(f"agreement {agreement[:12]}… has no escrow")
    return row


def locked_row(conn: Connection, agreement: str) -> Any:
    """The row inside a write transaction (FOR UPDATE on PostgreSQL)."""
    return conn.execute(select(ESCROWS).where(ESCROWS.c.agreement_id == agreement)
                        .with_for_update()).one()


def set_values(conn: Connection, agreement: str, **values: Any) -> None:
    conn.execute(update(ESCROWS).where(ESCROWS.c.agreement_id == agreement).values(**values))


def body_of(row: Any) -> agreement_pb2.AgreementBody:
    signed = agreement_pb2.SignedAgreement.FromString(row.signed_agreement)
    return agreement_pb2.AgreementBody.FromString(signed.body)


def escrow_dict(conn: Connection, agreement: str) -> dict[str, Any]:
    """The escrow as plain data (what the API returns and idempotent retries replay)."""
    row = conn.execute(select(ESCROWS).where(ESCROWS.c.agreement_id == agreement)).one()
    found = {k: row._mapping[k] for k in FIELDS}
    found["verifier_fee_atomic"] = row.verifier_paid_atomic
    return found


def same(value: Any) -> Any:
    return value
