"""ConditionalHoldService over gRPC: a thin adapter over `wallets.conditional`, and its access
rules (applied at the edge like `wallets.access`'s):

    Hold     the owner of the debit account (never a rail account)
    Fulfil   any authenticated caller: the preimage is the authority, and the money can only
             go to the hold's own credit account
    Get      an owner of either side, the marketplace or an operator
"""

from __future__ import annotations

from typing import Any

import grpc

from wallets.access import Rule, WalletAccess, _short
from wallets.conditional import ConditionalHold, ConditionalHolds
from wallets.errors import Forbidden, InvalidArgument
from wallets.grpc_errors import grpc_method
from wallets.servicer import hold_message
from wallets.v1 import conditional_pb2, conditional_pb2_grpc

SERVICE = "wallets.v1.ConditionalHoldService"


def conditional_message(found: ConditionalHold, now_ms: int) -> conditional_pb2.ConditionalHold:
    return conditional_pb2.ConditionalHold(
        hold=hold_message(found.hold), condition_sha256=found.condition_sha256,
        fulfilment=bytes.fromhex(found.fulfilment), now_ms=now_ms)


class ConditionalHoldServicer(conditional_pb2_grpc.ConditionalHoldServiceServicer):
    def __init__(self, holds: ConditionalHolds) -> None:
        self.holds = holds
        self.ledger = holds.ledger

    @grpc_method
    def Hold(self, request: conditional_pb2.ConditionalHoldRequest,
             context: grpc.ServicerContext) -> conditional_pb2.ConditionalHold:
        if not request.amount.currency:
            raise InvalidArgument("amount.currency is required")
        debit = self.ledger.balance(request.debit_account_id)
        if debit.currency != request.amount.currency.upper():
            raise InvalidArgument(f"account {debit.account_id} holds {debit.currency}, not "
                                  f"{request.amount.currency}")
        found = self.holds.hold(request.idempotency_key, request.debit_account_id,
                                request.credit_account_id, request.amount.amount_atomic,
                                condition_sha256=request.condition_sha256,
                                expires_at_ms=request.expires_at_ms)
        return conditional_message(found, self.ledger.clock_ms())

    @grpc_method
    def Fulfil(self, request: conditional_pb2.FulfilRequest,
               context: grpc.ServicerContext) -> conditional_pb2.ConditionalHold:
        found, _posting = self.holds.fulfil(request.idempotency_key, request.hold_id,
                                            request.preimage)
        return conditional_message(found, self.ledger.clock_ms())

    @grpc_method
    def Get(self, request: conditional_pb2.GetConditionalHoldRequest,
            context: grpc.ServicerContext) -> conditional_pb2.ConditionalHold:
        return conditional_message(self.holds.get(request.hold_id), self.ledger.clock_ms())


def conditional_rules(access: WalletAccess) -> dict[str, Rule]:
    """Method name -> rule(caller, request), over the wallets' own access rules."""

    def read(caller: str, request: Any) -> None:
        hold = access.ledger.get_hold(request.hold_id)
        parties = [access.ledger.balance(a) for a in (hold.debit_account_id,
                                                      hold.credit_account_id)]
        if not (any(access._acts_for(caller, p) for p in parties)
                or access.principals.is_operator(caller)):
            raise Forbidden("hold-parties-read", f"only the parties to hold {request.hold_id} "
                                                 f"or an operator read it; caller "
                                                 f"{_short(caller)} is neither")

    def spend(caller: str, request: Any) -> None:
        if not request.debit_account_id or not request.credit_account_id:
            raise InvalidArgument("debit_account_id and credit_account_id are required")
        if access._account(request.debit_account_id).kind == "rail":
            raise Forbidden("rail-accounts-move-by-rail", "a rail account is moved only by "
                                                          "Deposit and Withdraw")
        access.refuse_rail_payee(request.credit_account_id)
        if not access._acts_for(caller, access._account(request.debit_account_id)):
            raise Forbidden("wallet-owner-spends", f"only the owner of account "
                                                   f"{request.debit_account_id} places holds "
                                                   f"on it; caller {_short(caller)} is not")

    return {"Hold": spend, "Fulfil": lambda caller, request: None, "Get": read}
