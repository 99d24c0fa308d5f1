"""No griefing: nothing a counterparty can do with what it knows blocks, stalls or shortchanges
another party's legitimate money operation.

One row of `CASES` per operation and victim: the attacker (the counterparty, or anyone who
learned the agreement id) first does everything it is allowed to do with what it knows: it sends
requests under every idempotency key the victim will use (the SDK's derived keys, and the
victim's own where it could have learned them) to every RPC its role may call with its own
wallet, and it makes every move on the agreement its role allows. Then the victim's operation
must succeed and settle exactly: the amounts moved, to the atomic unit.

A real node and a real seller agent (and a verifier agent) on loopback, over SQLite and
PostgreSQL, all calls signed as their parties. After each case the books are checked: every
currency sums to zero (posted, and pending debits against pending credits), `ledger verify`
(the hash chain and every balance recomputed from its entries) is clean, and no hold outlives
the ledger's longest timeout.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from conftest import BACKENDS, postgres_schema
from pydantic import BaseModel
from typer.testing import CliRunner

from agents import BuyerAgent, SellerAgent, per_call, skill
from agents.approvals import decide
from agents.payments import VOUCHER_METADATA_KEY
from agents.v1 import agent_pb2
from marketplace import agreements as ag
from marketplace.auth import signed_channel
from marketplace.cli.main import app
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from marketplace.settlement import REDEEM_GRACE_DIVISOR
from marketplace.testing import Deal, make_deal, make_listing, make_skill, make_terms
from marketplace.v1 import (
    agreement_pb2,
    dispute_pb2,
    dispute_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    settlement_pb2,
    settlement_pb2_grpc,
    verifier_pb2,
    verifier_pb2_grpc,
)
from marketplace.verifier_agent import VerifierAgent
from wallets import audit
from wallets._holds import MAX_HOLD_TIMEOUT_S
from wallets.currencies import split
from wallets.errors import AgentmarketError
from wallets.fx import convert_amount
from wallets.grpc_errors import error_info
from wallets.mandates import MandateTerms, sign_mandate
from wallets.rails import payout_reference
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

USD, USDC = "USD", "USDC"
CENT = 10_000_000
PRICE = 1_000_000  # 0.001 USD: the seller agent's price and the raw deals'
FEE_BPS = 250
VERIFIER_FEE = 100_000
TIMEOUT_S = 10.0
S = settlement_pb2
# refusals an attacker's probe may meet; never INTERNAL or UNKNOWN
REFUSALS = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
            grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED}


class Shout(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def shout(text: str) -> Shout:
    """Upper-case a text."""
    return Shout(text=text.upper())


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _usd(amount_atomic: int, code: str = USD) -> wallet_pb2.Money:
    return wallet_pb2.Money(amount_atomic=amount_atomic, currency=code)


def probe(call: Callable[[], Any]) -> Any:
    """An attacker's move: it may be refused, but only with a clear status (raw gRPC, or the
    SDK's own error carrying it)."""
    try:
        return call()
    except grpc.RpcError as error:
        assert error.code() in REFUSALS, (error.code(), error.details())
        return None
    except AgentmarketError as error:
        assert grpc.StatusCode[error.status] in REFUSALS, (error.status, error.message)
        return None


def refused(call: Callable[[], Any], code: grpc.StatusCode) -> Any:
    with pytest.raises((grpc.RpcError, AgentmarketError)) as caught:
        call()
    error = caught.value
    if isinstance(error, AgentmarketError):
        assert error.status == code.name, error.message
    else:
        assert error.code() == code, error.details()
    return error


# ---- parties and the market -------------------------------------------------------------------


@dataclass
class Party:
    key: AgentKey
    channel: grpc.Channel
    account: str = ""

    @property
    def id(self) -> str:
        return self.key.agent_id

    @property
    def wallets(self) -> wallet_pb2_grpc.WalletServiceStub:
        return wallet_pb2_grpc.WalletServiceStub(self.channel)

    @property
    def settlement(self) -> settlement_pb2_grpc.SettlementServiceStub:
        return settlement_pb2_grpc.SettlementServiceStub(self.channel)


@dataclass
class World:
    node: MarketplaceNode
    seller_agent: SellerAgent
    verifier: VerifierAgent
    operator: Party
    arbiter: Party
    sink: Party
    parties: list[Party] = field(default_factory=list)
    buyers: list[BuyerAgent] = field(default_factory=list)

    # ---- parties ----------------------------------------------------------------------------

    def party(self, cents: int = 0, key: AgentKey | None = None) -> Party:
        key = key or AgentKey.generate()
        found = Party(key, signed_channel(self.node.address, key))
        self.parties.append(found)
        found.account = found.wallets.OpenAccount(wallet_pb2.OpenAccountRequest(
            idempotency_key="open", owner=found.id, currency=USD),
            timeout=TIMEOUT_S).account_id
        if cents:
            found.wallets.Deposit(wallet_pb2.DepositRequest(
                idempotency_key=f"fund-{uuid.uuid4().hex}", account_id=found.account,
                amount=_usd(cents * CENT)), timeout=TIMEOUT_S)
        return found

    def sdk_buyer(self, cents: int = 100) -> tuple[BuyerAgent, Party]:
        buyer = BuyerAgent(f"buyer-{len(self.buyers)}", marketplace=self.node.address)
        self.buyers.append(buyer)
        buyer.fund(f"{cents / 100:.2f}", USD)
        return buyer, self.party(key=buyer.key)

    def seller_party(self) -> Party:
        return self.party(key=self.seller_agent.key)

    def posted(self, party: Party | str, code: str = USD) -> int:
        owner = party if isinstance(party, str) else party.id
        found = self.node.ledger.find_account(owner, code)
        return found.posted_atomic if found else 0

    def available(self, party: Party) -> int:
        return self.node.ledger.balance(party.account).available_atomic

    # ---- raw agreements -------------------------------------------------------------------

    def listing(self, seller: Party) -> None:
        registry_pb2_grpc.RegistryServiceStub(seller.channel).Advertise(
            registry_pb2.AdvertiseRequest(idempotency_key="ad", ttl_s=3600, listing=make_listing(
                seller.key, make_skill("echo", price_atomic=PRICE))), timeout=TIMEOUT_S)

    def deal(self, buyer: Party, seller: Party, **terms: Any) -> Deal:
        self.listing(seller)
        terms = {"skill": "echo", "price_atomic": PRICE, "quantity": 5, **terms}
        return make_deal(buyer.key, seller.key, make_terms(**terms), _now_ms())

    def open(self, buyer: Party, deal: Any, key: str = "") -> S.Escrow:
        """OpenEscrow of a hand-made deal, or of an SDK one (which keeps it as `agreement`)."""
        signed = deal.signed if isinstance(deal, Deal) else deal.agreement
        return buyer.settlement.OpenEscrow(S.OpenEscrowRequest(
            idempotency_key=key or f"escrow:{deal.agreement_id}", agreement=signed),
            timeout=TIMEOUT_S)

    def redeem_request(self, seller: Party, deal: Deal, outputs: list[Any], key: str
                       ) -> S.RedeemRequest:
        receipts = [deal.receipt(seller.key, i, {"text": out} if isinstance(out, str) else out)
                    for i, out in enumerate(outputs, 1)]
        voucher = deal.voucher(len(outputs))
        return ag.signed_redeem(seller.key, deal.agreement_id, voucher, receipts, key)

    def redeem(self, seller: Party, deal: Deal, outputs: list[Any], key: str = ""
               ) -> S.Escrow:
        return seller.settlement.Redeem(self.redeem_request(
            seller, deal, outputs, key or f"redeem:{deal.agreement_id}:{len(outputs)}"),
            timeout=TIMEOUT_S)

    def confirm(self, buyer: Party, deal: Any, key: str = "") -> S.Escrow:
        a = deal.agreement_id
        return buyer.settlement.Confirm(S.ConfirmRequest(
            idempotency_key=key or f"confirm:{a}", agreement_id=a,
            buyer_signature=buyer.key.sign(ag.request_message("confirm", a))), timeout=TIMEOUT_S)

    def dispute(self, buyer: Party, deal: Any, key: str = "") -> S.Escrow:
        a = deal.agreement_id
        return buyer.settlement.Dispute(S.DisputeRequest(
            idempotency_key=key or f"dispute:{a}", agreement_id=a, reason="wrong",
            buyer_signature=buyer.key.sign(ag.dispute_message(a, "wrong", []))),
            timeout=TIMEOUT_S)

    def resolve(self, deal: Deal, outcome: int, seller_atomic: int = 0, key: str = ""
                ) -> S.Escrow:
        a = deal.agreement_id
        return dispute_pb2_grpc.ArbitrationServiceStub(self.arbiter.channel).ResolveDispute(
            dispute_pb2.ResolveDisputeRequest(
                idempotency_key=key or f"resolve:{a}", agreement_id=a, outcome=outcome,
                seller_atomic=seller_atomic, note="decided", arbiter_id=self.arbiter.id,
                arbiter_signature=self.arbiter.key.sign(ag.resolve_message(
                    a, outcome, seller_atomic, "decided"))), timeout=TIMEOUT_S)

    def escrow(self, deal: Any) -> dict[str, Any]:
        return self.node.settlement.get(deal.agreement_id)

    # ---- the attacker's moves ---------------------------------------------------------------

    def squat(self, attacker: Party, keys: list[str], *, deal: Any = None,
              role: str = "") -> None:
        """Every request the attacker's role may send, under each of the victim's keys: with
        its own wallet, and (`role` buyer or seller of `deal`) on the victim's agreement."""
        w = attacker.wallets
        for k in keys:
            probe(lambda k=k: w.Transfer(wallet_pb2.TransferRequest(
                idempotency_key=k, debit_account_id=attacker.account,
                credit_account_id=self.sink.account, amount=_usd(1)), timeout=TIMEOUT_S))
            probe(lambda k=k: w.Hold(wallet_pb2.HoldRequest(
                idempotency_key=k, debit_account_id=attacker.account,
                credit_account_id=self.sink.account, amount=_usd(1), timeout_s=600),
                timeout=TIMEOUT_S))
            probe(lambda k=k: w.Deposit(wallet_pb2.DepositRequest(
                idempotency_key=k, account_id=attacker.account, amount=_usd(CENT)),
                timeout=TIMEOUT_S))
            probe(lambda k=k: w.Withdraw(wallet_pb2.WithdrawRequest(
                idempotency_key=k, account_id=attacker.account, amount=_usd(CENT // 2)),
                timeout=TIMEOUT_S))
            probe(lambda k=k: w.SetPolicy(wallet_pb2.SetPolicyRequest(
                idempotency_key=k, account_id=attacker.account,
                policy=wallet_pb2.WalletPolicy()), timeout=TIMEOUT_S))
            probe(lambda k=k: w.GetQuote(wallet_pb2.GetQuoteRequest(
                idempotency_key=k, from_currency=USD, to_currency=USDC), timeout=TIMEOUT_S))
            terms = MandateTerms(account_id=attacker.account, agent_key=self.sink.id,
                                 currency=USD, total_limit_atomic=1,
                                 expires_at_ms=_now_ms() + 60_000, nonce=k[:64])
            data, signature = sign_mandate(attacker.key, terms)  # type: ignore[arg-type]
            probe(lambda k=k, d=data, s=signature: w.GrantMandate(wallet_pb2.GrantMandateRequest(
                idempotency_key=k, terms=d, owner_signature=s), timeout=TIMEOUT_S))
            if deal is not None and role == "buyer":
                probe(lambda k=k: self.confirm(attacker, deal, k))
                probe(lambda k=k: self.dispute(attacker, deal, k))
                probe(lambda k=k: self.open(attacker, deal, k))
            if deal is not None and role == "seller":
                probe(lambda k=k: self.redeem(attacker, deal, ["x"], k))
                probe(lambda k=k: self.open(attacker, deal, k))  # the buyer's move: refused

    def close(self) -> None:
        for buyer in self.buyers:
            buyer.close()
        for party in self.parties:
            party.channel.close()
        self.verifier.stop(0)
        self.seller_agent.stop(0)
        self.node.stop(0)


def build_world(db_url: str) -> World:
    operator, arbiter = AgentKey.generate(), AgentKey.generate()
    node = MarketplaceNode(db_url, sweep_interval_s=3600, fee_bps=FEE_BPS,
                           operator_ids=[operator.agent_id], arbiters=[arbiter.agent_id]).start()
    # a small burst, so a flood of forged vouchers would have emptied a buyer's bucket
    seller = SellerAgent("shouter", skills=[shout], marketplace=node.address,
                         rate_limit_per_s=1.0, rate_limit_burst=30,
                         journal=f"sqlite:///{os.environ['AGENTMARKET_HOME']}/"
                                 f"grief-{uuid.uuid4().hex}.db").serve()
    verifier = VerifierAgent(lambda output, receipt, body: "BAD" not in output["text"]).serve()
    world = World(node, seller, verifier, Party(operator, signed_channel(node.address, operator)),
                  Party(arbiter, signed_channel(node.address, arbiter)),
                  Party(AgentKey.generate(), grpc.insecure_channel(node.address)))
    world.sink = world.party()
    return world


@pytest.fixture(scope="module", params=BACKENDS)
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[World]:
    if request.param == "sqlite":
        built = build_world(f"sqlite:///{tmp_path_factory.mktemp('grief') / 'm.db'}")
        yield built
        built.close()
        return
    with postgres_schema(request.getfixturevalue("postgres_url")) as url:
        built = build_world(url)
        yield built
        built.close()


def assert_books(world: World) -> None:
    """Every currency sums to zero, `ledger verify` is clean, no hold outlives its bound."""
    ledger = world.node.ledger
    totals: dict[str, list[int]] = {}
    for b in ledger.accounts():
        sums = totals.setdefault(b.currency, [0, 0])
        sums[0] += b.posted_atomic
        sums[1] += b.pending_debits_atomic - b.pending_credits_atomic
    assert all(s == [0, 0] for s in totals.values()), totals
    chain, balances = audit.verify_chain(ledger), audit.check_balances(ledger)
    assert chain.ok and balances.ok, (chain.problems, balances.problems)
    latest = _now_ms() + MAX_HOLD_TIMEOUT_S * 1000
    assert all(h.expires_at_ms <= latest for h in ledger.holds(status="open", limit=100_000))


# ---- the cases: one per operation and victim ------------------------------------------------


def hire(w: World) -> None:
    """The seller knows the agreement (so its id and the SDK's `escrow:<id>`)."""
    buyer, seller = w.party(10), w.party()
    deal = w.deal(buyer, seller)
    a = deal.agreement_id
    w.squat(seller, [f"escrow:{a}", a], deal=deal, role="seller")
    before = w.available(buyer)
    escrow = w.open(buyer, deal)
    assert escrow.state == S.AGREEMENT_STATE_ACTIVE and escrow.held_atomic == 5 * PRICE
    assert w.available(buyer) == before - 5 * PRICE
    assert w.redeem(seller, deal, []).state == S.AGREEMENT_STATE_REFUNDED  # nothing delivered
    assert w.available(buyer) == before


def paid_call(w: World) -> None:
    """Anyone who learned the agreement id (a verifier, an eavesdropper) floods the seller
    with forged vouchers for it, unsigned and signed, and the buyer's call ids; the buyer's
    own call still goes through and is charged once."""
    buyer, _ = w.sdk_buyer()
    deal = buyer.negotiate(buyer.discover("shout", currency=USD)[0], "shout", quantity=3,
                           budget="0.01", currency=USD)
    buyer.hire(deal)
    a, stranger = deal.agreement_id, w.party()
    raw = grpc.insecure_channel(w.seller_agent.endpoint)
    signed = signed_channel(w.seller_agent.endpoint, stranger.key)
    try:
        for n in range(40):  # more than the seller's burst
            forged = agreement_pb2.Voucher(agreement_id=a, sequence=n + 1, payword_index=1,
                                           cumulative_atomic=deal.body.link_value_atomic,
                                           payword=os.urandom(32))
            for channel in (raw, signed):
                probe(lambda c=channel, v=forged: c.unary_unary(
                    "/agents.v1.AgentService/Invoke")(agent_pb2.InvokeRequest(
                        agreement_id=a, input_json='{"text": "mine"}', call_id="call-1"
                    ).SerializeToString(), timeout=TIMEOUT_S,
                    metadata=[(VOUCHER_METADATA_KEY, v.SerializeToString())]))
    finally:
        raw.close()
        signed.close()
    seller_before, price = w.posted(w.seller_agent.agent_id), deal.body.terms.unit_price_atomic
    result = buyer.invoke(deal, {"text": "hello"}, call_id="call-1")
    assert result.output == {"text": "HELLO"} and result.usage.charged_atomic == price
    assert buyer.finish(deal).state == S.AGREEMENT_STATE_SETTLED
    assert w.posted(w.seller_agent.agent_id) - seller_before == split(price, FEE_BPS)[0]


def redeem(w: World) -> None:
    """The reported case: the buyer uses `redeem:<agreement>:<seq>` for every sequence it
    sent (a 1-atomic transfer, and everything else it may send) before the seller redeems."""
    buyer, party = w.sdk_buyer()
    deal = buyer.negotiate(buyer.discover("shout", currency=USD)[0], "shout", quantity=5,
                           budget="0.01", currency=USD)
    buyer.hire(deal)
    for i in range(3):
        buyer.call(deal, {"text": f"call {i}"})
    a = deal.agreement_id
    w.squat(party, [f"redeem:{a}:{seq}" for seq in range(6)], deal=deal, role="buyer")
    seller_before, price = w.posted(w.seller_agent.agent_id), deal.body.terms.unit_price_atomic
    escrow = w.seller_agent.redeem(a)
    assert escrow.state == S.AGREEMENT_STATE_VERIFIED and escrow.earned_atomic == 3 * price
    assert buyer.confirm(deal).state == S.AGREEMENT_STATE_SETTLED
    assert w.posted(w.seller_agent.agent_id) - seller_before == split(3 * price, FEE_BPS)[0]


def finish(w: World) -> None:
    """The seller redeems on its own first (as it may); the buyer's Finish still settles."""
    buyer, _ = w.sdk_buyer()
    deal = buyer.negotiate(buyer.discover("shout", currency=USD)[0], "shout", quantity=5,
                           budget="0.01", currency=USD)
    buyer.hire(deal)
    buyer.call(deal, {"text": "one"})
    buyer.call(deal, {"text": "two"})
    w.seller_agent.redeem(deal.agreement_id)
    before, price = w.posted(buyer.agent_id), deal.body.terms.unit_price_atomic
    escrow = buyer.finish(deal)
    assert escrow.state == S.AGREEMENT_STATE_SETTLED and escrow.captured_atomic == 2 * price
    assert w.posted(buyer.agent_id) - before == -2 * price


def confirm(w: World) -> None:
    """The seller uses `confirm:<agreement>` everywhere, its own redeem included."""
    buyer, seller = w.party(10), w.party()
    deal = w.deal(buyer, seller)
    a = deal.agreement_id
    w.open(buyer, deal)
    w.redeem(seller, deal, ["a", "b"], key=f"confirm:{a}")
    w.squat(seller, [f"confirm:{a}"], deal=deal, role="seller")
    buyer_before, seller_before = w.posted(buyer), w.posted(seller)
    assert w.confirm(buyer, deal).state == S.AGREEMENT_STATE_SETTLED
    assert w.posted(seller) - seller_before == split(2 * PRICE, FEE_BPS)[0]
    assert w.posted(buyer) - buyer_before == -2 * PRICE
    assert w.available(buyer) == 10 * CENT - 2 * PRICE


def dispute(w: World) -> None:
    """The seller takes `dispute:<agreement>` first (the reported case): the buyer's dispute
    still freezes the earned amount, and the arbiter's decision pays it back."""
    buyer, seller = w.party(10), w.party()
    deal = w.deal(buyer, seller)
    a = deal.agreement_id
    w.open(buyer, deal)
    w.redeem(seller, deal, ["a", "b"], key=f"dispute:{a}")
    w.squat(seller, [f"dispute:{a}"], deal=deal, role="seller")
    seller_before = w.posted(seller)
    escrow = w.dispute(buyer, deal)
    assert escrow.state == S.AGREEMENT_STATE_DISPUTED
    assert w.escrow(deal)["refunded_atomic"] == 3 * PRICE
    w.resolve(deal, dispute_pb2.DISPUTE_OUTCOME_BUYER)
    assert w.posted(buyer) == 10 * CENT and w.posted(seller) == seller_before


def resolve(w: World) -> None:
    """Both parties use the arbiter's key for the decision (as if they had guessed it)."""
    buyer, seller = w.party(10), w.party()
    deal = w.deal(buyer, seller)
    a = deal.agreement_id
    w.open(buyer, deal)
    w.redeem(seller, deal, ["a", "b"])
    w.dispute(buyer, deal)
    w.squat(buyer, [f"resolve:{a}"], deal=deal, role="buyer")
    w.squat(seller, [f"resolve:{a}"], deal=deal, role="seller")
    buyer_before, seller_before = w.posted(buyer), w.posted(seller)
    escrow = w.resolve(deal, dispute_pb2.DISPUTE_OUTCOME_SPLIT, PRICE)
    assert escrow.state == S.AGREEMENT_STATE_RESOLVED
    assert w.posted(seller) - seller_before == split(PRICE, FEE_BPS)[0]
    assert w.posted(buyer) - buyer_before == PRICE  # the frozen 2 * PRICE: half back


def _verified_deal(w: World) -> tuple[Party, Party, Deal]:
    buyer, seller = w.party(10), w.party()
    deal = w.deal(buyer, seller, method=registry_pb2.VERIFICATION_METHOD_THIRD_PARTY,
                  verifier=agreement_pb2.VerifierTerms(
                      agent_id=w.verifier.agent_id, endpoint=w.verifier.endpoint,
                      fee_atomic=VERIFIER_FEE))
    w.open(buyer, deal)
    return buyer, seller, deal


def _plant(w: World, deal: Deal, real: list[agreement_pb2.Receipt], signer: AgentKey | None,
           outputs: list[str]) -> None:
    """Ask the verifier first, under the key the marketplace will use, about other outputs
    (signed by the seller, or, as a buyer can make them, unsigned: a chain's first receipts
    carry no signature)."""
    receipts, head = [], ag.CHAIN_GENESIS
    for i, out in enumerate(outputs, 1):
        receipt = ag.new_receipt(deal.agreement_id, i, json.dumps({"text": out}), PRICE)
        head = ag.chain_receipt(receipt, i, head, signer)
        receipts.append(receipt)
    channel = grpc.insecure_channel(w.verifier.endpoint)
    try:
        verifier_pb2_grpc.VerifierServiceStub(channel).Verify(verifier_pb2.VerifyRequest(
            idempotency_key=f"verify:{deal.agreement_id}:{ag.receipts_digest(real)[:32]}",
            agreement_id=deal.agreement_id, agreement=deal.signed, receipts=receipts),
            timeout=TIMEOUT_S)
    finally:
        channel.close()


def verify_for_the_buyer(w: World) -> None:
    """The seller plants passing verdicts under the marketplace's verify key before it
    redeems failing outputs: the verifier judges what the marketplace sends, and the buyer
    gets its money back (less the verifier's fee)."""
    buyer, seller, deal = _verified_deal(w)
    request = w.redeem_request(seller, deal, ["BAD one", "BAD two"], "redeem")
    _plant(w, deal, list(request.receipts), seller.key, ["good one", "good two"])
    escrow = seller.settlement.Redeem(request, timeout=TIMEOUT_S)
    assert escrow.state == S.AGREEMENT_STATE_REFUNDED and escrow.earned_atomic == 0
    assert w.posted(buyer) == 10 * CENT - VERIFIER_FEE and w.posted(seller) == 0


def verify_for_the_seller(w: World) -> None:
    """The buyer plants failing verdicts (unsigned receipts of its own making) under the
    marketplace's verify key: the seller's good outputs are still verified and paid."""
    buyer, seller, deal = _verified_deal(w)
    request = w.redeem_request(seller, deal, ["good one", "good two"], "redeem")
    _plant(w, deal, list(request.receipts), None, ["BAD one", "BAD two"])
    escrow = seller.settlement.Redeem(request, timeout=TIMEOUT_S)
    assert escrow.state == S.AGREEMENT_STATE_VERIFIED and escrow.earned_atomic == 2 * PRICE
    w.confirm(buyer, deal)
    assert w.posted(seller) == split(2 * PRICE, FEE_BPS)[0]
    assert w.posted(buyer) == 10 * CENT - 2 * PRICE - VERIFIER_FEE


def approve(w: World) -> None:
    """A hire waits for an operator's approval; the seller uses the hire's and the
    decision's keys, and the buyer's own variant under its key is refused without poisoning
    it: once approved, the hire goes through, once."""
    buyer, seller = w.party(10), w.party()
    buyer.wallets.SetPolicy(wallet_pb2.SetPolicyRequest(
        idempotency_key="policy", account_id=buyer.account,
        policy=wallet_pb2.WalletPolicy(approval_threshold_atomic=PRICE)), timeout=TIMEOUT_S)
    deal, other = w.deal(buyer, seller), w.deal(buyer, seller, quantity=4)
    a = deal.agreement_id
    waiting = refused(lambda: w.open(buyer, deal), grpc.StatusCode.FAILED_PRECONDITION)
    approval = error_info(waiting).metadata["approval_id"]
    w.squat(seller, [f"escrow:{a}", f"approve:{approval}", f"deny:{approval}"], deal=deal,
            role="seller")
    refused(lambda: decide(seller.wallets, approval, approve=False, decided_by="seller"),
            grpc.StatusCode.PERMISSION_DENIED)
    refused(lambda: w.open(buyer, other, key=f"escrow:{a}"), grpc.StatusCode.ALREADY_EXISTS)
    decide(w.operator.wallets, approval, approve=True, decided_by="ops")
    escrow = w.open(buyer, deal)
    assert escrow.state == S.AGREEMENT_STATE_ACTIVE and escrow.held_atomic == 5 * PRICE
    assert w.open(buyer, deal).hold_id == escrow.hold_id  # a retry: the same hold
    assert w.available(buyer) == 10 * CENT - 5 * PRICE
    w.redeem(seller, deal, [])


def withdraw(w: World) -> None:
    """The buyer learned the key the seller withdraws under: two payouts, neither lost."""
    seller, buyer = w.party(10), w.party(10)
    w.squat(buyer, ["payout-1"])
    reference = payout_reference(seller.id, "payout-1")
    seller.wallets.Withdraw(wallet_pb2.WithdrawRequest(
        idempotency_key="payout-1", account_id=seller.account, amount=_usd(3 * CENT)),
        timeout=TIMEOUT_S)
    assert w.posted(seller) == 7 * CENT
    assert w.node.wallets.rails["sandbox-usd"].payouts[reference] == 3 * CENT  # type: ignore


def deposit(w: World) -> None:
    """Another agent deposits under the victim's rail reference first (the sandbox rail
    confirms anything): the victim's deposit is still credited, exactly once."""
    victim, attacker = w.party(), w.party()
    w.squat(attacker, ["bank-ref-42"])
    for _ in range(2):  # and its retry
        victim.wallets.Deposit(wallet_pb2.DepositRequest(
            idempotency_key="bank-ref-42", account_id=victim.account, amount=_usd(4 * CENT)),
            timeout=TIMEOUT_S)
    assert w.posted(victim) == 4 * CENT


def transfer(w: World) -> None:
    payer, payee = w.party(10), w.party()
    w.squat(payee, ["pay-1"])
    for _ in range(2):
        payer.wallets.Transfer(wallet_pb2.TransferRequest(
            idempotency_key="pay-1", debit_account_id=payer.account,
            credit_account_id=payee.account, amount=_usd(2 * CENT)), timeout=TIMEOUT_S)
    assert (w.posted(payer), w.posted(payee) >= 2 * CENT) == (8 * CENT, True)
    assert w.node.ledger.balance(payee.account).posted_atomic == w.posted(payee)


def hold_capture_void(w: World) -> None:
    """The payee knows the hold and the keys of its capture and void."""
    payer, payee = w.party(10), w.party()
    w.squat(payee, ["hold-1", "capture-1", "void-1"])
    hold = payer.wallets.Hold(wallet_pb2.HoldRequest(
        idempotency_key="hold-1", debit_account_id=payer.account,
        credit_account_id=payee.account, amount=_usd(5 * CENT), timeout_s=600),
        timeout=TIMEOUT_S)
    payee_before = w.posted(payee)
    w.operator.wallets.Capture(wallet_pb2.CaptureRequest(
        idempotency_key="capture-1", hold_id=hold.hold_id, amount_atomic=2 * CENT),
        timeout=TIMEOUT_S)
    w.operator.wallets.Void(wallet_pb2.VoidRequest(idempotency_key="void-1",
                                                   hold_id=hold.hold_id), timeout=TIMEOUT_S)
    assert w.posted(payee) - payee_before == 2 * CENT and w.available(payer) == 8 * CENT
    assert w.node.ledger.get_hold(hold.hold_id).status == "captured"


def convert(w: World) -> None:
    victim, attacker = w.party(10), w.party(10)
    victim.wallets.OpenAccount(wallet_pb2.OpenAccountRequest(
        idempotency_key="open-usdc", owner=victim.id, currency=USDC), timeout=TIMEOUT_S)
    w.squat(attacker, ["quote-1", "convert-1"])
    quote = victim.wallets.GetQuote(wallet_pb2.GetQuoteRequest(
        idempotency_key="quote-1", from_currency=USD, to_currency=USDC), timeout=TIMEOUT_S)
    to_account = w.node.ledger.find_account(victim.id, USDC)
    assert to_account is not None
    probe(lambda: attacker.wallets.Convert(wallet_pb2.ConvertRequest(
        idempotency_key="convert-1", quote_id=quote.quote_id, from_account_id=attacker.account,
        to_account_id=to_account.account_id, amount=_usd(CENT)), timeout=TIMEOUT_S))
    before = w.posted(victim, USDC)
    victim.wallets.Convert(wallet_pb2.ConvertRequest(
        idempotency_key="convert-1", quote_id=quote.quote_id, from_account_id=victim.account,
        to_account_id=to_account.account_id, amount=_usd(3 * CENT)), timeout=TIMEOUT_S)
    bought = convert_amount(3 * CENT, w.node.wallets.fx.quote(quote.quote_id))
    assert w.posted(victim) == 7 * CENT and w.posted(victim, USDC) - before == bought


def mandate_spend(w: World) -> None:
    """A delegate spends under its mandate; the payee knows the key."""
    owner, payee = w.party(10), w.party()
    delegate = w.party()
    terms = MandateTerms(account_id=owner.account, agent_key=delegate.id, currency=USD,
                         total_limit_atomic=5 * CENT, expires_at_ms=_now_ms() + 600_000)
    data, signature = sign_mandate(owner.key, terms)  # type: ignore[arg-type]
    mandate = owner.wallets.GrantMandate(wallet_pb2.GrantMandateRequest(
        idempotency_key="grant", terms=data, owner_signature=signature), timeout=TIMEOUT_S)
    w.squat(payee, ["delegated-1"])
    payee_before = w.posted(payee)
    delegate.wallets.Transfer(wallet_pb2.TransferRequest(
        idempotency_key="delegated-1", debit_account_id=owner.account,
        credit_account_id=payee.account, amount=_usd(2 * CENT),
        mandate_id=mandate.mandate_id, spender_id=delegate.id), timeout=TIMEOUT_S)
    assert w.posted(owner) == 8 * CENT and w.posted(payee) - payee_before == 2 * CENT
    assert w.node.wallets.controls.mandate(mandate.mandate_id).spent_atomic == 2 * CENT


def auto_release(w: World) -> None:
    """The buyer takes the sweep's key `auto-release:<agreement>`: the seller is still paid
    when the dispute window closes."""
    buyer, seller = w.party(10), w.party()
    deal = w.deal(buyer, seller, dispute_window_s=1)
    a = deal.agreement_id
    w.open(buyer, deal)
    w.redeem(seller, deal, ["a", "b", "c"])
    w.squat(buyer, [f"auto-release:{a}"], deal=deal, role="buyer")
    time.sleep(1.1)
    w.node.settlement.sweep()
    assert w.escrow(deal)["state"] == "settled"
    assert w.posted(seller) == split(3 * PRICE, FEE_BPS)[0]


def expire(w: World) -> None:
    """The seller takes the sweep's key `expire-agreement:<agreement>` and never delivers:
    the buyer's money still comes back at the deadline."""
    buyer, seller = w.party(10), w.party()
    deadline_ms = _now_ms() + 1_500
    deal = w.deal(buyer, seller, deadline_ms=deadline_ms)
    a = deal.agreement_id
    w.open(buyer, deal)
    w.squat(seller, [f"expire-agreement:{a}", f"expire:{w.escrow(deal)['hold_id']}"])
    # past the deadline and the seller's redeem grace (a tenth of the agreement's span)
    time.sleep(max(0, deadline_ms + 1_500 // REDEEM_GRACE_DIVISOR + 100 - _now_ms()) / 1000)
    w.node.settlement.sweep()
    assert w.escrow(deal)["state"] == "expired" and w.available(buyer) == 10 * CENT


@dataclass(frozen=True)
class Case:
    operation: str
    victim: str
    attacker: str
    run: Callable[[World], None]


CASES = [
    Case("hire", "buyer", "seller", hire),
    Case("paid-call", "buyer", "anyone-knowing-the-agreement", paid_call),
    Case("redeem", "seller", "buyer", redeem),
    Case("finish", "buyer", "seller", finish),
    Case("confirm", "buyer", "seller", confirm),
    Case("dispute", "buyer", "seller", dispute),
    Case("resolve", "arbiter", "buyer-and-seller", resolve),
    Case("verify", "buyer", "seller", verify_for_the_buyer),
    Case("verify", "seller", "buyer", verify_for_the_seller),
    Case("approve", "buyer", "seller", approve),
    Case("withdraw", "seller", "buyer", withdraw),
    Case("deposit", "depositor", "another-agent", deposit),
    Case("transfer", "payer", "payee", transfer),
    Case("hold-capture-void", "payer", "payee", hold_capture_void),
    Case("convert", "converter", "another-agent", convert),
    Case("mandate-spend", "delegate", "payee", mandate_spend),
    Case("auto-release", "seller", "buyer", auto_release),
    Case("expire", "buyer", "seller", expire),
]


@pytest.mark.parametrize("case", CASES,
                         ids=lambda c: f"{c.operation}-of-the-{c.victim}-after-the-{c.attacker}")
def test_the_victims_operation_succeeds_and_settles_exactly(world: World, case: Case):
    case.run(world)
    assert_books(world)


def test_ledger_verify_is_clean_after_every_case(world: World):
    """The operator's own check, as the command line runs it."""
    url = str(world.node.engine.url.render_as_string(hide_password=False))
    result = CliRunner().invoke(app, ["ledger", "verify", "--db", url])
    assert result.exit_code == 0, result.output
