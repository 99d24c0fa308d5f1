"""The SDK raises only its own errors, each with status, reason, a one-line message and the
trace id; results are typed (Money, Wallet, Escrow, CallResult), never protobuf messages.

Issue 15 findings 3 (two kinds of errors; a call after finish) and 7 (no balance; finish()
returned protobuf), and issue 14's "SDK input errors" (malformed amounts, currencies, ids and
keys raised decimal.InvalidOperation, OverflowError or protobuf's ValueError).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, is_dataclass
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

import agents
from agents import (
    AgentmarketError,
    AgreementEnded,
    AgreementState,
    BuyerAgent,
    CallResult,
    Escrow,
    FailedPrecondition,
    InsufficientFunds,
    InvalidAmount,
    InvalidArgument,
    Money,
    SellerAgent,
    Unavailable,
    UnknownCurrency,
    Usage,
    Wallet,
    per_call,
    skill,
)
from marketplace.node import MarketplaceNode
from tests.processes.node import free_port


class Shout(BaseModel):
    text: str


@skill(price=per_call("0.001", "USD"))
def shout(text: str) -> Shout:
    """Upper-case a text."""
    return Shout(text=text.upper())


@dataclass
class Market:
    node: MarketplaceNode
    seller: SellerAgent
    buyer: BuyerAgent
    spans: InMemorySpanExporter

    def deal(self, quantity: int = 3) -> agents.Deal:
        listing = self.buyer.discover("shout", currency="USD")[0]
        return self.buyer.negotiate(listing, "shout", quantity=quantity, budget="0.01",
                                    currency="USD")


@pytest.fixture
def market(tmp_path: Path) -> Iterator[Market]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600,
                         tracer_provider=provider) as node, \
            SellerAgent("shouter", skills=[shout], marketplace=node.address,
                        tracer_provider=provider) as seller, \
            BuyerAgent("me", marketplace=node.address, tracer_provider=provider) as buyer:
        yield Market(node, seller, buyer, spans)


# ---- issue 14: SDK input errors ---------------------------------------------------------------


@pytest.mark.parametrize("amount", ["abc", "1,00", "sNaN", "NaN", "Infinity", "-Infinity",
                                    "1e30", "1e400", "-1", "0.0000000001", "", " ", "1.0.0",
                                    "1e3", "1_000", "+1", "0x10"])
def test_a_malformed_amount_is_refused_naming_it(market: Market, amount: str):
    with pytest.raises(InvalidAmount) as caught:
        market.buyer.fund(amount, "USD")
    error = caught.value
    assert repr(amount)[:20].strip("'") in error.message, error.message
    assert "\n" not in error.message and error.status == "INVALID_ARGUMENT"
    assert error.reason == "INVALID_AMOUNT"
    assert market.buyer.balance("USD") == Money(0, "USD")  # nothing changed


@pytest.mark.parametrize("amount", [1.5, True, None, [1], Decimal("NaN")])
def test_amounts_that_are_not_exact_decimals_are_refused(market: Market, amount: object):
    with pytest.raises(InvalidAmount):
        market.buyer.fund(amount, "USD")  # type: ignore[arg-type]


def test_zero_funding_is_refused_and_the_budget_is_checked_too(market: Market):
    with pytest.raises(InvalidAmount, match="more than zero"):
        market.buyer.fund("0", "USD")
    market.buyer.fund("1.00", "USD")
    listing = market.buyer.discover("shout", currency="USD")[0]
    for budget in ("abc", "1e400", "0"):
        with pytest.raises(InvalidAmount):
            market.buyer.negotiate(listing, "shout", quantity=3, budget=budget, currency="USD")


@pytest.mark.parametrize("code", ["XYZ", "", "dollars", 5, None])
def test_an_unknown_currency_is_refused_naming_it(market: Market, code: object):
    with pytest.raises(UnknownCurrency) as caught:
        market.buyer.fund("1.00", code)  # type: ignore[arg-type]
    assert "known: ECNY, USD, USDC" in caught.value.message


@pytest.mark.parametrize("key", ["", " ", "k" * 300, 7])
def test_a_malformed_idempotency_key_is_refused(market: Market, key: object):
    with pytest.raises(InvalidArgument, match="idempotency key"):
        market.buyer.fund("1.00", "USD", idempotency_key=key)  # type: ignore[arg-type]


def test_malformed_ids_keys_and_counts_are_the_projects_errors(market: Market, tmp_path: Path):
    with pytest.raises(InvalidArgument, match="host:port"):
        BuyerAgent("me", marketplace="not an address")
    with pytest.raises(InvalidArgument, match="key file"):
        BuyerAgent("me", marketplace=market.node.address, key=str(tmp_path / "missing.key"))
    (tmp_path / "bad.key").write_text("not hex\n")
    with pytest.raises(InvalidArgument, match="does not hold a key"):
        BuyerAgent("me", marketplace=market.node.address, key=tmp_path / "bad.key")
    with pytest.raises(InvalidArgument, match="name"):
        BuyerAgent("me", marketplace=market.node.address, key="no spaces allowed")
    market.buyer.fund("1.00", "USD")
    listing = market.buyer.discover("shout", currency="USD")[0]
    for quantity in (0, -1, "3", 2.5):
        with pytest.raises(InvalidArgument, match="quantity"):
            market.buyer.negotiate(listing, "shout", quantity=quantity, budget="0.01",  # type: ignore[arg-type]
                                   currency="USD")
    with pytest.raises(InvalidArgument, match="listing"):
        market.buyer.negotiate("shouter", "shout", quantity=3, budget="0.01",  # type: ignore[arg-type]
                               currency="USD")
    with pytest.raises(InvalidArgument, match="Deal"):
        market.buyer.hire("an agreement id")  # type: ignore[arg-type]
    deal = market.deal()
    with pytest.raises(InvalidArgument, match="dict"):
        market.buyer.call(deal, "hello")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="not this buyer's"):
        BuyerAgent("other", marketplace=market.node.address).call(deal, {"text": "x"})


# ---- finding 3: one kind of error ------------------------------------------------------------


def test_a_call_before_hire_is_the_projects_error_with_status_reason_and_trace(market: Market):
    market.buyer.fund("1.00", "USD")
    deal = market.deal()
    with pytest.raises(FailedPrecondition) as caught:
        market.buyer.call(deal, {"text": "unpaid"})
    error = caught.value
    assert not isinstance(error, grpc.RpcError)
    assert (error.status, error.reason) == ("FAILED_PRECONDITION", "FAILED_PRECONDITION")
    assert error.message == "the agreement has no escrow yet: hire first"
    assert len(error.trace_id) == 32  # the failed call's trace, recorded by the seller
    traced = {format(s.context.trace_id, "032x") for s in market.spans.get_finished_spans()
              if s.name.endswith("/Invoke")}
    assert error.trace_id in traced


def test_a_call_after_finish_says_the_agreement_ended(market: Market):
    market.buyer.fund("1.00", "USD")
    deal = market.deal()
    market.buyer.hire(deal)
    market.buyer.call(deal, {"text": "one"})
    market.buyer.finish(deal)
    with pytest.raises(AgreementEnded, match="is settled") as caught:
        market.buyer.call(deal, {"text": "two"})
    assert caught.value.status == "FAILED_PRECONDITION"
    # another process holding the deal learns it from the seller, with the same class
    other = BuyerAgent("me-again", marketplace=market.node.address, key=market.buyer.key)
    with pytest.raises(AgreementEnded, match="redeemed"):
        other.call(other.restore_deal(deal.state()), {"text": "three"})
    other.close()


def test_hiring_without_a_wallet_or_without_money_are_the_projects_errors(market: Market):
    deal = market.deal()
    with pytest.raises(FailedPrecondition, match="no USD wallet"):
        market.buyer.hire(deal)  # never opened
    assert market.buyer.balance("USD") == Money(0, "USD")  # opens it
    with pytest.raises(InsufficientFunds) as caught:
        market.buyer.hire(deal)
    assert caught.value.reason == "INSUFFICIENT_FUNDS"


def test_an_unreachable_marketplace_is_unavailable_naming_nothing_of_grpc(tmp_path: Path):
    port = free_port()  # nothing listens there, and no bind to port 0 is handed it meanwhile
    with BuyerAgent("me", marketplace=f"127.0.0.1:{port}") as buyer, \
            pytest.raises(Unavailable) as caught:
        buyer.balance("USD")
    assert caught.value.status == "UNAVAILABLE" and "\n" not in caught.value.message


def test_the_exception_tree_is_drawn_in_the_errors_module_docstring():
    import agents.errors as module

    drawn = module.__doc__ or ""
    for name in module.__all__:
        cls = getattr(module, name)
        assert f" {name} " in drawn, f"{name} is exported but not drawn"
        assert issubclass(cls, AgentmarketError)
    exported = {n for n in agents.__all__ if isinstance(getattr(agents, n), type)
                and issubclass(getattr(agents, n), Exception)}
    assert exported <= set(module.__all__)


def test_every_public_method_converts_grpc_errors():
    """No public method of the SDK's agents is left without the conversion."""
    for path in ("agents/buyer.py", "agents/async_buyer.py"):
        tree = ast.parse(Path(path).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name.endswith("BuyerAgent"):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and \
                            not item.name.startswith("_") and item.name not in ("close",):
                        names = {getattr(d, "id", "") for d in item.decorator_list}
                        assert names & {"sdk_method", "async_sdk_method"}, \
                            f"{path}: {node.name}.{item.name}"


# ---- finding 7: typed results ----------------------------------------------------------------


def test_balance_hire_call_and_finish_are_typed_and_exact(market: Market):
    buyer = market.buyer
    assert buyer.balance("USD") == Money(0, "USD")
    posting = buyer.fund("1.00", "USD")
    assert posting.kind == "deposit" and not isinstance(posting, Message)
    balance = buyer.balance("USD")
    assert isinstance(balance, Money) and str(balance) == "1.00 USD"
    assert balance.amount == Decimal("1.00") and balance.amount_atomic == 10**9
    deal = market.deal(quantity=3)
    escrow = buyer.hire(deal)
    assert isinstance(escrow, Escrow) and is_dataclass(escrow)
    assert escrow.state is AgreementState.ACTIVE and str(escrow.state) == "active"
    wallet = buyer.wallet("USD")
    assert isinstance(wallet, Wallet) and wallet.held == escrow.held
    assert wallet.available + wallet.held == Money.of("1.00", "USD")
    result = buyer.invoke(deal, {"text": "hi"})
    assert isinstance(result, CallResult) and isinstance(result.usage, Usage)
    assert result.usage.charged == Money(deal.body.terms.unit_price_atomic, "USD")
    assert buyer.call(deal, {"text": "typed"}, output_type=Shout) == Shout(text="TYPED")
    done = buyer.finish(deal)
    assert isinstance(done, Escrow) and not isinstance(done, Message)
    assert done.state == AgreementState.SETTLED
    price = deal.body.terms.unit_price_atomic
    assert done.captured_atomic == 2 * price  # protobuf field names keep working
    assert done.seller_net == done.captured - done.fee
    assert "seller paid" in str(done) and "USD" in str(done)
    assert buyer.balance("USD") == Money.of("1.00", "USD") - done.captured
    with pytest.raises(InvalidArgument):
        Money(1, "USD") + Money(1, "ECNY")


def test_a_call_beyond_the_agreement_names_its_amounts_in_the_currency(market: Market):
    market.buyer.fund("1.00", "USD")
    deal = market.deal(quantity=1)
    market.buyer.hire(deal)
    market.buyer.call(deal, {"text": "one"})
    with pytest.raises(agents.BudgetExceeded) as refused:
        market.buyer.call(deal, {"text": "two"})
    assert refused.value.status == "RESOURCE_EXHAUSTED"
    assert re.search(r"prepaying [0-9.]+ USD more would exceed the agreement's maximum of "
                     r"[0-9.]+ USD \(charged [0-9.]+ USD so far\)", refused.value.message), \
        refused.value.message


def test_a_database_that_cannot_be_opened_is_the_projects_error(tmp_path: Path):
    with pytest.raises(InvalidArgument, match="not a database URL"):
        MarketplaceNode("nope://x")
    with pytest.raises(FailedPrecondition, match=r"cannot open the database .*\*\*\*@"):
        MarketplaceNode("postgresql://someone:secret@127.0.0.1:1/none")  # password masked
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}") as node, \
            pytest.raises(FailedPrecondition, match="cannot open the database"):
        SellerAgent("s", skills=[shout], marketplace=node.address,
                    journal=tmp_path / "no" / "such" / "dir" / "j.db")


def test_a_closed_buyer_refuses_every_call_with_the_projects_error(market: Market):
    with BuyerAgent("brief", marketplace=market.node.address) as buyer:
        buyer.fund("0.10", "USD")
    for call in (lambda: buyer.discover("shout", currency="USD"),  # never used: no channel
                 lambda: buyer.fund("1", "USD"), lambda: buyer.balance("USD")):
        with pytest.raises(FailedPrecondition, match="is closed"):
            call()


def test_a_port_another_process_listens_on_is_refused_not_shared(market: Market,
                                                                  tmp_path: Path):
    from marketplace.grpc_listen import PortUnavailable

    with pytest.raises(PortUnavailable, match="another process listens on that port"):
        MarketplaceNode(f"sqlite:///{tmp_path / 'other.db'}", port=market.node.port,
                        sweep_interval_s=3600)
    with pytest.raises(PortUnavailable):
        SellerAgent("squatter", skills=[shout], marketplace=market.node.address,
                    port=market.seller.port)


def test_a_skill_without_type_hints_is_refused_naming_the_parameter():
    def untyped(text):  # type: ignore[no-untyped-def]
        """No hints."""
        return text

    def unreturned(text: str):  # type: ignore[no-untyped-def]
        """No return hint."""
        return text

    with pytest.raises(InvalidArgument, match="parameter 'text' has no type hint"):
        skill(untyped, price=per_call("0.001", "USD"))
    with pytest.raises(InvalidArgument, match="no return type hint"):
        skill(unreturned, price=per_call("0.001", "USD"))
    assert skill(unreturned, price=per_call("0.001", "USD"), output_model=Shout).name \
        == "unreturned"  # a model given instead of the hint
    with pytest.raises(InvalidArgument, match="needs its price"):
        skill(shout.handler)  # `@skill` with no parentheses, so no price
