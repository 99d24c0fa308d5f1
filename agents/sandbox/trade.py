"""One task, through the real stack: negotiate, convert currency if need be, hire (escrow),
paid calls, then settle, or dispute forged work and have the arbiter decide.

`run_task` returns the task's events with their simulated times: negotiation takes a fixed time
a round, a call the time its work takes (tokens at a fixed rate, GPU-seconds as such), a
confirmed settlement a second and an arbitrated one the scenario's arbiter delay. What the stack
answers (prices agreed, charges, fees, refunds, refusals) is what the events record.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

import grpc

from agents._deal import Deal
from agents._rpc import sdk_error
from agents.errors import AgentmarketError
from agents.sandbox.events import Event
from agents.sandbox.market import RPC_TIMEOUT_S, Buyer, Market, Seller
from agents.sandbox.skills import arguments, forged
from marketplace import agreements as ag
from marketplace.v1 import dispute_pb2, registry_pb2
from wallets.currencies import currency
from wallets.fx import FxQuote, convert_amount
from wallets.v1 import wallet_pb2

NEGOTIATION_ROUND_MS = 200
SETTLE_MS = 1_000
CALL_MS = 400
TOKENS_PER_S = 80
MAX_REASON_CHARS = 120
_REQUEST_ID = re.compile(r"\s*\(request id [0-9a-f]+\)")
_HEX_ID = re.compile(r"\b[0-9a-f]{12,}\b")


@dataclass(frozen=True)
class Task:
    """What the round's plan decided: who buys from whom, how many calls, how big."""

    name: str
    round: int
    start_ms: int
    buyer: Buyer
    seller: Seller
    listing: registry_pb2.Listing
    calls: int
    size: int
    verify: bool


def in_currency(amount_atomic: int, rate: Fraction, from_code: str, to_code: str) -> int:
    """An amount of `from_code` in `to_code` at a units-per-unit rate, rounded down."""
    shift = currency(to_code).scale - currency(from_code).scale
    return int(amount_atomic * rate * Fraction(10) ** shift)


def decimal(amount_atomic: int, code: str) -> Decimal:
    return Decimal(amount_atomic).scaleb(-currency(code).scale)


def _reason(error: Exception) -> str:
    """A refusal as the event shows it: the SDK's error class, or the gRPC status, and why."""
    if isinstance(error, grpc.RpcError):
        error = sdk_error(error)
    assert isinstance(error, AgentmarketError)
    message = _REQUEST_ID.sub("", error.message)  # per-request ids are random: not in events
    return f"{type(error).__name__}: {_HEX_ID.sub('<id>', message)}"[:MAX_REASON_CHARS]


class _Clock:
    def __init__(self, task: Task) -> None:
        self.task, self.t_ms = task, task.start_ms

    def event(self, kind: str, **values: object) -> Event:
        task = self.task
        return Event(t_ms=self.t_ms, round=task.round, kind=kind, task=task.name,
                     buyer=task.buyer.name, seller=task.seller.name,
                     skill=task.seller.group.skill, **values)  # type: ignore[arg-type]


def run_task(market: Market, task: Task) -> list[Event]:
    """Run one task; every failure the stack reports becomes an event, never an exception."""
    clock, events = _Clock(task), []
    buyer, seller = task.buyer, task.seller
    sold, wallet_code = seller.group.currency, buyer.group.currency
    rate = market.fx.rate(wallet_code, sold)
    budget = in_currency(buyer.group.task_budget_atomic, rate, wallet_code, sold)
    reservation = in_currency(buyer.group.reservation_atomic, rate, wallet_code, sold)
    try:
        deal = buyer.agent.negotiate(
            task.listing, seller.group.skill, quantity=task.calls, currency=sold,
            budget=decimal(budget, sold), reservation_price_atomic=reservation, failover=False)
    except (AgentmarketError, grpc.RpcError) as error:
        clock.t_ms += NEGOTIATION_ROUND_MS
        return [clock.event("no_deal", currency=sold, detail=_reason(error))]
    terms = deal.body.terms
    clock.t_ms += NEGOTIATION_ROUND_MS * deal.rounds
    agreed_ms = clock.t_ms
    events.append(clock.event("agreement", currency=sold, amount_atomic=terms.max_total_atomic,
                              unit_price_atomic=terms.unit_price_atomic, quantity=task.calls,
                              detail=f"rounds={deal.rounds}"))
    try:
        if wallet_code != sold:
            events += _convert(market, clock, terms.max_total_atomic)
        buyer.agent.hire(deal, idempotency_key=f"hire:{task.name}")
    except (AgentmarketError, grpc.RpcError) as error:
        return [*events, clock.event("refused", currency=sold, detail=_reason(error))]
    outputs = []
    for index in range(task.calls):
        job = f"{task.name}-{index}"
        try:
            result = buyer.agent.invoke(deal, arguments(seller.group.kind, job, task.size),
                                        call_id=job)
        except (AgentmarketError, grpc.RpcError) as error:
            clock.t_ms += CALL_MS
            events.append(clock.event("call_failed", currency=sold, detail=_reason(error)))
            continue
        usage = result.usage
        clock.t_ms += _call_ms(seller.group.kind, usage.input_tokens, usage.output_tokens,
                               usage.units)
        outputs.append(result.output)
        events.append(clock.event(
            "call", currency=sold, amount_atomic=usage.charged_atomic,
            unit_price_atomic=terms.unit_price_atomic, quantity=1,
            detail=f"in={usage.input_tokens} out={usage.output_tokens} units={usage.units}"))
    bad = sum(forged(o) for o in outputs)
    try:
        if task.verify and bad:
            events += _dispute(market, clock, deal, bad, agreed_ms)
        else:
            escrow = buyer.agent.finish(deal, confirm=bool(outputs))
            clock.t_ms += SETTLE_MS
            events.append(clock.event(
                "settle", currency=sold, amount_atomic=escrow.captured_atomic,
                fee_atomic=escrow.fee_atomic, to_amount_atomic=escrow.refunded_atomic,
                latency_ms=clock.t_ms - agreed_ms,
                detail=f"state={escrow.state} unnoticed_forgeries={bad}"))
    except (AgentmarketError, grpc.RpcError) as error:
        events.append(clock.event("refused", currency=sold, detail=_reason(error)))
    return events


def _call_ms(kind: str, input_tokens: int, output_tokens: int, units: int) -> int:
    if kind == "token":
        return CALL_MS + (input_tokens // 10 + output_tokens) * 1000 // TOKENS_PER_S
    if kind == "gpu":
        return units * 1000
    return CALL_MS


def _convert(market: Market, clock: _Clock, needed_atomic: int) -> list[Event]:
    """Buy what the escrow needs in the seller's currency, less what the wallet already has."""
    task = clock.task
    buyer, code, sold = task.buyer, task.buyer.group.currency, task.seller.group.currency
    target = market.account(buyer, sold)
    have = buyer.agent.wallet(sold).available.amount_atomic
    if have >= needed_atomic:
        return []
    stub = buyer.agent.wallets
    quote = stub.GetQuote(wallet_pb2.GetQuoteRequest(
        idempotency_key=f"quote:{task.name}", from_currency=code, to_currency=sold),
        timeout=RPC_TIMEOUT_S)
    shortfall = needed_atomic - have
    pay = -(-shortfall * quote.rate_denominator // quote.rate_numerator)
    while convert_amount_of(pay, quote) < shortfall:
        pay += 1
    done = stub.Convert(wallet_pb2.ConvertRequest(
        idempotency_key=f"convert:{task.name}", quote_id=quote.quote_id,
        from_account_id=market.account(buyer, code), to_account_id=target,
        amount=wallet_pb2.Money(amount_atomic=pay, currency=code)), timeout=RPC_TIMEOUT_S)
    return [clock.event("fx", currency=code, amount_atomic=done.sold.amount_atomic,
                        to_currency=sold, to_amount_atomic=done.bought.amount_atomic,
                        detail=f"rate={quote.rate_numerator}/{quote.rate_denominator}")]


def convert_amount_of(amount_atomic: int, quote: wallet_pb2.FxQuote) -> int:
    """What `amount_atomic` buys under a quote message (the ledger's own rounding)."""
    return convert_amount(amount_atomic, FxQuote(
        quote.quote_id, quote.from_currency, quote.to_currency, quote.rate_numerator,
        quote.rate_denominator, quote.provider, 0, 0))


def _dispute(market: Market, clock: _Clock, deal: Deal, bad: int, agreed_ms: int
             ) -> list[Event]:
    """Finish without accepting, dispute, and let the arbiter check the delivered outputs."""
    task = clock.task
    buyer, sold = task.buyer.agent, task.seller.group.currency
    buyer.finish(deal, confirm=False)
    escrow = buyer.dispute(deal, f"{bad} outputs do not match their jobs")
    clock.t_ms += SETTLE_MS
    events = [clock.event("dispute", currency=sold, amount_atomic=escrow.earned_atomic,
                          detail=f"forged={bad}")]
    agreement_id = deal.agreement_id
    record = market.arbitration.GetDispute(dispute_pb2.GetDisputeRequest(
        agreement_id=agreement_id), timeout=RPC_TIMEOUT_S)
    delivered = [json.loads(r.output_json) for r in record.delivery.receipts if r.output_json]
    found = sum(forged(o) for o in delivered)
    outcome = dispute_pb2.DISPUTE_OUTCOME_BUYER if found else \
        dispute_pb2.DISPUTE_OUTCOME_SELLER
    note = f"{found} of {len(delivered)} outputs forged"
    key = market.arbiter_key
    resolved = market.arbitration.ResolveDispute(dispute_pb2.ResolveDisputeRequest(
        idempotency_key=f"resolve:{task.name}", agreement_id=agreement_id, outcome=outcome,
        seller_atomic=0, note=note, arbiter_id=key.agent_id,
        arbiter_signature=key.sign(ag.resolve_message(agreement_id, outcome, 0, note))),
        timeout=RPC_TIMEOUT_S)
    clock.t_ms += market.scenario.arbiter_delay_s * 1000
    events.append(clock.event(
        "resolve", currency=sold, amount_atomic=resolved.captured_atomic,
        fee_atomic=resolved.fee_atomic, to_amount_atomic=record.frozen_atomic -
        resolved.captured_atomic, latency_ms=clock.t_ms - agreed_ms,
        detail="buyer" if found else "seller"))
    return events
