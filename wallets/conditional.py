"""Hash-locked holds: two-phase transfers whose capture requires the preimage of a SHA-256.

The ledger's condition for cross-ledger settlement (Interledger's conditional transfers, the
HTLC of payment channels, the payment-versus-payment legs of `marketplace.pvp`): a hold placed
with `condition_sha256` is captured, whole and to its own credit account, only by whoever shows
a 32-byte preimage that hashes to it, and only before its absolute expiry `expires_at_ms`;
after that the ledger's own timeout voids it like any hold. Nobody can void it earlier, not the
payer, not the marketplace: the party that paid on another ledger against the same condition
relies on being able to claim this leg with the preimage until the expiry. That party is the
leg's payee, so the payee alone may decline a hold made out to it (`decline`): it gives up only
its own claim, and a stranger's unsolicited hold (which counts against an e-CNY wallet's
balance cap) does not sit on its wallet until the expiry.

The lock lives on the hold's own row (`ledger_holds.condition_sha256`), checked by the ledger
inside every capture and void (`Ledger._open_hold`): a plain `capture` or `void` of a locked
hold is refused with HOLD_LOCKED, so no path around this module captures without the preimage.
Once shown, the preimage is kept on the row (`fulfilment`) and returned by `get`, so the payer
of the next leg learns it from this ledger (how a connector learns the fulfilment in ILP).

Every operation is idempotent under its key (`Ledger.mutate`); `hold_in` and `fulfil_in` run
inside a caller's transaction for composite operations.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, select, update

from wallets._holds import MAX_HOLD_TIMEOUT_S
from wallets._ledger_reads import hold_from_row
from wallets.currencies import check_amount
from wallets.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from wallets.guard import SpendContext
from wallets.ledger import ACCOUNTS, HOLDS, POSTINGS, Ledger
from wallets.models import Hold, Posting

PREIMAGE_BYTES = 32
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")


@dataclass(frozen=True, slots=True)
class ConditionalHold:
    """A hash-locked hold and, once captured, the preimage that unlocked it (hex)."""

    hold: Hold
    condition_sha256: str
    fulfilment: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"hold": asdict(self.hold), "condition_sha256": self.condition_sha256,
                "fulfilment": self.fulfilment}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConditionalHold:
        return cls(Hold(**data["hold"]), data["condition_sha256"], data["fulfilment"])


def condition_of(preimage: bytes) -> str:
    """The condition (hex SHA-256) a preimage fulfils."""
    return hashlib.sha256(check_preimage(preimage)).hexdigest()


def check_condition(condition_sha256: str) -> str:
    if not isinstance(condition_sha256, str) or not _HEX64.match(condition_sha256):
        raise InvalidArgument("condition_sha256 must be 64 lowercase hex characters")
    return condition_sha256


def check_preimage(preimage: bytes) -> bytes:
    if not isinstance(preimage, bytes) or len(preimage) != PREIMAGE_BYTES:
        raise InvalidArgument(f"a preimage is exactly {PREIMAGE_BYTES} bytes")
    return preimage


def hash_locked_payee(ledger: Ledger, hold_id: str) -> str:
    """The owner of a hash-locked hold's credit account ('' for any other or unknown hold)."""
    if not isinstance(hold_id, str) or not 0 < len(hold_id) <= 40:
        return ""
    with ledger.engine.connect().execution_options(agentmarket_read=True) as conn:
        return _payee_in(conn, hold_id)


def _payee_in(conn: Connection, hold_id: str) -> str:
    """`hash_locked_payee` in a caller's transaction: one read, the hold and its payee."""
    owner = conn.execute(select(ACCOUNTS.c.owner).select_from(
        HOLDS.join(ACCOUNTS, ACCOUNTS.c.id == HOLDS.c.credit_account_id)).where(
        HOLDS.c.id == hold_id, HOLDS.c.condition_sha256 != "")).scalar()
    return owner or ""


class ConditionalHolds:
    """Hash-locked holds over one ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def hold(self, key: str, debit_account_id: str, credit_account_id: str,
             amount_atomic: int, *, condition_sha256: str, expires_at_ms: int,
             spend: SpendContext | None = None) -> ConditionalHold:
        """Reserve `amount_atomic` for the credit account until `expires_at_ms` (absolute, this
        ledger's clock: legs on several ledgers name the same instants), locked to the
        condition. The debit goes through the wallet's policy like any hold."""
        check_amount(amount_atomic)
        check_condition(condition_sha256)
        self._check_expiry(expires_at_ms)
        request: dict[str, Any] = {"debit": debit_account_id, "credit": credit_account_id,
                                   "amount": amount_atomic, "condition": condition_sha256,
                                   "expires_at_ms": expires_at_ms}
        if spend is not None:
            request["spend"] = spend.request()
        return self.ledger.mutate(
            key, "conditional_hold", request,
            lambda conn: self.hold_in(conn, key, debit_account_id, credit_account_id,
                                      amount_atomic, condition_sha256=condition_sha256,
                                      expires_at_ms=expires_at_ms, spend=spend),
            ConditionalHold.to_json, ConditionalHold.from_json)

    def hold_in(self, conn: Connection, key: str, debit_account_id: str,
                credit_account_id: str, amount_atomic: int, *, condition_sha256: str,
                expires_at_ms: int, spend: SpendContext | None = None) -> ConditionalHold:
        check_amount(amount_atomic)
        check_condition(condition_sha256)
        timeout_s = self._check_expiry(expires_at_ms)
        hold = self.ledger.hold_in(conn, key, debit_account_id, credit_account_id,
                                   amount_atomic, timeout_s=timeout_s, spend=spend)
        conn.execute(update(HOLDS).where(HOLDS.c.id == hold.hold_id).values(
            condition_sha256=condition_sha256, expires_at_ms=expires_at_ms))
        return ConditionalHold(self._row(conn, hold.hold_id)[0], condition_sha256)

    def _check_expiry(self, expires_at_ms: int) -> int:
        """The whole seconds the ledger's hold needs to cover the absolute expiry."""
        if isinstance(expires_at_ms, bool) or not isinstance(expires_at_ms, int):
            raise InvalidArgument("expires_at_ms must be an integer (ms since the epoch)")
        left_ms = expires_at_ms - self.ledger.clock_ms()
        if not 1000 <= left_ms <= MAX_HOLD_TIMEOUT_S * 1000:
            raise InvalidArgument(f"expires_at_ms must be 1 s..{MAX_HOLD_TIMEOUT_S} s ahead of "
                                  f"this ledger's clock; it is {left_ms} ms ahead")
        return -(-left_ms // 1000)

    def fulfil(self, key: str, hold_id: str, preimage: bytes) -> tuple[ConditionalHold, Posting]:
        """Capture the whole hold to its credit account with the preimage, before its expiry.

        Anyone holding the preimage may: the money can only go where the hold says."""
        check_preimage(preimage)
        result = self.ledger.mutate(
            key, "conditional_fulfil", {"hold": hold_id, "preimage": preimage.hex()},
            lambda conn: self.fulfil_in(conn, key, hold_id, preimage),
            lambda r: {"hold": r[0].to_json(), "posting": r[1].to_json()},
            lambda d: (ConditionalHold.from_json(d["hold"]), Posting.from_json(d["posting"])))
        return result

    def fulfil_in(self, conn: Connection, key: str, hold_id: str,
                  preimage: bytes) -> tuple[ConditionalHold, Posting]:
        """A hold already captured with this preimage answers as captured, under any key:
        whoever shows the preimage first (the payee, or anyone it told) must not make the
        payee's own claim fail."""
        hold, condition, fulfilment = self._row(conn, hold_id)
        if not condition:
            raise FailedPrecondition(f"hold {hold_id} has no condition to fulfil",
                                     reason="NOT_CONDITIONAL")
        if hashlib.sha256(check_preimage(preimage)).hexdigest() != condition:
            raise InvalidArgument("the preimage does not hash to the hold's condition",
                                  reason="WRONG_PREIMAGE")
        if hold.status == "captured" and fulfilment == preimage.hex():
            return ConditionalHold(hold, condition, fulfilment), self._capture(conn, hold_id)
        posting = self.ledger.capture_in(conn, key, hold_id, hold.open_atomic, final=True,
                                         preimage=preimage)
        conn.execute(update(HOLDS).where(HOLDS.c.id == hold_id).values(
            fulfilment=preimage.hex()))
        return ConditionalHold(self._row(conn, hold_id)[0], condition, preimage.hex()), posting

    def decline(self, key: str, hold_id: str, payee: str) -> Posting:
        """The payee refuses a hash-locked hold made out to it: the money goes back to the payer
        at once. `payee`: the caller, who must own the hold's credit account."""
        def apply(conn: Connection) -> Posting:
            hold, condition, _fulfilment = self._row(conn, hold_id)
            if not condition:
                raise FailedPrecondition(f"hold {hold_id} is not hash-locked: the marketplace "
                                         "voids it")
            if not payee or _payee_in(conn, hold_id) != payee:
                raise PermissionDenied(f"only the payee of hold {hold_id} may decline it")
            if hold.status != "open" or hold.expires_at_ms <= self.ledger.clock_ms():
                raise FailedPrecondition(f"hold {hold_id} is no longer open ({hold.status})")
            return self.ledger.void_in(conn, key, hold_id, checked=True)

        self.ledger.expire_holds(hold_id=hold_id)
        return self.ledger.mutate(key, "void", {"hold": hold_id}, apply, Posting.to_json,
                                  Posting.from_json)

    def get(self, hold_id: str) -> ConditionalHold:
        """The hold now (expired first if past its expiry), with its preimage once shown."""
        self.ledger.expire_holds(hold_id=hold_id)
        with self.ledger.engine.connect().execution_options(agentmarket_read=True) as conn:
            hold, condition, fulfilment = self._row(conn, hold_id)
        if not condition:
            raise NotFound(f"hold {hold_id!r} is not a conditional hold")
        return ConditionalHold(hold, condition, fulfilment)

    def _capture(self, conn: Connection, hold_id: str) -> Posting:
        """The posting that captured the hold."""
        sequence = conn.execute(select(POSTINGS.c.sequence).where(
            POSTINGS.c.hold_id == hold_id, POSTINGS.c.kind == "capture")).scalar_one()
        return self.ledger._postings(conn, [sequence])[0]

    @staticmethod
    def _row(conn: Connection, hold_id: str) -> tuple[Hold, str, str]:
        if not isinstance(hold_id, str) or not 0 < len(hold_id) <= 40:
            raise InvalidArgument("hold_id must be 1..40 characters")
        row = conn.execute(select(HOLDS).where(HOLDS.c.id == hold_id)).first()
        if row is None:
            raise NotFound(f"hold {hold_id!r} does not exist")
        return hold_from_row(row), row.condition_sha256, row.fulfilment

