"""Human in the loop: find and decide the wallet approvals a buyer's spends wait for.

A spend above the wallet's approval threshold is refused with APPROVAL_REQUIRED and an approval
is opened for it (`wallets.approvals`). A person approves or denies it (Approve / Deny on
WalletService); the same spend, retried with the same idempotency key, then goes through once,
or is refused for good. The buyer workflow stops at such a refusal with a LangGraph `interrupt`.

Only an operator of the marketplace (a key in the node's `operator_ids`) may decide: the buyer
cannot approve its own spend, or the approval would protect nothing. An application that lets a
person decide from the workflow gives `buyer_graph` an `approver`: the operator's key (wrapped
here in `OperatorApprover`) or any callable with the same signature.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import grpc

from agents._rpc import sdk_method
from marketplace.auth import signed_channel
from marketplace.identity import AgentKey
from wallets.v1 import wallet_pb2, wallet_pb2_grpc

if TYPE_CHECKING:
    from agents.buyer import BuyerAgent

RPC_TIMEOUT_S = 10.0
_APPROVAL_IN_TEXT = re.compile(r"approval ([0-9a-f]{16,64})")


def find_approval(buyer: BuyerAgent, currency: str, spend_key: str,
                  details: str = "") -> wallet_pb2.Approval | None:
    """The pending approval of the buyer's spend with idempotency key `spend_key` (keys are
    per spender: an approval a delegate's spend under the same key waits for is not it)."""
    wallet = buyer.wallet(currency)
    try:
        listed = buyer.wallets.ListApprovals(wallet_pb2.ListApprovalsRequest(
            account_id=wallet.account_id, status="pending", limit=100), timeout=RPC_TIMEOUT_S)
    except grpc.RpcError:
        listed = None
    for approval in listed.approvals if listed else []:
        if approval.spend_idempotency_key == spend_key and \
                approval.spend_scope in (buyer.agent_id, ""):
            return approval
    match = _APPROVAL_IN_TEXT.search(details)
    return wallet_pb2.Approval(approval_id=match.group(1)) if match else None


@sdk_method
def decide(wallets: wallet_pb2_grpc.WalletServiceStub, approval_id: str, *, approve: bool,
           decided_by: str, note: str = "") -> wallet_pb2.Approval:
    """Approve or deny (idempotent per approval and decision) through `wallets`, a stub on a
    channel signed by an operator's key."""
    request = wallet_pb2.DecideApprovalRequest(
        idempotency_key=f"{'approve' if approve else 'deny'}:{approval_id}",
        approval_id=approval_id, decided_by=decided_by[:128], note=note[:512])
    method = wallets.Approve if approve else wallets.Deny
    return method(request, timeout=RPC_TIMEOUT_S)  # type: ignore[no-any-return]


class OperatorApprover:
    """Decide approvals with an operator's key: `buyer_graph(buyer, approver=...)`.

    `marketplace` and `credentials` default to the buyer's (its node address and TLS)."""

    def __init__(self, key: AgentKey, *, name: str = "", marketplace: str = "",
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.key = key
        self.name = name or f"operator {key.agent_id[:16]}"
        self.marketplace = marketplace
        self.credentials = credentials

    def __call__(self, buyer: BuyerAgent, approval_id: str, approve: bool, note: str) -> None:
        channel = signed_channel(self.marketplace or buyer.marketplace, self.key,
                                 self.credentials or buyer.credentials)
        try:
            decide(wallet_pb2_grpc.WalletServiceStub(channel), approval_id, approve=approve,
                   decided_by=f"{self.name} for {buyer.name}", note=note)
        finally:
            channel.close()
