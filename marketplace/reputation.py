"""Reputation is earned, never declared: the mean outcome of a seller's finished agreements.

Each agreement, when it reaches a final state, scores the seller in per mille:

    settled    1000   verified work, paid (confirmed, or the dispute window closed)
    refunded      0   the seller redeemed and nothing verified
    resolved   share  an arbiter's decision: 1000 * seller's part / frozen amount
    expired    (not rated) the seller never redeemed; no calls may have been made, and a buyer
               should not be able to hurt a seller by hiring it and walking away

An open dispute is not rated until it is resolved. The reputation is 0 for a seller with no
rated agreement (`rated_agreements` tells a newcomer from a bad seller).

`record_outcome` runs inside the transaction that finishes the agreement and writes the new
figure through to the registry's listing, offer and search-token rows, so discovery filters and
ranks on it without computing anything per listing.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, insert, select, update

from marketplace.tables import ListingRow, OfferRow, ReputationRow, TermRow

REPUTATION = ReputationRow.__table__  # type: ignore[attr-defined]
_LISTINGS = ListingRow.__table__  # type: ignore[attr-defined]
_OFFERS = OfferRow.__table__  # type: ignore[attr-defined]
_TERMS = TermRow.__table__  # type: ignore[attr-defined]


def record_outcome(conn: Connection, seller_id: str, outcome_permille: int) -> int:
    """Add one finished agreement's score; returns the seller's new reputation."""
    assert 0 <= outcome_permille <= 1000
    row = conn.execute(select(REPUTATION).where(REPUTATION.c.seller_id == seller_id)).first()
    rated = (row.rated if row else 0) + 1
    score = (row.score_sum if row else 0) + outcome_permille
    if row is None:
        conn.execute(insert(REPUTATION).values(seller_id=seller_id, rated=rated, score_sum=score))
    else:
        conn.execute(update(REPUTATION).where(REPUTATION.c.seller_id == seller_id)
                     .values(rated=rated, score_sum=score))
    permille = score // rated
    conn.execute(update(_LISTINGS).where(_LISTINGS.c.agent_id == seller_id)
                 .values(reputation_permille=permille, rated_agreements=rated))
    conn.execute(update(_OFFERS).where(_OFFERS.c.agent_id == seller_id)
                 .values(reputation_permille=permille))
    conn.execute(update(_TERMS).where(_TERMS.c.offer_id.in_(
        select(_OFFERS.c.id).where(_OFFERS.c.agent_id == seller_id)))
        .values(reputation_permille=permille))
    return permille


def reputation(conn: Connection, seller_id: str) -> tuple[int, int]:
    """(per mille, rated agreements) of a seller; (0, 0) without history."""
    row = conn.execute(select(REPUTATION).where(REPUTATION.c.seller_id == seller_id)).first()
    if row is None or not row.rated:
        return 0, 0
    return row.score_sum // row.rated, row.rated


def reputation_permille(engine: Engine, seller_id: str) -> int:
    with engine.connect().execution_options(agentmarket_read=True) as conn:
        return reputation(conn, seller_id)[0]
