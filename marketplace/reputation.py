"""Reputation is earned, never declared: the mean outcome of a seller's finished agreements.

Each agreement, when it reaches a final state, scores the seller in per mille:

    settled    1000   verified work, paid (confirmed, or the dispute window closed)
    refunded      0   the seller redeemed and nothing verified
    resolved   share  an arbiter's decision: 1000 * seller's part / frozen amount
    expired    (not rated) the seller never redeemed; no calls may have been made, and a buyer
               should not be able to hurt a seller by hiring it and walking away

An open dispute is not rated until it is resolved. The reputation is 0 for a seller with no
rated agreement (`rated_agreements` tells a newcomer from a bad seller).

`record_outcome` runs inside the transaction that finishes the agreement. The seller's figure is
written through to the registry's listing, offer and search-token rows, so discovery filters and
ranks on it without computing anything per listing (on SQLite with prepared statements,
`wallets._sqlite_hot`). On SQLite, whose writers take turns anyway, that happens in the same
transaction. On PostgreSQL a busy seller's row would then stay locked across every one of its
settlements, which would queue behind each other on every node (SCALING.md, "Hot rows"): the
outcome is appended to `reputation_outcomes` instead, and a short transaction right after the
commit folds the seller's appended outcomes into its row (several at once under load; when
another fold holds the row, it leaves them to the next fold or to the sweep, which also takes
what a node that died in between left: `fold_pending`). `reputation` counts unfolded outcomes,
so it is exact at once on both; discovery's ranking may trail it by a sweep (a second).
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql

from marketplace.tables import ListingRow, OfferRow, PendingOutcomeRow, ReputationRow, TermRow
from wallets import _sqlite_hot as hot
from wallets._mutation import after_commit

REPUTATION = ReputationRow.__table__  # type: ignore[attr-defined]
PENDING = PendingOutcomeRow.__table__  # type: ignore[attr-defined]
FOLD_BATCH = 500  # outcomes one fold takes at most
_LISTINGS = ListingRow.__table__  # type: ignore[attr-defined]
_OFFERS = OfferRow.__table__  # type: ignore[attr-defined]
_TERMS = TermRow.__table__  # type: ignore[attr-defined]


_RATE = hot.Statement(update(REPUTATION).where(REPUTATION.c.seller_id == bindparam("seller"))
         .values(rated=REPUTATION.c.rated + bindparam("count"),
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
_ROW = hot.Statement(select(REPUTATION.c.seller_id)
                     .where(REPUTATION.c.seller_id == bindparam("seller")))
_LOCK_ROW = hot.Statement(select(REPUTATION.c.seller_id)
                          .where(REPUTATION.c.seller_id == bindparam("seller"))
                          .with_for_update(skip_locked=True))
_CLAIM = (delete(PENDING).where(PENDING.c.id.in_(
    select(PENDING.c.id).where(PENDING.c.seller_id == bindparam("seller"))
    .order_by(PENDING.c.id).limit(FOLD_BATCH).with_for_update(skip_locked=True)))
    .returning(PENDING.c.score_permille))


def record_outcome(conn: Connection, seller_id: str, outcome_permille: int) -> None:
    """Add one finished agreement's score to the seller's reputation (see the module
    docstring for when it reaches the seller's row)."""
    assert 0 <= outcome_permille <= 1000
    if conn.dialect.name != "postgresql":
        _rate(conn, seller_id, 1, outcome_permille)
        return
    conn.execute(insert(PENDING).values(seller_id=seller_id, score_permille=outcome_permille))
    if not after_commit(conn, lambda folding: fold_in(folding, seller_id)):
        fold_in(conn, seller_id)  # not a ledger transaction: nothing would fold it after


def fold(engine: Engine, seller_id: str) -> int:
    """Fold the seller's appended outcomes into its row, in a transaction of its own; returns
    how many (none when a concurrent fold has claimed them all: it is folding them)."""
    with engine.begin() as conn:
        return fold_in(conn, seller_id)


def fold_in(conn: Connection, seller_id: str) -> int:
    """Fold in `conn`'s transaction, unless another fold holds the seller's row: then that one,
    the next, or the sweep takes these outcomes (no fold ever waits for another)."""
    if conn.dialect.name == "postgresql" and not _LOCK_ROW.first(conn, {"seller": seller_id}):
        if _ROW.first(conn, {"seller": seller_id}):  # locked by another fold: not waited for
            return 0
        conn.execute(postgresql.insert(REPUTATION).values(  # the seller's first
            seller_id=seller_id, rated=0, score_sum=0).on_conflict_do_nothing())
        if not _LOCK_ROW.first(conn, {"seller": seller_id}):
            return 0
    scores = conn.execute(_CLAIM, {"seller": seller_id}).scalars().all()
    if scores:
        _rate(conn, seller_id, len(scores), sum(scores))
    return len(scores)


def fold_pending(engine: Engine, limit: int = 100) -> int:
    """The sweep: fold what a node that died after a settlement's commit left; returns how
    many outcomes."""
    if engine.dialect.name != "postgresql":
        return 0
    with engine.connect() as conn:
        sellers = conn.execute(select(PENDING.c.seller_id).distinct().limit(limit)).scalars()
        sellers = list(sellers)
    return sum(fold(engine, seller_id) for seller_id in sellers)


def _rate(conn: Connection, seller_id: str, count: int, score_sum: int) -> None:
    """Add `count` outcomes summing to `score_sum`; the offer and search-token rows are
    rewritten only when the figure changed (a steady seller's settlements cost two statements
    here, not five)."""
    row = _RATE.first(conn, {"seller": seller_id, "count": count, "score": score_sum})
    if row is None:  # the seller's first (on PostgreSQL `fold_in` made its row already)
        conn.execute(insert(REPUTATION).values(seller_id=seller_id, rated=count,
                                               score_sum=score_sum))
        rated, score, before = count, score_sum, None
    else:
        rated, score = row.rated, row.score_sum
        before = (score - score_sum) // (rated - count) if rated > count else None
    permille = score // rated
    figures = {"seller": seller_id, "permille": permille, "rated": rated}
    _LISTING.run(conn, figures)
    if permille != before:
        _OFFER.run(conn, figures)
        _TERM.run(conn, figures)


def reputation(conn: Connection, seller_id: str) -> tuple[int, int]:
    """(per mille, rated agreements) of a seller, outcomes not yet folded included (one
    statement: one snapshot, so a fold committing meanwhile is counted once); (0, 0) without
    history."""
    mine = REPUTATION.c.seller_id == seller_id
    pending = PENDING.c.seller_id == seller_id
    rated, score, more, extra = conn.execute(select(
        select(REPUTATION.c.rated).where(mine).scalar_subquery(),
        select(REPUTATION.c.score_sum).where(mine).scalar_subquery(),
        select(func.count()).select_from(PENDING).where(pending).scalar_subquery(),
        select(func.coalesce(func.sum(PENDING.c.score_permille), 0)).where(pending)
        .scalar_subquery())).one()
    rated, score = (rated or 0) + more, (score or 0) + extra
    if not rated:
        return 0, 0
    return score // rated, rated


def reputation_permille(engine: Engine, seller_id: str) -> int:
    with engine.connect().execution_options(agentmarket_read=True) as conn:
        return reputation(conn, seller_id)[0]
