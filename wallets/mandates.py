"""Mandates: an owner's signed delegation of bounded spending on one wallet to an agent key.

A wallet's owner is its `owner` string; for agents that is the hex ed25519 public key, which is
what signs. The owner signs `MANDATE_CONTEXT + terms` where `terms` is a serialized
`wallets.v1.MandateTerms` (limits: total, per call, expiry, allowed counterparties); the mandate
id is the SHA-256 of the same prefixed bytes. The ledger keeps the exact signed bytes, so other
languages need no canonical encoding: they sign what they send.

A spend that names a mandate (`SpendContext.mandate_id`, with `spender_id` the agent's key) goes
through only within it, and within the wallet's policy; the mandate's spent amount grows in the
spend's own transaction, so concurrent spends never pass its total. Revocation (signed by the
owner over `REVOKE_CONTEXT + mandate_id`) commits before it returns: the next spend under it is
refused. A grant replayed after revocation leaves it revoked.

Over gRPC a caller that is not the wallet's owner can spend only by naming a mandate with itself
as `spender_id` (`wallets.access`), so a delegate's every spend is bounded by its mandate.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature as _BadSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError
from sqlalchemy import Connection, insert, select, update

from wallets.currencies import MAX_AMOUNT_ATOMIC, currency
from wallets.errors import (
    FailedPrecondition,
    InvalidArgument,
    InvalidSignature,
    MandateDenied,
    NotFound,
)
from wallets.grpc_errors import nul_field
from wallets.grpc_fields import WALLET_FIELDS, check_fields
from wallets.models import Balance
from wallets.tables import MandateRow
from wallets.v1 import wallet_pb2

MANDATES = MandateRow.__table__  # type: ignore[attr-defined]
MANDATE_CONTEXT = b"agentmarket.wallets.mandate.v1\x00"
REVOKE_CONTEXT = b"agentmarket.wallets.mandate-revoke.v1\x00"
MAX_TERMS_BYTES = 8192
MAX_COUNTERPARTIES = 100
MAX_LIFETIME_MS = 366 * 86_400_000
_HEX_KEY = re.compile(r"^[0-9a-f]{64}\Z")


def is_key(text: str) -> bool:
    return bool(_HEX_KEY.match(text))


@dataclass(frozen=True, slots=True)
class MandateTerms:
    account_id: str
    agent_key: str
    currency: str
    total_limit_atomic: int
    expires_at_ms: int
    per_call_limit_atomic: int = 0
    counterparties: tuple[str, ...] = ()
    nonce: str = ""

    def to_bytes(self) -> bytes:
        """The deterministic serialization an owner signs."""
        return wallet_pb2.MandateTerms(
            account_id=self.account_id, agent_key=self.agent_key, currency=self.currency,
            total_limit_atomic=self.total_limit_atomic,
            per_call_limit_atomic=self.per_call_limit_atomic, expires_at_ms=self.expires_at_ms,
            counterparties=list(self.counterparties), nonce=self.nonce,
        ).SerializeToString(deterministic=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> MandateTerms:
        if not data or len(data) > MAX_TERMS_BYTES:
            raise InvalidArgument(f"mandate terms must be 1..{MAX_TERMS_BYTES} bytes")
        try:
            m = wallet_pb2.MandateTerms.FromString(data)
        except DecodeError as error:
            raise InvalidArgument(f"mandate terms do not parse as MandateTerms: {error}") from None
        # signed bytes inside a request: the edge's field checks do not see into them
        check_fields(m, WALLET_FIELDS, "terms.")
        if nul := nul_field(m, "terms."):
            raise InvalidArgument(f"{nul} holds a NUL character")
        return cls(m.account_id, m.agent_key, m.currency, m.total_limit_atomic, m.expires_at_ms,
                   m.per_call_limit_atomic, tuple(m.counterparties), m.nonce)


@dataclass(frozen=True, slots=True)
class Mandate:
    mandate_id: str
    terms: MandateTerms
    owner: str
    spent_atomic: int
    status: str  # active | revoked | expired
    created_at_ms: int
    revoked_at_ms: int = 0

    @property
    def remaining_atomic(self) -> int:
        return self.terms.total_limit_atomic - self.spent_atomic

    def to_json(self) -> dict[str, Any]:
        return {"mandate_id": self.mandate_id, "terms": self.terms.to_bytes().hex(),
                "owner": self.owner, "spent_atomic": self.spent_atomic, "status": self.status,
                "created_at_ms": self.created_at_ms, "revoked_at_ms": self.revoked_at_ms}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Mandate:
        return cls(**{**data, "terms": MandateTerms.from_bytes(bytes.fromhex(data["terms"]))})

    @classmethod
    def from_row(cls, row: Any, now_ms: int) -> Mandate:
        status = row.status
        if status == "active" and row.expires_at_ms <= now_ms:
            status = "expired"
        return cls(row.id, MandateTerms.from_bytes(row.terms), row.owner, row.spent_atomic,
                   status, row.created_at_ms, row.revoked_at_ms)


def mandate_id(terms: bytes) -> str:
    return hashlib.sha256(MANDATE_CONTEXT + terms).hexdigest()


def sign_mandate(owner_key: Ed25519PrivateKey, terms: MandateTerms) -> tuple[bytes, bytes]:
    """(terms bytes, signature): what GrantMandate takes, signed with the wallet owner's key."""
    data = terms.to_bytes()
    return data, owner_key.sign(MANDATE_CONTEXT + data)


def sign_revocation(owner_key: Ed25519PrivateKey, mandate: str) -> bytes:
    return owner_key.sign(REVOKE_CONTEXT + mandate.encode())


def _verify(owner: str, message: bytes, signature: bytes, what: str) -> None:
    if not is_key(owner):
        raise FailedPrecondition(
            f"the wallet's owner {owner!r} is not an ed25519 public key, so it cannot sign "
            f"{what}", reason="OWNER_CANNOT_SIGN")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(owner)).verify(signature, message)
    except (_BadSignature, ValueError):
        raise InvalidSignature(f"the signature on the {what} is not the wallet owner's "
                               f"({owner[:16]}…)") from None


# ---- grant, revoke, read ------------------------------------------------------------------------


def check_grant(wallet: Balance, terms: MandateTerms, data: bytes, signature: bytes,
                now_ms: int) -> None:
    """Refuse malformed or unsigned terms before anything is written."""
    if wallet.kind != "wallet":
        raise InvalidArgument(f"account {wallet.account_id} is a {wallet.kind} account, not a "
                              "wallet")
    if currency(terms.currency or "?").code != wallet.currency:
        raise InvalidArgument(f"the mandate is in {terms.currency} but wallet "
                              f"{wallet.account_id} holds {wallet.currency}")
    if not is_key(terms.agent_key):
        raise InvalidArgument("agent_key must be a 64-hex-character ed25519 public key")
    if not 0 < terms.total_limit_atomic <= MAX_AMOUNT_ATOMIC:
        raise InvalidArgument(f"total_limit_atomic must be 1..{MAX_AMOUNT_ATOMIC}, got "
                              f"{terms.total_limit_atomic}")
    if not 0 <= terms.per_call_limit_atomic <= terms.total_limit_atomic:
        raise InvalidArgument(f"per_call_limit_atomic must be 0..total_limit_atomic "
                              f"({terms.total_limit_atomic}), got {terms.per_call_limit_atomic}")
    if not now_ms < terms.expires_at_ms <= now_ms + MAX_LIFETIME_MS:
        raise InvalidArgument(f"expires_at_ms must be after now ({now_ms}) and at most a year "
                              f"ahead, got {terms.expires_at_ms}")
    if len(terms.counterparties) > MAX_COUNTERPARTIES or not all(
            0 < len(c) <= 128 for c in terms.counterparties):
        raise InvalidArgument(f"counterparties: at most {MAX_COUNTERPARTIES} names of 1..128 "
                              "characters")
    if len(terms.nonce) > 64:
        raise InvalidArgument("nonce is longer than 64 characters")
    _verify(wallet.owner, MANDATE_CONTEXT + data, signature, "mandate")


def grant(conn: Connection, wallet: Balance, terms: MandateTerms, data: bytes,
          signature: bytes, now_ms: int) -> Mandate:
    """Store a checked mandate; granting one that exists returns it as it is (revoked stays
    revoked)."""
    found = mandate_id(data)
    row = conn.execute(select(MANDATES).where(MANDATES.c.id == found)).first()
    if row is None:
        conn.execute(insert(MANDATES).values(
            id=found, account_id=wallet.account_id, owner=wallet.owner,
            agent_key=terms.agent_key, currency=wallet.currency,
            total_limit_atomic=terms.total_limit_atomic,
            per_call_limit_atomic=terms.per_call_limit_atomic, expires_at_ms=terms.expires_at_ms,
            counterparties_json=orjson.dumps(list(terms.counterparties)).decode(), terms=data,
            owner_signature=signature, spent_atomic=0, status="active", created_at_ms=now_ms,
            revoked_at_ms=0))
        row = conn.execute(select(MANDATES).where(MANDATES.c.id == found)).one()
    return Mandate.from_row(row, now_ms)


def load(conn: Connection, mandate: str, now_ms: int) -> Mandate:
    if not is_key(mandate):
        raise InvalidArgument("mandate_id must be 64 hex characters")
    row = conn.execute(select(MANDATES).where(MANDATES.c.id == mandate)
                       .with_for_update()).first()  # its total is checked, then counted
    if row is None:
        raise NotFound(f"mandate {mandate} does not exist")
    return Mandate.from_row(row, now_ms)


def check_revocation(found: Mandate, signature: bytes) -> None:
    _verify(found.owner, REVOKE_CONTEXT + found.mandate_id.encode(), signature,
            "revocation")


def revoke(conn: Connection, mandate: str, now_ms: int) -> Mandate:
    found = load(conn, mandate, now_ms)
    if found.status != "revoked":
        conn.execute(update(MANDATES).where(MANDATES.c.id == mandate).values(
            status="revoked", revoked_at_ms=now_ms))
    return load(conn, mandate, now_ms)


# ---- spending under a mandate -------------------------------------------------------------------


def authorise(conn: Connection, mandate: str, *, spender_id: str, account_id: str,
              amount_atomic: int, counterparties: Sequence[str], now_ms: int) -> None:
    """Refuse a spend outside the mandate; else count it against the mandate's total."""
    found = load(conn, mandate, now_ms)
    terms, short = found.terms, mandate[:12]
    if terms.account_id != account_id:
        raise MandateDenied(f"mandate {short}… delegates wallet {terms.account_id}, not "
                            f"{account_id}")
    if spender_id != terms.agent_key:
        raise MandateDenied(f"mandate {short}… delegates to agent {terms.agent_key[:16]}…, not "
                            f"to {spender_id[:16]}…")
    if found.status == "revoked":
        raise MandateDenied(f"mandate {short}… was revoked at {found.revoked_at_ms} ms",
                            reason="MANDATE_REVOKED")
    if found.status == "expired":
        raise MandateDenied(f"mandate {short}… expired at {terms.expires_at_ms} ms",
                            reason="MANDATE_EXPIRED")
    if terms.per_call_limit_atomic and amount_atomic > terms.per_call_limit_atomic:
        raise MandateDenied(f"mandate {short}… allows at most {terms.per_call_limit_atomic} "
                            f"atomic {terms.currency} per request; this spend is {amount_atomic}")
    outside = [c for c in counterparties if terms.counterparties and c not in
               terms.counterparties]
    if outside:
        raise MandateDenied(f"mandate {short}… allows paying only "
                            f"{', '.join(terms.counterparties)}; not {', '.join(outside)}")
    if found.spent_atomic + amount_atomic > terms.total_limit_atomic:
        raise MandateDenied(
            f"mandate {short}… allows {terms.total_limit_atomic} atomic {terms.currency} in "
            f"all; {found.spent_atomic} already spent, this spend of {amount_atomic} would make "
            f"{found.spent_atomic + amount_atomic}")
    conn.execute(update(MANDATES).where(MANDATES.c.id == mandate).values(
        spent_atomic=MANDATES.c.spent_atomic + amount_atomic))
