"""The node's PAYMENT-RESPONSE (PROTOCOL.md 17, step 3): an x402 SettleResponse whose
`extra.receipt` the node vouches for, as plain JSON, so the gateway's session calls encode it
without building x402 models.

A receipt the node signs costs an ed25519 signature. A session's later calls (the gateway's
fast path) get chained receipts instead: each body names the SHA-256 of the session's previous
chained body (`prev`) and its place in the chain (`seq`), and the node signs only the first
and every `SIGN_EVERY`-th, and the chain's head again in the closing answer. A signed body
vouches for every body linked before it, so each call still has a receipt the payer can check
(its link, at once; its signature, at most `SIGN_EVERY - 1` calls later) and show in a dispute.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import time
from typing import Any

import orjson

from agents.x402 import network as net
from marketplace.identity import AgentKey, verify

RECEIPT_FIELDS = ("agreementId", "calls", "chainSeq", "chainHead")
SIGN_EVERY = 16
CHAIN_START = "0" * 64  # the `prev` of a session's first chained receipt


class Chain:
    """A session's chained receipts: the latest body's hash and number (guarded by the
    session's lock)."""

    __slots__ = ("head", "seq")

    def __init__(self) -> None:
        self.head = CHAIN_START
        self.seq = 0


def signed_bytes(body: dict[str, Any]) -> bytes:
    """What a receipt's signature covers, and what the next chained body's `prev` hashes."""
    return net.RESPONSE_DOMAIN + net.canonical(body)


def link_of(body: dict[str, Any]) -> str:
    """The hash the next chained body names as its `prev` (and a close as `chainHead`)."""
    return hashlib.sha256(signed_bytes(body)).hexdigest()


def body_of(network: str, payer: str, pay_to: str, amount_atomic: int, asset: str,
            transaction: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {"amount": str(amount_atomic), "asset": asset, "network": network,
            "payTo": pay_to, "payer": payer, "transaction": transaction,
            "issuedAtMs": time.time_ns() // 1_000_000,
            **{k: v for k, v in extra.items() if k in RECEIPT_FIELDS}}


def settle_response(payer: str, transaction: str, network: str, amount_atomic: int,
                    extra: dict[str, Any], receipt: dict[str, Any]) -> dict[str, Any]:
    """The SettleResponse (x402's JSON names) carrying `receipt` in `extra`."""
    return {"success": True, "payer": payer, "transaction": transaction, "network": network,
            "amount": str(amount_atomic), "extra": {**extra, "receipt": receipt}}


def settled(key: AgentKey, network: str, payer: str, pay_to: str, amount_atomic: int,
            asset: str, transaction: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The SettleResponse with the node's signed receipt in `extra`."""
    body = body_of(network, payer, pay_to, amount_atomic, asset, transaction, extra)
    receipt = {"body": body, "node": key.agent_id,
               "signature": key.sign(signed_bytes(body)).hex()}
    return settle_response(payer, transaction, network, amount_atomic, extra, receipt)


def chained(key: AgentKey, chain: Chain, lock: Any, body: dict[str, Any]) -> dict[str, Any]:
    """`body` linked into the chain as its next receipt (under `lock`, the session's); signed,
    after the lock is released, when it is the chain's first or a `SIGN_EVERY`-th."""
    with lock:
        chain.seq += 1
        body["seq"], body["prev"] = chain.seq, chain.head
        data = signed_bytes(body)
        chain.head = hashlib.sha256(data).hexdigest()
    receipt = {"body": body, "node": key.agent_id}
    if body["seq"] == 1 or body["seq"] % SIGN_EVERY == 0:
        receipt["signature"] = key.sign(data).hex()
    return receipt


def header(response: dict[str, Any]) -> str:
    """PAYMENT-RESPONSE: base64 of the JSON, as x402's encode_payment_response_header."""
    return base64.b64encode(orjson.dumps(response)).decode()


def vouched(node: str, chain: list[dict[str, Any]], head: tuple[int, str] | None = None
            ) -> bool:
    """The payer's check of consecutive chained receipts (`seq` ascending): each links to
    the one before it, and the last is signed by `node`, or is the (`chainSeq`,
    `chainHead`) `head` of a closing receipt already checked."""
    if not chain:
        return False
    for before, after in itertools.pairwise(chain):
        if after["body"].get("seq") != before["body"].get("seq", 0) + 1 or after["body"].get(
                "prev") != link_of(before["body"]):
            return False
    last = chain[-1]
    if head is not None:
        return (last["body"].get("seq"), link_of(last["body"])) == head
    try:
        signature = bytes.fromhex(last["signature"])
    except (KeyError, TypeError, ValueError):
        return False
    return last.get("node") == node and verify(node, signed_bytes(last["body"]), signature)
