"""The agreement state machine: every state, every event, in one table.

    state       event           next        money (ledger postings, one transaction each)
    ---------   -------------   ---------   -------------------------------------------------
    proposed    open            active      hold max_total on the buyer's wallet
    active      redeem_verify   verified    none: the earned amount stays in the hold
    active      redeem_accept   delivered   none (BUYER_ACCEPTANCE: awaits the buyer)
    active      redeem_fail     refunded    void the hold (capture only a verifier's fee)
    active      expire          expired     void the hold
    verified    confirm         settled     capture seller + fee (+ verifier), void the rest
    verified    release         settled     the same, when the dispute window closes
    verified    dispute         disputed    freeze: earned -> dispute account, rest -> buyer
    delivered   confirm         settled     as verified/confirm
    delivered   release         settled     as verified/release (the buyer stayed silent)
    delivered   dispute         disputed    as verified/dispute
    disputed    resolve         resolved    dispute account -> seller + fee and/or buyer

"proposed" is the negotiation (marketplace.negotiation), before the marketplace stores
anything: `open` is how an agreement enters the table. settled, refunded, expired and resolved
are final. A `redeem_verify` with a dispute window of 0 is followed by `release` in the same
transaction. Any other (state, event) pair is refused with ILLEGAL_TRANSITION, changing nothing.
"""

from __future__ import annotations

from typing import Final

from marketplace.errors import IllegalTransition

PROPOSED: Final = "proposed"
ACTIVE: Final = "active"
DELIVERED: Final = "delivered"
VERIFIED: Final = "verified"
SETTLED: Final = "settled"
REFUNDED: Final = "refunded"
DISPUTED: Final = "disputed"
RESOLVED: Final = "resolved"
EXPIRED: Final = "expired"

STATES: Final = (PROPOSED, ACTIVE, DELIVERED, VERIFIED, SETTLED, REFUNDED, DISPUTED, RESOLVED,
                 EXPIRED)
EVENTS: Final = ("open", "redeem_verify", "redeem_accept", "redeem_fail", "expire", "confirm",
                 "release", "dispute", "resolve")

TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (PROPOSED, "open"): ACTIVE,
    (ACTIVE, "redeem_verify"): VERIFIED,
    (ACTIVE, "redeem_accept"): DELIVERED,
    (ACTIVE, "redeem_fail"): REFUNDED,
    (ACTIVE, "expire"): EXPIRED,
    (VERIFIED, "confirm"): SETTLED,
    (VERIFIED, "release"): SETTLED,
    (VERIFIED, "dispute"): DISPUTED,
    (DELIVERED, "confirm"): SETTLED,
    (DELIVERED, "release"): SETTLED,
    (DELIVERED, "dispute"): DISPUTED,
    (DISPUTED, "resolve"): RESOLVED,
}
FINAL: Final = frozenset({SETTLED, REFUNDED, EXPIRED, RESOLVED})
AWAITING_RELEASE: Final = (DELIVERED, VERIFIED)


def next_state(state: str, event: str) -> str:
    """The state `event` leads to from `state`; IllegalTransition if the table has no entry."""
    found = TRANSITIONS.get((state, event))
    if found is None:
        raise IllegalTransition(f"an agreement that is {state} cannot {event.replace('_', ' ')}"
                                f"{' (it is final)' if state in FINAL else ''}"
                                f"{_HINTS.get((state, event), '')}")
    return found


# What a party most likely meant, for the transitions people try too early
_HINTS = {
    (ACTIVE, "dispute"): ": a dispute is of delivered work, so finish first without "
                         "accepting it (BuyerAgent.finish(deal, confirm=False)), then dispute "
                         "inside the dispute window",
    (ACTIVE, "confirm"): ": finish first (the seller redeems what it delivered), then confirm",
}


assert all(s in STATES and e in EVENTS and t in STATES for (s, e), t in TRANSITIONS.items())
assert not any(s in FINAL for s, _ in TRANSITIONS)
