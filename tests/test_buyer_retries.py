"""Retries a buyer makes after a refusal, a lost answer or a cancelled call: a refused
dispute or confirm can be made again once its cause is gone, a call retried with its call id
is answered once and charged once, and a call the SDK named that got no answer does not keep
a call's budget for good (sync and async buyers)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents import (
    AgreementState,
    AsyncBuyerAgent,
    BudgetExceeded,
    BuyerAgent,
    FailedPrecondition,
    IdempotencyConflict,
    SellerAgent,
)
from agents._deal import Deal
from marketplace.node import MarketplaceNode
from tests.test_seller_restart import upper
from wallets.audit import check_balances, verify_chain
from wallets.currencies import format_amount


@pytest.fixture
def node(tmp_path: Path) -> Iterator[MarketplaceNode]:
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as started, \
            SellerAgent("upper", skills=[upper], marketplace=started.address,
                        dispute_window_s=600):
        yield started


def _hired(buyer: BuyerAgent, name: str = "upper", quantity: int = 3) -> Deal:
    buyer.fund("1.00", "USD")
    deal = buyer.negotiate(buyer.discover(name, currency="USD"), name, quantity=quantity,
                           budget="0.05", currency="USD")
    buyer.hire(deal)
    return deal


async def _ahired(buyer: AsyncBuyerAgent, name: str = "upper", quantity: int = 3) -> Deal:
    await buyer.fund("1.00", "USD")
    deal = await buyer.negotiate(await buyer.discover(name, currency="USD"), name,
                                 quantity=quantity, budget="0.05", currency="USD")
    await buyer.hire(deal)
    return deal


def _books_sound(node: MarketplaceNode) -> None:
    assert check_balances(node.ledger).ok and verify_chain(node.ledger).ok


# ---- 1. a refused dispute or confirm is not refused for good ------------------------------


def test_a_dispute_refused_while_active_is_made_after_finishing(node: MarketplaceNode):
    with BuyerAgent("disputer", marketplace=node.address) as buyer:
        deal = _hired(buyer)
        buyer.call(deal, {"text": "one"})
        with pytest.raises(FailedPrecondition, match="finish first"):
            buyer.dispute(deal, "the output is wrong")
        buyer.finish(deal, confirm=False)
        escrow = buyer.dispute(deal, "the output is wrong")
        assert escrow.state == AgreementState.DISPUTED
        again = buyer.dispute(deal, "the output is wrong")  # a retry: the first outcome
        assert again.state == AgreementState.DISPUTED
        with pytest.raises(IdempotencyConflict):  # same key, another request
            buyer.dispute(deal, "another reason")
    _books_sound(node)


def test_a_dispute_with_another_reason_after_a_refusal(node: MarketplaceNode):
    async def task() -> Any:
        async with AsyncBuyerAgent("adisputer", marketplace=node.address) as buyer:
            deal = await _ahired(buyer)
            await buyer.call(deal, {"text": "one"})
            with pytest.raises(FailedPrecondition, match="finish first"):
                await buyer.dispute(deal, "first reason")
            await buyer.finish(deal, confirm=False)
            escrow = await buyer.dispute(deal, "a better reason")
            assert deal.state()["refusals"] == {"dispute": 1}
            return escrow, deal.agreement_id

    escrow, agreement_id = asyncio.run(task())
    assert escrow.state == AgreementState.DISPUTED
    assert node.settlement.disputes.get(agreement_id).reason == "a better reason"


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_confirm_refused_while_active_is_made_after_finishing(node: MarketplaceNode,
                                                                flavour: str):
    if flavour == "sync":
        with BuyerAgent("confirmer", marketplace=node.address) as buyer:
            deal = _hired(buyer)
            buyer.call(deal, {"text": "one"})
            with pytest.raises(FailedPrecondition, match="finish first"):
                buyer.confirm(deal)
            buyer.finish(deal, confirm=False)
            assert buyer.confirm(deal).state == AgreementState.SETTLED
    else:
        async def task() -> Any:
            async with AsyncBuyerAgent("aconfirmer", marketplace=node.address) as buyer:
                deal = await _ahired(buyer)
                await buyer.call(deal, {"text": "one"})
                with pytest.raises(FailedPrecondition, match="finish first"):
                    await buyer.confirm(deal)
                await buyer.finish(deal, confirm=False)
                return await buyer.confirm(deal)

        assert asyncio.run(task()).state == AgreementState.SETTLED
    _books_sound(node)


def test_refusal_counts_survive_a_checkpoint_and_old_checkpoints_load(node: MarketplaceNode):
    with BuyerAgent("checkpointer", marketplace=node.address) as buyer:
        deal = _hired(buyer)
        buyer.call(deal, {"text": "one"})
        with pytest.raises(FailedPrecondition):
            buyer.dispute(deal, "too early")
        state = deal.state()
        assert state["refusals"] == {"dispute": 1}
        old = {k: v for k, v in state.items() if k != "refusals"}
        key = buyer.key
    with BuyerAgent("again", marketplace=node.address, key=key) as resumed:
        assert resumed.restore_deal(old).refusals == {}
    with BuyerAgent("again2", marketplace=node.address, key=key) as resumed:
        restored = resumed.restore_deal(state)
        assert restored.refusals == {"dispute": 1}
        resumed.finish(restored, confirm=False)
        assert resumed.dispute(restored, "now").state == AgreementState.DISPUTED


# ---- 2. a call retried with its call id after its answer came back ------------------------


def test_a_call_retried_with_its_call_id_is_answered_once_and_charged_once(
        node: MarketplaceNode):
    def sync() -> tuple[list[Any], int, int, Any, int]:
        with BuyerAgent("retrier", marketplace=node.address) as buyer:
            deal = _hired(buyer)
            first = buyer.call(deal, {"text": "a"}, call_id="same-id")
            second = buyer.call(deal, {"text": "a"}, call_id="same-id")
            third = buyer.call(deal, {"text": "b"})
            session = buyer.sessions[deal.agreement_id]
            return ([first, second, third], session.charged_atomic, session.reserved_atomic,
                    buyer.finish(deal), deal.body.terms.unit_price_atomic)

    async def run_async() -> tuple[list[Any], int, int, Any, int]:
        async with AsyncBuyerAgent("aretrier", marketplace=node.address) as buyer:
            deal = await _ahired(buyer)
            first = await buyer.call(deal, {"text": "a"}, call_id="same-id")
            second = await buyer.call(deal, {"text": "a"}, call_id="same-id")
            third = await buyer.call(deal, {"text": "b"})
            session = buyer.sessions[deal.agreement_id]
            return ([first, second, third], session.charged_atomic, session.reserved_atomic,
                    await buyer.finish(deal), deal.body.terms.unit_price_atomic)

    for outputs, charged, reserved, escrow, price in (sync(), asyncio.run(run_async())):
        assert outputs == [{"text": "A"}, {"text": "A"}, {"text": "B"}]
        assert charged == 2 * price and reserved == 0  # the replay is not booked again
        assert escrow.captured_atomic == 2 * price
    _books_sound(node)


# ---- 3. a call the SDK named that got no answer -------------------------------------------


async def _never_answered(*_args: Any) -> Any:
    await asyncio.Event().wait()  # the request never reaches the seller


def test_an_async_call_cancelled_keeps_its_reservation_until_finish(node: MarketplaceNode):
    """Nobody can retry a call whose id the SDK drew: its prepayment stays reserved (the seller
    may have run it) and says so when the budget runs out; finish pays what was charged and
    gives the rest back."""

    async def task() -> tuple[list[Any], str, Any, int]:
        async with AsyncBuyerAgent("canceller", marketplace=node.address) as buyer:
            deal = await _ahired(buyer)
            send = buyer._send
            buyer._send = _never_answered  # type: ignore[method-assign]
            call = asyncio.create_task(buyer.call(deal, {"text": "lost"}))
            await asyncio.sleep(0.05)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            buyer._send = send  # type: ignore[method-assign]
            outputs = [await buyer.call(deal, {"text": f"t{i}"}) for i in range(2)]
            with pytest.raises(BudgetExceeded) as refused:
                await buyer.call(deal, {"text": "too many"})
            return (outputs, refused.value.message, await buyer.finish(deal),
                    deal.body.terms.unit_price_atomic)

    outputs, message, escrow, price = asyncio.run(task())
    assert outputs == [{"text": "T0"}, {"text": "T1"}]
    assert f"{format_amount(price, 'USD')} is reserved for calls not yet booked" in message
    assert escrow.captured_atomic == 2 * price
    _books_sound(node)
