"""A session's later PAYMENT-SIGNATURE headers, made without x402's models.

The first prepaid request to a URL is x402's client's payment; the later ones differ from it
only in the payload (the session's next voucher), so `Template` writes them as text around
the scheme's next payload, with only what the gateway needs (`later_members`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Protocol

from x402.extensions.payment_identifier import PAYMENT_IDENTIFIER
from x402.schemas import PaymentPayload, PaymentRequirements


class PayloadMaker(Protocol):
    """What makes each payment's payload: the scheme x402's client selected."""

    def create_payment_payload(self, requirements: PaymentRequirements) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Template:
    """A URL's paid request as x402's client made it: the next ones differ only in the
    payload, which the scheme makes (the requirement x402 selected, spend controls passed)."""

    scheme: PayloadMaker
    requirements: PaymentRequirements
    rest: str  # the JSON members after "payload" (`later_members`)

    def header(self) -> str:
        payload = self.scheme.create_payment_payload(self.requirements)
        text = f'{{"x402Version": 2, "payload": {payload_json(payload)}, {self.rest}'
        return base64.b64encode(text.encode()).decode()


def later_members(payload: PaymentPayload) -> str:
    """The JSON members a session's later payments repeat after "payload": `accepted`, and
    the extensions that carry something of the payer's. `resource` (optional in x402 v2) and
    an echo of the gateway's own payment-identifier declaration with no id in it tell the
    gateway nothing it does not know, and were 708 of the 1,704 bytes of each later call's
    header."""
    members = payload.model_dump(mode="json", by_alias=True, exclude_none=True)
    kept = {"accepted": members["accepted"]}
    extensions = {name: value for name, value in members.get("extensions", {}).items()
                  if name != PAYMENT_IDENTIFIER or "id" in (value.get("info") or {})}
    if extensions:
        kept["extensions"] = extensions
    return json.dumps(kept)[1:]


def payload_json(payload: dict[str, Any]) -> str:
    """The payload as JSON; a voucher's (hex and base64 strings only, nothing to escape)
    written directly, as it goes with every call."""
    if payload.get("kind") == "voucher" and len(payload) == 3:
        return (f'{{"kind": "voucher", "agreementId": "{payload["agreementId"]}", '
                f'"voucher": "{payload["voucher"]}"}}')
    return json.dumps(payload)
