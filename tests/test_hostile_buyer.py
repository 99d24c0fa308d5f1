"""A buyer (or any key) working against a seller: finishing during a slow call, flooding
negotiations and list-price agreements, overflowing terms, buying hashing with far vouchers.
Each gets a clear refusal and costs the seller neither money nor service to other buyers."""

from __future__ import annotations

import functools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, per_call, skill
from agents import _strategy_host as strategy_host
from agents._strategy_host import MAX_NEGOTIATIONS_PER_BUYER, OFFER_TTL_MS
from agents.errors import AgreementEnded, InvalidArgument
from agents.payments import (
    MAX_FRESH_AGREEMENTS_PER_BUYER,
    VOUCHER_METADATA_KEY,
    paid_call_metadata,
)
from agents.v1 import agent_pb2, agent_pb2_grpc
from marketplace import agreements as ag
from marketplace.auth import signed_channel
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.payword import PaywordChain
from marketplace.v1 import agreement_pb2, registry_pb2
from tests.x402_market import books_balance
from wallets.grpc_errors import error_reason

RELEASE = threading.Event()  # lets the slow skills finish
STARTED = threading.Event()  # a slow skill is running


class Text(BaseModel):
    text: str


@skill(price=per_call("0.01", "USD"))
def slow(text: str) -> Text:
    """Runs until the test releases it (a long LLM call, say)."""
    STARTED.set()
    RELEASE.wait(10)
    return Text(text=text.upper())


@skill(price=per_call("0.01", "USD"))
def drip(text: str) -> Iterator[str]:
    """Streams a piece, then more only once released."""
    yield text
    STARTED.set()
    for _ in range(50):
        RELEASE.wait(10)
        yield "."
        time.sleep(0.01)


@pytest.fixture
def market(tmp_path: Path) -> Iterator[tuple[MarketplaceNode, SellerAgent, BuyerAgent]]:
    RELEASE.clear()
    STARTED.clear()
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            SellerAgent("target", skills=[slow, drip], marketplace=node.address,
                        server="threaded") as seller, \
            BuyerAgent("hostile", marketplace=node.address) as buyer:
        buyer.fund("1.00", "USD")
        # the redeem waits this long for running calls (5 s by default)
        seller.gate.begin_redeem = functools.partial(  # type: ignore[method-assign]
            seller.gate.begin_redeem, wait_s=0.3)
        yield node, seller, buyer
        RELEASE.set()


def _deal(buyer: BuyerAgent, *, funded: bool = False, hired: bool = False) -> Any:
    """An agreement for three calls of `slow` at the seller's price (the buyer's wallet funded
    first, the escrow opened after, when asked)."""
    if funded:
        buyer.fund("1.00", "USD")
    deal = buyer.negotiate(buyer.discover("slow"), "slow", quantity=3, budget="0.05",
                           currency="USD")
    if hired:
        buyer.hire(deal)
    return deal


def _in_thread(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = call()
        except Exception as error:  # the test looks at what the buyer got
            out["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_finishing_during_a_slow_call_gets_that_call_neither_charged_nor_answered(market):
    node, seller, buyer = market
    deal = buyer.negotiate(buyer.discover("slow"), "slow", quantity=3, budget="0.05",
                           currency="USD")
    before = buyer.balance("USD")
    buyer.hire(deal)
    thread, out = _in_thread(lambda: buyer.call(deal, {"text": "free work please"}))
    assert STARTED.wait(10)
    escrow = buyer.finish(deal, confirm=True)  # redeems without the running call
    RELEASE.set()
    thread.join(10)
    assert isinstance(out.get("error"), AgreementEnded), out  # no answer: the work stays
    assert "not charged and not answered" in out["error"].message
    assert escrow.captured_atomic == 0 and buyer.balance("USD") == before
    account = seller.gate._accounts[deal.agreement_id]
    assert account.charged_atomic == 0 and account.reserved_atomic == 0
    books_balance(node)


def test_finishing_during_a_stream_ends_it_billed_for_what_it_delivered(market):
    node, seller, buyer = market
    deal = buyer.negotiate(buyer.discover("drip"), "drip", quantity=3, budget="0.05",
                           currency="USD")
    buyer.hire(deal)
    stream = buyer.stream(deal, {"text": "start"})
    pieces = iter(stream)
    assert next(pieces) == "start"
    assert STARTED.wait(10)
    thread, out = _in_thread(lambda: buyer.finish(deal, confirm=True))
    deadline = time.monotonic() + 10
    while not seller.gate.closing(deal.agreement_id) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the redeem has begun: the stream ends at its next piece
    RELEASE.set()
    rest = list(pieces)
    thread.join(10)
    assert stream.stop_reason == "ended" and len(rest) <= 1
    end = stream.end
    assert end is not None and end.stop_reason == agent_pb2.STOP_REASON_ENDED
    escrow = out["result"]
    assert escrow.captured_atomic == end.usage.charged_atomic > 0  # in the redeem, paid
    assert seller.gate._accounts[deal.agreement_id].charged_atomic == escrow.captured_atomic
    books_balance(node)


# ---- negotiations ---------------------------------------------------------------------------

def _rfq(key: AgentKey, rfq_id: str = "", **fields: Any) -> agent_pb2.NegotiationMessage:
    values: dict[str, Any] = dict(
        rfq_id=rfq_id or uuid.uuid4().hex, buyer_id=key.agent_id, skill="slow",
        expected_quantity=1, max_budget_atomic=10**9, currency="USD",
        deadline_ms=time.time_ns() // 1_000_000 + 600_000, max_rounds=20,
        verification=registry_pb2.VERIFICATION_METHOD_SCHEMA)
    values.update(fields)
    return agent_pb2.NegotiationMessage(rfq=agreement_pb2.Rfq(**values))


def _stub(seller: SellerAgent, key: AgentKey) -> agent_pb2_grpc.AgentServiceStub:
    return agent_pb2_grpc.AgentServiceStub(signed_channel(seller.endpoint, key))


def _refusal(call: Any) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value.code().name, refused.value.details()


def test_an_rfq_whose_maximum_passes_the_largest_amount_is_invalid_and_keeps_no_slot(market):
    _node, seller, _buyer = market
    key = AgentKey.generate()
    stub = _stub(seller, key)
    for quantity in (2**62, 10**13, 5 * 10**12):
        code, details = _refusal(lambda q=quantity: stub.Negotiate(
            _rfq(key, expected_quantity=q), timeout=10))
        assert code == "INVALID_ARGUMENT" and "largest amount" in details
    assert not seller.negotiator.negotiations  # nothing kept for a refused RFQ


def test_an_rfq_naming_a_verification_method_no_one_defined_is_refused_as_not_offered(market):
    _node, seller, _buyer = market
    key = AgentKey.generate()
    code, details = _refusal(lambda: _stub(seller, key).Negotiate(_rfq(key, verification=99),
                                                                  timeout=10))
    assert code == "FAILED_PRECONDITION" and "does not offer verification 99" in details
    assert not seller.negotiator.negotiations


def test_one_key_cannot_take_the_negotiations_of_everyone(market, monkeypatch):
    _node, seller, buyer = market
    key = AgentKey.generate()
    stub = _stub(seller, key)
    for _ in range(MAX_NEGOTIATIONS_PER_BUYER):
        stub.Negotiate(_rfq(key), timeout=10)
    code, details = _refusal(lambda: stub.Negotiate(_rfq(key), timeout=10))
    assert code == "RESOURCE_EXHAUSTED" and "negotiations open here" in details
    # an honest buyer negotiates all the same, even with an rfq id the stranger uses
    taken = next(iter(seller.negotiator.negotiations))[1]
    honest = _stub(seller, buyer.key)
    assert honest.Negotiate(_rfq(buyer.key, taken), timeout=10).WhichOneof("kind") == "offer"
    deal = buyer.negotiate(buyer.discover("slow"), "slow", quantity=2, budget="0.05",
                           currency="USD")
    assert deal.body.seller_id == seller.agent_id
    # offers left unanswered lapse, and then make room for the same key
    later = time.time_ns() // 1_000_000 + 2 * OFFER_TTL_MS + 1000
    monkeypatch.setattr(strategy_host, "_now_ms", lambda: later)
    assert stub.Negotiate(_rfq(key, deadline_ms=later + 60_000), timeout=10).offer.round == 1
    assert sum(1 for buyer_id, _ in seller.negotiator.negotiations if buyer_id == key.agent_id) \
        == 1


def test_keys_made_by_the_thousand_cannot_lock_a_newcomer_out(market, monkeypatch):
    """Each key within its share, together they fill the table: a newcomer's RFQ takes the
    place of the oldest negotiation of whoever holds the most."""
    _node, seller, buyer = market
    monkeypatch.setattr(strategy_host, "MAX_OPEN_NEGOTIATIONS", 6)
    keys = [AgentKey.generate() for _ in range(3)]
    for key in keys:
        for _ in range(2):
            _stub(seller, key).Negotiate(_rfq(key), timeout=10)
    first = next(iter(seller.negotiator.negotiations))
    assert _stub(seller, buyer.key).Negotiate(_rfq(buyer.key, "newcomer"),
                                              timeout=10).WhichOneof("kind") == "offer"
    assert first not in seller.negotiator.negotiations  # the oldest of a largest holder went
    assert (buyer.key.agent_id, "newcomer") in seller.negotiator.negotiations
    assert len(seller.negotiator.negotiations) == 6
    # a holder with the most already is refused rather than evicting an equal
    code, details = _refusal(lambda: _stub(seller, keys[1]).Negotiate(_rfq(keys[1]),
                                                                      timeout=10))
    assert code == "FAILED_PRECONDITION" and "too many open negotiations" in details


# ---- agreements at the list price, and vouchers that cost hashing ----------------------------

PRICE = 10_000_000  # slow's list price, 0.01 USD in atomic units


def _listed(seller: SellerAgent, key: AgentKey, *, length: int = 10, nonce: bytes = b"n" * 16,
            now_ms: int | None = None) -> agreement_pb2.SignedAgreement:
    """An agreement at the list price, as the HTTP gateway's buyers make them."""
    now = now_ms or time.time_ns() // 1_000_000
    body = agreement_pb2.AgreementBody(
        rfq_id=f"list:{uuid.uuid4().hex[:16]}", buyer_id=key.agent_id,
        seller_id=seller.agent_id, seller_endpoint=seller.endpoint,
        terms=agreement_pb2.Terms(
            skill="slow", unit_price_atomic=PRICE, unit=registry_pb2.PRICE_UNIT_CALL,
            currency="USD", max_total_atomic=PRICE * length, dispute_window_s=0,
            verification=registry_pb2.VERIFICATION_METHOD_SCHEMA,
            completion_deadline_ms=now + 500_000),
        payword_root=PaywordChain(length).root, payword_length=length,
        link_value_atomic=PRICE, created_at_ms=now, nonce=nonce,
        offer_expires_at_ms=now + 25_000)
    signed = agreement_pb2.SignedAgreement(body=body.SerializeToString())
    ag.sign_as_buyer(signed, key)
    return signed


def _countersign(stub: agent_pb2_grpc.AgentServiceStub, signed: Any) -> Any:
    return stub.Negotiate(agent_pb2.NegotiationMessage(agreement=signed), timeout=10)


def test_one_key_cannot_make_a_seller_keep_agreements_without_end(market, monkeypatch):
    _node, seller, buyer = market
    key = AgentKey.generate()
    stub = _stub(seller, key)
    for nonce, said in ((b"x" * 100_000, "body is at most"), (b"x" * 65, "nonce is at most")):
        code, details = _refusal(lambda n=nonce: _countersign(stub, _listed(seller, key,
                                                                            nonce=n)))
        assert code == "INVALID_ARGUMENT" and said in details  # nothing kept for it
    signed = [_listed(seller, key) for _ in range(MAX_FRESH_AGREEMENTS_PER_BUYER + 1)]
    for one in signed[:-1]:
        assert _countersign(stub, one).WhichOneof("kind") == "agreement"
    code, details = _refusal(lambda: _countersign(stub, signed[-1]))
    assert code == "RESOURCE_EXHAUSTED" and "no call yet" in details
    kept = len(seller.gate.agreements())
    assert kept == len(seller.tariffs) == MAX_FRESH_AGREEMENTS_PER_BUYER  # nothing of it kept
    # another buyer is not affected
    other = _stub(seller, buyer.key)
    assert _countersign(other, _listed(seller, buyer.key)).WhichOneof("kind") == "agreement"
    # their offers lapse: room again; and at their deadline, never paid, they are forgotten
    lapsed = time.time_ns() // 1_000_000 + 30_000
    seller.gate.clock_ms = lambda: lapsed
    monkeypatch.setattr(strategy_host, "_now_ms", lambda: lapsed)
    assert _countersign(stub, _listed(seller, key, now_ms=lapsed)).WhichOneof("kind") \
        == "agreement"
    assert len(seller.gate.settled(lapsed + 600_000, 86_400_000)) == kept + 2


def test_a_signed_caller_pays_for_a_dear_voucher_check_from_its_own_bucket(market):
    _node, seller, _buyer = market
    # the buckets' clock stands still: no refill between the checks, however slow they run
    limiter = seller.calls.admitter.rate_limit.__self__.limits.limiter
    now = limiter.clock_s()
    limiter.clock_s = lambda: now
    key = AgentKey.generate()
    stub = _stub(seller, key)
    signed = _listed(seller, key, length=100_000)
    _countersign(stub, signed)
    agreement = ag.agreement_id(signed.body)
    codes = []
    for sequence in range(1, 6):  # each claims the chain's last word: 100,000 hashes
        voucher = agreement_pb2.Voucher(
            agreement_id=agreement, sequence=sequence, payword_index=100_000,
            cumulative_atomic=100_000 * PRICE, payword=uuid.uuid4().bytes * 2)
        code, _details = _refusal(lambda v=voucher, s=sequence: stub.Invoke(
            agent_pb2.InvokeRequest(agreement_id=agreement, input_json='{"text": "x"}',
                                    call_id=f"c{s}"),
            metadata=[(VOUCHER_METADATA_KEY, v.SerializeToString())], timeout=30))
        codes.append(code)
    # a burst of 1,000 tokens buys two checks of 391 tokens; then the caller waits
    assert codes[:2] == ["PERMISSION_DENIED"] * 2
    assert set(codes[2:]) == {"RESOURCE_EXHAUSTED"}


def test_a_declined_negotiation_frees_its_place_at_once(market):
    _node, seller, _buyer = market
    key = AgentKey.generate()
    stub = _stub(seller, key)
    for index in range(MAX_NEGOTIATIONS_PER_BUYER + 5):  # a gateway quoting many skills
        rfq = _rfq(key, f"quote-{index}")
        stub.Negotiate(rfq, timeout=10)
        stub.Negotiate(agent_pb2.NegotiationMessage(reject_reason="a quote only",
                                                    rfq_id=rfq.rfq.rfq_id), timeout=10)
    assert not seller.negotiator.negotiations
    other = AgentKey.generate()  # a stranger naming them ends nothing of anyone's
    stub.Negotiate(_rfq(key, "kept"), timeout=10)
    _stub(seller, other).Negotiate(agent_pb2.NegotiationMessage(
        reject_reason="not mine", rfq_id="kept"), timeout=10)
    assert list(seller.negotiator.negotiations) == [(key.agent_id, "kept")]


def test_a_call_id_in_the_sellers_own_names_is_refused_and_every_call_keeps_its_record(market):
    """Calls sent without a call id are named "#<voucher sequence>": a buyer naming a call so
    would share the record of a later unnamed one (one journal row for two answers)."""
    node, seller, buyer = market
    RELEASE.set()
    deal = buyer.negotiate(buyer.discover("slow"), "slow", quantity=3, budget="0.05",
                           currency="USD")
    buyer.hire(deal)
    with pytest.raises(InvalidArgument, match="may not begin with '#'"):
        buyer.call(deal, {"text": "a"}, call_id="#2")
    assert buyer.call(deal, {"text": "b"}) == {"text": "B"}
    assert buyer.call(deal, {"text": "c"}, call_id="mine") == {"text": "C"}
    account = seller.gate._accounts[deal.agreement_id]
    assert len(account.calls) == 2 and account.reserved_atomic == 0
    escrow = buyer.finish(deal, confirm=True)
    assert escrow.captured_atomic == 2 * deal.body.terms.unit_price_atomic
    books_balance(node)


def test_a_voucher_sequence_past_int64_is_invalid_and_changes_nothing(market):
    """Voucher.sequence is a uint64; the journal's columns stop at 2^63 - 1. Let through, such
    a voucher became the gate's latest (the buyer's next honest voucher a "replay") and its
    record failed the journal batch of other buyers' calls."""
    node, seller, buyer = market
    RELEASE.set()
    deal = buyer.negotiate(buyer.discover("slow"), "slow", quantity=3, budget="0.05",
                           currency="USD")
    buyer.hire(deal)
    assert buyer.call(deal, {"text": "a"}) == {"text": "A"}
    session = buyer.sessions[deal.agreement_id]
    forged = session.voucher(2**63, session.index + 1)
    code, message = _refusal(lambda: _stub(seller, buyer.key).Invoke(
        agent_pb2.InvokeRequest(agreement_id=deal.agreement_id, input_json='{"text": "b"}',
                                call_id="huge"),
        metadata=paid_call_metadata(forged), timeout=10))
    assert code == "INVALID_ARGUMENT" and "sequence" in message
    assert seller.gate._accounts[deal.agreement_id].sequence == 1
    assert buyer.call(deal, {"text": "c"}) == {"text": "C"}
    escrow = buyer.finish(deal, confirm=True)
    assert escrow.captured_atomic == 2 * deal.body.terms.unit_price_atomic
    books_balance(node)


@pytest.mark.parametrize("kind", ["threaded", "aio"])
def test_finishing_an_agreement_never_hired_again_and_again_spends_no_quota_of_the_seller(
        tmp_path: Path, kind: str):
    """Each Finish would make the seller redeem at the node under its own key: the node's
    refusal is remembered, so the repeats cost the seller no request of its quota there, and
    another buyer's finish goes through."""
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600,
                         rate_limit_per_s=5, rate_limit_burst=30) as node, \
            SellerAgent("s", skills=[slow], marketplace=node.address, server=kind), \
            BuyerAgent("victim", marketplace=node.address) as victim, \
            BuyerAgent("hostile", marketplace=node.address) as hostile:
        RELEASE.set()
        good = _deal(victim, funded=True, hired=True)
        assert victim.call(good, {"text": "hi"}) == {"text": "HI"}
        bad = _deal(hostile)  # countersigned, never hired
        stub = hostile._seller(bad.body.seller_endpoint)
        codes = set()
        for _ in range(40):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Finish(hostile._finish_request(bad, False), timeout=10)
            codes.add(refused.value.code())
        assert codes == {grpc.StatusCode.FAILED_PRECONDITION}
        escrow = victim.finish(good, confirm=True)
        assert escrow.captured_atomic == good.body.terms.unit_price_atomic
        books_balance(node)


@pytest.mark.parametrize("kind", ["threaded", "aio"])
def test_a_stranger_with_a_forged_voucher_cannot_make_the_seller_read_a_large_input(
        tmp_path: Path, kind: str):
    """Whoever learned an agreement id can send a megabyte of input with a made-up voucher:
    it is refused for its voucher before the input is parsed and checked against the skill's
    schema; the buyer's own large inputs are read and served."""
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            SellerAgent("s", skills=[slow], marketplace=node.address, server=kind) as seller, \
            BuyerAgent("buyer", marketplace=node.address) as buyer:
        RELEASE.set()
        deal = _deal(buyer, funded=True, hired=True)
        read = []
        checked_input = seller.calls.checked_input
        seller.calls.checked_input = lambda request: read.append(len(request.input_json)) \
            or checked_input(request)
        forged = agreement_pb2.Voucher(
            agreement_id=deal.agreement_id, sequence=1, payword=b"\x01" * 32, payword_index=1,
            cumulative_atomic=deal.body.link_value_atomic)
        big = '{"text": "' + "a" * 1_000_000 + '"}'
        with grpc.insecure_channel(seller.endpoint) as channel:
            stub = agent_pb2_grpc.AgentServiceStub(channel)
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Invoke(agent_pb2.InvokeRequest(agreement_id=deal.agreement_id,
                                                        input_json=big),
                                metadata=[(VOUCHER_METADATA_KEY, forged.SerializeToString())],
                                timeout=10)
                assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert "forged" in refused.value.details()
        assert read == []  # never parsed
        assert buyer.call(deal, {"text": "b" * 20_000}) == {"text": "B" * 20_000}
        assert read == [len(json.dumps({"text": "b" * 20_000}))]
        books_balance(node)


def test_a_finish_whose_signatures_are_not_the_buyers_is_refused_as_a_bad_signature(market):
    node, seller, buyer = market
    deal = buyer.negotiate(buyer.discover("slow"), "slow", quantity=3, budget="0.05",
                           currency="USD")
    stub = buyer._seller(deal.body.seller_endpoint)
    good = buyer._finish_request(deal, True)
    for field in ("buyer_signature", "confirm_signature"):
        request = agent_pb2.FinishRequest()
        request.CopyFrom(good)
        setattr(request, field, bytes(64))
        with pytest.raises(grpc.RpcError) as refused:
            stub.Finish(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(refused.value) == "BAD_SIGNATURE"
    assert seller.gate.redeemed(deal.agreement_id) is None
    books_balance(node)


@skill(price=per_call("0.001", "USD"))
def shout(text: str) -> Text:
    """Upper-case a text at once."""
    return Text(text=text.upper())


def test_calls_on_agreements_never_hired_cannot_spend_the_sellers_allowance_at_the_node(
        tmp_path: Path, monkeypatch):
    """A call without the node's escrow proof makes the seller ask the node, signed with its
    own key and so drawn from its own rate allowance there. Strangers with free agreements and
    fresh keys made those lookups until the node refused the seller's redeem (RATE_LIMITED);
    the lookups now have a budget of their own, a tenth of the node's rate, as by default
    (50/s and 100 at once against the node's 500/s and 1,000: here 0.05/s, 3 against 0.5/s, 30)."""
    from agents import _escrow_check
    from agents.errors import AgentmarketError, Unavailable

    monkeypatch.setattr(_escrow_check, "LOOKUPS_PER_S", 0.05)
    monkeypatch.setattr(_escrow_check, "LOOKUP_BURST", 3)
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600,
                         rate_limit_per_s=0.5, rate_limit_burst=30) as node, \
            SellerAgent("target", skills=[shout], marketplace=node.address) as seller, \
            BuyerAgent("honest", marketplace=node.address) as honest:
        honest.fund("1", "USD")
        listing = honest.discover("shout")[0]
        deal = honest.negotiate(listing, "shout", quantity=3, budget="0.01", currency="USD")
        honest.hire(deal)
        assert honest.call(deal, {"text": "hi"}) == {"text": "HI"}  # proof sent: no lookup
        refusals: list[str] = []
        for n in range(4):
            with BuyerAgent(f"stranger{n}", marketplace=node.address) as stranger:
                for _ in range(8):  # agreements cost nothing; never hired
                    free = stranger.negotiate(listing, "shout", quantity=3, budget="0.01",
                                              currency="USD", failover=False)
                    for _ in range(2):
                        with pytest.raises(AgentmarketError) as refused:
                            stranger.call(free, {"text": "x"})
                        refusals.append(type(refused.value).__name__)
        assert len(refusals) == 64
        assert refusals.count(Unavailable.__name__) >= 60  # past the lookups' budget
        escrow = honest.finish(deal)  # the seller's redeem is not refused
        assert escrow.captured_atomic == deal.body.terms.unit_price_atomic
        assert seller.escrows.active == {deal.agreement_id}
