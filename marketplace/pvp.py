"""Cross-border payment-versus-payment between two nodes, Interledger-style.

A buyer holds e-CNY on one node (the source ledger); a seller prices a skill in USD on another
(the destination ledger); an FX liquidity provider holds accounts on both. The seller makes a
32-byte secret (the preimage) and gives the buyer its SHA-256 (the condition) with the invoice.
Then, each step idempotent under a key derived from the payment id (the provider's lock from
the source leg it stands on, so one source leg backs one destination leg whatever payment ids
name it) and the party's own key (so nobody else can take the key first):

    1. lock_source        buyer:    source ledger, buyer -> provider, X e-CNY, locked to the
                                    condition until T_source
    2. lock_destination   provider: checks leg 1 (amount, payee, condition, T_source at least
                                    `margin_ms` after T_destination), then destination ledger,
                                    provider -> seller, Y USD, same condition, until T_destination
    3. claim_destination  seller:   checks leg 2, fulfils it with the preimage before
                                    T_destination; the destination ledger now shows the preimage
    4. claim_source       provider: reads the preimage from the destination ledger, fulfils
                                    leg 1 before T_source

Both legs are captured by the preimage, or both are voided by their ledgers' own timeouts: if
the seller never claims, leg 2 voids at T_destination and leg 1 at T_source, and no honest
party reveals the preimage to capture leg 1 alone. The seller holds it, though: a seller and
a provider who collude can let leg 2 void and fulfil leg 1 with it before T_source, taking the
buyer's money while the seller's leg pays nothing (the buyer then holds receipts showing leg 1
settled and leg 2 voided, its evidence against them). As with any hash-locked exchange, a buyer
relies on the seller and the provider not colluding, or on a provider it trusts. Why the
provider cannot lose: it reveals nothing and its
money moves only when the seller claims leg 2, which shows the preimage on the destination
ledger no later than T_destination; it then has the whole margin (T_source - T_destination) to
claim leg 1. The margin must therefore exceed the longest outage of the source node (or of the
provider) that the provider will bear: a node killed and restarted inside the margin loses
nothing (tests/test_pvp_processes.py kills either node at every step).

The nodes keep every state (`wallets.conditional`); the parties here keep none beyond the
payment's terms, so any of them may crash and run its step again.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import grpc

from marketplace.auth import signed_channel
from marketplace.errors import FailedPrecondition, InvalidArgument
from marketplace.identity import AgentKey
from wallets.currencies import check_amount, currency
from wallets.errors import AgentmarketError
from wallets.fx import FxQuote
from wallets.v1 import conditional_pb2, conditional_pb2_grpc, wallet_pb2

CALL_TIMEOUT_S = 5.0


class NodeUnavailable(AgentmarketError):
    """A node did not answer; the step may be retried with the same payment (it is idempotent)."""

    status = "UNAVAILABLE"
    reason = "NODE_UNAVAILABLE"


class LegRefused(FailedPrecondition):
    """A node refused a step, or a leg is not what the payment's terms say."""

    reason = "PVP_LEG_REFUSED"


@dataclass(frozen=True, slots=True)
class PvpLeg:
    """One ledger's half: a hash-locked hold on the node at `address`."""

    address: str
    debit_account_id: str
    credit_account_id: str
    amount_atomic: int
    currency: str
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class PvpPayment:
    payment_id: str
    condition_sha256: str
    source: PvpLeg       # buyer -> provider on the buyer's ledger: expires last
    destination: PvpLeg  # provider -> seller on the seller's ledger: expires first

    def check_staggered(self, margin_ms: int) -> None:
        if self.source.expires_at_ms - self.destination.expires_at_ms < margin_ms:
            raise InvalidArgument(f"the source leg must expire at least {margin_ms} ms after "
                                  "the destination leg, so the provider can claim it after "
                                  "paying")


def source_amount(destination_atomic: int, quote: FxQuote) -> int:
    """What the buyer locks on the source ledger for `destination_atomic` delivered on the
    destination ledger, at the provider's quote from the destination currency to the source
    currency (1 unit = numerator/denominator units), rounded UP to an atomic unit: the provider
    never gives more than the quote's value (the sub-atomic rest is its spread, as in
    `wallets.fx`)."""
    check_amount(destination_atomic)
    source, target = currency(quote.to_currency), currency(quote.from_currency)
    numerator = destination_atomic * quote.rate_numerator * 10**source.scale
    denominator = quote.rate_denominator * 10**target.scale
    return -(-numerator // denominator)


def staggered_expiries(now_ms: int, *, destination_window_ms: int,
                       margin_ms: int) -> tuple[int, int]:
    """(destination leg's expiry, source leg's expiry): the seller has `destination_window_ms`
    to claim; the provider then has `margin_ms` more to claim the source leg."""
    if destination_window_ms < 1000 or margin_ms < 1000:
        raise InvalidArgument("the destination window and the margin are at least 1 s each")
    destination = now_ms + destination_window_ms
    return destination, destination + margin_ms


@dataclass(frozen=True, slots=True)
class LegState:
    hold_id: str
    status: str  # open | captured | expired
    amount_atomic: int
    currency: str
    debit_account_id: str
    credit_account_id: str
    condition_sha256: str
    expires_at_ms: int
    fulfilment: bytes
    node_now_ms: int


def _state(message: conditional_pb2.ConditionalHold) -> LegState:
    h = message.hold
    return LegState(h.hold_id, h.status, h.amount.amount_atomic, h.amount.currency,
                    h.debit_account_id, h.credit_account_id, message.condition_sha256,
                    h.expires_at_ms, message.fulfilment, message.now_ms)


class PvpParty:
    """One party's side of PvP payments: its key signs its calls to the two nodes."""

    def __init__(self, key: AgentKey, *, credentials: grpc.ChannelCredentials | None = None,
                 timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.key = key
        self.credentials = credentials
        self.timeout_s = timeout_s

    def _call(self, address: str, method: str, request: Any) -> LegState:
        with signed_channel(address, self.key, self.credentials) as channel:
            stub = conditional_pb2_grpc.ConditionalHoldServiceStub(channel)
            try:
                return _state(getattr(stub, method)(request, timeout=self.timeout_s))
            except grpc.RpcError as error:
                code = error.code()
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                            grpc.StatusCode.CANCELLED):
                    raise NodeUnavailable(f"node {address}: {code.name}: {error.details()}"
                                          ) from None
                raise LegRefused(f"node {address} refused {method}: {code.name}: "
                                 f"{error.details()}") from None

    def step_key(self, payment: PvpPayment, step: str) -> str:
        """The step's idempotency key: the same on every retry by this party, and unguessable
        by anyone else (an HMAC under the party's own key), so nobody can use it first."""
        return self._key(payment.payment_id, step)

    def destination_key(self, payment: PvpPayment, source_hold_id: str) -> str:
        """The provider's key for the destination leg, from the source leg it stands on (not
        the payment id, which the buyer and seller choose): a second payment over the same
        source hold replays the first leg (same terms) or is refused (other terms), so the
        provider never pays twice for what it can claim once. The hold id alone (random, 128
        bits): the node's address is the buyer's to spell (`localhost:P`, `127.0.0.1:P`,
        `ipv4:127.0.0.1:P` reach one node), and each spelling made a new key."""
        return self._key(source_hold_id, "destination-hold")

    def _key(self, subject: str, step: str) -> str:
        tag = hmac.new(self.key.seed(), f"{subject}\n{step}".encode(),
                       hashlib.sha256).hexdigest()[:48]
        return f"pvp:{step}:{tag}"

    def _hold(self, payment: PvpPayment, leg: PvpLeg, key: str) -> LegState:
        return self._call(leg.address, "Hold", conditional_pb2.ConditionalHoldRequest(
            idempotency_key=key, debit_account_id=leg.debit_account_id,
            credit_account_id=leg.credit_account_id,
            amount=wallet_pb2.Money(amount_atomic=leg.amount_atomic, currency=leg.currency),
            condition_sha256=payment.condition_sha256, expires_at_ms=leg.expires_at_ms))

    def get(self, leg: PvpLeg, hold_id: str) -> LegState:
        return self._call(leg.address, "Get",
                          conditional_pb2.GetConditionalHoldRequest(hold_id=hold_id))

    # ---- the four steps --------------------------------------------------------------------

    def lock_source(self, payment: PvpPayment) -> LegState:
        """Step 1 (the buyer)."""
        return self._hold(payment, payment.source, self.step_key(payment, "source-hold"))

    def lock_destination(self, payment: PvpPayment, source_hold_id: str, *,
                         margin_ms: int) -> LegState:
        """Step 2 (the provider): only once leg 1 is exactly what the terms say."""
        payment.check_staggered(margin_ms)
        source = self.get(payment.source, source_hold_id)
        self._expect(source, payment.source, payment.condition_sha256, "source")
        if source.status != "open":
            raise LegRefused(f"the source leg is {source.status}, not open")
        if payment.destination.expires_at_ms - source.node_now_ms < 1000:
            raise LegRefused("too late: the destination leg would expire within a second")
        return self._hold(payment, payment.destination,
                          self.destination_key(payment, source_hold_id))

    def claim_destination(self, payment: PvpPayment, destination_hold_id: str,
                          preimage: bytes) -> LegState:
        """Step 3 (the seller): only a leg that pays it what the invoice says."""
        if hashlib.sha256(preimage).hexdigest() != payment.condition_sha256:
            raise InvalidArgument("the preimage does not fulfil the payment's condition")
        leg = self.get(payment.destination, destination_hold_id)
        self._expect(leg, payment.destination, payment.condition_sha256, "destination")
        return self._fulfil(payment.destination, destination_hold_id, preimage,
                            self.step_key(payment, "destination-fulfil"))

    def claim_source(self, payment: PvpPayment, source_hold_id: str,
                     destination_hold_id: str) -> LegState | None:
        """Step 4 (the provider): the preimage from the destination ledger captures leg 1.
        None while the destination leg is still open (the seller has not claimed yet)."""
        destination = self.get(payment.destination, destination_hold_id)
        if not destination.fulfilment:
            if destination.status == "open":
                return None
            raise LegRefused(f"the destination leg is {destination.status}: nothing to claim")
        return self._fulfil(payment.source, source_hold_id, destination.fulfilment,
                            self.step_key(payment, "source-fulfil"))

    def _fulfil(self, leg: PvpLeg, hold_id: str, preimage: bytes, key: str) -> LegState:
        return self._call(leg.address, "Fulfil", conditional_pb2.FulfilRequest(
            idempotency_key=key, hold_id=hold_id, preimage=preimage))

    @staticmethod
    def _expect(found: LegState, leg: PvpLeg, condition: str, name: str) -> None:
        want = (leg.amount_atomic, leg.currency, leg.debit_account_id, leg.credit_account_id,
                condition, leg.expires_at_ms)
        have = (found.amount_atomic, found.currency, found.debit_account_id,
                found.credit_account_id, found.condition_sha256, found.expires_at_ms)
        if want != have:
            raise LegRefused(f"the {name} leg is not what the payment says: {have} != {want}")
