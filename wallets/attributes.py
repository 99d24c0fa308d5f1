"""Span attribute names of the `agentmarket.` namespace, shared by every package.

They live in `wallets` because dependencies point one way (agents -> marketplace -> wallets):
the ledger, the marketplace and the agent SDK all tag spans with the same keys, so an operator
can go from a payment to its trace and back, and the span store can filter by agreement.

Conventions:
- every key starts with `agentmarket.`; sub-namespaces group one concern
  (`agentmarket.negotiation.*`);
- amounts are `int` atomic units (OTel attributes carry int64; amounts stay below 2**62) and a
  span that carries an amount also carries `CURRENCY`, so renderers can format it exactly;
- ids are the same strings the API uses (agreement ids, hold ids, wallet ids for payer/payee);
- token usage follows the OpenTelemetry GenAI conventions (`gen_ai.usage.input_tokens`, ...),
  not this namespace.
"""

from __future__ import annotations

from typing import Final

NAMESPACE: Final = "agentmarket"

AGREEMENT_ID: Final = "agentmarket.agreement_id"
AMOUNT_ATOMIC: Final = "agentmarket.amount_atomic"
CURRENCY: Final = "agentmarket.currency"
FEE_ATOMIC: Final = "agentmarket.fee_atomic"
HOLD_ID: Final = "agentmarket.hold_id"
PAYEE: Final = "agentmarket.payee"
PAYER: Final = "agentmarket.payer"
REFUSAL_REASON: Final = "agentmarket.refusal.reason"  # the ErrorInfo reason a server refused with
ROUND: Final = "agentmarket.negotiation.round"
SKILL: Final = "agentmarket.skill"

__all__ = [
    "AGREEMENT_ID",
    "AMOUNT_ATOMIC",
    "CURRENCY",
    "FEE_ATOMIC",
    "HOLD_ID",
    "NAMESPACE",
    "PAYEE",
    "PAYER",
    "REFUSAL_REASON",
    "ROUND",
    "SKILL",
]
