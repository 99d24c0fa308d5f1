"""The node's signed PAYMENT-RESPONSE (PROTOCOL.md 17, step 3): an x402 SettleResponse whose
`extra.receipt` is the node's ed25519 signature over what moved or is held, as plain JSON, so
the gateway's session calls encode it without building x402 models."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from agents.x402 import network as net
from marketplace.identity import AgentKey

RECEIPT_FIELDS = ("agreementId", "calls")


def settled(key: AgentKey, network: str, payer: str, pay_to: str, amount_atomic: int,
            asset: str, transaction: str, extra: dict[str, Any]) -> dict[str, Any]:
    """The SettleResponse (x402's JSON names) with the node's signed receipt in `extra`."""
    body = {"amount": str(amount_atomic), "asset": asset, "network": network,
            "payTo": pay_to, "payer": payer, "transaction": transaction,
            "issuedAtMs": time.time_ns() // 1_000_000,
            **{k: v for k, v in extra.items() if k in RECEIPT_FIELDS}}
    receipt = {"body": body, "node": key.agent_id,
               "signature": key.sign(net.RESPONSE_DOMAIN + net.canonical(body)).hex()}
    return {"success": True, "payer": payer, "transaction": transaction, "network": network,
            "amount": str(amount_atomic), "extra": {**extra, "receipt": receipt}}


def header(response: dict[str, Any]) -> str:
    """PAYMENT-RESPONSE: base64 of the JSON, as x402's encode_payment_response_header."""
    return base64.b64encode(json.dumps(response).encode()).decode()
