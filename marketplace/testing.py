"""Build listings, signed agreements, vouchers, receipts and redeems by hand, without agents.

For tests of the marketplace itself (and for checking another language's implementation of the
wire contract against this one): every message here is what a well-behaved buyer or seller
sends, so a test can change one field and expect a refusal.

    deal = make_deal(buyer_key, seller_key, make_terms(price_atomic=10, quantity=5), now_ms)
    settlement.open_escrow("open-1", deal.signed)
    receipts = [deal.receipt(seller_key, i, {"text": "x"}) for i in (1, 2)]
    settlement.redeem("redeem-1", deal.agreement_id, deal.voucher(2), receipts,
                      deal.redeem_signature(seller_key, 2, receipts))
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from marketplace import agreements as ag
from marketplace.identity import AgentKey
from marketplace.payword import PaywordChain
from marketplace.v1 import agreement_pb2, registry_pb2

M = registry_pb2.VerificationMethod
ALL_METHODS = (M.VERIFICATION_METHOD_SCHEMA, M.VERIFICATION_METHOD_CHECKER,
               M.VERIFICATION_METHOD_LLM_JUDGE, M.VERIFICATION_METHOD_BUYER_ACCEPTANCE,
               M.VERIFICATION_METHOD_THIRD_PARTY)
TEXT_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}},
               "required": ["text"]}


def make_skill(name: str = "echo", *, price_atomic: int = 1_000, currency: str = "USD",
               unit: int = registry_pb2.PRICE_UNIT_CALL, unit_name: str = "",
               output_price_atomic: int = 0, tiers: Iterable[tuple[int, int]] = (),
               methods: Iterable[int] = ALL_METHODS, description: str = "Echo a text back.",
               tags: Iterable[str] = ("text",), output_schema: dict[str, Any] | None = None,
               latency_ms: int = 0) -> registry_pb2.Skill:
    price = registry_pb2.Price(amount_atomic=price_atomic, currency=currency, unit=unit,
                               unit_name=unit_name, output_amount_atomic=output_price_atomic,
                               tiers=[registry_pb2.PriceTier(min_quantity=q, amount_atomic=a)
                                      for q, a in tiers])
    return registry_pb2.Skill(
        name=name, description=description, tags=list(tags),
        input_schema_json=json.dumps(TEXT_SCHEMA),
        output_schema_json=json.dumps(TEXT_SCHEMA if output_schema is None else output_schema),
        prices=[price], verification_methods=list(methods), typical_latency_ms=latency_ms)


def make_listing(seller: AgentKey | str, *skills: registry_pb2.Skill, name: str = "seller",
                 endpoint: str = "127.0.0.1:9") -> registry_pb2.Listing:
    agent_id = seller if isinstance(seller, str) else seller.agent_id
    return registry_pb2.Listing(agent_id=agent_id, name=name, endpoint=endpoint,
                                skills=list(skills) or [make_skill()])


def make_terms(*, skill: str = "echo", price_atomic: int = 1_000, quantity: int = 5,
               currency: str = "USD", unit: int = registry_pb2.PRICE_UNIT_CALL,
               unit_name: str = "", method: int = M.VERIFICATION_METHOD_SCHEMA,
               deadline_ms: int = 0, dispute_window_s: int = 60, max_total_atomic: int = 0,
               **extra: Any) -> agreement_pb2.Terms:
    """Terms; `deadline_ms` 0 is set by `make_deal` (an hour after now). `extra`: checker,
    judge, verifier, output_unit_price_atomic."""
    return agreement_pb2.Terms(
        skill=skill, unit_price_atomic=price_atomic, unit=unit, unit_name=unit_name,
        currency=currency, max_total_atomic=max_total_atomic or price_atomic * quantity,
        verification=method, completion_deadline_ms=deadline_ms,
        dispute_window_s=dispute_window_s, **extra)


@dataclass
class Deal:
    """A signed agreement and the buyer's PayWord chain for it."""

    signed: agreement_pb2.SignedAgreement
    body: agreement_pb2.AgreementBody
    agreement_id: str
    chain: PaywordChain
    _digests: dict[int, bytes] = field(default_factory=dict)

    def voucher(self, index: int, sequence: int | None = None) -> agreement_pb2.Voucher:
        """The voucher revealing chain word `index` (sequence defaults to the index)."""
        return agreement_pb2.Voucher(
            agreement_id=self.agreement_id, sequence=index if sequence is None else sequence,
            cumulative_atomic=index * self.body.link_value_atomic, payword_index=index,
            payword=self.chain.word(index))

    def receipt(self, seller: AgentKey, sequence: int, output: Any, charged_atomic: int = -1,
                *, chain_index: int = 0, **usage: int) -> agreement_pb2.Receipt:
        """The seller's signed receipt at `chain_index` (default: the sequence), linked to the
        receipt made last at the position before; charged defaults to the unit price."""
        text = output if isinstance(output, str) else json.dumps(output, sort_keys=True)
        charged = self.body.terms.unit_price_atomic if charged_atomic < 0 else charged_atomic
        index = chain_index or sequence
        receipt = ag.make_receipt(seller, self.agreement_id, sequence, text, charged,
                                  chain_index=index, previous_sha256=self._digests.get(
                                      index - 1, ag.CHAIN_GENESIS), **usage)
        self._digests[index] = receipt.chain_sha256
        return receipt

    def redeem_signature(self, seller: AgentKey, voucher: agreement_pb2.Voucher,
                         receipts: list[agreement_pb2.Receipt]) -> bytes:
        return seller.sign(ag.redeem_message(self.agreement_id, voucher, receipts))


def make_deal(buyer: AgentKey, seller: AgentKey, terms: agreement_pb2.Terms, now_ms: int, *,
              link_value_atomic: int = 0, offer_ttl_ms: int = 60_000,
              seller_signer: AgentKey | None = None,
              endpoint: str = "127.0.0.1:9") -> Deal:
    """An agreement on `terms`, signed by the buyer and (by default) the seller."""
    if not terms.completion_deadline_ms:
        terms.completion_deadline_ms = now_ms + 3_600_000
    link = link_value_atomic or terms.unit_price_atomic
    chain = PaywordChain(-(-terms.max_total_atomic // link))
    body = agreement_pb2.AgreementBody(
        rfq_id=os.urandom(8).hex(), buyer_id=buyer.agent_id, seller_id=seller.agent_id,
        seller_endpoint=endpoint, terms=terms, payword_root=chain.root,
        payword_length=chain.length, link_value_atomic=link, created_at_ms=now_ms,
        nonce=os.urandom(16), offer_expires_at_ms=now_ms + offer_ttl_ms)
    signed = agreement_pb2.SignedAgreement(body=body.SerializeToString())
    ag.sign_as_buyer(signed, buyer)
    ag.sign_as_seller(signed, seller_signer or seller)
    return Deal(signed, body, ag.agreement_id(signed.body), chain)


class Harness:
    """A marketplace without gRPC over one database and a clock the test moves: ledger,
    registry, settlement (with checkers, a judge and a verifier client of the test's choosing),
    an arbiter, and a buyer and a seller key."""

    def __init__(self, engine: Any, clock: Any, *, fee_bps: int = 250, judge: Any = None,
                 verifier_client: Any = None, guard: Any = None) -> None:
        from marketplace.checkers import CheckerRegistry
        from marketplace.registry import Registry
        from marketplace.settlement import Settlement
        from marketplace.verification import Verification
        from wallets.ledger import Ledger
        from wallets.service import WalletService

        self.clock = clock
        self.ledger = Ledger(engine, clock_ms=clock, guard=guard)
        self.wallets = WalletService(self.ledger)
        self.registry = Registry(engine, clock_ms=clock)
        self.checkers = CheckerRegistry()
        self.verification = Verification(checkers=self.checkers, judge=judge,
                                         verifier_client=verifier_client)
        self.arbiter = AgentKey.generate()
        self.settlement = Settlement(self.ledger, self.registry, fee_bps=fee_bps, clock_ms=clock,
                                     verification=self.verification,
                                     arbiters=[self.arbiter.agent_id])
        self.buyer, self.seller = AgentKey.generate(), AgentKey.generate()
        self._keys = 0

    def close(self) -> None:
        self.ledger.close()

    def key(self, prefix: str = "k") -> str:
        self._keys += 1
        return f"{prefix}-{self._keys}"

    def fund(self, owner: AgentKey | str, amount_atomic: int, currency: str = "USD") -> str:
        owner_id = owner if isinstance(owner, str) else owner.agent_id
        account = self.ledger.open_account(owner_id, currency).account_id
        self.wallets.deposit(self.key("fund"), account, amount_atomic, currency)
        return account

    def advertise(self, *skills: registry_pb2.Skill, seller: AgentKey | None = None,
                  ttl_s: int = 3600) -> registry_pb2.Listing:
        return self.registry.advertise(make_listing(seller or self.seller, *skills), ttl_s)

    def deal(self, **terms: Any) -> Deal:
        return make_deal(self.buyer, self.seller, make_terms(**terms), self.clock())

    def open(self, deal: Deal) -> dict[str, Any]:
        return self.settlement.open_escrow(self.key("open"), deal.signed)

    def redeem(self, deal: Deal, outputs: list[Any], *, charged_atomic: int = -1,
               key: str | None = None, **usage: int) -> dict[str, Any]:
        """The seller redeems one receipt per output, with the voucher paying for them all."""
        receipts = [deal.receipt(self.seller, i, out, charged_atomic, **usage)
                    for i, out in enumerate(outputs, 1)]
        links = -(-sum(r.charged_atomic for r in receipts) // deal.body.link_value_atomic)
        voucher = deal.voucher(links, sequence=max(len(outputs), links))
        return self.settlement.redeem(key or self.key("redeem"), deal.agreement_id, voucher,
                                      receipts, deal.redeem_signature(self.seller, voucher,
                                                                      receipts))

    def confirm(self, deal: Deal, key: str | None = None) -> dict[str, Any]:
        return self.settlement.confirm(key or self.key("confirm"), deal.agreement_id,
                                       self.buyer.sign(ag.request_message("confirm",
                                                                          deal.agreement_id)))

    def dispute(self, deal: Deal, reason: str = "the outputs are wrong",
                evidence: list[Any] | None = None, key: str | None = None) -> dict[str, Any]:
        evidence = evidence or []
        return self.settlement.dispute(
            key or self.key("dispute"), deal.agreement_id, reason,
            self.buyer.sign(ag.dispute_message(deal.agreement_id, reason, evidence)), evidence)

    def resolve(self, deal: Deal, outcome: int, seller_atomic: int = 0, note: str = "decided",
                key: str | None = None) -> dict[str, Any]:
        signature = self.arbiter.sign(ag.resolve_message(deal.agreement_id, outcome,
                                                         seller_atomic, note))
        return self.settlement.resolve_dispute(key or self.key("resolve"), deal.agreement_id,
                                               outcome, seller_atomic, note,
                                               self.arbiter.agent_id, signature)

    def balances(self) -> dict[tuple[str, str], tuple[int, int, int]]:
        """(owner, kind) -> (posted, pending debits, pending credits), for before/after checks."""
        return {(b.owner, b.kind): (b.posted_atomic, b.pending_debits_atomic,
                                    b.pending_credits_atomic) for b in self.ledger.accounts()}

    def posted(self, owner: AgentKey | str, kind: str = "wallet", currency: str = "USD") -> int:
        owner_id = owner if isinstance(owner, str) else owner.agent_id
        found = self.ledger.find_account(owner_id, currency, kind)
        return found.posted_atomic if found else 0


@contextmanager
def funded_market(engine: Any, clock: Any, funds_atomic: int = 1_000_000_000,
                  **skill: Any) -> Iterator[Harness]:
    """A `Harness` advertising one skill (`make_skill(**skill)`) with `funds_atomic` USD in
    the buyer's wallet, closed afterwards: the market most settlement tests start from."""
    harness = Harness(engine, clock)
    try:
        harness.advertise(make_skill(**skill))
        harness.fund(harness.buyer, funds_atomic)
        yield harness
    finally:
        harness.close()

