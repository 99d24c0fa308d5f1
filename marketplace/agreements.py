"""Agreements, vouchers and receipts: the bytes both parties sign and how each is checked.

The agreement id is the hex SHA-256 of the serialized AgreementBody; parties sign those exact
bytes, which travel unchanged, so no canonical re-encoding is ever needed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re

from google.protobuf.message import DecodeError

from marketplace.errors import BadSignature, InvalidArgument
from marketplace.identity import AgentKey, check_agent_id, verify
from marketplace.payword import MAX_CHAIN_LENGTH
from marketplace.v1 import agreement_pb2, registry_pb2, settlement_pb2, verifier_pb2
from wallets.currencies import MAX_AMOUNT_ATOMIC, currency

# What one redeem carries, and so what a seller may answer and charge (the seller enforces
# these before it books a charge, `agents.payments.PaymentGate`; Redeem refuses past them):
MAX_OUTPUT_BYTES = 64 * 1024  # one receipt's output: UTF-8 bytes of its JSON text
MAX_RECEIPTS = 10_000  # receipts in one agreement's chain
MAX_REDEEM_RECEIPTS_BYTES = 3 * 1024 * 1024  # the serialized receipts of one redeem
RECEIPT_FRAMING_BYTES = 8  # a repeated field's tag and length, at most, around each receipt
MAX_DISPUTE_WINDOW_S = 7 * 24 * 3600
MAX_COMPLETION_S = 21 * 24 * 3600  # + dispute window + grace stays within a hold's 30 days
MAX_RUBRIC = 4000
MAX_RFQ_ID_CHARS = 64  # an RFQ's id (`marketplace.negotiation`), "list:" ones included
MAX_NONCE_BYTES = 64
# A whole body: its terms' rubric (4,000 characters, up to 16,000 bytes of UTF-8) and a few
# ids fit many times over.
MAX_BODY_BYTES = 32 * 1024
_CHECKER_NAME = re.compile(r"^[a-z0-9_.-]{1,64}\Z")
_ENDPOINT = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>[0-9]{1,5})")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def check_endpoint(endpoint: str, field: str = "endpoint") -> None:
    """An endpoint (a listing's, a verifier's) is what buyers and the node dial: a hostname, an
    IPv4 address or a bracketed IPv6 one (`[::1]:443`), and a port 1..65535. One rule where
    each enters, so no party is handed an address nobody can dial."""
    match = _ENDPOINT.fullmatch(endpoint) if len(endpoint) <= 255 else None
    if match is None or not 1 <= int(match["port"]) <= 65535 or not _host_ok(match):
        raise InvalidArgument(f"{field} {endpoint[:80]!r} must be host:port (a hostname, IPv4 "
                              "address or [IPv6] address, and a port 1..65535)")


def _host_ok(match: re.Match[str]) -> bool:
    try:
        if match["ipv6"] is not None:
            ipaddress.IPv6Address(match["ipv6"])
        elif match["host"].replace(".", "").isdigit():
            ipaddress.IPv4Address(match["host"])
        else:
            return all(_LABEL.fullmatch(label) for label in match["host"].split("."))
    except ValueError:
        return False
    return True


def agreement_id(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def parse_body(signed: agreement_pb2.SignedAgreement) -> agreement_pb2.AgreementBody:
    """Decode and check an agreement body's fields (not its signatures)."""
    if len(signed.body) > MAX_BODY_BYTES:  # a seller keeps what it countersigns
        raise InvalidArgument(f"an agreement body is at most {MAX_BODY_BYTES} bytes")
    body = agreement_pb2.AgreementBody()
    try:
        body.ParseFromString(signed.body)
    except DecodeError as error:
        raise InvalidArgument(f"agreement body is not a valid AgreementBody: {error}") from None
    check_agent_id(body.buyer_id, "buyer_id")
    check_agent_id(body.seller_id, "seller_id")
    if not 1 <= len(body.rfq_id) <= MAX_RFQ_ID_CHARS:
        raise InvalidArgument(f"rfq_id must be 1..{MAX_RFQ_ID_CHARS} characters")
    if len(body.nonce) > MAX_NONCE_BYTES:
        raise InvalidArgument(f"nonce is at most {MAX_NONCE_BYTES} bytes")
    if body.buyer_id == body.seller_id:
        raise InvalidArgument("buyer and seller must be different agents")
    check_terms(body.terms)
    if body.terms.HasField("verifier") and body.terms.verifier.agent_id in (body.buyer_id,
                                                                            body.seller_id):
        raise InvalidArgument("the verifier must be neither the buyer nor the seller")
    if len(body.payword_root) != 32:
        raise InvalidArgument("payword_root must be 32 bytes")
    if not 1 <= body.payword_length <= MAX_CHAIN_LENGTH:
        raise InvalidArgument(f"payword_length must be 1..{MAX_CHAIN_LENGTH}")
    if body.link_value_atomic <= 0:
        raise InvalidArgument("link_value_atomic must be positive")
    if body.payword_length * body.link_value_atomic < body.terms.max_total_atomic:
        raise InvalidArgument("the payword chain cannot cover max_total_atomic")
    return body


def check_terms(terms: agreement_pb2.Terms) -> agreement_pb2.Terms:
    """Validate terms on their own (the currency code is normalised in place); whether they fit
    the seller's listing is checked at OpenEscrow."""
    terms.currency = currency(terms.currency).code
    if not terms.skill:
        raise InvalidArgument("terms.skill is required")
    if not 0 < terms.unit_price_atomic <= MAX_AMOUNT_ATOMIC:
        raise InvalidArgument("terms.unit_price_atomic must be positive")
    if not 0 < terms.max_total_atomic <= MAX_AMOUNT_ATOMIC:
        raise InvalidArgument("terms.max_total_atomic must be positive")
    if terms.unit == registry_pb2.PRICE_UNIT_UNSPECIFIED:
        raise InvalidArgument("terms.unit is required")
    if not 0 <= terms.output_unit_price_atomic <= MAX_AMOUNT_ATOMIC or (
            terms.output_unit_price_atomic and terms.unit != registry_pb2.PRICE_UNIT_1K_TOKENS):
        raise InvalidArgument("output_unit_price_atomic is for token terms, 0..2**62")
    if terms.verification == registry_pb2.VERIFICATION_METHOD_UNSPECIFIED:
        raise InvalidArgument("terms.verification is required")
    if terms.dispute_window_s > MAX_DISPUTE_WINDOW_S:
        raise InvalidArgument(f"dispute_window_s is at most {MAX_DISPUTE_WINDOW_S}")
    _check_method_terms(terms)
    return terms


def _check_method_terms(terms: agreement_pb2.Terms) -> None:
    """The method's own parameters are present when (and only when) it is chosen."""
    method = terms.verification
    if (method == registry_pb2.VERIFICATION_METHOD_CHECKER) != bool(terms.checker):
        raise InvalidArgument("terms.checker names the checker of CHECKER verification, only")
    if terms.checker and not _CHECKER_NAME.match(terms.checker):
        raise InvalidArgument("terms.checker must be 1..64 characters of [a-z0-9_.-]")
    if (method == registry_pb2.VERIFICATION_METHOD_LLM_JUDGE) != terms.HasField("judge"):
        raise InvalidArgument("terms.judge configures LLM_JUDGE verification, only")
    if terms.HasField("judge"):
        judge = terms.judge
        if not 1 <= len(judge.model) <= 128 or not 1 <= len(judge.rubric) <= MAX_RUBRIC:
            raise InvalidArgument(f"a judge needs a model and a rubric (<= {MAX_RUBRIC} chars)")
        if not 1 <= judge.pass_threshold_permille <= 1000:
            raise InvalidArgument("judge.pass_threshold_permille must be 1..1000")
    if (method == registry_pb2.VERIFICATION_METHOD_THIRD_PARTY) != terms.HasField("verifier"):
        raise InvalidArgument("terms.verifier configures THIRD_PARTY verification, only")
    if terms.HasField("verifier"):
        verifier = terms.verifier
        check_agent_id(verifier.agent_id, "verifier.agent_id")
        check_endpoint(verifier.endpoint, "verifier.endpoint")
        if not 0 <= verifier.fee_atomic < terms.max_total_atomic:
            raise InvalidArgument("verifier.fee_atomic must be 0 or more, below max_total")
        if len(verifier.instructions) > MAX_RUBRIC:
            raise InvalidArgument(f"verifier.instructions is longer than {MAX_RUBRIC}")


def sign_as_buyer(signed: agreement_pb2.SignedAgreement, key: AgentKey) -> None:
    signed.buyer_signature = key.sign(b"agreement|" + signed.body)


def sign_as_seller(signed: agreement_pb2.SignedAgreement, key: AgentKey) -> None:
    signed.seller_signature = key.sign(b"agreement|" + signed.body)


def check_signatures(signed: agreement_pb2.SignedAgreement,
                     body: agreement_pb2.AgreementBody, *, require_seller: bool = True,
                     buyer_signed_here: bool = False) -> None:
    """`buyer_signed_here`: the caller is the buyer and compared the body and its signature
    with the ones it made, so only the seller's signature is checked."""
    if not buyer_signed_here and not verify(body.buyer_id, b"agreement|" + signed.body,
                                            signed.buyer_signature):
        raise BadSignature("the agreement is not signed by its buyer")
    if require_seller and not verify(
        body.seller_id, b"agreement|" + signed.body, signed.seller_signature
    ):
        raise BadSignature("the agreement is not signed by its seller")


RECEIPT_SIGN_EVERY = 16  # the seller signs every 16th receipt of a chain
CHAIN_GENESIS = bytes(32)  # previous_sha256 of a chain's first receipt


def receipt_message(receipt: agreement_pb2.Receipt) -> bytes:
    return (f"receipt|{receipt.agreement_id}|{receipt.sequence}|{receipt.output_sha256}|"
            f"{receipt.charged_atomic}|{receipt.units}|{receipt.input_tokens}|"
            f"{receipt.output_tokens}").encode()


def chain_message(receipt: agreement_pb2.Receipt) -> bytes:
    """What a receipt's seller signature covers: its place in the chain and the chain's
    digest there (so, through the chain, every earlier receipt)."""
    return (f"receipt-chain|{receipt.agreement_id}|{receipt.chain_index}|"
            f"{receipt.chain_sha256.hex()}").encode()


def new_receipt(agreement: str, sequence: int, output_json: str, charged_atomic: int, *,
                units: int = 0, input_tokens: int = 0, output_tokens: int = 0
                ) -> agreement_pb2.Receipt:
    """A receipt not yet placed in its chain (`chain_receipt` does that)."""
    return agreement_pb2.Receipt(
        agreement_id=agreement, sequence=sequence, output_json=output_json,
        output_sha256=hashlib.sha256(output_json.encode()).hexdigest(),
        charged_atomic=charged_atomic, units=units, input_tokens=input_tokens,
        output_tokens=output_tokens)


def chain_receipt(receipt: agreement_pb2.Receipt, index: int, previous_sha256: bytes,
                  key: AgentKey | None) -> bytes:
    """Place `receipt` at `index` after the receipt whose digest is `previous_sha256`; sign it
    with `key` (None: unsigned, covered by a later signed receipt). Returns its digest."""
    receipt.chain_index = index
    receipt.previous_sha256 = previous_sha256
    receipt.chain_sha256 = hashlib.sha256(previous_sha256 + receipt_message(receipt)).digest()
    if key is not None:
        receipt.seller_signature = key.sign(chain_message(receipt))
    return receipt.chain_sha256


def make_receipt(key: AgentKey, agreement: str, sequence: int, output_json: str,
                 charged_atomic: int, *, units: int = 0, input_tokens: int = 0,
                 output_tokens: int = 0, chain_index: int = 1,
                 previous_sha256: bytes = CHAIN_GENESIS) -> agreement_pb2.Receipt:
    """A signed receipt at `chain_index` (one-receipt chains by default): the seller's
    commitment to one output, its metered usage and its charge."""
    receipt = new_receipt(agreement, sequence, output_json, charged_atomic, units=units,
                          input_tokens=input_tokens, output_tokens=output_tokens)
    chain_receipt(receipt, chain_index, previous_sha256, key)
    return receipt


def receipt_bytes(receipt: agreement_pb2.Receipt) -> int:
    """What a receipt adds to a redeem request (counted against MAX_REDEEM_RECEIPTS_BYTES)."""
    return receipt.ByteSize() + RECEIPT_FRAMING_BYTES


def check_receipt(receipt: agreement_pb2.Receipt, seller_id: str, *,
                  signature: bool = True) -> None:
    """One receipt on its own: size, output hash, chain digest, and (if it carries one and
    `signature`) the seller's signature. `check_receipt_chain` links receipts together."""
    if len(receipt.output_json.encode()) > MAX_OUTPUT_BYTES:
        raise InvalidArgument(f"receipt output is larger than {MAX_OUTPUT_BYTES} bytes")
    if hashlib.sha256(receipt.output_json.encode()).hexdigest() != receipt.output_sha256:
        raise InvalidArgument(f"receipt {receipt.sequence}: output does not match its hash")
    if receipt.chain_index < 1 or len(receipt.previous_sha256) != 32 or receipt.chain_sha256 \
            != hashlib.sha256(receipt.previous_sha256 + receipt_message(receipt)).digest():
        raise InvalidArgument(f"receipt {receipt.sequence}: its chain digest does not match "
                              "its content")
    if signature and receipt.seller_signature and not verify(
            seller_id, chain_message(receipt), receipt.seller_signature):
        raise BadSignature(f"receipt {receipt.sequence} is not signed by the seller")


def check_receipt_chain(receipts: list[agreement_pb2.Receipt], seller_id: str, *,
                        complete: bool, signed_every: bool = False
                        ) -> list[agreement_pb2.Receipt]:
    """Check each receipt and the links between neighbours; returns them in chain order.
    `complete`: they must be the whole chain 1..n (a redeem); otherwise gaps are allowed
    (a buyer holds only the answers it got) but neighbours must link. `signed_every`: every
    RECEIPT_SIGN_EVERY-th must carry the seller's signature (a buyer's evidence)."""
    ordered = sorted(receipts, key=lambda r: r.chain_index)
    previous: agreement_pb2.Receipt | None = None
    for position, receipt in enumerate(ordered, start=1):
        check_receipt(receipt, seller_id)
        if signed_every and receipt.chain_index % RECEIPT_SIGN_EVERY == 0 \
                and not receipt.seller_signature:
            raise BadSignature(f"receipt {receipt.chain_index} carries no seller signature "
                               f"(every {RECEIPT_SIGN_EVERY}th must)")
        if complete and receipt.chain_index != position:
            raise InvalidArgument(f"the receipt chain is not whole: receipt {position} is "
                                  "missing or repeated")
        if previous is not None and receipt.chain_index == previous.chain_index:
            raise InvalidArgument(f"two receipts claim chain position {receipt.chain_index}")
        linked = previous is not None and receipt.chain_index == previous.chain_index + 1
        if linked and receipt.previous_sha256 != previous.chain_sha256:  # type: ignore[union-attr]
            raise InvalidArgument(f"receipt {receipt.chain_index} does not follow receipt "
                                  f"{receipt.chain_index - 1} in the chain")
        if receipt.chain_index == 1 and receipt.previous_sha256 != CHAIN_GENESIS:
            raise InvalidArgument("the chain's first receipt must start from the genesis digest")
        previous = receipt
    return ordered


def receipts_digest(receipts: list[agreement_pb2.Receipt]) -> str:
    """One hex digest committing to exactly these receipts (their chain digests, in order)."""
    return hashlib.sha256(b"".join(r.chain_sha256 for r in receipts)).hexdigest()


def redeem_message(agreement: str, voucher: agreement_pb2.Voucher,
                   receipts: list[agreement_pb2.Receipt]) -> bytes:
    """What the seller signs to redeem: the voucher and exactly these receipts."""
    digest = receipts_digest(receipts)
    return (f"redeem|{agreement}|{voucher.sequence}|{voucher.payword_index}|"
            f"{voucher.payword.hex()}|{digest}").encode()


def signed_redeem(key: AgentKey, agreement: str, voucher: agreement_pb2.Voucher,
                  receipts: list[agreement_pb2.Receipt], idempotency_key: str
                  ) -> settlement_pb2.RedeemRequest:
    """A RedeemRequest signed by the seller's key."""
    return settlement_pb2.RedeemRequest(
        idempotency_key=idempotency_key, agreement_id=agreement, voucher=voucher,
        receipts=receipts, seller_signature=key.sign(redeem_message(agreement, voucher,
                                                                    receipts)))


def evidence_digest(evidence: list[settlement_pb2.Evidence]) -> str:
    hashed = hashlib.sha256()
    for item in evidence:
        for part in (item.kind.encode(), item.description.encode(), item.content):
            hashed.update(len(part).to_bytes(8, "big") + part)
    return hashed.hexdigest()


def dispute_message(agreement: str, reason: str,
                    evidence: list[settlement_pb2.Evidence]) -> bytes:
    return request_message("dispute", agreement, reason, evidence_digest(evidence))


def verdict_message(agreement: str, receipts: list[agreement_pb2.Receipt],
                    verdicts: list[verifier_pb2.ReceiptVerdict]) -> bytes:
    """What a third-party verifier signs: the receipts it judged (their digest, so a verdict
    cannot be passed off as one about other outputs) and its pass/fail for each, in order."""
    parts = "".join(f"{v.sequence}:{int(v.passed)}|" for v in verdicts)
    return f"verdict|{agreement}|{receipts_digest(receipts)}|{parts}".encode()


def resolve_message(agreement: str, outcome: int, seller_atomic: int, note: str) -> bytes:
    return request_message("resolve", agreement, str(outcome), str(seller_atomic), note)


def request_message(action: str, *parts: str) -> bytes:
    """What a party signs to confirm or dispute: 'confirm|<agreement id>' and the like."""
    return "|".join([action, *parts]).encode()


def terms_json(terms: agreement_pb2.Terms) -> str:
    return json.dumps({
        "skill": terms.skill, "unit_price_atomic": terms.unit_price_atomic,
        "currency": terms.currency, "max_total_atomic": terms.max_total_atomic,
    })
