"""Your first paid agent: a seller that charges 0.001 USD per call, and a buyer that hires it.

Runs a marketplace node in-process (SQLite in a temporary directory); every hop is real gRPC on
loopback. The buyer funds its wallet, finds the seller, negotiates, puts the agreed maximum in
escrow, makes three paid calls and settles: the seller is paid for exactly three calls, minus
the marketplace fee, and the rest of the escrow goes back to the buyer.
"""

import tempfile

from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, per_call, skill
from marketplace import MarketplaceNode
from wallets import currency


class Shout(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def shout(text: str) -> Shout:
    """Upper-case a text."""
    return Shout(text=text.upper())


with MarketplaceNode(f"sqlite:///{tempfile.mkdtemp()}/market.db") as node:
    seller = SellerAgent("shouter", skills=[shout], marketplace=node.address).serve()
    buyer = BuyerAgent("me", marketplace=node.address)
    buyer.fund("1.00", "USD")

    listing = buyer.discover("shout", currency="USD")[0]
    deal = buyer.negotiate(listing, "shout", quantity=5, budget="0.01", currency="USD")
    buyer.hire(deal)
    for word in ("hello", "paid", "agents"):
        print(buyer.call(deal, {"text": word})["text"])
    escrow = buyer.finish(deal)

    usd = currency("USD")
    print(f"price per call {usd.format(deal.body.terms.unit_price_atomic)}; "
          f"seller earned {usd.format(escrow.captured_atomic - escrow.fee_atomic)}, "
          f"fee {usd.format(escrow.fee_atomic)}, refunded {usd.format(escrow.refunded_atomic)}")
    seller.stop()
    buyer.close()
