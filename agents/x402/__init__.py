"""HTTP and x402 v2 over agentmarket: the gateway, the facilitator and the buyer's scheme.

    Gateway            agentmarket.gateway's ASGI app over a node (`agents.x402.gateway`)
    AgentmarketScheme  the buyer's x402 client scheme (`agents.x402.client`)
    http_client        an httpx client paying with x402 (x402's transport, prepaying vouchers,
                       `agents.x402.prepay`)
    close_sessions     close the sessions a buyer's schemes hold open (`agents.x402.closing`)
    network_id         the node's CAIP-2 network id (`agentmarket:<key prefix>`)

PROTOCOL.md, "x402 over agentmarket", describes the bytes.
"""

from agents.x402.client import AgentmarketScheme, buyer_client
from agents.x402.closing import close_sessions
from agents.x402.gateway import Gateway
from agents.x402.network import network_id
from agents.x402.prepay import http_client

__all__ = ["AgentmarketScheme", "Gateway", "buyer_client", "close_sessions", "http_client",
           "network_id"]
