"""An HTTP agent buys a skill with x402: no gRPC on the buyer's side, just httpx.

A node runs with its HTTP/x402 gateway (as `agentmarket gateway` does); a seller lists a skill
at 0.001 USD per call. The buyer has only an ed25519 agent key and a funded wallet. Its httpx
client is the `x402` package's, with agentmarket's scheme registered: the first POST gets 402
with PAYMENT-REQUIRED priced from the listing, the client signs an agreement at that price and
retries; the gateway holds the session's maximum in escrow, forwards each call to the seller
over gRPC and answers with PAYMENT-RESPONSE. Three calls are one session: one hold and, when
the buyer closes it, one capture.
"""

import asyncio
import tempfile

from pydantic import BaseModel
from x402.http.utils import decode_payment_response_header

from agents import BuyerAgent, SellerAgent, per_call, skill
from agents.x402 import Gateway, close_sessions, http_client
from marketplace import MarketplaceNode
from marketplace.http import HttpServer
from marketplace.identity import AgentKey


class Shout(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def shout(text: str) -> Shout:
    """Upper-case a text."""
    return Shout(text=text.upper())


async def buy(url: str, key: AgentKey, network: str, gateway_url: str) -> None:
    client, schemes = http_client(key, network, calls_per_session=3)
    async with client:
        for word in ("hello", "paid", "agents"):
            response = await client.post(url, json={"text": word})
            paid = decode_payment_response_header(response.headers["payment-response"])
            print(f"{response.json()['output']['text']}: paid {paid.amount} atomic USD, "
                  f"held under posting {paid.transaction}")
        (settled,) = await close_sessions(client, gateway_url, schemes)  # one session
        print(f"session settled: {settled['captured']} captured (fee {settled['fee']}), "
              f"{settled['refunded']} back; receipt signed by the node: "
              f"{settled['receipt']['signature'][:16]}…")


with MarketplaceNode(f"sqlite:///{tempfile.mkdtemp()}/market.db") as node, \
        SellerAgent("shouter", skills=[shout], marketplace=node.address, dispute_window_s=0) \
        as seller:
    key = AgentKey.generate()
    with BuyerAgent("http-agent", marketplace=node.address, key=key) as wallet:
        wallet.fund("1.00", "USD")
    gateway = Gateway(node)
    http = HttpServer(gateway.app()).start()
    try:
        asyncio.run(buy(f"{http.url}/v1/skills/{seller.agent_id}/shout", key, gateway.network,
                        http.url))
    finally:
        http.stop()
