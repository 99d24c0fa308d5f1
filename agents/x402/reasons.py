"""The x402 error reasons agentmarket answers, and the one exception that carries them.

A refused payment is answered 402 with PAYMENT-REQUIRED whose `error` is the reason (x402's
`invalidReason`); a request that is not a request (a header that is not base64 JSON) is 400;
a refused close, which is no payment, HTTP's own status (`agents.x402.session_closes`).
SECURITY.md's error table lists them all; nothing moved or held when any is answered.
"""

from __future__ import annotations

REASONS = {
    "invalid_payload": "the payload is not one of agentmarket's (PROTOCOL.md x402 section)",
    "invalid_network": "the payment names another network than this node's ledger",
    "invalid_scheme": "the scheme is not the one the resource is sold under",
    "invalid_asset": "the asset is not the one the resource is priced in",
    "invalid_amount": "the amount is not the price (exact) or does not cover the maximum",
    "invalid_pay_to": "the payment pays someone other than the resource's seller",
    "invalid_resource": "the authorisation was made for another resource",
    "invalid_signature": "a signature or PayWord word does not verify with the payer's key "
                         "(HTTP 403 for a close)",
    "payload_expired": "the authorisation's validity (or the agreement's offer) has lapsed",
    "payload_replayed": "the authorisation, agreement or word was already used",
    "insufficient_funds": "the payer's wallet cannot cover it",
    "policy_denied": "the payer's wallet policy refuses it",
    "approval_required": "the payer's wallet wants a person's approval first",
    "wallet_frozen": "the payer's wallet is frozen",
    "session_unknown": "no open session has this agreement (HTTP 404 for a close)",
    "session_ended": "the session was closed, or its seller takes no more calls under it",
    "session_busy": "another request is closing the session (HTTP 409; retry)",
    "seller_refused": "the seller did not countersign, serve or finish (503 when it would "
                      "not quote a metered skill's price; 502 when it did not finish a close)",
    "unsupported_payload_type": "this facilitator does not settle that payload kind",
    "body_too_large": "the request body is over the gateway's limit (HTTP 413)",
    "malformed_payment_header": "PAYMENT-SIGNATURE is not base64 JSON of a PaymentPayload "
                                "(HTTP 400)",
}


class Refused(Exception):
    """A payment refused with one of REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.message = message
