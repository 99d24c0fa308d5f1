"""The buyer's side of x402 over agentmarket: a scheme for the `x402` package's client.

`AgentmarketScheme` is registered with an `x402.x402Client` for the agentmarket network
(`buyer_client` does it) and creates payloads signed with the buyer's ed25519 agent key. For a
seller behind the gateway it signs an agreement at the list price (`requirements.extra`) with a
fresh PayWord chain, then pays each call by revealing the next word: `calls_per_session` calls
under one agreement are one hold and one settlement. `calls_per_session=1` also signs the
finish, so the gateway settles that one call at once. For a resource server paid through the
facilitator (`extra.kind == "authorization"`) it signs a one-off transfer authorisation.

`agents.x402.prepay` sends each session's next voucher with the request itself once a 402 named
the price, so a session costs one round trip per call.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from x402 import x402Client
from x402.schemas import PaymentRequirements

from agents._deal import chain_shape
from agents.errors import AgentmarketError
from agents.metering import Tariff
from agents.payment_session import PaymentSession
from agents.x402 import network as net
from marketplace import agreements as ag
from marketplace.identity import AgentKey
from marketplace.payword import PaywordChain
from marketplace.v1 import agreement_pb2, registry_pb2

OFFER_TTL_MS = 20_000


@dataclass
class _Session:
    agreement: agreement_pb2.SignedAgreement
    payment: PaymentSession
    reserve_atomic: int
    opened: bool = False  # its open payload was made


class AgentmarketScheme:
    """x402 client scheme (`exact` or `upto`) on the agentmarket network."""

    def __init__(self, key: AgentKey, scheme: str = net.EXACT, *, calls_per_session: int = 1,
                 completion_s: int = 300) -> None:
        if scheme not in net.SCHEMES:
            raise ValueError(f"scheme is one of {net.SCHEMES}")
        if not 1 <= calls_per_session <= 10_000:
            raise ValueError("calls_per_session is 1..10000")
        self.key = key
        self.scheme = scheme
        self.calls_per_session = calls_per_session
        self.completion_s = completion_s
        self.sessions: dict[tuple[str, ...], _Session] = {}
        self.awaiting: set[str] = set()  # sessions whose opening call is not answered yet
        self._lock = threading.Lock()

    def create_payment_payload(self, requirements: PaymentRequirements) -> dict[str, Any]:
        extra = requirements.extra or {}
        if extra.get("kind") == "authorization":
            return net.sign_authorization(
                self.key, pay_to=requirements.pay_to, amount_atomic=int(requirements.amount),
                asset=requirements.asset, network=requirements.network,
                resource=str(extra.get("resource", "")), nonce=os.urandom(16).hex(),
                valid_before_ms=_now_ms() + requirements.max_timeout_seconds * 1000)
        session_key = (requirements.network, requirements.pay_to, str(extra.get("skill")),
                       requirements.asset, requirements.amount)
        with self._lock:
            session = self.sessions.get(session_key)
            if session is not None:
                try:
                    session.payment.plan(session.reserve_atomic, fresh=True)
                except AgentmarketError:  # the chain is spent: a new session
                    session = None
            if session is None:
                session = self._open(session_key, requirements)
            # the gateway takes each word once: a call whose prepayment carried over from a
            # refused one still reveals a new word
            voucher = session.payment.next_voucher(session.reserve_atomic, fresh=True)
            session.payment.settle(session.reserve_atomic, session.reserve_atomic)
            if session.opened:
                return net.voucher_payload(voucher)
            session.opened = True
            finish = b""
            if self.calls_per_session == 1:
                finish = self.key.sign(ag.request_message("finish", voucher.agreement_id))
                self.sessions.pop(session_key, None)
            else:  # its later vouchers wait for this one's answer (PrepayTransport)
                self.awaiting.add(voucher.agreement_id)
            return net.open_payload(session.agreement, voucher, finish)

    def _open(self, session_key: tuple[str, ...], requirements: PaymentRequirements
              ) -> _Session:
        extra = requirements.extra or {}
        reserve = int(requirements.amount)
        unit = int(extra["unit"])
        tariff = Tariff(unit, int(extra["unitPrice"]), int(extra.get("outputUnitPrice", 0)),
                        reserve)
        max_total = reserve * self.calls_per_session
        link_value, length = chain_shape(tariff, max_total)
        chain = PaywordChain(length)
        now = _now_ms()
        body = agreement_pb2.AgreementBody(
            rfq_id=f"list:{os.urandom(8).hex()}", buyer_id=self.key.agent_id,
            seller_id=requirements.pay_to, seller_endpoint=str(extra["sellerEndpoint"]),
            terms=agreement_pb2.Terms(
                skill=str(extra["skill"]), unit_price_atomic=tariff.unit_price_atomic,
                unit=unit, currency=requirements.asset, max_total_atomic=max_total,
                verification=registry_pb2.VerificationMethod.Value(str(extra["verification"])),
                completion_deadline_ms=now + self.completion_s * 1000, dispute_window_s=0,
                output_unit_price_atomic=tariff.output_unit_price_atomic,
                unit_name=str(extra.get("unitName", ""))),
            payword_root=chain.root, payword_length=length, link_value_atomic=link_value,
            created_at_ms=now, nonce=os.urandom(16), offer_expires_at_ms=now + OFFER_TTL_MS)
        signed = agreement_pb2.SignedAgreement(body=body.SerializeToString())
        ag.sign_as_buyer(signed, self.key)
        agreement_id = ag.agreement_id(signed.body)
        session = _Session(signed, PaymentSession(agreement_id, chain, link_value, max_total,
                                                  requirements.asset),
                           reserve)
        self.sessions[session_key] = session
        return session

    def charged(self, agreement_id: str, charged_atomic: int) -> None:
        """What the gateway says a call cost (PAYMENT-RESPONSE `amount`): prepaid but not
        charged money carries to the next call of the session."""
        with self._lock:
            for session in self.sessions.values():
                if session.payment.agreement_id == agreement_id:
                    refund = session.reserve_atomic - charged_atomic
                    session.payment.settle(0, -max(0, refund))

    def open_answered(self, agreement_id: str) -> None:
        with self._lock:
            self.awaiting.discard(agreement_id)

    def overtaken(self, agreement_id: str, sequence: int) -> bool:
        """Whether voucher `sequence` of this session may have been refused only because later
        ones were made after it (and reached the gateway first): the session made others
        since, or was followed by a new one (its chain spent). Its prepayment stays counted
        as spent: the gateway takes each word once, so the next voucher must reveal a new one
        (the session's capture is what the seller charged, the rest goes back at close)."""
        with self._lock:
            current = [s for s in self.sessions.values()
                       if s.payment.agreement_id == agreement_id]
            return not current or current[0].payment.sequence > sequence

    def finish_signature(self, agreement_id: str) -> str:
        """The buyer's signature that closes a session (`POST /v1/sessions/{id}/close`)."""
        return self.key.sign(ag.request_message("finish", agreement_id)).hex()

    def open_sessions(self) -> list[str]:
        with self._lock:
            return [s.payment.agreement_id for s in self.sessions.values() if s.opened]

    def forget(self, agreement_id: str) -> bool:
        """Drop the session of this agreement (the next payment opens a new one); whether
        there was one."""
        with self._lock:
            found = [k for k, s in self.sessions.items()
                     if s.payment.agreement_id == agreement_id]
            for key in found:
                del self.sessions[key]
            self.awaiting.discard(agreement_id)
            return bool(found)


def buyer_client(key: AgentKey, network: str, *, schemes: tuple[str, ...] = net.SCHEMES,
                 calls_per_session: int = 1, max_amount_atomic: int | None = None
                 ) -> tuple[x402Client, dict[str, AgentmarketScheme]]:
    """An x402Client paying on `network` with `key`; spending capped per payment at
    `max_amount_atomic` when given (x402's own spend controls)."""
    client = x402Client()
    registered = {}
    for scheme in schemes:
        registered[scheme] = AgentmarketScheme(key, scheme, calls_per_session=calls_per_session)
        client.register(network, registered[scheme])
    allowed: list[dict[str, str]] = []
    for asset in net.ASSETS:
        entry = {"network": network, "asset": asset}
        if max_amount_atomic is not None:
            entry["max_amount_per_payment"] = str(max_amount_atomic)
        allowed.append(entry)
    client.set_spend_controls({"allowed_assets": allowed})  # type: ignore[typeddict-item]
    return client, registered


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
