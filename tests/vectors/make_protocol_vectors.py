"""The wire protocol's test vectors (PROTOCOL.md, "Test vectors"): one paid task, from the
signed request to the arbiter's decision, built with fixed keys, times and nonces by the
implementation itself, so another language can check its bytes against them.

    python -m tests.vectors.make_protocol_vectors    # rewrites protocol.json

`tests/test_protocol_vectors.py` recomputes every vector through the implementation;
`examples/node-client/vectors.js` recomputes them with Node.js's own crypto.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from agents.payment_session import PaymentSession
from agents.payments import VOUCHER_METADATA_KEY, PaymentGate
from agents.v1 import agent_pb2
from marketplace import agreements as ag
from marketplace import pricing
from marketplace.auth import AGENT_KEY, NONCE_KEY, SIGNATURE_KEY, TIMESTAMP_KEY, signed_message
from marketplace.identity import AgentKey
from marketplace.payword import PaywordChain
from marketplace.v1 import (
    agreement_pb2,
    dispute_pb2,
    registry_pb2,
    settlement_pb2,
    verifier_pb2,
)
from wallets.mandates import MandateTerms, mandate_id, sign_mandate, sign_revocation
from wallets.v1 import wallet_pb2

PATH = Path(__file__).with_name("protocol.json")
SEEDS = {"buyer": bytes([0xB1]) * 32, "seller": bytes([0x5E]) * 32,
         "verifier": bytes([0x7E]) * 32, "arbiter": bytes([0xA7]) * 32}
PAYWORD_SEED = hashlib.sha256(b"agentmarket protocol vectors: payword seed").digest()
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PRICE_ATOMIC = 1_000_000  # 0.001 USD per call, listed
COUNTER_ATOMIC = 800_000  # the buyer's counter-offer, accepted
QUANTITY = 20
CALLS = 17  # receipt 16 is signed; 17 is not
SKILL = "upper"
SELLER_ENDPOINT = "127.0.0.1:50051"


def keys() -> dict[str, AgentKey]:
    return {role: AgentKey.from_seed(seed) for role, seed in SEEDS.items()}


def _fields(message: Message) -> dict[str, Any]:
    """The message as proto3 JSON (field names as in the .proto, defaults left out)."""
    return MessageToDict(message, preserving_proto_field_name=True)


def _hex(message: Message) -> str:
    return message.SerializeToString().hex()


def request_signature(k: dict[str, AgentKey]) -> dict[str, Any]:
    method = "/marketplace.v1.RegistryService/Discover"
    request = registry_pb2.DiscoverRequest(skill=SKILL, currency="USD", limit=5)
    body = request.SerializeToString()
    timestamp_ms, nonce = T0_MS, "0123456789abcdef0123456789abcdef"
    text = signed_message(method, body, timestamp_ms, nonce)
    signature = k["buyer"].sign(text)
    return {"method": method, "request": _fields(request), "request_hex": body.hex(),
            "request_sha256": hashlib.sha256(body).hexdigest(), "timestamp_ms": timestamp_ms,
            "nonce": nonce, "signed_text": text.decode(), "signature_hex": signature.hex(),
            "metadata": {AGENT_KEY: k["buyer"].agent_id, TIMESTAMP_KEY: str(timestamp_ms),
                         NONCE_KEY: nonce, SIGNATURE_KEY: signature.hex()}}


def _terms(price: int) -> agreement_pb2.Terms:
    return agreement_pb2.Terms(
        skill=SKILL, unit_price_atomic=price, unit=registry_pb2.PRICE_UNIT_CALL, currency="USD",
        max_total_atomic=price * QUANTITY, verification=registry_pb2.VERIFICATION_METHOD_SCHEMA,
        completion_deadline_ms=T0_MS + 630_000, dispute_window_s=60)


def negotiation(k: dict[str, AgentKey]) -> tuple[list[dict[str, Any]], agreement_pb2.Rfq,
                                                 list[agreement_pb2.Offer]]:
    buyer, seller = k["buyer"].agent_id, k["seller"].agent_id
    rfq = agreement_pb2.Rfq(
        rfq_id="rfq-0001", buyer_id=buyer, skill=SKILL, expected_quantity=QUANTITY,
        max_budget_atomic=COUNTER_ATOMIC * QUANTITY, currency="USD", deadline_ms=T0_MS + 30_000,
        verification=registry_pb2.VERIFICATION_METHOD_SCHEMA, max_rounds=6)
    first = agreement_pb2.Offer(rfq_id=rfq.rfq_id, round=1, from_id=seller,
                                terms=_terms(PRICE_ATOMIC), expires_at_ms=T0_MS + 30_000)
    counter = agreement_pb2.Offer(rfq_id=rfq.rfq_id, round=2, from_id=buyer,
                                  terms=_terms(COUNTER_ATOMIC), expires_at_ms=T0_MS + 30_000)
    final = agreement_pb2.Offer(rfq_id=rfq.rfq_id, round=3, from_id=seller,
                                terms=_terms(COUNTER_ATOMIC), expires_at_ms=T0_MS + 30_000)
    steps = [("buyer", "rfq", rfq, T0_MS), ("seller", "offer", first, T0_MS + 10),
             ("buyer", "offer", counter, T0_MS + 20), ("seller", "offer", final, T0_MS + 30)]
    messages = []
    for sender, kind, content, at_ms in steps:
        message = agent_pb2.NegotiationMessage(**{kind: content})
        messages.append({"from": sender, "kind": kind, "at_ms": at_ms,
                         "message": _fields(message), "message_hex": _hex(message)})
    return messages, rfq, [first, counter, final]


def agreement(k: dict[str, AgentKey], offer: agreement_pb2.Offer, chain: PaywordChain
              ) -> tuple[dict[str, Any], agreement_pb2.AgreementBody]:
    body = agreement_pb2.AgreementBody(
        rfq_id=offer.rfq_id, buyer_id=k["buyer"].agent_id, seller_id=k["seller"].agent_id,
        seller_endpoint=SELLER_ENDPOINT, terms=offer.terms, payword_root=chain.root,
        payword_length=chain.length, link_value_atomic=offer.terms.unit_price_atomic,
        created_at_ms=T0_MS + 40, nonce=bytes(range(16)), offer_expires_at_ms=offer.expires_at_ms)
    signed = agreement_pb2.SignedAgreement(body=body.SerializeToString())
    ag.sign_as_buyer(signed, k["buyer"])
    accept = agent_pb2.NegotiationMessage(agreement=signed)
    accept_hex = _hex(accept)
    ag.sign_as_seller(signed, k["seller"])
    countersigned = agent_pb2.NegotiationMessage(agreement=signed)
    return {"body": _fields(body), "body_hex": signed.body.hex(),
            "agreement_id": ag.agreement_id(signed.body), "signed_prefix": "agreement|",
            "buyer_signature_hex": signed.buyer_signature.hex(),
            "seller_signature_hex": signed.seller_signature.hex(),
            "acceptance_message_hex": accept_hex, "countersigned_message_hex": _hex(countersigned),
            "open_escrow_request_hex": _hex(settlement_pb2.OpenEscrowRequest(
                idempotency_key="escrow:" + ag.agreement_id(signed.body), agreement=signed)),
            }, body


def payword(chain: PaywordChain) -> dict[str, Any]:
    return {"seed_hex": chain.seed.hex(), "length": chain.length,
            "words_hex": [chain.word(i).hex() for i in range(chain.length + 1)]}


def calls(k: dict[str, AgentKey], agreement_id: str, body: agreement_pb2.AgreementBody,
          chain: PaywordChain) -> tuple[list[dict[str, Any]], list[agreement_pb2.Receipt],
                                        agreement_pb2.Voucher]:
    """Paid calls through the buyer's session and the seller's gate, as the agents make them."""
    session = PaymentSession(agreement_id, chain, body.link_value_atomic,
                             body.terms.max_total_atomic)
    gate = PaymentGate(k["seller"], clock_ms=lambda: body.terms.completion_deadline_ms - 1)
    gate.open(agreement_id, body)
    price = body.terms.unit_price_atomic
    made, receipts, voucher = [], [], None
    for n in range(1, CALLS + 1):
        voucher = session.next_voucher(price)
        call_id = f"call-{n:04d}"
        request = agent_pb2.InvokeRequest(agreement_id=agreement_id,
                                          input_json=json.dumps({"text": f"word {n}"}),
                                          call_id=call_id)
        admission = gate.admit(voucher, agreement_id, price, call_id=call_id)
        output_json = json.dumps({"text": f"WORD {n}"}, sort_keys=True)
        receipt = ag.new_receipt(agreement_id, admission.sequence, output_json,
                                 pricing.charge_atomic(body.terms))
        receipt = gate.complete(agreement_id, admission, receipt, lambda chained: chained)
        session.settle(price, receipt.charged_atomic)
        receipts.append(receipt)
        made.append({"call_id": call_id, "request_hex": _hex(request),
                     "voucher": _fields(voucher), "voucher_hex": _hex(voucher),
                     "receipt": _fields(receipt), "receipt_hex": _hex(receipt),
                     "receipt_text": ag.receipt_message(receipt).decode(),
                     "chain_text": ag.chain_message(receipt).decode(),
                     "signed": bool(receipt.seller_signature)})
    assert voucher is not None
    return made, receipts, voucher


def settlement(k: dict[str, AgentKey], agreement_id: str, voucher: agreement_pb2.Voucher,
               receipts: list[agreement_pb2.Receipt]) -> dict[str, Any]:
    redeem = ag.signed_redeem(k["seller"], agreement_id, voucher, receipts,
                              f"redeem:{agreement_id}:{voucher.sequence}")
    finish = agent_pb2.FinishRequest(agreement_id=agreement_id, buyer_signature=k["buyer"].sign(
        ag.request_message("finish", agreement_id)))
    confirm = settlement_pb2.ConfirmRequest(
        idempotency_key=f"confirm:{agreement_id}", agreement_id=agreement_id,
        buyer_signature=k["buyer"].sign(ag.request_message("confirm", agreement_id)))
    evidence = [settlement_pb2.Evidence(kind="note", description="the answers are not upper "
                                                                 "case", content=b""),
                settlement_pb2.Evidence(kind="output", description="call 3",
                                        content=receipts[2].output_json.encode())]
    reason = "outputs do not match the skill's description"
    dispute = settlement_pb2.DisputeRequest(
        idempotency_key=f"dispute:{agreement_id}", agreement_id=agreement_id, reason=reason,
        evidence=evidence, buyer_signature=k["buyer"].sign(
            ag.dispute_message(agreement_id, reason, evidence)))
    judged = receipts[:3]
    verdicts = [verifier_pb2.ReceiptVerdict(sequence=r.sequence, passed=r.sequence != 2,
                                            reason="" if r.sequence != 2 else "not upper case")
                for r in judged]
    verdict_text = ag.verdict_message(agreement_id, judged, verdicts)
    verdict = verifier_pb2.VerifyResponse(agreement_id=agreement_id, verdicts=verdicts,
                                          verifier_signature=k["verifier"].sign(verdict_text))
    outcome, seller_atomic, note = dispute_pb2.DISPUTE_OUTCOME_SPLIT, 6_000_000, "half right"
    resolve_text = ag.resolve_message(agreement_id, outcome, seller_atomic, note)
    resolve = dispute_pb2.ResolveDisputeRequest(
        idempotency_key=f"resolve:{agreement_id}", agreement_id=agreement_id, outcome=outcome,
        seller_atomic=seller_atomic, note=note, arbiter_id=k["arbiter"].agent_id,
        arbiter_signature=k["arbiter"].sign(resolve_text))
    return {
        "redeem": {"receipts_digest": ag.receipts_digest(receipts),
                   "signed_text": ag.redeem_message(agreement_id, voucher, receipts).decode(),
                   "seller_signature_hex": redeem.seller_signature.hex(),
                   "request_hex": _hex(redeem)},
        "finish": {"signed_text": ag.request_message("finish", agreement_id).decode(),
                   "buyer_signature_hex": finish.buyer_signature.hex(),
                   "request_hex": _hex(finish)},
        "confirm": {"signed_text": ag.request_message("confirm", agreement_id).decode(),
                    "buyer_signature_hex": confirm.buyer_signature.hex(),
                    "request_hex": _hex(confirm)},
        "dispute": {"reason": reason, "evidence": [_fields(e) for e in evidence],
                    "evidence_digest": ag.evidence_digest(evidence),
                    "signed_text": ag.dispute_message(agreement_id, reason, evidence).decode(),
                    "buyer_signature_hex": dispute.buyer_signature.hex(),
                    "request_hex": _hex(dispute)},
        "verdict": {"receipt_sequences": [r.sequence for r in judged],
                    "verdicts": [_fields(v) for v in verdicts],
                    "receipts_digest": ag.receipts_digest(judged),
                    "signed_text": verdict_text.decode(),
                    "verifier_signature_hex": verdict.verifier_signature.hex(),
                    "response_hex": _hex(verdict)},
        "resolve": {"outcome": int(outcome), "seller_atomic": str(seller_atomic), "note": note,
                    "signed_text": resolve_text.decode(),
                    "arbiter_signature_hex": resolve.arbiter_signature.hex(),
                    "request_hex": _hex(resolve)},
    }


def mandate(k: dict[str, AgentKey]) -> dict[str, Any]:
    """The buyer lets the verifier's key spend from its wallet, within limits."""
    terms = MandateTerms(account_id="0123456789abcdef0123456789abcdef",
                         agent_key=k["verifier"].agent_id, currency="USD",
                         total_limit_atomic=5_000_000, expires_at_ms=T0_MS + 86_400_000,
                         per_call_limit_atomic=1_000_000,
                         counterparties=(k["seller"].agent_id,), nonce="mandate-1")
    owner = Ed25519PrivateKey.from_private_bytes(SEEDS["buyer"])
    data, signature = sign_mandate(owner, terms)
    identity = mandate_id(data)
    return {"terms": _fields(wallet_pb2.MandateTerms.FromString(data)), "terms_hex": data.hex(),
            "mandate_id": identity, "owner_signature_hex": signature.hex(),
            "revoke_signature_hex": sign_revocation(owner, identity).hex(),
            "grant_request_hex": _hex(wallet_pb2.GrantMandateRequest(
                idempotency_key="grant-1", terms=data, owner_signature=signature))}


def charges() -> list[dict[str, Any]]:
    """What one receipt may charge under some terms (marketplace/pricing.py)."""
    cases = [(registry_pb2.PRICE_UNIT_CALL, 800_000, 0, {}),
             (registry_pb2.PRICE_UNIT_UNIT, 2_500, 0, {"units": 7}),
             (registry_pb2.PRICE_UNIT_1K_TOKENS, 150, 600, {"input_tokens": 1234,
                                                            "output_tokens": 77}),
             (registry_pb2.PRICE_UNIT_1K_TOKENS, 3, 1, {"input_tokens": 1,
                                                        "output_tokens": 0})]
    found = []
    for unit, price, output_price, usage in cases:
        terms = agreement_pb2.Terms(unit=unit, unit_price_atomic=price,
                                    output_unit_price_atomic=output_price)
        found.append({"unit": registry_pb2.PriceUnit.Name(unit), "unit_price_atomic": str(price),
                      "output_unit_price_atomic": str(output_price),
                      **{name: value for name, value in usage.items()},
                      "charged_atomic": str(pricing.charge_atomic(terms, **usage))})
    return found


def invalid(agreed: dict[str, Any], made: list[dict[str, Any]]) -> dict[str, Any]:
    """Near misses every implementation must refuse, each with what is wrong."""
    body = bytes.fromhex(agreed["body_hex"])
    tampered = body.replace(b"rfq-0001", b"rfq-0002")
    vouchers = []
    for why, index, cumulative, word in (
            ("forged word", 1, 800_000, hashlib.sha256(b"not the buyer's").digest()),
            ("cumulative is not index x link value", 2, 800_000, None),
            ("index past the chain", 21, 16_800_000, bytes(32))):
        voucher = agreement_pb2.Voucher.FromString(bytes.fromhex(made[index - 1]["voucher_hex"])) \
            if index <= len(made) else agreement_pb2.Voucher(agreement_id=agreed["agreement_id"])
        voucher.sequence, voucher.payword_index = index, index
        voucher.cumulative_atomic = cumulative
        if word is not None:
            voucher.payword = word
        vouchers.append({"why": why, "voucher_hex": _hex(voucher)})
    receipts = []
    for why, reason, n, change in (
            ("output does not match its hash", "INVALID_ARGUMENT", 3,
             {"output_json": '{"text": "WORD X"}'}),
            ("chain digest does not match the content", "INVALID_ARGUMENT", 4,
             {"charged_atomic": 1}),
            ("seller signature does not verify", "BAD_SIGNATURE", 16,
             {"seller_signature": bytes(64)})):
        receipt = agreement_pb2.Receipt.FromString(bytes.fromhex(made[n - 1]["receipt_hex"]))
        for name, value in change.items():
            setattr(receipt, name, value)
        receipts.append({"why": why, "reason": reason, "receipt_hex": _hex(receipt)})
    unlinked = [agreement_pb2.Receipt.FromString(bytes.fromhex(c["receipt_hex"])) for c in made]
    unlinked.pop(4)  # receipt 5 missing: 6 does not follow 4
    return {"agreement_body": {"why": "the body changed after it was signed",
                               "body_hex": tampered.hex()},
            "vouchers": vouchers, "receipts": receipts,
            "chain_without_receipt_5": [_hex(r) for r in unlinked]}


def build() -> dict[str, Any]:
    k = keys()
    messages, _rfq, offers = negotiation(k)
    chain = PaywordChain(QUANTITY, seed=PAYWORD_SEED)
    agreed, body = agreement(k, offers[-1], chain)
    agreement_id = agreed["agreement_id"]
    made, receipts, last = calls(k, agreement_id, body, chain)
    return {
        "about": "agentmarket wire protocol test vectors (PROTOCOL.md); keys for tests only",
        "version": 1,
        "keys": {role: {"seed_hex": SEEDS[role].hex(), "agent_id": key.agent_id}
                 for role, key in k.items()},
        "request_signature": request_signature(k),
        "negotiation": messages,
        "payword": payword(chain),
        "agreement": agreed,
        "voucher_metadata_key": VOUCHER_METADATA_KEY,
        "calls": made,
        "receipt_sign_every": ag.RECEIPT_SIGN_EVERY,
        **settlement(k, agreement_id, last, receipts),
        "charges": charges(),
        "mandate": mandate(k),
        "invalid": invalid(agreed, made),
    }


def main() -> None:
    PATH.write_text(json.dumps(build(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
