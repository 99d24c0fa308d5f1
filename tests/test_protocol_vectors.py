"""The wire protocol's test vectors (tests/vectors/protocol.json, PROTOCOL.md) are what the
implementation makes, and the implementation's own checks accept them: the request signature
by the server's authentication, the negotiation by the protocol's rules, the agreement, the
vouchers by the seller's payment gate and the marketplace's redeem checks, the receipt chain,
and the signatures of finish, confirm, dispute, verdict and resolution."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from google.protobuf.json_format import MessageToDict

from agents.payments import PaymentGate
from agents.v1 import agent_pb2
from marketplace import agreements as ag
from marketplace import pricing
from marketplace.auth import SIGNATURE_KEY, AuthServerInterceptor, signed_message
from marketplace.errors import AgentmarketError, BadSignature
from marketplace.identity import AgentKey, verify
from marketplace.negotiation import Negotiation
from marketplace.payword import PaywordChain, verify_word
from marketplace.settlement_checks import check_receipts, check_voucher
from marketplace.v1 import (
    agreement_pb2,
    dispute_pb2,
    registry_pb2,
    settlement_pb2,
    verifier_pb2,
)
from tests.vectors.make_protocol_vectors import T0_MS, build
from wallets.errors import InvalidSignature
from wallets.mandates import REVOKE_CONTEXT, MandateTerms, check_grant, mandate_id
from wallets.models import Balance
from wallets.v1 import wallet_pb2

ROOT = Path(__file__).resolve().parent.parent
V = json.loads((ROOT / "tests/vectors/protocol.json").read_text())
KEYS = {role: k["agent_id"] for role, k in V["keys"].items()}


def _fields(message) -> dict:
    return MessageToDict(message, preserving_proto_field_name=True)


def _body() -> agreement_pb2.AgreementBody:
    return agreement_pb2.AgreementBody.FromString(bytes.fromhex(V["agreement"]["body_hex"]))


def test_the_file_is_what_the_builder_makes():
    assert build() == V, "rebuild it: python -m tests.vectors.make_protocol_vectors"


def test_the_keys_are_their_seeds():
    for k in V["keys"].values():
        assert AgentKey.from_seed(bytes.fromhex(k["seed_hex"])).agent_id == k["agent_id"]


def test_the_request_signature_passes_the_servers_check():
    r = V["request_signature"]
    body = bytes.fromhex(r["request_hex"])
    assert _fields(registry_pb2.DiscoverRequest.FromString(body)) == r["request"]
    assert signed_message(r["method"], body, r["timestamp_ms"], r["nonce"]).decode() == \
        r["signed_text"]
    metadata = {**r["metadata"], SIGNATURE_KEY: bytes.fromhex(r["metadata"][SIGNATURE_KEY])}
    auth = AuthServerInterceptor(clock_ms=lambda: r["timestamp_ms"] + 59_000)
    assert auth._check(r["method"], metadata, body) == KEYS["buyer"]
    from wallets.errors import Unauthenticated

    with pytest.raises(Unauthenticated, match="does not verify"):  # one byte changed
        AuthServerInterceptor(clock_ms=lambda: r["timestamp_ms"])._check(
            r["method"], metadata, body[:-1] + bytes([body[-1] ^ 1]))


def test_the_negotiation_follows_the_rules():
    messages = [agent_pb2.NegotiationMessage.FromString(bytes.fromhex(m["message_hex"]))
                for m in V["negotiation"]]
    for message, vector in zip(messages, V["negotiation"], strict=True):
        assert _fields(message) == vector["message"]
    protocol = Negotiation.start(messages[0].rfq, V["negotiation"][0]["at_ms"])
    for message, vector in zip(messages[1:], V["negotiation"][1:], strict=True):
        assert message.offer.from_id == KEYS[vector["from"]]
        protocol.offer(message.offer, vector["at_ms"])
    accept = agent_pb2.NegotiationMessage.FromString(
        bytes.fromhex(V["agreement"]["acceptance_message_hex"]))
    body = ag.parse_body(accept.agreement)
    ag.check_signatures(accept.agreement, body, require_seller=False)
    protocol.accept(body, body.created_at_ms)
    assert protocol.status == "agreed"


def test_the_agreement_id_and_signatures():
    a = V["agreement"]
    countersigned = agent_pb2.NegotiationMessage.FromString(
        bytes.fromhex(a["countersigned_message_hex"])).agreement
    assert countersigned.body.hex() == a["body_hex"]
    assert countersigned.buyer_signature.hex() == a["buyer_signature_hex"]
    assert countersigned.seller_signature.hex() == a["seller_signature_hex"]
    body = ag.parse_body(countersigned)
    ag.check_signatures(countersigned, body)
    assert _fields(body) == a["body"]
    assert ag.agreement_id(countersigned.body) == a["agreement_id"]
    assert body.payword_length * body.link_value_atomic >= body.terms.max_total_atomic
    opened = settlement_pb2.OpenEscrowRequest.FromString(
        bytes.fromhex(a["open_escrow_request_hex"]))
    assert opened.agreement == countersigned
    forged = agreement_pb2.SignedAgreement()
    forged.CopyFrom(countersigned)
    forged.body = countersigned.body.replace(b"rfq-0001", b"rfq-0002")
    with pytest.raises(BadSignature):
        ag.check_signatures(forged, ag.parse_body(forged))


def test_the_payword_chain():
    p, body = V["payword"], _body()
    chain = PaywordChain(p["length"], seed=bytes.fromhex(p["seed_hex"]))
    assert [chain.word(i).hex() for i in range(p["length"] + 1)] == p["words_hex"]
    assert bytes.fromhex(p["words_hex"][0]) == body.payword_root
    for i, word in enumerate(p["words_hex"]):
        assert verify_word(bytes.fromhex(word), i, body.payword_root, 0)


def _before_the_deadline() -> int:
    """The vectors' calls are made at fixed times: the gate checks them at that time."""
    return int(V["agreement"]["body"]["terms"]["completion_deadline_ms"]) - 1


def test_the_calls_pass_the_sellers_gate_and_the_chain_checks():
    body, agreement_id = _body(), V["agreement"]["agreement_id"]
    gate = PaymentGate(clock_ms=_before_the_deadline)
    gate.open(agreement_id, body)
    receipts = []
    for n, call in enumerate(V["calls"], start=1):
        voucher = agreement_pb2.Voucher.FromString(bytes.fromhex(call["voucher_hex"]))
        assert _fields(voucher) == call["voucher"]
        assert voucher.payword.hex() == V["payword"]["words_hex"][n]
        request = agent_pb2.InvokeRequest.FromString(bytes.fromhex(call["request_hex"]))
        admission = gate.admit(voucher, agreement_id, body.terms.unit_price_atomic,
                               call_id=request.call_id, fresh_word_required=True)
        receipt = agreement_pb2.Receipt.FromString(bytes.fromhex(call["receipt_hex"]))
        assert _fields(receipt) == call["receipt"]
        assert ag.receipt_message(receipt).decode() == call["receipt_text"]
        assert ag.chain_message(receipt).decode() == call["chain_text"]
        assert call["signed"] == (n % V["receipt_sign_every"] == 0) == bool(
            receipt.seller_signature)
        ag.check_receipt(receipt, KEYS["seller"])
        assert receipt.charged_atomic == pricing.charge_atomic(body.terms)
        unsigned = ag.new_receipt(agreement_id, admission.sequence, receipt.output_json,
                                  receipt.charged_atomic)
        gate.complete(agreement_id, admission, unsigned, lambda chained: chained)
        assert unsigned.chain_sha256 == receipt.chain_sha256  # the same chain, recomputed
        receipts.append(receipt)
    assert ag.check_receipt_chain(receipts, KEYS["seller"], complete=True) == receipts
    replay = agreement_pb2.Voucher.FromString(bytes.fromhex(V["calls"][-1]["voucher_hex"]))
    from agents.errors import InvalidVoucher

    with pytest.raises(InvalidVoucher, match="replay"):
        gate.admit(replay, agreement_id, body.terms.unit_price_atomic)


def test_the_redeem_passes_the_marketplaces_checks():
    body, agreement_id = _body(), V["agreement"]["agreement_id"]
    request = settlement_pb2.RedeemRequest.FromString(bytes.fromhex(V["redeem"]["request_hex"]))
    receipts = list(request.receipts)
    assert ag.receipts_digest(receipts) == V["redeem"]["receipts_digest"]
    assert ag.redeem_message(agreement_id, request.voucher, receipts).decode() == \
        V["redeem"]["signed_text"]
    assert verify(KEYS["seller"], V["redeem"]["signed_text"].encode(), request.seller_signature)
    row = SimpleNamespace(agreement_id=agreement_id, held_atomic=body.terms.max_total_atomic,
                          seller_id=KEYS["seller"])
    assert check_voucher(row, body, request.voucher) == \
        len(receipts) * body.link_value_atomic
    check_receipts(row, body.terms, request.voucher, receipts)


def test_the_buyers_finish_confirm_and_dispute_signatures():
    agreement_id, buyer = V["agreement"]["agreement_id"], KEYS["buyer"]
    finish = agent_pb2.FinishRequest.FromString(bytes.fromhex(V["finish"]["request_hex"]))
    confirm = settlement_pb2.ConfirmRequest.FromString(bytes.fromhex(V["confirm"]["request_hex"]))
    for request, vector, action in ((finish, V["finish"], "finish"),
                                    (confirm, V["confirm"], "confirm")):
        text = ag.request_message(action, agreement_id)
        assert text.decode() == vector["signed_text"]
        assert verify(buyer, text, request.buyer_signature)
    dispute = settlement_pb2.DisputeRequest.FromString(bytes.fromhex(V["dispute"]["request_hex"]))
    evidence = list(dispute.evidence)
    assert [_fields(e) for e in evidence] == V["dispute"]["evidence"]
    assert ag.evidence_digest(evidence) == V["dispute"]["evidence_digest"]
    text = ag.dispute_message(agreement_id, dispute.reason, evidence)
    assert text.decode() == V["dispute"]["signed_text"]
    assert verify(buyer, text, dispute.buyer_signature)


def test_the_verdict_and_the_resolution_signatures():
    agreement_id = V["agreement"]["agreement_id"]
    receipts = [agreement_pb2.Receipt.FromString(bytes.fromhex(V["calls"][s - 1]["receipt_hex"]))
                for s in V["verdict"]["receipt_sequences"]]
    verdict = verifier_pb2.VerifyResponse.FromString(bytes.fromhex(V["verdict"]["response_hex"]))
    assert ag.receipts_digest(receipts) == V["verdict"]["receipts_digest"]
    text = ag.verdict_message(agreement_id, receipts, list(verdict.verdicts))
    assert text.decode() == V["verdict"]["signed_text"]
    assert verify(KEYS["verifier"], text, verdict.verifier_signature)
    resolve = dispute_pb2.ResolveDisputeRequest.FromString(
        bytes.fromhex(V["resolve"]["request_hex"]))
    text = ag.resolve_message(agreement_id, resolve.outcome, resolve.seller_atomic, resolve.note)
    assert text.decode() == V["resolve"]["signed_text"]
    assert resolve.arbiter_id == KEYS["arbiter"]
    assert verify(KEYS["arbiter"], text, resolve.arbiter_signature)


def test_the_charges():
    for case in V["charges"]:
        terms = agreement_pb2.Terms(unit=registry_pb2.PriceUnit.Value(case["unit"]),
                                    unit_price_atomic=int(case["unit_price_atomic"]),
                                    output_unit_price_atomic=int(case["output_unit_price_atomic"]))
        usage = {k: case[k] for k in ("units", "input_tokens", "output_tokens") if k in case}
        assert str(pricing.charge_atomic(terms, **usage)) == case["charged_atomic"]


def test_the_mandate_passes_the_wallets_grant_check():
    m, buyer = V["mandate"], KEYS["buyer"]
    data = bytes.fromhex(m["terms_hex"])
    terms = MandateTerms.from_bytes(data)
    assert terms.to_bytes() == data and _fields(wallet_pb2.MandateTerms.FromString(data)) == \
        m["terms"]
    assert mandate_id(data) == m["mandate_id"]
    wallet = Balance(terms.account_id, buyer, "USD", "wallet", 0, 0, 0, 0, 0)
    check_grant(wallet, terms, data, bytes.fromhex(m["owner_signature_hex"]), T0_MS)
    with pytest.raises(InvalidSignature):
        check_grant(wallet, terms, data, bytes.fromhex(m["revoke_signature_hex"]), T0_MS)
    assert verify(buyer, REVOKE_CONTEXT + m["mandate_id"].encode(),
                  bytes.fromhex(m["revoke_signature_hex"]))
    grant = wallet_pb2.GrantMandateRequest.FromString(bytes.fromhex(m["grant_request_hex"]))
    assert grant.terms == data and grant.owner_signature.hex() == m["owner_signature_hex"]


def test_the_near_misses_are_refused():
    bad, body, agreement_id = V["invalid"], _body(), V["agreement"]["agreement_id"]
    signed = agreement_pb2.SignedAgreement(
        body=bytes.fromhex(bad["agreement_body"]["body_hex"]),
        buyer_signature=bytes.fromhex(V["agreement"]["buyer_signature_hex"]),
        seller_signature=bytes.fromhex(V["agreement"]["seller_signature_hex"]))
    with pytest.raises(BadSignature):
        ag.check_signatures(signed, ag.parse_body(signed))
    row = SimpleNamespace(agreement_id=agreement_id, held_atomic=body.terms.max_total_atomic)
    for case in bad["vouchers"]:  # refused at redeem, and by a seller's gate
        voucher = agreement_pb2.Voucher.FromString(bytes.fromhex(case["voucher_hex"]))
        with pytest.raises(AgentmarketError) as refused:
            check_voucher(row, body, voucher)
        assert refused.value.reason == "INVALID_VOUCHER", case["why"]
        gate = PaymentGate(clock_ms=_before_the_deadline)
        gate.open(agreement_id, body)
        with pytest.raises(AgentmarketError) as refused:
            gate.admit(voucher, agreement_id, body.terms.unit_price_atomic)
        assert refused.value.reason in ("INVALID_VOUCHER", "BUDGET_EXCEEDED"), case["why"]
    for case in bad["receipts"]:
        receipt = agreement_pb2.Receipt.FromString(bytes.fromhex(case["receipt_hex"]))
        with pytest.raises(AgentmarketError) as refused:
            ag.check_receipt(receipt, KEYS["seller"])
        assert refused.value.reason == case["reason"], case["why"]
    chain = [agreement_pb2.Receipt.FromString(bytes.fromhex(r))
             for r in bad["chain_without_receipt_5"]]
    with pytest.raises(AgentmarketError, match="not whole"):
        ag.check_receipt_chain(chain, KEYS["seller"], complete=True)


# ---- PROTOCOL.md says what the implementation does ------------------------------------------


def _template(action: str) -> str:
    """The signed-text template PROTOCOL.md gives for `action` (table cells escape `|`)."""
    found = re.search(rf"^{re.escape(action)}\|<[^`\n]*|`{re.escape(action)}\\\|<[^`]*`",
                      (ROOT / "PROTOCOL.md").read_text(), re.M)
    assert found, f"PROTOCOL.md gives no template for {action}"
    return found.group(0).strip("`").replace("\\|", "|")


def _fill(template: str, values: dict[str, object]) -> str:
    return re.sub(r"<([^>]+)>", lambda m: str(values[m.group(1)]), template)


def test_protocol_md_templates_make_the_signed_texts():
    agreement_id = V["agreement"]["agreement_id"]
    receipt = agreement_pb2.Receipt.FromString(bytes.fromhex(V["calls"][15]["receipt_hex"]))
    fields = {f.name: getattr(receipt, f.name) for f in receipt.DESCRIPTOR.fields}
    assert _fill(_template("receipt"), fields) == V["calls"][15]["receipt_text"]
    assert _fill(_template("receipt-chain"), {
        **fields, "chain_sha256 as lowercase hex": receipt.chain_sha256.hex()}) == \
        V["calls"][15]["chain_text"]
    redeem = settlement_pb2.RedeemRequest.FromString(bytes.fromhex(V["redeem"]["request_hex"]))
    resolve = dispute_pb2.ResolveDisputeRequest.FromString(
        bytes.fromhex(V["resolve"]["request_hex"]))
    cases = {
        "finish": ({}, V["finish"]), "confirm": ({}, V["confirm"]),
        "dispute": ({"reason": V["dispute"]["reason"],
                     "evidence digest": V["dispute"]["evidence_digest"]}, V["dispute"]),
        "redeem": ({"voucher.sequence": redeem.voucher.sequence,
                    "voucher.payword_index": redeem.voucher.payword_index,
                    "hex voucher.payword": redeem.voucher.payword.hex(),
                    "receipts digest": V["redeem"]["receipts_digest"]}, V["redeem"]),
        "resolve": ({"outcome number": resolve.outcome, "seller_atomic": resolve.seller_atomic,
                     "note": resolve.note}, V["resolve"]),
    }
    for action, (values, vector) in cases.items():
        assert _fill(_template(action), {"agreement_id": agreement_id, **values}) == \
            vector["signed_text"], action


def test_protocol_md_names_the_implementations_keys_and_limits():
    from agents._serving import STOP_REASON_KEY
    from agents.payments import VOUCHER_METADATA_KEY
    from marketplace.auth import AGENT_KEY, NONCE_KEY, TIMESTAMP_KEY
    from wallets.grpc_errors import ERROR_DOMAIN

    text = (ROOT / "PROTOCOL.md").read_text()
    for name in (AGENT_KEY, TIMESTAMP_KEY, NONCE_KEY, SIGNATURE_KEY, VOUCHER_METADATA_KEY,
                 STOP_REASON_KEY, ERROR_DOMAIN):
        assert f"`{name}`" in text, name
    assert f"multiple of {ag.RECEIPT_SIGN_EVERY}" in text
    assert "`agreement|`" in text and "b\"agreement|\" + body" in text
