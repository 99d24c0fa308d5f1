"""Escrow proofs: the node's signed word that an agreement's money is held.

A seller works only for money in escrow. Without a proof it asks the marketplace (GetEscrow)
on each agreement's first call: a signed round trip for the seller and a request for the node,
on every task. With one, the buyer hands over what the node signed when it opened the escrow,
and the seller checks a signature instead. An ACTIVE escrow leaves that state only by the
seller's own redeem or at its deadline (marketplace.agreement_states), so the proof holds until
`deadline_ms`, with no way for the buyer to take the money back meanwhile. The seller knows the
node's key from its listing's AdvertiseResponse; a proof it cannot use (no key yet, another
node's, forged, stale) only means it asks the marketplace, as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.message import DecodeError

from marketplace.identity import AgentKey, verify
from marketplace.v1 import settlement_pb2

DOMAIN = b"agentmarket/escrow-proof/v1\n"
METADATA_KEY = "agentmarket-escrow-proof-bin"
MAX_PROOF_BYTES = 4096
DEADLINE_MARGIN_MS = 5_000  # a proof this close to its deadline is not taken: ask instead


def signed(key: AgentKey, escrow: settlement_pb2.Escrow) -> bytes:
    """The serialized EscrowProof of `escrow` (an ACTIVE one; its own `proof` left out)."""
    body = settlement_pb2.Escrow()
    body.CopyFrom(escrow)
    body.ClearField("proof")
    data = body.SerializeToString()
    return settlement_pb2.EscrowProof(escrow=data, signature=key.sign(DOMAIN + data)
                                      ).SerializeToString()


def with_proof(key: AgentKey | None, escrow: settlement_pb2.Escrow) -> settlement_pb2.Escrow:
    """`escrow` carrying its proof when it is ACTIVE and the node has a key."""
    if key is not None and escrow.state == settlement_pb2.AGREEMENT_STATE_ACTIVE:
        escrow.proof = signed(key, escrow)
    return escrow


def proven(raw: bytes, node_id: str, agreement_id: str, seller_id: str, now_ms: int) -> bool:
    """Whether `raw` is `node_id`'s proof that `agreement_id`'s escrow, with `seller_id` as
    its seller, is ACTIVE and well before its deadline at `now_ms`."""
    if not raw or not node_id or len(raw) > MAX_PROOF_BYTES:
        return False
    try:
        proof = settlement_pb2.EscrowProof.FromString(raw)
        escrow = settlement_pb2.Escrow.FromString(proof.escrow)
    except DecodeError:
        return False
    return (escrow.agreement_id == agreement_id and escrow.seller_id == seller_id
            and escrow.state == settlement_pb2.AGREEMENT_STATE_ACTIVE
            and escrow.deadline_ms > now_ms + DEADLINE_MARGIN_MS
            and verify(node_id, DOMAIN + proof.escrow, proof.signature))


def of_metadata(metadata: Iterable[tuple[str, Any]] | None) -> bytes:
    """The proof a call's metadata carries (b"" when none)."""
    for key, value in metadata or ():
        if key == METADATA_KEY:
            return value if isinstance(value, bytes) else b""
    return b""


__all__ = ["DOMAIN", "METADATA_KEY", "of_metadata", "proven", "signed", "with_proof"]
