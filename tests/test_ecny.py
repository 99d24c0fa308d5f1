"""e-CNY's wallet rules (wallets.ecny), each enforced in the debit's transaction: tier balance,
per-payment, daily and annual caps; controllable anonymity; settlement in fen; the "smart
contract" prepaid-funds pattern on the marketplace's escrow. On SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from marketplace.identity import AgentKey
from marketplace.receipts import ReceiptBook
from marketplace.testing import Harness, make_skill
from wallets.audit import check_balances
from wallets.ecny import CNY_ATOMIC, DEFAULT_TIERS, EcnyGuard, EcnyRules, EcnyWallets, TierLimit
from wallets.errors import FailedPrecondition, InvalidAmount, InvalidArgument
from wallets.ledger import Ledger
from wallets.rails_ecny import EcnyRail
from wallets.service import WalletService

FEN = CNY_ATOMIC // 100
MIDNIGHT_CST_MS = 1_700_064_000_000  # 2023-11-16 00:00 China Standard Time (15th, 16:00 UTC)


def cny(amount: str) -> int:
    from decimal import Decimal

    return int(Decimal(amount) * CNY_ATOMIC)


@pytest.fixture
def ecny(engine, clock):
    clock.now_ms = MIDNIGHT_CST_MS + 3600_000  # 01:00 in Beijing
    ledger = Ledger(engine, clock_ms=clock, guard=EcnyGuard())
    wallets = WalletService(ledger, rails=[EcnyRail()])
    yield ledger, wallets, EcnyWallets(ledger)
    ledger.close()


def _wallet(ledger: Ledger, wallets: WalletService, owner: str, amount: str = "0") -> str:
    account = ledger.open_account(owner, "ECNY").account_id
    if amount != "0":
        wallets.deposit(f"top-up-{owner}-{amount}", account, cny(amount), "ECNY")
    return account


def _state(ledger: Ledger) -> list:
    return [(b.owner, b.posted_atomic, b.pending_debits_atomic, b.pending_credits_atomic)
            for b in ledger.accounts()] + [len(ledger.postings(limit=10_000))]


def _refused(reason: str, fn, ledger: Ledger) -> None:
    before = _state(ledger)
    with pytest.raises(TierLimit) as raised:
        fn()
    assert raised.value.reason == reason, raised.value.message
    assert _state(ledger) == before


def test_the_anonymous_tier_caps_the_balance_counting_money_on_its_way(ecny):
    ledger, wallets, _ = ecny
    payer = _wallet(ledger, wallets, "payer", "10000")
    other = _wallet(ledger, wallets, "other", "3000")
    _refused("ECNY_BALANCE_CAP", lambda: wallets.deposit("more", payer, FEN, "ECNY"), ledger)
    ledger.transfer("pay", payer, other, cny("1000"))
    ledger.hold("incoming", other, payer, cny("1000"), timeout_s=60)  # back to 10,000 pending
    _refused("ECNY_BALANCE_CAP", lambda: wallets.deposit("more-2", payer, FEN, "ECNY"), ledger)


def test_payments_above_the_anonymous_limit_need_a_verified_identity(ecny):
    ledger, wallets, registry = ecny
    payer = _wallet(ledger, wallets, "payer", "9000")
    payee = _wallet(ledger, wallets, "payee")
    ledger.transfer("at-limit", payer, payee, cny("2000"))
    _refused("ECNY_IDENTITY_REQUIRED",
             lambda: ledger.transfer("above", payer, payee, cny("2000") + 1), ledger)
    registry.register("kyc", payer, 3, identity_ref="kyc-record-7")
    with pytest.raises(TierLimit):  # a refusal is the key's outcome, as for any policy
        ledger.transfer("above", payer, payee, cny("2000") + 1)
    ledger.transfer("above-2", payer, payee, cny("2000") + 1)
    _refused("ECNY_PAYMENT_CAP", lambda: ledger.transfer("big", payer, payee, cny("5000.01")),
             ledger)
    records = {r["spend_key"]: r for r in registry.payments(payer)}
    assert records["at-limit"]["identity_ref"] == ""  # small: pseudonyms only
    assert records["above-2"]["identity_ref"] == "kyc-record-7"  # large: traceable
    pseudonym = registry.wallet(payer).pseudonym
    assert {r["payer_pseudonym"] for r in records.values()} == {pseudonym}
    assert records["above-2"]["payee_pseudonym"] == registry.wallet(payee).pseudonym
    values = {str(v) for r in records.values() for v in r.values()}
    assert not {"payer", "payee"} & values  # the owners' agent ids never appear


def test_the_daily_cap_resets_at_midnight_china_time(ecny, clock):
    ledger, wallets, _ = ecny
    payer = _wallet(ledger, wallets, "payer", "9000")
    payee = _wallet(ledger, wallets, "payee")
    for n in range(2):
        ledger.transfer(f"p{n}", payer, payee, cny("2000"))
    ledger.hold("h", payer, payee, cny("1000"), timeout_s=60)  # a hold counts when placed
    _refused("ECNY_DAILY_CAP", lambda: ledger.transfer("p3", payer, payee, FEN), ledger)
    clock.now_ms = MIDNIGHT_CST_MS + 24 * 3600_000 - 1  # 23:59:59.999 in Beijing
    _refused("ECNY_DAILY_CAP", lambda: ledger.transfer("p4", payer, payee, FEN), ledger)
    clock.now_ms += 1
    ledger.transfer("p5", payer, payee, FEN)


def test_the_annual_cap_of_the_anonymous_tier(ecny, clock):
    ledger, wallets, registry = ecny
    payer = _wallet(ledger, wallets, "payer")
    payee = _wallet(ledger, wallets, "payee")
    registry.register("merchant-kyc", payee, 2, identity_ref="licence-1")
    for day in range(10):  # 5,000 a day, the daily cap, for ten days: 50,000
        wallets.deposit(f"top-{day}", payer, cny("5000"), "ECNY")
        for part, amount in enumerate(("2000", "2000", "1000")):
            ledger.transfer(f"pay-{day}-{part}", payer, payee, cny(amount))
        clock.advance(24 * 3600)
    wallets.deposit("top-10", payer, cny("5000"), "ECNY")
    _refused("ECNY_ANNUAL_CAP", lambda: ledger.transfer("pay-10", payer, payee, FEN), ledger)


def test_registration_needs_an_identity_for_verified_tiers_and_raises_the_caps(ecny):
    ledger, wallets, registry = ecny
    account = _wallet(ledger, wallets, "holder", "100")
    with pytest.raises(InvalidArgument, match="identity_ref"):
        registry.register("r1", account, 2)
    with pytest.raises(InvalidArgument, match="category"):
        registry.register("r1", account, 9, identity_ref="x")
    found = registry.register("r1", account, 2, identity_ref="id-and-bank")
    assert found.category == 2 and found.registered and len(found.pseudonym) <= 16
    assert registry.register("r1", account, 2, identity_ref="id-and-bank") == found
    wallets.deposit("big", account, cny("400000"), "ECNY")  # past category 4's 10,000
    _refused("ECNY_BALANCE_CAP", lambda: wallets.deposit("too-big", account, cny("100000"),
                                                         "ECNY"), ledger)
    assert DEFAULT_TIERS[3].source.startswith("ASSUMPTION")


def test_the_rail_moves_whole_fen_and_leaves_the_rest(ecny):
    ledger, wallets, _ = ecny
    account = _wallet(ledger, wallets, "holder", "1")
    with pytest.raises(InvalidAmount):
        wallets.deposit("sub-fen", account, FEN + 1, "ECNY")
    ledger.transfer("tip", ledger.open_account("tipper", "ECNY", "fx",
                                               credit_limit_atomic=10**12).account_id,
                    account, 3_333_333)  # a third of a fen arrives from a sub-fen price
    posting = wallets.withdraw("redeem", account, cny("1") + 3_333_333, "ECNY")
    assert -min(leg.posted_atomic for leg in posting.legs) == cny("1")  # whole fen paid out
    assert ledger.balance(account).posted_atomic == 3_333_333  # the rest stays
    assert check_balances(ledger).ok


# ---- the "smart contract" prepaid-funds pattern, on the marketplace's escrow ------------------


@pytest.fixture
def market(engine, clock):
    h = Harness(engine, clock, guard=EcnyGuard(EcnyRules()))
    h.settlement.receipts = ReceiptBook(engine, AgentKey.generate(), clock)
    h.advertise(make_skill(price_atomic=cny("300"), currency="ECNY"))
    h.fund(h.buyer, cny("5000"), "ECNY")
    yield h
    h.close()


def test_prepaid_funds_are_held_released_per_delivery_and_refunded(market: Harness):
    """The buyer prepays five sessions (held in escrow, not paid); three delivered sessions
    pass verification and are paid, two fail and go back, as e-CNY's prepaid-funds contracts
    release per service delivered and refund on failure."""
    deal = market.deal(price_atomic=cny("300"), quantity=5, currency="ECNY")
    market.open(deal)
    buyer = market.ledger.find_account(market.buyer.agent_id, "ECNY")
    assert market.ledger.balance(buyer.account_id).available_atomic == cny("3500")
    market.redeem(deal, [{"text": "1"}, {"text": "2"}, {"wrong": 3}, {"text": "4"},
                         {"wrong": 5}])
    escrow = market.confirm(deal)
    assert escrow["captured_atomic"] == cny("900")  # three delivered sessions
    assert escrow["refunded_atomic"] == cny("600")  # two failed, returned
    assert market.posted(market.seller, currency="ECNY") == cny("900") - escrow["fee_atomic"]
    assert market.posted(market.buyer, currency="ECNY") == cny("4100")
    kinds = [r["body"]["kind"] for r in market.settlement.receipts.receipts(deal.agreement_id)]
    assert kinds == ["capture"]


def test_a_prepayment_past_the_tier_is_refused_when_the_funds_would_be_held(market: Harness):
    deal = market.deal(price_atomic=cny("300"), quantity=8, currency="ECNY")  # 2,400 CNY
    with pytest.raises(TierLimit) as raised:
        market.open(deal)
    assert raised.value.reason == "ECNY_IDENTITY_REQUIRED"
    buyer = market.ledger.find_account(market.buyer.agent_id, "ECNY")
    assert market.ledger.balance(buyer.account_id).available_atomic == cny("5000")
    assert market.ledger.holds(account_id=buyer.account_id) == []


def test_a_top_up_reference_pays_the_wallet_it_was_made_out_to_and_no_other(ecny):
    """An operator's top-up is made out to one wallet: its reference, claimed again for another
    wallet (by anyone who learns it), is refused and credits nothing."""
    ledger, wallets, _ = ecny
    alice = _wallet(ledger, wallets, "alice")
    eve = _wallet(ledger, wallets, "eve")
    wallets.deposit("TOPUP-0001", alice, cny("100"), "ECNY")
    before = _state(ledger)
    for amount in ("100", "900"):
        with pytest.raises(FailedPrecondition) as refused:
            wallets.deposit("TOPUP-0001", eve, cny(amount), "ECNY")
        assert refused.value.reason == "DEPOSIT_REFERENCE_USED"
    assert _state(ledger) == before
    assert wallets.deposit("TOPUP-0001", alice, cny("100"), "ECNY").kind == "deposit"  # retry
    assert ledger.balance(alice).posted_atomic == cny("100")
