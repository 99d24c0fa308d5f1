"""Who may call a seller agent: the buyer of an agreement, and whoever negotiates as itself.

    method                 allowed
    Negotiate              rfq: the buyer it names; counter-offer, acceptance: the buyer of
                           that negotiation or agreement; rejection: any signed caller;
                           an agreement at the list price (rfq id `list:...`): any signed
                           caller (the buyer's signature inside is what counts)
    Invoke, InvokeStream   the agreement's buyer (the voucher must still pay for the call);
                           unsigned when the voucher reveals a new PayWord word, which only
                           the buyer can produce (no rule runs then; the payment gate
                           insists on the new word)
    Finish                 the agreement's buyer, or any caller relaying the buyer's own
                           signature over the finish (checked here and by Finish)
    A2A SendMessage,       anyone unsigned (a paid message must then reveal a new word);
    SendStreamingMessage   signed and paying (`agentmarket.payment`): the agreement's buyer
    other A2A methods      anyone

Applied by `marketplace.auth.AccessInterceptor` after the caller's signature was verified, and
before a paid call admits its voucher: a stranger holding a leaked voucher cannot
spend it, and cannot hijack another buyer's open negotiation by its rfq id.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from a2a.types import a2a_pb2

from agents._strategy_host import LIST_PRICE_PREFIX
from marketplace import a2a_extension as ext
from marketplace import agreements as ag
from wallets.access import Rule
from wallets.errors import Forbidden

if TYPE_CHECKING:
    from agents.seller import SellerAgent

SERVICE = "agents.v1.AgentService"
A2A_SERVICE = "lf.a2a.v1.A2AService"
A2A_METHOD_NAMES = tuple(m.name for m in
                         a2a_pb2.DESCRIPTOR.services_by_name["A2AService"].methods)


def _short(agent_id: str) -> str:
    return f"{agent_id[:12]}…"


def seller_rules(seller: SellerAgent) -> dict[str, dict[str, Rule]]:
    def negotiate(caller: str, message: Any) -> None:
        kind = message.WhichOneof("kind")
        if kind == "rfq":
            buyer = message.rfq.buyer_id
        elif kind == "offer":  # a counter is the buyer's own (its negotiation is keyed by it)
            buyer = message.offer.from_id
        elif kind == "agreement":
            body = ag.parse_body(message.agreement)
            if body.rfq_id.startswith(LIST_PRICE_PREFIX):
                return  # no negotiation to hijack: the buyer's signature inside is checked
            buyer = body.buyer_id
        else:
            return
        if buyer != caller:
            raise Forbidden("negotiate-as-yourself", f"the negotiation is the buyer "
                                                     f"{_short(buyer)}'s; caller "
                                                     f"{_short(caller)} is not that buyer")

    def buyer_of_agreement(caller: str, request: Any) -> None:
        if not seller.gate.known(request.agreement_id):
            return  # the payment gate or Finish answers NOT_FOUND
        buyer = seller.gate.body(request.agreement_id).buyer_id
        if buyer != caller:
            raise Forbidden("agreement-buyer-calls", f"only the buyer of agreement "
                                                     f"{request.agreement_id[:12]}… calls or "
                                                     f"finishes it; caller {_short(caller)} "
                                                     "is not")

    def finisher(caller: str, request: Any) -> None:
        """The buyer, or whoever carries the buyer's own signature over the finish (a
        gateway relaying it): Finish checks that signature either way."""
        if seller.gate.known(request.agreement_id) and seller.redeems.buyer_signed_finish(
                request.agreement_id, request.buyer_signature):
            return
        buyer_of_agreement(caller, request)

    def buyer_of_paid_message(caller: str, request: Any) -> None:
        """A2A: a signed message paying under an agreement must come from its buyer (a
        signed voucher may spend carried-over prepayment without a new word)."""
        payment = request.message.metadata.fields.get(ext.PAYMENT_KEY)
        if payment is None or not payment.HasField("struct_value"):
            return  # unpaid, or malformed: the door answers it
        agreement = payment.struct_value.fields.get("agreementId")
        if agreement is not None and agreement.HasField("string_value"):
            buyer_of_agreement(caller, SimpleNamespace(agreement_id=agreement.string_value))

    def anyone(_caller: str, _request: Any) -> None:
        return None

    a2a = {name: anyone for name in A2A_METHOD_NAMES}
    a2a.update(SendMessage=buyer_of_paid_message, SendStreamingMessage=buyer_of_paid_message)
    return {SERVICE: {"Negotiate": negotiate, "Invoke": buyer_of_agreement,
                      "InvokeStream": buyer_of_agreement, "Finish": finisher},
            A2A_SERVICE: a2a}
