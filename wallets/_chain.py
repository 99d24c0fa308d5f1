"""The SHA-256 hash chain over postings: each posting's hash covers its predecessor's."""

from __future__ import annotations

import hashlib

from wallets.models import Leg

GENESIS_HASH = "0" * 64


def posting_hash(
    prev_hash: str,
    *,
    sequence: int,
    idempotency_key: str,
    kind: str,
    hold_id: str,
    created_at_ms: int,
    memo: str,
    trace_id: str,
    span_id: str,
    legs: tuple[Leg, ...] | list[Leg],
) -> str:
    """Hash of a posting's canonical text; any change to a stored posting breaks the chain."""
    parts = [
        prev_hash,
        str(sequence),
        idempotency_key,
        kind,
        hold_id,
        str(created_at_ms),
        memo,
        trace_id,
        span_id,
    ]
    for leg in legs:
        parts.append(
            f"{leg.account_id}:{leg.currency}:{leg.posted_atomic}:"
            f"{leg.pending_debit_atomic}:{leg.pending_credit_atomic}"
        )
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
