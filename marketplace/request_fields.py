"""What the ids in marketplace and agent requests look like (`wallets.grpc_fields`).

Agreements are named by the hex SHA-256 of their body; parties, arbiters and the authors of
offers are agents (hex ed25519 public keys). Together with the wallets' ids this is the table
every server here checks requests against, with or without authentication.
"""

from __future__ import annotations

from wallets.grpc_fields import AGENT_ID, WALLET_FIELDS, Check, hex_id

MARKET_FIELDS: dict[str, Check] = {
    **WALLET_FIELDS,
    "agreement_id": hex_id(64, "an agreement id: the hex SHA-256 of its body"),
    "buyer_id": AGENT_ID,
    "seller_id": AGENT_ID,
    "arbiter_id": AGENT_ID,
    "from_id": AGENT_ID,
}
