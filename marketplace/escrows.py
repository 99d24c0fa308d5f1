"""Escrow rows: reading, locking and presenting them (shared by settlement and disputes).

The statements every request runs are built once (`ROW`, `LOCKED_ROW`): SQLAlchemy then reuses
their cache key and compiled form instead of building them again per call; on SQLite they run
prepared on the DB-API connection (`wallets._sqlite_hot`).
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, bindparam, select, update

from marketplace import agreement_states as st
from marketplace.errors import InvalidArgument, NotFound
from marketplace.tables import DisputeRow, EscrowRow, EvidenceRow
from marketplace.v1 import agreement_pb2, settlement_pb2
from wallets import _sqlite_hot as hot

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


ROW = select(ESCROWS).where(ESCROWS.c.agreement_id == bindparam("agreement"))
LOCKED_ROW = ROW.with_for_update()
_ROW = hot.Statement(ROW)
_LOCKED_ROW = hot.Statement(LOCKED_ROW)


def read_row(engine: Engine, agreement: str) -> Any:
    check_agreement_id(agreement)
    with hot.reading(engine) as conn:
        row = _ROW.first(conn, {"agreement": agreement})
    if row is None:
        raise NotFound(f"agreement {agreement[:12]}… has no escrow")
    return row


def find_row(conn: Connection, agreement: str) -> Any | None:
    """The row as this connection sees it, None without one."""
    return _ROW.first(conn, {"agreement": agreement})


def locked_row(conn: Connection, agreement: str) -> Any:
    """The row inside a write transaction (FOR UPDATE on PostgreSQL)."""
    return _LOCKED_ROW.one(conn, {"agreement": agreement})


_UPDATES: dict[tuple[str, ...], hot.Statement] = {}


def set_values(conn: Connection, agreement: str, **values: Any) -> None:
    """UPDATE the row; one statement built per set of columns (a handful), then reused."""
    columns = tuple(values)
    statement = _UPDATES.get(columns)
    if statement is None:
        statement = _UPDATES[columns] = hot.Statement(
            update(ESCROWS).where(ESCROWS.c.agreement_id == bindparam("_agreement"))
            .values({column: bindparam(column) for column in columns}))
    statement.run(conn, {"_agreement": agreement, **values})


def body_of(row: Any) -> agreement_pb2.AgreementBody:
    signed = agreement_pb2.SignedAgreement.FromString(row.signed_agreement)
    return agreement_pb2.AgreementBody.FromString(signed.body)


def escrow_dict(conn: Connection, agreement: str) -> dict[str, Any]:
    """The escrow as plain data (what the API returns and idempotent retries replay)."""
    return escrow_of(_ROW.one(conn, {"agreement": agreement})._mapping)


def escrow_of(row: Any, **changes: Any) -> dict[str, Any]:
    """`escrow_dict` of a row already read (a mapping), with the values since written to it:
    no second read of the row."""
    values = {**row, **changes}
    found = {k: values[k] for k in FIELDS}
    found["verifier_fee_atomic"] = values["verifier_paid_atomic"]
    return found


class Pending(dict[str, Any]):
    """A row locked in a transaction with changes not yet written: read like a row (attributes,
    `_mapping`), so that two steps of one transaction write the row once."""

    def __init__(self, row: Any, changes: dict[str, Any]) -> None:
        super().__init__({**row, **changes})
        self._changes = dict(changes)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def _mapping(self) -> dict[str, Any]:
        return self

    def unwritten(self, more: dict[str, Any]) -> dict[str, Any]:
        """Every change to write: the caller's, then `more`."""
        return {**self._changes, **more}


class Facts(NamedTuple):
    """What never changes about an agreement once its escrow is open."""

    agreement_id: str
    buyer_id: str
    seller_id: str
    verifier_id: str
    currency: str
    skill: str


class AgreementFacts:
    """Each agreement's `Facts`, read once per node: authorising a request and finding the
    accounts to pay need no read of the escrow row. Safe with several nodes (nothing in it
    changes) and bounded (the oldest entries go first); unknown agreements are not kept."""

    def __init__(self, engine: Engine, size: int = 20_000) -> None:
        self.engine = engine
        self.size = size
        self._facts: dict[str, Facts] = {}
        self._lock = threading.Lock()

    def get(self, agreement: str) -> Facts:
        """NOT_FOUND when the agreement has no escrow."""
        found = self._facts.get(agreement)
        return found if found is not None else self.remember(read_row(self.engine, agreement))

    def remember(self, row: Any) -> Facts:
        facts = Facts(row.agreement_id, row.buyer_id, row.seller_id, row.verifier_id,
                      row.currency, row.skill)
        with self._lock:
            known = self._facts.get(facts.agreement_id)
            if known is not None:
                return known
            if len(self._facts) >= self.size:
                del self._facts[next(iter(self._facts))]
            self._facts[facts.agreement_id] = facts
        return facts


class Opened(NamedTuple):
    """What a redeem reads of an agreement that never changes once its escrow is open."""

    agreement_id: str
    buyer_id: str
    seller_id: str
    verifier_id: str
    currency: str
    held_atomic: int
    deadline_ms: int
    created_at_ms: int
    output_schema_json: str
    signed: agreement_pb2.SignedAgreement
    body: agreement_pb2.AgreementBody


class OpenedAgreements:
    """The `Opened` part of agreements this node opened or redeemed, so that a redeem (or its
    retry) needs no read of the row before its transaction. Bounded: the oldest go first."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._opened: dict[str, Opened] = {}
        self._lock = threading.Lock()

    def get(self, agreement: str) -> Opened | None:
        return self._opened.get(agreement)

    def remember(self, opened: Opened) -> None:
        with self._lock:
            if len(self._opened) >= self.size and opened.agreement_id not in self._opened:
                del self._opened[next(iter(self._opened))]
            self._opened[opened.agreement_id] = opened


def opened_of(row: Any) -> Opened:
    """`Opened` of an escrow row."""
    signed = agreement_pb2.SignedAgreement.FromString(row.signed_agreement)
    return Opened(row.agreement_id, row.buyer_id, row.seller_id, row.verifier_id, row.currency,
                  row.held_atomic, row.deadline_ms, row.created_at_ms, row.output_schema_json,
                  signed, agreement_pb2.AgreementBody.FromString(signed.body))


def same(value: Any) -> Any:
    return value


STATES = {
    st.ACTIVE: settlement_pb2.AGREEMENT_STATE_ACTIVE,
    st.DELIVERED: settlement_pb2.AGREEMENT_STATE_DELIVERED,
    st.VERIFIED: settlement_pb2.AGREEMENT_STATE_VERIFIED,
    st.SETTLED: settlement_pb2.AGREEMENT_STATE_SETTLED,
    st.REFUNDED: settlement_pb2.AGREEMENT_STATE_REFUNDED,
    st.DISPUTED: settlement_pb2.AGREEMENT_STATE_DISPUTED,
    st.RESOLVED: settlement_pb2.AGREEMENT_STATE_RESOLVED,
    st.EXPIRED: settlement_pb2.AGREEMENT_STATE_EXPIRED,
}


def escrow_message(e: dict[str, Any]) -> settlement_pb2.Escrow:
    """The wire form of an escrow dict."""
    fields = {k: v for k, v in e.items() if k != "state"}
    return settlement_pb2.Escrow(state=STATES[e["state"]], **fields)
