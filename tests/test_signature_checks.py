"""Signatures checked once: what a party made itself or checked on the same request is not
verified again, and anything else still is."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import BaseModel

from agents import SellerAgent, per_call, skill
from agents._deal import countersigned_deal
from agents.errors import NegotiationFailed
from agents.v1 import agent_pb2
from marketplace import agreements as ag
from marketplace import identity
from marketplace.errors import BadSignature
from marketplace.identity import AgentKey
from marketplace.v1 import agreement_pb2


class Echoed(BaseModel):
    text: str


@skill(price=per_call("0.01", "USD"))
def echo(text: str) -> Echoed:
    """Echo."""
    return Echoed(text=text)


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The agent ids whose signatures were verified, in order."""
    seen: list[str] = []
    real = identity.verify

    def counted(agent_id: str, message: bytes, signature: bytes) -> bool:
        seen.append(agent_id)
        return real(agent_id, message, signature)

    monkeypatch.setattr(ag, "verify", counted)
    monkeypatch.setattr("agents._seller_redeems.verify", counted)
    return seen


def _signed(buyer: AgentKey, seller: AgentKey) -> tuple[agreement_pb2.SignedAgreement,
                                                        agreement_pb2.AgreementBody]:
    body = agreement_pb2.AgreementBody(buyer_id=buyer.agent_id, seller_id=seller.agent_id,
                                       payword_root=bytes(32), payword_length=10)
    signed = agreement_pb2.SignedAgreement(body=body.SerializeToString())
    ag.sign_as_buyer(signed, buyer)
    return signed, body


def _deal(signed: agreement_pb2.SignedAgreement, body: agreement_pb2.AgreementBody,
          countersigned: agreement_pb2.SignedAgreement):  # type: ignore[no-untyped-def]
    quote = SimpleNamespace(skill=SimpleNamespace(output_schema_json=""), rounds=2, tariff=None)
    chain = SimpleNamespace(seed=bytes(32))
    reply = agent_pb2.NegotiationMessage(agreement=countersigned)
    return countersigned_deal(quote, signed, body, chain, reply)  # type: ignore[arg-type]


def test_the_buyer_checks_only_the_sellers_signature_on_what_it_signed(verifications):
    buyer, seller = AgentKey.generate(), AgentKey.generate()
    signed, body = _signed(buyer, seller)
    countersigned = agreement_pb2.SignedAgreement()
    countersigned.CopyFrom(signed)
    ag.sign_as_seller(countersigned, seller)
    assert _deal(signed, body, countersigned).agreement == countersigned
    assert verifications == [seller.agent_id]


def test_a_countersign_that_swaps_the_buyers_signature_or_forges_the_sellers_is_refused():
    buyer, seller = AgentKey.generate(), AgentKey.generate()
    signed, body = _signed(buyer, seller)
    swapped = agreement_pb2.SignedAgreement()
    swapped.CopyFrom(signed)
    swapped.buyer_signature = seller.sign(b"agreement|" + signed.body)
    ag.sign_as_seller(swapped, seller)
    with pytest.raises(NegotiationFailed, match="buyer's signature"):
        _deal(signed, body, swapped)
    forged = agreement_pb2.SignedAgreement()
    forged.CopyFrom(signed)
    ag.sign_as_seller(forged, AgentKey.generate())
    with pytest.raises(BadSignature, match="seller"):
        _deal(signed, body, forged)


def test_a_finish_signature_is_verified_once_and_a_different_one_again(tmp_path: Path,
                                                                       verifications):
    seller = SellerAgent("echo", skills=[echo], marketplace="127.0.0.1:1",
                         journal=tmp_path / "journal.db")
    try:
        buyer = AgentKey.generate()
        body = agreement_pb2.AgreementBody(buyer_id=buyer.agent_id, seller_id=seller.agent_id)
        agreement_id = ag.agreement_id(body.SerializeToString())
        seller.gate.open(agreement_id, body)
        good = buyer.sign(ag.request_message("finish", agreement_id))
        assert seller.redeems.buyer_signed_finish(agreement_id, good)
        assert seller.redeems.buyer_signed_finish(agreement_id, good)  # access rule, then Finish
        assert len(verifications) == 1
        stranger = AgentKey.generate().sign(ag.request_message("finish", agreement_id))
        assert not seller.redeems.buyer_signed_finish(agreement_id, stranger)
        assert not seller.redeems.buyer_signed_finish(agreement_id, b"")
        assert len(verifications) == 3
        assert seller.redeems.buyer_signed_finish(agreement_id, good)
    finally:
        seller.stop(0)
