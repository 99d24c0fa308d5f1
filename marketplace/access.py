"""Who may do what at the marketplace: one rule per registry, settlement and arbitration
method, applied to the authenticated caller before the request reaches the domain.

    method                        allowed
    Discover, ReportUnreachable   any authenticated caller (a report is checked by the
                                  registry itself: marketplace.liveness)
    Advertise                     the listing's own agent
    Heartbeat, WithdrawListing    the listing's own agent (withdraw: or an operator)
    OpenEscrow                    the agreement's buyer
    Redeem, RedeemBatch           the agreement's seller (every agreement of the batch)
    Confirm, Dispute              the agreement's buyer
    GetEscrow, GetDispute         the agreement's buyer, seller or verifier; an operator or
                                  arbiter; the marketplace
    ResolveDispute                an operator or a configured arbiter

The signatures inside requests (the agreement's two signatures, the buyer's on Confirm and
Dispute, the seller's on Redeem, the arbiter's on a decision) stay: they are evidence a third
party can check later. These rules are about the transport identity of the request, which
`marketplace.auth` verified. Why at the edge and not in `Settlement`: see `wallets.access`;
the facts they read (an agreement's parties, a listing's agent) never change once written.

Idempotency keys need no rule here: each caller's keys are its own (`wallets._idempotency`), and
the node's sweeps keep theirs where no caller writes, so a buyer who sends a request keyed
`auto-release:<agreement>` changes nothing for the sweep that pays the seller.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from marketplace import agreements as ag
from marketplace.settlement import MAX_BATCH, Settlement
from wallets.access import Principals, Rule
from wallets.errors import Forbidden, InvalidArgument

REGISTRY = "marketplace.v1.RegistryService"
SETTLEMENT = "marketplace.v1.SettlementService"
ARBITRATION = "marketplace.v1.ArbitrationService"


def _short(agent_id: str) -> str:
    return f"{agent_id[:12]}…" if agent_id else "(unauthenticated)"


class MarketplaceAccess:
    def __init__(self, settlement: Settlement, principals: Principals,
                 arbiters: Iterable[str] = ()) -> None:
        self.settlement = settlement
        self.principals = principals
        self.arbiters = frozenset(arbiters)

    def rules(self) -> dict[str, dict[str, Rule]]:
        """Service name -> method name -> rule(caller, request)."""
        anyone: Rule = lambda caller, request: None  # noqa: E731
        return {
            REGISTRY: {"Discover": anyone, "ReportUnreachable": anyone,
                       "Advertise": self._advertise,
                       "Heartbeat": self._own_listing(False),
                       "WithdrawListing": self._own_listing(True)},
            SETTLEMENT: {"OpenEscrow": self._open, "Redeem": self._redeem,
                         "RedeemBatch": self._redeem_batch, "Confirm": self._buyer("confirms"),
                         "Dispute": self._buyer("disputes"), "GetEscrow": self._party},
            ARBITRATION: {"GetDispute": self._party, "ResolveDispute": self._resolve},
        }

    def _judge(self, caller: str) -> bool:
        return self.principals.is_marketplace(caller) or caller in self.arbiters

    # ---- registry -------------------------------------------------------------------------

    def _advertise(self, caller: str, request: Any) -> None:
        if request.listing.agent_id != caller:
            raise Forbidden("own-listing", f"an agent advertises its own listing only; caller "
                                           f"{_short(caller)} is not "
                                           f"{_short(request.listing.agent_id)}")

    def _own_listing(self, operator_too: bool) -> Rule:
        def rule(caller: str, request: Any) -> None:
            if request.agent_id == caller or (operator_too
                                              and self.principals.is_operator(caller)):
                return
            raise Forbidden("own-listing", f"only agent {_short(request.agent_id)} heartbeats "
                                           f"or withdraws its listing; caller {_short(caller)} "
                                           "is not")

        return rule

    # ---- settlement -----------------------------------------------------------------------

    def _open(self, caller: str, request: Any) -> None:
        body = ag.parse_body(request.agreement)
        if body.buyer_id != caller:
            raise Forbidden("agreement-buyer-opens-escrow", f"only the agreement's buyer "
                                                            f"({_short(body.buyer_id)}) opens "
                                                            f"its escrow; caller "
                                                            f"{_short(caller)} is not")

    def _seller_of(self, caller: str, agreement_id: str) -> None:
        row = self.settlement.facts.get(agreement_id)
        if row.seller_id != caller:
            raise Forbidden("agreement-seller-redeems", f"only the seller of agreement "
                                                        f"{agreement_id[:12]}… redeems it; "
                                                        f"caller {_short(caller)} is not")

    def _redeem(self, caller: str, request: Any) -> None:
        self._seller_of(caller, request.agreement_id)

    def _redeem_batch(self, caller: str, request: Any) -> None:
        if len(request.redeems) > MAX_BATCH:
            raise InvalidArgument(f"a batch holds 1..{MAX_BATCH} redeems")
        for redeem in request.redeems:
            self._seller_of(caller, redeem.agreement_id)

    def _buyer(self, verb: str) -> Rule:
        def rule(caller: str, request: Any) -> None:
            row = self.settlement.facts.get(request.agreement_id)
            if row.buyer_id != caller:
                raise Forbidden("agreement-buyer-decides", f"only the buyer of agreement "
                                                           f"{request.agreement_id[:12]}… "
                                                           f"{verb}; caller {_short(caller)} "
                                                           "is not")

        return rule

    def _party(self, caller: str, request: Any) -> None:
        row = self.settlement.facts.get(request.agreement_id)
        if caller in (row.buyer_id, row.seller_id, row.verifier_id) or self._judge(caller):
            return
        raise Forbidden("agreement-parties-read", f"only the parties to agreement "
                                                  f"{request.agreement_id[:12]}…, an operator "
                                                  f"or an arbiter read it; caller "
                                                  f"{_short(caller)} is none")

    def _resolve(self, caller: str, request: Any) -> None:
        if not (self.principals.is_operator(caller) or caller in self.arbiters):
            raise Forbidden("operator-resolves-disputes", f"only an operator or an arbiter of "
                                                          f"this marketplace resolves disputes; "
                                                          f"caller {_short(caller)} is neither")
