"""Lost responses: a request reaches the node and takes effect, but the answer never comes back.

A client interceptor lets each call run at the server to completion, then throws the answer away
and raises UNAVAILABLE or DEADLINE_EXCEEDED to the caller, as a dropped connection or an expired
deadline would. The caller retries with the same idempotency key: the effect happens once, the
retry returns the first result (the very posting, hold or escrow that landed), and the same key
with a different request is refused with ALREADY_EXISTS (IDEMPOTENCY_KEY_REUSED), changing
nothing. The same again with a deadline too short for the call, where the client cannot know
whether the request even arrived. Every mutating money operation: deposit, withdraw,
transfer, hold, capture, void, open escrow, redeem; on SQLite and PostgreSQL, signed calls to a
node that requires them.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import BaseModel
from sqlalchemy import func, select

from agents import (
    AgentmarketError,
    BuyerAgent,
    SellerAgent,
    Unavailable,
    per_call,
    skill,
)
from agents.buyer import Deal, _SellerStubs
from agents.v1 import agent_pb2_grpc
from marketplace import agreements as ag
from marketplace.auth import SigningClientInterceptor, signed_channel
from marketplace.channel_cache import ChannelCache
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.testing import Deal as SignedDeal
from marketplace.testing import make_deal, make_listing, make_skill, make_terms
from marketplace.v1 import registry_pb2, registry_pb2_grpc, settlement_pb2, settlement_pb2_grpc
from wallets.audit import check_balances, verify_chain
from wallets.currencies import split
from wallets.grpc_errors import error_reason
from wallets.ledger import POSTINGS
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

TIMEOUT_S = 10.0
USD = "USD"
CENT = 10_000_000
PRICE, QUANTITY = 1_000, 4
FEE_BPS = 250
LOST = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# Expired before it is sent, then too short to be answered (a late deadline timer on a busy
# machine may still let one through: the outcome is whatever it is, the retry must cope).
TINY_DEADLINES_S = (0.0, 1e-6, 0.0005, 0.001, 0.002)
MAX_EXTRA_TRIES = 100


class LostResponse(grpc.RpcError):
    """What the caller sees instead of the answer the server sent."""

    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(f"{code.name}: the response was lost")
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "the response was lost on the way back"


class DropResponses(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Armed with a status code, the next call runs at the server to completion, then its
    answer is discarded and the caller gets that code instead."""

    def __init__(self) -> None:
        self.armed: grpc.StatusCode | None = None
        self.dropped = 0

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        outcome = continuation(details, request)
        code, self.armed = self.armed, None
        if code is None:
            return outcome
        outcome.exception()  # wait for the server's answer (whatever it is), then lose it
        self.dropped += 1
        raise LostResponse(code)


class Party:
    def __init__(self, address: str, key: AgentKey | None = None) -> None:
        self.key = key or AgentKey.generate()
        self.agent_id = self.key.agent_id
        self.dropper = DropResponses()
        self.channel = signed_channel(address, self.key, interceptors=[self.dropper])
        self.wallets = wallet_pb2_grpc.WalletServiceStub(self.channel)
        self.settlement = settlement_pb2_grpc.SettlementServiceStub(self.channel)
        self.registry = registry_pb2_grpc.RegistryServiceStub(self.channel)
        self.account_id = ""

    def open_wallet(self) -> str:
        self.account_id = self.wallets.OpenAccount(wallet_pb2.OpenAccountRequest(
            idempotency_key=f"open:{self.agent_id}", owner=self.agent_id, currency=USD),
            timeout=TIMEOUT_S).account_id
        return self.account_id


@dataclass
class Case:
    """One request, a different request under the same key, and the money it moves once."""

    party: Party
    method: str  # "wallets.Transfer"
    request: Any
    changed: Any
    delta: dict[str, tuple[int, int, int]]  # account -> (posted, pending debit, pending credit)
    # what identifies the effect: a posting's sequence (its hash may come later, once sealed)
    landed: Callable[[Any], str] = lambda response: str(response.sequence)

    def send(self, request: Any, **options: Any) -> Any:
        service, method = self.method.split(".")
        return getattr(getattr(self.party, service), method)(request, **options)


@dataclass
class Market:
    node: MarketplaceNode
    buyer: Party
    payee: Party
    seller: Party
    operator: Party
    keys: Iterator[int]

    def key(self, what: str) -> str:
        return f"{what}:{next(self.keys)}"

    def snapshot(self) -> tuple[dict[str, tuple[int, int, int]], int]:
        with self.node.engine.connect().execution_options(agentmarket_read=True) as conn:
            count = conn.execute(select(func.count()).select_from(POSTINGS)).scalar_one()
        return ({b.account_id: (b.posted_atomic, b.pending_debits_atomic,
                                b.pending_credits_atomic) for b in self.node.ledger.accounts()},
                count)

    def fees(self) -> str:
        return self.node.settlement.fees_account(USD)

    def rail(self) -> str:
        return self.node.wallets.rail_account(self.node.wallets.rail("", USD)).account_id

    def hold(self, amount: int) -> str:
        return self.buyer.wallets.Hold(wallet_pb2.HoldRequest(
            idempotency_key=self.key("setup-hold"), debit_account_id=self.buyer.account_id,
            credit_account_id=self.payee.account_id, amount=usd(amount), timeout_s=3600),
            timeout=TIMEOUT_S).hold_id

    def deal(self) -> SignedDeal:
        return make_deal(self.buyer.key, self.seller.key,
                         make_terms(skill="echo", price_atomic=PRICE, quantity=QUANTITY,
                                    dispute_window_s=0), time.time_ns() // 1_000_000)

    def escrow(self) -> SignedDeal:
        deal = self.deal()
        self.buyer.settlement.OpenEscrow(settlement_pb2.OpenEscrowRequest(
            idempotency_key=self.key("setup-escrow"), agreement=deal.signed), timeout=TIMEOUT_S)
        return deal


def usd(amount_atomic: int) -> wallet_pb2.Money:
    return wallet_pb2.Money(amount_atomic=amount_atomic, currency=USD)


@pytest.fixture
def market(db_url: str) -> Iterator[Market]:
    operator = AgentKey.generate()
    node = MarketplaceNode(db_url, sweep_interval_s=3600, fee_bps=FEE_BPS,
                           operator_ids=[operator.agent_id]).start()
    parties = [Party(node.address) for _ in range(3)] + [Party(node.address, operator)]
    market = Market(node, *parties, keys=itertools.count())
    for party in (market.buyer, market.payee, market.seller):
        party.open_wallet()
    market.seller.registry.Advertise(registry_pb2.AdvertiseRequest(
        idempotency_key="advertise", ttl_s=3600,
        listing=make_listing(market.seller.key, make_skill("echo", price_atomic=PRICE))),
        timeout=TIMEOUT_S)
    market.buyer.wallets.Deposit(wallet_pb2.DepositRequest(
        idempotency_key="fund", account_id=market.buyer.account_id, amount=usd(100 * 10**9)),
        timeout=TIMEOUT_S)
    yield market
    for party in parties:
        party.channel.close()
    node.stop(0)


# ---- the operations -------------------------------------------------------------------------


def deposit(m: Market, key: str) -> Case:
    amount = 3 * CENT
    request = wallet_pb2.DepositRequest(idempotency_key=key, account_id=m.buyer.account_id,
                                        amount=usd(amount))
    changed = wallet_pb2.DepositRequest(idempotency_key=key, account_id=m.buyer.account_id,
                                        amount=usd(amount + CENT))
    return Case(m.buyer, "wallets.Deposit", request, changed,
                {m.buyer.account_id: (amount, 0, 0), m.rail(): (-amount, 0, 0)})


def withdraw(m: Market, key: str) -> Case:
    """The rail carries cents: the request asks for 7 atomic more, which stay in the wallet.
    A request for 8 more is a different request, though it would pay out the same."""
    amount = 2 * CENT + 7
    request = wallet_pb2.WithdrawRequest(idempotency_key=key, account_id=m.buyer.account_id,
                                         amount=usd(amount))
    changed = wallet_pb2.WithdrawRequest(idempotency_key=key, account_id=m.buyer.account_id,
                                         amount=usd(amount + 1))
    return Case(m.buyer, "wallets.Withdraw", request, changed,
                {m.buyer.account_id: (-2 * CENT, 0, 0), m.rail(): (2 * CENT, 0, 0)})


def transfer(m: Market, key: str) -> Case:
    amount = 12_345
    request = wallet_pb2.TransferRequest(
        idempotency_key=key, debit_account_id=m.buyer.account_id,
        credit_account_id=m.payee.account_id, amount=usd(amount))
    changed = wallet_pb2.TransferRequest()
    changed.CopyFrom(request)
    changed.amount.amount_atomic += 1
    return Case(m.buyer, "wallets.Transfer", request, changed,
                {m.buyer.account_id: (-amount, 0, 0), m.payee.account_id: (amount, 0, 0)})


def hold(m: Market, key: str) -> Case:
    amount = 50_000
    request = wallet_pb2.HoldRequest(
        idempotency_key=key, debit_account_id=m.buyer.account_id,
        credit_account_id=m.payee.account_id, amount=usd(amount), timeout_s=3600)
    changed = wallet_pb2.HoldRequest()
    changed.CopyFrom(request)
    changed.timeout_s = 60
    return Case(m.buyer, "wallets.Hold", request, changed,
                {m.buyer.account_id: (0, amount, 0), m.payee.account_id: (0, 0, amount)},
                landed=lambda response: response.hold_id)


def capture(m: Market, key: str) -> Case:
    held, amount = 80_000, 30_000
    hold_id = m.hold(held)
    request = wallet_pb2.CaptureRequest(idempotency_key=key, hold_id=hold_id,
                                        amount_atomic=amount)
    changed = wallet_pb2.CaptureRequest(idempotency_key=key, hold_id=hold_id,
                                        amount_atomic=amount + 1)
    return Case(m.operator, "wallets.Capture", request, changed,
                {m.buyer.account_id: (-amount, -amount, 0),
                 m.payee.account_id: (amount, 0, -amount)})


def void(m: Market, key: str) -> Case:
    held = 70_000
    hold_id, other = m.hold(held), m.hold(held)
    return Case(m.operator, "wallets.Void",
                wallet_pb2.VoidRequest(idempotency_key=key, hold_id=hold_id),
                wallet_pb2.VoidRequest(idempotency_key=key, hold_id=other),  # stays open
                {m.buyer.account_id: (0, -held, 0), m.payee.account_id: (0, 0, -held)})


def open_escrow(m: Market, key: str) -> Case:
    deal, other = m.deal(), m.deal()  # the other agreement must not open under this key
    held = deal.body.terms.max_total_atomic
    seller = m.node.settlement.account(m.seller.agent_id, USD)
    return Case(m.buyer, "settlement.OpenEscrow",
                settlement_pb2.OpenEscrowRequest(idempotency_key=key, agreement=deal.signed),
                settlement_pb2.OpenEscrowRequest(idempotency_key=key, agreement=other.signed),
                {m.buyer.account_id: (0, held, 0), seller: (0, 0, held)},
                landed=lambda response: response.hold_id)


def redeem(m: Market, key: str) -> Case:
    deal = m.escrow()
    held = deal.body.terms.max_total_atomic
    receipts = [deal.receipt(m.seller.key, i, {"text": f"out {i}"}) for i in (1, 2, 3)]
    request = ag.signed_redeem(m.seller.key, deal.agreement_id, deal.voucher(3), receipts, key)
    changed = ag.signed_redeem(m.seller.key, deal.agreement_id, deal.voucher(2), receipts[:2],
                               key)
    earned = 3 * PRICE
    seller_part, fee = split(earned, FEE_BPS)
    seller = m.node.settlement.account(m.seller.agent_id, USD)
    return Case(m.seller, "settlement.Redeem", request, changed,
                {m.buyer.account_id: (-earned, -held, 0), seller: (seller_part, 0, -held),
                 m.fees(): (fee, 0, 0)},
                landed=lambda response: f"{response.state}:{response.captured_atomic}")


OPERATIONS = [deposit, withdraw, transfer, hold, capture, void, open_escrow, redeem]


def _moved(before: dict[str, tuple[int, ...]], after: dict[str, tuple[int, ...]]
           ) -> dict[str, tuple[int, ...]]:
    moved = {}
    for account in before.keys() | after.keys():
        old, new = before.get(account, (0, 0, 0)), after.get(account, (0, 0, 0))
        if old != new:
            moved[account] = tuple(b - a for a, b in zip(old, new, strict=True))
    return moved


def _refused_same_key(case: Case) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        case.send(case.changed, timeout=TIMEOUT_S)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS, refused.value
    assert error_reason(refused.value) == "IDEMPOTENCY_KEY_REUSED"


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.__name__)
def test_lost_response_retry_takes_effect_once(market: Market, operation):  # type: ignore[no-untyped-def]
    _answer_lost(market, operation)
    _deadline_too_short(market, operation)
    _books_sound(market)


def _answer_lost(market: Market, operation: Callable[[Market, str], Case]) -> None:
    """The call runs at the node; its answer is lost (UNAVAILABLE, then DEADLINE_EXCEEDED)."""
    for code in LOST:
        case = operation(market, market.key(f"{operation.__name__}-{code.name}"))
        before = market.snapshot()
        case.party.dropper.armed = code
        with pytest.raises(grpc.RpcError) as lost:
            case.send(case.request, timeout=TIMEOUT_S)
        assert lost.value.code() == code
        assert case.party.dropper.dropped
        landed = market.snapshot()
        assert landed[1] == before[1] + 1, "the call reached the node and posted once"
        assert _moved(before[0], landed[0]) == case.delta

        first = case.send(case.request, timeout=TIMEOUT_S)
        again = case.send(case.request, timeout=TIMEOUT_S)
        assert first == again
        assert market.snapshot() == landed, "a retry changed the books"
        assert case.landed(first) == case.landed(_first_answer(market, case))

        _refused_same_key(case)
        assert market.snapshot() == landed, "a refused request changed the books"
    if operation is void:  # the other hold named by the refused request is still open
        assert market.node.ledger.get_hold(case.changed.hold_id).status == "open"
    if operation is open_escrow:  # and the other agreement was not opened
        with pytest.raises(grpc.RpcError) as missing:
            market.buyer.settlement.GetEscrow(settlement_pb2.GetEscrowRequest(
                agreement_id=ag.agreement_id(case.changed.agreement.body)), timeout=TIMEOUT_S)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def _first_answer(market: Market, case: Case) -> Any:
    """The effect as the database has it: the posting (or hold, or escrow) of the key."""
    key = case.request.idempotency_key
    if case.method == "settlement.Redeem":
        return market.buyer.settlement.GetEscrow(settlement_pb2.GetEscrowRequest(
            agreement_id=case.request.agreement_id), timeout=TIMEOUT_S)
    found = [p for p in market.node.ledger.postings(limit=10_000) if p.idempotency_key == key]
    assert len(found) == 1, f"{len(found)} postings under {key}"
    return found[0]


def _deadline_too_short(market: Market, operation: Callable[[Market, str], Case]) -> None:
    """A deadline too short for the call: the client cannot tell whether the request arrived
    (sometimes it did, sometimes not); retried with the key, it happens exactly once."""
    outcomes = set()
    for attempt, timeout_s in enumerate(_tiny_deadlines(outcomes)):
        case = operation(market, market.key(f"{operation.__name__}-tiny-{attempt}"))
        before = market.snapshot()
        try:
            case.send(case.request, timeout=timeout_s)
            outcomes.add("answered")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED, error  # type: ignore[attr-defined]
            outcomes.add("deadline")
        first = case.send(case.request, timeout=TIMEOUT_S)
        assert case.send(case.request, timeout=TIMEOUT_S) == first
        after = market.snapshot()
        assert after[1] == before[1] + 1
        assert _moved(before[0], after[0]) == case.delta
        assert case.landed(first) == case.landed(_first_answer(market, case))
        _refused_same_key(case)
        assert market.snapshot() == after
    assert "deadline" in outcomes, outcomes


def _tiny_deadlines(outcomes: set[str]) -> Iterator[float]:
    """Each tiny deadline once, then a deadline already passed until one call has missed it
    (up to `MAX_EXTRA_TRIES`): on a fast machine a loopback call can be answered before
    gRPC's deadline timer fires, even with no time at all."""
    yield from TINY_DEADLINES_S
    for _ in range(MAX_EXTRA_TRIES):
        if "deadline" in outcomes:
            return
        yield 0.0


def _books_sound(market: Market) -> None:
    chain, balances = verify_chain(market.node.ledger), check_balances(market.node.ledger)
    assert chain.ok, chain.problems
    assert balances.ok, balances.problems
    assert sum(b.posted_atomic for b in market.node.ledger.accounts()) == 0


# ---- the agents' own requests: a paid call, a redeem ----------------------------------------


class Upper(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def upper(text: str) -> Upper:
    """Upper-case a text."""
    return Upper(text=text.upper())


@dataclass
class Task:
    node: MarketplaceNode
    seller: SellerAgent
    buyer: BuyerAgent
    deal: Deal
    to_seller: DropResponses  # on the buyer's channel to the seller
    to_marketplace: DropResponses  # on the seller's channel to the marketplace

    def captured(self) -> int:
        return self.node.settlement.get(self.deal.agreement_id)["captured_atomic"]


@pytest.fixture
def task(tmp_path: Path) -> Iterator[Task]:
    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600).start()
    seller = SellerAgent("upper", skills=[upper], marketplace=node.address,
                         dispute_window_s=0).serve()
    buyer = BuyerAgent("buyer", marketplace=node.address)
    buyer.fund("1.00", "USD", idempotency_key="fund")
    listing = buyer.discover("upper", currency="USD")[0]
    deal = buyer.negotiate(listing, "upper", quantity=5, budget="0.01", currency="USD")
    buyer.hire(deal)
    assert buyer.call(deal, {"text": "one"}) == {"text": "ONE"}
    # Both agents' channels, rebuilt with a response dropper in front of the signer.
    to_seller, to_marketplace = DropResponses(), DropResponses()
    raw = grpc.insecure_channel(listing.endpoint)
    dropping = _SellerStubs(
        raw, agent_pb2_grpc.AgentServiceStub(grpc.intercept_channel(
            raw, to_seller, SigningClientInterceptor(buyer.key))),
        agent_pb2_grpc.AgentServiceStub(grpc.intercept_channel(raw, to_seller)))
    buyer._seller_channels.close()
    buyer._seller_channels = ChannelCache(lambda _endpoint: dropping,
                                          lambda stubs: stubs.channel.close())
    seller.settlement = seller.redeems.settlement = settlement_pb2_grpc.SettlementServiceStub(
        signed_channel(node.address, seller.key, interceptors=[to_marketplace]))
    yield Task(node, seller, buyer, deal, to_seller, to_marketplace)
    buyer.close()
    seller.stop(0)
    node.stop(0)


def test_lost_redeem_response_the_buyer_finishes_again(task: Task):
    """The seller's redeem lands but its answer is lost: Finish fails; Finish again replays the
    redeem (same voucher, same key), and the seller is paid once."""
    price = task.deal.body.terms.unit_price_atomic
    task.to_marketplace.armed = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(Unavailable, match="finish again"):  # an outage: retry
        task.buyer.finish(task.deal)
    assert task.captured() == price  # it landed
    postings = len(task.node.ledger.postings(limit=10_000))
    escrow = task.buyer.finish(task.deal)
    assert escrow.captured_atomic == price
    assert len(task.node.ledger.postings(limit=10_000)) == postings
    _books_sound_node(task.node)


def test_lost_paid_call_response_retry_with_the_same_call_id(task: Task):
    task.to_seller.armed = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(Unavailable):  # the answer was lost: the buyer cannot tell it ran
        task.buyer.call(task.deal, {"text": "two"}, call_id="call-two")
    assert task.buyer.call(task.deal, {"text": "two"}, call_id="call-two") == {"text": "TWO"}
    assert task.buyer.call(task.deal, {"text": "three"}) == {"text": "THREE"}
    escrow = task.buyer.finish(task.deal)
    assert escrow.captured_atomic == 3 * task.deal.body.terms.unit_price_atomic


def test_lost_redeem_response_then_another_call(task: Task):
    price = task.deal.body.terms.unit_price_atomic
    task.to_marketplace.armed = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(Unavailable, match="finish again"):  # an outage: retry
        task.buyer.finish(task.deal)
    with contextlib.suppress(AgentmarketError):  # refusing it would be right too
        task.buyer.call(task.deal, {"text": "late"})
    escrow = task.buyer.finish(task.deal)
    assert escrow.state == settlement_pb2.AGREEMENT_STATE_SETTLED
    assert len(task.seller.gate.redeemable(task.deal.agreement_id)[1]) * price == \
        escrow.captured_atomic, "the seller served a call it was not paid for"


def _books_sound_node(node: MarketplaceNode) -> None:
    chain, balances = verify_chain(node.ledger), check_balances(node.ledger)
    assert chain.ok, chain.problems
    assert balances.ok, balances.problems
