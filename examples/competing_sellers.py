"""Two sellers compete on price for the same skill; the buyer negotiates with both.

Each seller concedes from its list price towards its reservation price (rule-based, over
several rounds); the buyer bargains with every seller it discovers, signs with the one whose
offer costs least, and declines the other. Its own limits (reservation price, budget, rounds)
are enforced in code, whatever its strategy proposes.
"""

import tempfile

from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, per_call, skill
from marketplace import MarketplaceNode
from wallets import currency


class Translation(BaseModel):
    text: str


def translator(price: str):
    @skill(price=per_call(price, "USD"), name="translate")
    def translate(text: str, language: str = "fr") -> Translation:
        """Translate a text (here: a stand-in that tags it)."""
        return Translation(text=f"[{language}] {text}")

    return translate


usd = currency("USD")
with MarketplaceNode(f"sqlite:///{tempfile.mkdtemp()}/market.db") as node:
    sellers = [SellerAgent(name, skills=[translator(price)], marketplace=node.address).serve()
               for name, price in (("lingua", "0.0030"), ("babel", "0.0024"))]
    buyer = BuyerAgent("buyer", marketplace=node.address)
    buyer.fund("1.00", "USD")

    listings = buyer.discover("translate", currency="USD")
    quotes = [buyer.bargain(listing, "translate", quantity=10, budget="0.05", currency="USD")
              for listing in listings]
    for quote in quotes:
        listed = quote.skill.prices[0].amount_atomic
        print(f"{quote.listing.name:>7}: listed {usd.format(listed)}, offers "
              f"{usd.format(quote.unit_price_atomic)} after {quote.rounds} rounds")
    best = min(quotes, key=lambda q: q.max_total_atomic)
    deal = buyer.accept(best)  # (buyer.negotiate_best does all of this in one call)
    buyer.hire(deal)
    print(buyer.call(deal, {"text": "hello, agents"})["text"])
    escrow = buyer.finish(deal)
    print(f"hired {best.listing.name} at {usd.format(deal.body.terms.unit_price_atomic)} a call; "
          f"paid {usd.format(escrow.captured_atomic)}, "
          f"refunded {usd.format(escrow.refunded_atomic)}")
    for seller in sellers:
        seller.stop()
    buyer.close()
