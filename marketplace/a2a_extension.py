"""The A2A payment extension's wire vocabulary: its URI, metadata keys and their encodings.

A2A v1.0 (lf.a2a.v1) has no price field and no payment step; this extension adds both without
changing a message: prices go in the Agent Card's `capabilities.extensions[].params`, a priced
message without payment is answered by a task in TASK_STATE_INPUT_REQUIRED whose status message
metadata holds the terms, and a paid message carries the agreement id and a PayWord voucher in
its metadata, answered with the artifact and the signed receipt in metadata. PROTOCOL.md ("The
A2A payment extension") is the specification; this module is its one Python spelling, used by
the seller's A2A door, the buyer, the node's card catalogue and the tests.

Amounts travel as decimal strings of atomic units: a metadata Struct holds numbers as doubles,
exact only up to 2**53, and money is never rounded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from typing import Any

from marketplace.errors import InvalidArgument
from marketplace.v1 import agreement_pb2, registry_pb2

URI = "https://agentmarket.dev/a2a/payment/v1"
URI_PREFIX = "https://agentmarket.dev/a2a/payment/"
EXTENSIONS_HEADER = "a2a-extensions"  # gRPC metadata key (HTTP: A2A-Extensions)
SKILL_KEY = "agentmarket.skill"  # message metadata: which skill (when the seller has several)
PAYMENT_KEY = "agentmarket.payment"  # message metadata: {agreementId, voucher}
REQUIRED_KEY = "agentmarket.payment.required"  # status message metadata: the terms
RECEIPT_KEY = "agentmarket.payment.receipt"  # task / event metadata: the signed receipt
USAGE_KEY = "agentmarket.payment.usage"  # task / event metadata: usage and charge
STATUS_KEY = "agentmarket.payment.status"  # "payment-required" | "paid" | "free"
MAX_VOUCHER_CHARS = 4096

UNITS = {registry_pb2.PRICE_UNIT_CALL: "call", registry_pb2.PRICE_UNIT_1K_TOKENS: "1k_tokens",
         registry_pb2.PRICE_UNIT_UNIT: "unit"}
VERIFICATIONS = {value: name.removeprefix("VERIFICATION_METHOD_").lower()
                 for name, value in registry_pb2.VerificationMethod.items() if value}


def activated(values: list[str]) -> tuple[bool, str]:
    """(this extension is activated, an unknown version of it that was asked for or '') from
    the `a2a-extensions` metadata values (comma-separated URIs)."""
    uris = {item.strip() for value in values for item in value.split(",") if item.strip()}
    unknown = next((u for u in sorted(uris) if u.startswith(URI_PREFIX) and u != URI), "")
    return URI in uris, unknown


def price_params(price: registry_pb2.Price) -> dict[str, Any]:
    """One price as card params / payment-required terms (amounts as decimal strings)."""
    out: dict[str, Any] = {"amountAtomic": str(price.amount_atomic),
                           "currency": price.currency, "unit": UNITS.get(price.unit, "call")}
    if price.unit == registry_pb2.PRICE_UNIT_1K_TOKENS:
        out["outputAmountAtomic"] = str(price.output_amount_atomic)
    if price.unit_name:
        out["unitName"] = price.unit_name
    if price.tiers:
        out["tiers"] = [{"minQuantity": str(t.min_quantity), "amountAtomic": str(t.amount_atomic),
                         **({"outputAmountAtomic": str(t.output_amount_atomic)}
                            if t.output_amount_atomic else {})} for t in price.tiers]
    return out


def skill_terms(listing: registry_pb2.Listing, skill: registry_pb2.Skill, marketplace: str
                ) -> dict[str, Any]:
    """What a buyer needs to pay for `skill`: the payment-required terms of a task."""
    return {"version": "1", "extension": URI, "skill": skill.name,
            "listing": {"agentId": listing.agent_id, "name": listing.name,
                        "endpoint": listing.endpoint},
            "prices": [price_params(p) for p in skill.prices],
            "currencies": sorted({p.currency for p in skill.prices}),
            "verificationMethods": [VERIFICATIONS.get(v, str(v))
                                    for v in skill.verification_methods],
            "marketplace": marketplace,
            "negotiate": {"service": "agents.v1.AgentService", "method": "Negotiate",
                          "endpoint": listing.endpoint}}


def payment_metadata(voucher: agreement_pb2.Voucher) -> dict[str, str]:
    """The value of `agentmarket.payment` for a paid message."""
    return {"agreementId": voucher.agreement_id,
            "voucher": base64.b64encode(voucher.SerializeToString()).decode()}


def parse_payment(value: Any) -> tuple[str, agreement_pb2.Voucher]:
    """(agreement id, voucher) from `agentmarket.payment`; InvalidArgument when malformed (a
    voucher that decodes but is forged is the payment gate's to refuse)."""
    if not isinstance(value, dict):
        raise InvalidArgument(f"{PAYMENT_KEY} must be an object with agreementId and voucher")
    agreement_id, encoded = value.get("agreementId"), value.get("voucher")
    if not isinstance(agreement_id, str) or len(agreement_id) != 64 or \
            any(c not in "0123456789abcdef" for c in agreement_id):
        raise InvalidArgument(f"{PAYMENT_KEY}.agreementId must be 64 lower-case hex characters")
    if not isinstance(encoded, str) or not 0 < len(encoded) <= MAX_VOUCHER_CHARS:
        raise InvalidArgument(f"{PAYMENT_KEY}.voucher must be base64 text of at most "
                              f"{MAX_VOUCHER_CHARS} characters")
    try:
        voucher = agreement_pb2.Voucher.FromString(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError, Exception):
        raise InvalidArgument(f"{PAYMENT_KEY}.voucher is not a base64 Voucher message"
                              ) from None
    return agreement_id, voucher


def receipt_text(receipt: agreement_pb2.Receipt) -> str:
    return base64.b64encode(receipt.SerializeToString()).decode()


def parse_receipt(text: str) -> agreement_pb2.Receipt:
    return agreement_pb2.Receipt.FromString(base64.b64decode(text, validate=True))


def usage_params(usage: Any) -> dict[str, str]:
    """An agents.v1 Usage as metadata (every count and amount a decimal string)."""
    return {"calls": str(usage.calls), "inputTokens": str(usage.input_tokens),
            "outputTokens": str(usage.output_tokens), "units": str(usage.units),
            "chargedAtomic": str(usage.charged_atomic),
            "reservedAtomic": str(usage.reserved_atomic),
            "unspentAtomic": str(usage.unspent_atomic)}


def paid_task_id(agreement_id: str, message_id: str, payword: bytes) -> str:
    """A paid message's task id: derived, so a resent message (same id, same voucher) names
    the same task, also after the seller restarts; and unguessable to anyone who has not seen
    the payword. UUID form of SHA-256("a2a-task|" agreement_id "|" message_id "|" payword)."""
    digest = hashlib.sha256(b"a2a-task|" + agreement_id.encode() + b"|" + message_id.encode()
                            + b"|" + payword).digest()
    return str(uuid.UUID(bytes=digest[:16]))
