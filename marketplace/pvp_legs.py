"""The node's side of payment-versus-payment: hash-locked holds whose settlements are receipted.

A PvP leg settles either way: captured with the preimage (`pvp_settled`, in the transaction of
the capture) or voided by its expiry (`pvp_voided`, issued by the sweeper for the expiry posting
the ledger's timeout wrote). Each receipt names its leg as its subject, `<condition>:<hold id>`
(`leg_subject`): the condition ties the two legs of one payment together, and the hold id keeps
anyone else who knows the condition (and locks a hold of its own to it) out of the leg's
subject. Then the payer and payee, the amount and the leg's postings (`marketplace.receipts`).
"""

from __future__ import annotations

import contextlib
import logging

from sqlalchemy import Connection, bindparam, literal, or_, select
from sqlalchemy.exc import IntegrityError

from marketplace.receipts import RECEIPTS, ReceiptBook, written_postings
from wallets import _sqlite_hot as hot
from wallets.conditional import ConditionalHold, ConditionalHolds
from wallets.ledger import ACCOUNTS, HOLDS, POSTINGS, Ledger, transaction_postings
from wallets.models import Posting

log = logging.getLogger("agentmarket.pvp")


def _voided_unreceipted() -> hot.Statement:
    """Hash-locked holds voided without a receipt yet, by their timeout or declined by their
    payee over the wallet service, which has no receipts of its own (built once: the sweeper
    asks every round)."""
    receipt_id = literal("pvp:") + HOLDS.c.id + literal(":pvp_voided")
    return hot.Statement(
        select(HOLDS.c.id).outerjoin(RECEIPTS, RECEIPTS.c.receipt_id == receipt_id)
        .where(HOLDS.c.condition_sha256 != "",
               or_(HOLDS.c.status == "expired", HOLDS.c.status == "voided"),
               RECEIPTS.c.receipt_id.is_(None)).limit(bindparam("limit")))


_VOIDED_UNRECEIPTED = _voided_unreceipted()


def leg_subject(condition_sha256: str, hold_id: str) -> str:
    """A PvP leg's receipt subject: the condition alone is no secret, so the hold id too."""
    return f"{condition_sha256}:{hold_id}"


class ReceiptedHolds(ConditionalHolds):
    """`ConditionalHolds` whose every settled leg yields a signed receipt."""

    def __init__(self, ledger: Ledger, receipts: ReceiptBook) -> None:
        super().__init__(ledger)
        self.receipts = receipts

    def fulfil_in(self, conn: Connection, key: str, hold_id: str,
                  preimage: bytes) -> tuple[ConditionalHold, Posting]:
        before = len(transaction_postings(conn))
        found, posting = super().fulfil_in(conn, key, hold_id, preimage)
        self._issue(conn, found, "pvp_settled", written_postings(conn, before))
        return found, posting

    def _issue(self, conn: Connection, found: ConditionalHold, kind: str,
               sequences: list[int]) -> None:
        hold = found.hold
        owners = dict(conn.execute(select(ACCOUNTS.c.id, ACCOUNTS.c.owner).where(
            ACCOUNTS.c.id.in_([hold.debit_account_id, hold.credit_account_id]))).all())
        self.receipts.issue_in(
            conn, subject=leg_subject(found.condition_sha256, hold.hold_id),
            subject_kind="pvp", kind=kind,
            currency=hold.currency, parties={"payer": owners[hold.debit_account_id],
                                             "payee": owners[hold.credit_account_id]},
            amounts={"amount": hold.amount_atomic}, sequences=sequences,
            receipt_id=f"pvp:{hold.hold_id}:{kind}")

    def receipt_expired(self, *, limit: int = 100) -> int:
        """Issue the receipts of legs voided by their timeout or their payee's decline (the
        sweeper, after expiring holds): the payer's evidence that the leg came back."""
        engine = self.ledger.engine
        with hot.reading(engine) as conn:
            due = [row.id for row in _VOIDED_UNRECEIPTED.all(conn, {"limit": limit})]
        issued = 0
        for hold_id in due:
            with contextlib.suppress(IntegrityError), engine.begin() as conn:
                sequence = conn.execute(select(POSTINGS.c.sequence).where(
                    POSTINGS.c.hold_id == hold_id, POSTINGS.c.kind.in_(("expire", "void")))
                ).scalar()
                if sequence is None:
                    log.warning("voided hold %s has no void or expiry posting", hold_id)
                    continue
                hold, condition, _ = self._row(conn, hold_id)
                self._issue(conn, ConditionalHold(hold, condition), "pvp_voided", [sequence])
                issued += 1
        return issued
