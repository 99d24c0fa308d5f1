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
ranks on it without computing anything per listing (on SQLite with prepared statements,
`wallets._sqlite_hot`).
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, bindparam, insert, select, update

from marketplace.tables import ListingRow, OfferRow, ReputationRow, TermRow
from wallets import _sqlite_hot as hot

REPUTATION = ReputationRow.__table__  # type: ignore[attr-defined]
_LISTINGS = ListingRow.__table__  # type: ignore[attr-defined]
_OFFERS = OfferRow.__table__  # type: ignore[attr-defined]
_TERMS = TermRow.__table__  # type: ignore[attr-defined]


_RATE = hot.Statement(update(REPUTATION).where(REPUTATION.c.seller_id == bindparam("seller"))
         .values(rated=REPUTATION.c.rated + 1,
                 score_sum=REPUTATION.c.score_sum + bindparam("score"))
         .returning(REPUTATION.c.rated, REPUTATION.c.score_sum))
_LISTING = hot.Statement(update(_LISTINGS).where(_LISTINGS.c.agent_id == bindparam("seller"))
            .values(reputation_permille=bindparam("permille"),
                    rated_agreements=bindparam("rated")))
_OFFER = hot.Statement(update(_OFFERS).where(_OFFERS.c.agent_id == bindparam("seller"))
          .values(reputation_permille=bindparam("permille")))
_TERM = hot.Statement(update(_TERMS).where(_TERMS.c.offer_id.in_(
    select(_OFFERS.c.id).where(_OFFERS.c.agent_id == bindparam("seller"))))
    .values(reputation_permille=bindparam("permille")))


def record_outcome(conn: Connection, seller_id: str, outcome_permille: int) -> int:
    """Add one finished agreement's score; returns the seller's new reputation. The offer and
    search-token rows are rewritten only when the figure changed (a steady seller's settlements
    cost two statements here, not five)."""
    assert 0 <= outcome_permille <= 1000
    params = {"seller": seller_id, "score": outcome_permille}
    row = _RATE.first(conn, params)
    if row is None:
        conn.execute(insert(REPUTATION).values(seller_id=seller_id, rated=1,
                                               score_sum=outcome_permille))
        rated, score, before = 1, outcome_permille, None
    else:
        rated, score = row.rated, row.score_sum
        before = (score - outcome_permille) // (rated - 1) if rated > 1 else None
    permille = score // rated
    figures = {"seller": seller_id, "permille": permille, "rated": rated}
    _LISTING.run(conn, figures)
    if permille != before:
        _OFFER.run(conn, figures)
        _TERM.run(conn, figures)
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
