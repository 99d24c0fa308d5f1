"""Your first paid agent: a seller that charges 0.001 USD per call, and a buyer that hires it.

Runs a marketplace node in-process (SQLite in a temporary directory); every hop is real gRPC on
loopback. The buyer funds its wallet, finds the seller, negotiates, puts the agreed maximum in
escrow, makes three paid calls and settles: the seller is paid for exactly three calls, minus
the marketplace fee, and the rest of the escrow goes back to the buyer. Each `with` block stops
what it started: the seller withdraws its listing, every connection is closed.
"""

import tempfile

from pydantic import BaseModel

from agents import BuyerAgent, Money, SellerAgent, per_call, skill
from marketplace import MarketplaceNode


class Shout(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def shout(text: str) -> Shout:
    """Upper-case a text."""
    return Shout(text=text.upper())


with MarketplaceNode(f"sqlite:///{tempfile.mkdtemp()}/market.db") as node, \
        SellerAgent("shouter", skills=[shout], marketplace=node.address), \
        BuyerAgent("me", marketplace=node.address) as buyer:
    buyer.fund("1.00", "USD")
    print(f"wallet: {buyer.balance('USD')}")

    listings = buyer.discover("shout", currency="USD")
    deal = buyer.negotiate(listings, "shout", quantity=5, budget="0.01", currency="USD")
    print(f"hired: {buyer.hire(deal).held} held in escrow")
    for word in ("hello", "paid", "agents"):
        print(buyer.call(deal, {"text": word}, output_type=Shout).text)
    escrow = buyer.finish(deal)

    print(f"price per call {Money(deal.body.terms.unit_price_atomic, 'USD')}; seller earned "
          f"{escrow.seller_net}, fee {escrow.fee}, refunded {escrow.refunded}")
    print(f"wallet: {buyer.balance('USD')}")
