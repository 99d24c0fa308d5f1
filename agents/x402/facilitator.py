"""agentmarket's ledger behind the `x402` package: the scheme's server and facilitator halves.

`LedgerScheme` is registered with `x402.x402Facilitator` (`facilitator_for`) for `exact` and
`upto` on this node's network. It verifies and settles the three payload kinds of
`agents.x402.network` with the rules gRPC applies: a buyer-signed agreement is opened through
`Settlement.open_escrow` (signatures, listing, wallet policy, one hold) and paid by PayWord
vouchers (`agents.x402.sessions`); a signed authorisation is one transfer through the ledger
under the payer's spend policy, keyed by its nonce so a retry pays once. `PriceScheme` is the
resource server's half (requirements, payment flow, the settle phase passed on).
`LocalFacilitator` serves a resource server in the same process;
`agents.x402.facilitator_app` serves `/verify`, `/settle`, `/supported` over HTTP for
third-party resource servers.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from typing import Any

from x402 import x402FacilitatorSync
from x402.interfaces import PaymentFlowConfig
from x402.schemas import (
    AssetAmount,
    PaymentPayload,
    PaymentRequirements,
    SettleResponse,
    SupportedKind,
    SupportedResponse,
    VerifyResponse,
)
from x402.schemas.hooks import SettleContext

from agents.x402 import network as net
from agents.x402 import receipts
from agents.x402.reasons import Refused
from agents.x402.seller_calls import ASKED, SellerAnswer
from agents.x402.sessions import SessionBook, check_terms
from marketplace.identity import AgentKey
from wallets.caller import calling_as
from wallets.errors import AgentmarketError
from wallets.guard import SpendContext
from wallets.ledger import Ledger
from wallets.mandates import is_key

MAX_REMEMBERED_AUTHORISATIONS = 100_000


class PriceScheme:
    """x402 server scheme: requirements in atomic units of our assets; `flow` is `escrow`
    for the gateway (hold before the call, capture after) or `authorization` (verify before,
    settle after) for a third-party resource server."""

    def __init__(self, scheme: str, flow: str = "authorization") -> None:
        self.scheme = scheme
        self.default_asset_transfer_method = "default"
        self.payment_flows: Mapping[str, PaymentFlowConfig] = {
            "default": {"supported": (flow,), "default": flow}}  # type: ignore[typeddict-item]

    def parse_price(self, price: Any, network: str) -> AssetAmount:
        if isinstance(price, AssetAmount):
            return price
        if isinstance(price, dict):
            return AssetAmount(amount=str(price["amount"]), asset=price["asset"],
                               extra=price.get("extra"))
        raise ValueError("agentmarket prices are AssetAmount (atomic units and an asset code)")

    def enhance_payment_requirements(self, requirements: PaymentRequirements,
                                     supported_kind: SupportedKind, extensions: list[str]
                                     ) -> PaymentRequirements:
        return requirements

    def enrich_settlement_payload(self, context: SettleContext) -> dict[str, Any]:
        """The facilitator settles differently before the call (hold) and after (capture)."""
        return {"phase": context.phase or "after-handler"}


class LedgerScheme:
    """x402 facilitator scheme over this node's ledger."""

    caip_family = "agentmarket:*"

    def __init__(self, scheme: str, network: str, ledger: Ledger, key: AgentKey,
                 sessions: SessionBook | None = None) -> None:
        self.scheme = scheme
        self.network = network
        self.ledger = ledger
        self.key = key
        self.sessions = sessions
        self._authorised: dict[tuple[str, str], SettleResponse] = {}

    def get_extra(self, network: str) -> dict[str, Any] | None:
        return {"assets": list(net.ASSETS), "decimals": 9, "node": self.key.agent_id}

    def get_signers(self, network: str) -> list[str]:
        return [self.key.agent_id]

    # ---- verify ---------------------------------------------------------------------------

    def verify(self, payload: PaymentPayload, requirements: PaymentRequirements,
               context: Any = None) -> VerifyResponse:
        payer = None
        try:
            payment = self._common(payload, requirements)
            payer = _payer(payment)
            self._check(payment, requirements)
        except (Refused, net.PayloadError) as error:
            return VerifyResponse(is_valid=False, invalid_reason=error.reason,
                                  invalid_message=error.message, payer=payer)
        return VerifyResponse(is_valid=True, payer=payer)

    def _common(self, payload: PaymentPayload, requirements: PaymentRequirements) -> Any:
        accepted = payload.accepted
        if not net.atomic_text(requirements.amount):
            raise Refused("invalid_amount", "an amount is a decimal string of atomic units "
                                            "(digits 0-9, at most 19)")
        if requirements.network != self.network or accepted.network != self.network:
            raise Refused("invalid_network", f"this ledger is {self.network}")
        if accepted.scheme != requirements.scheme or requirements.scheme != self.scheme:
            raise Refused("invalid_scheme", f"the resource is sold under {requirements.scheme}")
        if accepted.asset != requirements.asset or requirements.asset not in net.ASSETS:
            raise Refused("invalid_asset", f"the resource is priced in {requirements.asset}")
        if accepted.pay_to != requirements.pay_to:
            raise Refused("invalid_pay_to", "the payment pays someone else")
        if accepted.amount != requirements.amount:
            raise Refused("invalid_amount", f"the price is {requirements.amount}")
        return _kind_fits(net.parse(payload.payload), requirements)

    def _check(self, payment: Any, requirements: PaymentRequirements) -> None:
        if isinstance(payment, net.Authorization):
            self._check_authorization(payment, requirements)
            return
        if self.sessions is None:
            raise Refused("unsupported_payload_type", "sessions are paid at the gateway")
        extra = requirements.extra or {}
        reserve = int(requirements.amount)
        body = payment.body if isinstance(payment, net.OpenPayload) else None
        if isinstance(payment, net.VoucherPayload):
            body = self.sessions.check_voucher(payment, reserve).body
        assert body is not None
        check_terms(body, requirements)
        if isinstance(payment, net.OpenPayload):
            self.sessions.check_open(payment, reserve, _Endpoint(extra.get("sellerEndpoint")))

    def _check_authorization(self, payment: net.Authorization,
                             requirements: PaymentRequirements) -> None:
        """Refuses a settled authorisation as a replay, at verify and at settle alike (its
        nonce's transfer is on the ledger, whatever this process remembers): one
        authorisation buys one answer, as a token refuses a used EIP-3009 nonce."""
        extra = requirements.extra or {}
        if payment.network != self.network:
            raise Refused("invalid_network", f"this ledger is {self.network}")
        if payment.asset != requirements.asset:
            raise Refused("invalid_asset", "the authorisation is in another asset")
        if payment.pay_to != requirements.pay_to:
            raise Refused("invalid_pay_to", "the authorisation pays someone else")
        if payment.amount_atomic != int(requirements.amount):
            raise Refused("invalid_amount", f"the price is {requirements.amount}")
        if payment.amount_atomic <= 0:
            raise Refused("invalid_amount", "an authorisation pays a positive amount")
        if not is_key(payment.pay_to) or payment.pay_to == payment.payer:
            raise Refused("invalid_pay_to", "`to` is another agent's id (64 hex characters "
                                            "of its ed25519 key), not the payer's")
        if payment.resource != str(extra.get("resource", "")):
            raise Refused("invalid_resource", "the authorisation is for another resource")
        if payment.valid_before_ms <= _now_ms():
            raise Refused("payload_expired", "the authorisation has expired")
        if not payment.verifies():
            raise Refused("invalid_signature", "the authorisation is not signed by its payer")
        if self._settled(payment):
            first = self._authorised.get((payment.payer, payment.nonce))
            raise Refused("payload_replayed", "this authorisation was already settled" + (
                f" (transaction {first.transaction})" if first is not None else ""))
        wallet = self.ledger.find_account(payment.payer, payment.asset)
        if wallet is None or self.ledger.balance(wallet.account_id).available_atomic \
                < payment.amount_atomic:
            raise Refused("insufficient_funds", f"the payer's {payment.asset} wallet cannot "
                                                "cover it")

    def _settled(self, payment: net.Authorization) -> bool:
        if (payment.payer, payment.nonce) in self._authorised:
            return True
        with calling_as(payment.payer):  # its transfer's key is the payer's
            return self.ledger.key_recorded(_transfer_key(payment), "transfer")

    # ---- settle ---------------------------------------------------------------------------

    def settle(self, payload: PaymentPayload, requirements: PaymentRequirements,
               context: Any = None) -> SettleResponse:
        payer = None
        try:
            payment = _kind_fits(net.parse(payload.payload), requirements)
            payer = _payer(payment)
            if isinstance(payment, net.Authorization):
                return self._settle_authorization(payment, payload, requirements)
            return self._settle_session(payment, payload, requirements)
        except (Refused, net.PayloadError) as error:
            return SettleResponse(success=False, error_reason=error.reason,
                                  error_message=error.message, payer=payer, transaction="",
                                  network=self.network)

    def _settle_authorization(self, payment: net.Authorization, payload: PaymentPayload,
                              requirements: PaymentRequirements) -> SettleResponse:
        self._common(payload, requirements)
        self._check_authorization(payment, requirements)
        wallet = self.ledger.find_account(payment.payer, payment.asset)
        payee = self.ledger.open_account(payment.pay_to, payment.asset)
        if wallet is None:
            raise Refused("insufficient_funds", f"the payer has no {payment.asset} wallet")
        # The memo names this settle attempt, so that of two settles racing past the check
        # above (two requests carrying one authorisation, here or at another node) the second
        # is refused by the ledger's idempotency key (ALREADY_EXISTS: payload_replayed)
        # instead of being answered with the first one's posting as if it had paid.
        memo = f"x402 settle {os.urandom(6).hex()}: {payment.resource}"[:200]
        try:
            with calling_as(payment.payer):
                posting = self.ledger.transfer(
                    _transfer_key(payment), wallet.account_id, payee.account_id,
                    payment.amount_atomic, memo=memo,
                    spend=SpendContext(counterparty=payment.pay_to))
        except AgentmarketError as error:
            raise Refused(_reason(error), error.message) from None
        response = self.signed_response(payment.payer, payment.pay_to, payment.amount_atomic,
                                        payment.asset, str(posting.sequence), {})
        if len(self._authorised) >= MAX_REMEMBERED_AUTHORISATIONS:
            self._authorised.pop(next(iter(self._authorised)))
        self._authorised[(payment.payer, payment.nonce)] = response
        return response

    def _settle_session(self, payment: Any, payload: PaymentPayload,
                        requirements: PaymentRequirements) -> SettleResponse:
        if self.sessions is None:
            raise Refused("unsupported_payload_type", "sessions are paid at the gateway")
        phase = payload.payload.get("phase", "after-handler")
        reserve = int(requirements.amount)
        if phase == "before-handler":
            self._common(payload, requirements)
            if isinstance(payment, net.OpenPayload):
                self._check(payment, requirements)
                session = self.sessions.open(payment, reserve)
            else:
                session = self.sessions.sessions.get(payment.agreement_id)
                if session is None:
                    raise Refused("session_unknown", "no open session has this agreement")
                with session.lock:
                    self._check(payment, requirements)
                    self.sessions.spend(session, payment.voucher)
            if isinstance(payment, net.OpenPayload):
                with session.lock:
                    self.sessions.spend(session, payment.voucher)
            amount, transaction, closing = reserve, session.hold_posting, None
        else:  # after the call: the metered charge (requirements.amount overridden)
            agreement = payment.voucher.agreement_id
            session = self.sessions.sessions.get(agreement)
            if session is None:  # closed or past its deadline meanwhile
                raise Refused("session_unknown", "no open session has this agreement")
            self.sessions.charged(session, reserve)
            amount, transaction, closing = reserve, session.hold_posting, None
            if isinstance(payment, net.OpenPayload) and payment.finish:
                closing = self.sessions.close(agreement, payment.finish)
                transaction = closing["transaction"]
        extra: dict[str, Any] = {"agreementId": session.agreement_id, "calls": session.calls,
                                 "holdPosting": session.hold_posting}
        if closing is not None:
            extra["settlement"] = settlement_summary(closing)
        if phase == "before-handler":  # the hold, for the gateway itself: not signed
            return SettleResponse(success=True, payer=session.body.buyer_id,
                                  transaction=transaction, network=self.network,
                                  amount=str(amount), extra=extra)
        return self.signed_response(session.body.buyer_id, session.body.seller_id, amount,
                                    session.body.terms.currency, transaction, extra)

    def signed_response(self, payer: str, pay_to: str, amount_atomic: int, asset: str,
                        transaction: str, extra: dict[str, Any]) -> SettleResponse:
        """A SettleResponse whose `extra.receipt` the node signs (PROTOCOL.md)."""
        return SettleResponse.model_validate(receipts.settled(
            self.key, self.network, payer, pay_to, amount_atomic, asset, transaction, extra))


def _transfer_key(payment: net.Authorization) -> str:
    return f"x402:{payment.nonce}"


class _Endpoint:
    def __init__(self, endpoint: Any) -> None:
        self.endpoint = str(endpoint or "")


def settlement_summary(closing: dict[str, Any]) -> dict[str, Any]:
    escrow = closing["escrow"]
    return {"state": escrow["state"], "captured": str(escrow["captured_atomic"]),
            "fee": str(escrow["fee_atomic"]), "refunded": str(escrow["refunded_atomic"]),
            "transaction": closing["transaction"], "receipt": closing["receipt"]}


def facilitator_for(network: str, ledger: Ledger, key: AgentKey,
                    sessions: SessionBook | None = None) -> x402FacilitatorSync:
    """An x402 facilitator with agentmarket's schemes registered for `network`."""
    facilitator = x402FacilitatorSync()
    for scheme in net.SCHEMES:
        facilitator.register([network], LedgerScheme(scheme, network, ledger, key, sessions))
    return facilitator


class LocalFacilitator:
    """x402's FacilitatorClient, in process: the ledger's work runs on worker threads, so the
    event loop keeps serving; an open's or close's wait on its seller runs on the loop,
    holding no thread (`agents.x402.seller_calls`), before that work."""

    def __init__(self, facilitator: x402FacilitatorSync,
                 sessions: SessionBook | None = None) -> None:
        self.facilitator = facilitator
        self.sessions = sessions

    async def verify(self, payload: PaymentPayload, requirements: PaymentRequirements
                     ) -> VerifyResponse:
        if _in_memory(payload):
            return self.facilitator.verify(payload, requirements)
        return await asyncio.to_thread(self.facilitator.verify, payload, requirements)

    async def settle(self, payload: PaymentPayload, requirements: PaymentRequirements
                     ) -> SettleResponse:
        if _in_memory(payload):
            return self.facilitator.settle(payload, requirements)
        opening = self._open_payment(payload)
        before = payload.payload.get("phase") == "before-handler"
        if opening is not None and not before and opening.finish:
            # a one-call session's close, after its call: the seller finishes first
            async with self.sessions.finishing(  # type: ignore[union-attr]
                    opening.voucher.agreement_id, opening.finish):
                return await asyncio.to_thread(self.facilitator.settle, payload, requirements)
        answer = None
        if opening is not None and before:
            answer = await self._countersign(opening, payload, requirements)
        token = ASKED.set(answer)
        try:  # the copy of this context the thread runs in carries the answer
            return await asyncio.to_thread(self.facilitator.settle, payload, requirements)
        finally:
            ASKED.reset(token)

    def _open_payment(self, payload: PaymentPayload) -> net.OpenPayload | None:
        """The session's open payload (an open, or a one-call session's close), if it is one
        and this gateway keeps sessions."""
        if self.sessions is None or payload.payload.get("kind") != "open":
            return None
        try:
            payment = net.parse(payload.payload)
        except net.PayloadError:
            return None  # the settle refuses it
        return payment if isinstance(payment, net.OpenPayload) else None

    async def _countersign(self, payment: net.OpenPayload, payload: PaymentPayload,
                           requirements: PaymentRequirements) -> SellerAnswer | None:
        """The seller's countersignature of an open, asked only once the open's checks pass
        (so no stranger's payload makes the gateway call a seller; the settle refuses it)."""
        checked = await asyncio.to_thread(self.facilitator.verify, payload, requirements)
        if not checked.is_valid or self.sessions is None:
            return None
        return await self.sessions.seller_calls.countersign(payment)

    def get_supported(self) -> SupportedResponse:
        return self.facilitator.get_supported()


def _in_memory(payload: PaymentPayload) -> bool:
    """A session's voucher is checked and booked in memory, in a few hashes: no thread hop
    for it (opening, closing and authorisations touch the database or the seller)."""
    inner = payload.payload
    return inner.get("kind") == "voucher" or (inner.get("kind") == "open" and inner.get(
        "phase") == "after-handler" and "finish" not in inner)


def _kind_fits(payment: Any, requirements: PaymentRequirements) -> Any:
    """An authorisation pays only what is sold for one (`extra.kind`), a session only what is
    sold by a seller: a transfer never stands in for a held, forwarded call, nor the reverse."""
    wants_authorization = (requirements.extra or {}).get("kind") == "authorization"
    if isinstance(payment, net.Authorization) != wants_authorization:
        raise Refused("unsupported_payload_type", "this resource is paid with "
                      + ("an authorization" if wants_authorization else "a session (open or "
                                                                         "voucher)"))
    return payment


def _payer(payment: Any) -> str | None:
    if isinstance(payment, net.Authorization):
        return payment.payer
    if isinstance(payment, net.OpenPayload):
        return str(payment.body.buyer_id)
    return None


def _reason(error: AgentmarketError) -> str:
    return {"INSUFFICIENT_FUNDS": "insufficient_funds", "POLICY_DENIED": "policy_denied",
            "APPROVAL_REQUIRED": "approval_required", "WALLET_FROZEN": "wallet_frozen",
            "ALREADY_EXISTS": "payload_replayed"}.get(error.reason, "invalid_payload")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
