"""Agreements, vouchers and receipts: the bytes both parties sign and how each is checked.

The agreement id is the hex SHA-256 of the serialized AgreementBody; parties sign those exact
bytes, which travel unchanged, so no canonical re-encoding is ever needed.
"""

from __future__ import annotations

import hashlib
import json

from google.protobuf.message import DecodeError

from marketplace.errors import BadSignature, InvalidArgument
from marketplace.identity import AgentKey, check_agent_id, verify
from marketplace.payword import MAX_CHAIN_LENGTH
from marketplace.v1 import agreement_pb2, registry_pb2
from wallets.currencies import MAX_AMOUNT_ATOMIC, currency

MAX_OUTPUT_BYTES = 64 * 1024


def agreement_id(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def parse_body(signed: agreement_pb2.SignedAgreement) -> agreement_pb2.AgreementBody:
    """Decode and check an agreement body's fields (not its signatures)."""
    body = agreement_pb2.AgreementBody()
    try:
        body.ParseFromString(signed.body)
    except DecodeError as error:
        raise InvalidArgument(f"agreement body is not a valid AgreementBody: {error}") from None
    check_agent_id(body.buyer_id, "buyer_id")
    check_agent_id(body.seller_id, "seller_id")
    if body.buyer_id == body.seller_id:
        raise InvalidArgument("buyer and seller must be different agents")
    check_terms(body.terms)
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
    terms.currency = currency(terms.currency).code
    if not terms.skill:
        raise InvalidArgument("terms.skill is required")
    if not 0 < terms.unit_price_atomic <= MAX_AMOUNT_ATOMIC:
        raise InvalidArgument("terms.unit_price_atomic must be positive")
    if not 0 < terms.max_total_atomic <= MAX_AMOUNT_ATOMIC:
        raise InvalidArgument("terms.max_total_atomic must be positive")
    if terms.unit == registry_pb2.PRICE_UNIT_UNSPECIFIED:
        raise InvalidArgument("terms.unit is required")
    if terms.verification == registry_pb2.VERIFICATION_METHOD_UNSPECIFIED:
        raise InvalidArgument("terms.verification is required")
    return terms


def sign_as_buyer(signed: agreement_pb2.SignedAgreement, key: AgentKey) -> None:
    signed.buyer_signature = key.sign(b"agreement|" + signed.body)


def sign_as_seller(signed: agreement_pb2.SignedAgreement, key: AgentKey) -> None:
    signed.seller_signature = key.sign(b"agreement|" + signed.body)


def check_signatures(signed: agreement_pb2.SignedAgreement,
                     body: agreement_pb2.AgreementBody, *, require_seller: bool = True) -> None:
    if not verify(body.buyer_id, b"agreement|" + signed.body, signed.buyer_signature):
        raise BadSignature("the agreement is not signed by its buyer")
    if require_seller and not verify(
        body.seller_id, b"agreement|" + signed.body, signed.seller_signature
    ):
        raise BadSignature("the agreement is not signed by its seller")


def receipt_message(receipt: agreement_pb2.Receipt) -> bytes:
    return (f"receipt|{receipt.agreement_id}|{receipt.sequence}|{receipt.output_sha256}|"
            f"{receipt.charged_atomic}").encode()


def make_receipt(key: AgentKey, agreement: str, sequence: int, output_json: str,
                 charged_atomic: int) -> agreement_pb2.Receipt:
    """The seller's signed commitment to one output and its charge."""
    receipt = agreement_pb2.Receipt(
        agreement_id=agreement, sequence=sequence, output_json=output_json,
        output_sha256=hashlib.sha256(output_json.encode()).hexdigest(),
        charged_atomic=charged_atomic,
    )
    receipt.seller_signature = key.sign(receipt_message(receipt))
    return receipt


def check_receipt(receipt: agreement_pb2.Receipt, seller_id: str) -> None:
    if len(receipt.output_json.encode()) > MAX_OUTPUT_BYTES:
        raise InvalidArgument(f"receipt output is larger than {MAX_OUTPUT_BYTES} bytes")
    if hashlib.sha256(receipt.output_json.encode()).hexdigest() != receipt.output_sha256:
        raise InvalidArgument(f"receipt {receipt.sequence}: output does not match its hash")
    if not verify(seller_id, receipt_message(receipt), receipt.seller_signature):
        raise BadSignature(f"receipt {receipt.sequence} is not signed by the seller")


def request_message(action: str, *parts: str) -> bytes:
    """What a party signs to confirm or dispute: 'confirm|<agreement id>' and the like."""
    return "|".join([action, *parts]).encode()


def terms_json(terms: agreement_pb2.Terms) -> str:
    return json.dumps({
        "skill": terms.skill, "unit_price_atomic": terms.unit_price_atomic,
        "currency": terms.currency, "max_total_atomic": terms.max_total_atomic,
    })
