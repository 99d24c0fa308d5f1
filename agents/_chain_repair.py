"""Repair a receipt chain a restarted seller finds broken in its journal.

A journal written before failed records were taken out of the chain (`PaymentGate`'s
`_unchain_failed`) may hold a hole: positions 1, 2, 4, 5. The marketplace redeems only a whole
chain, so such a hole would make every call after it unredeemable although each was answered and
paid by a buyer-signed voucher. The seller's receipts are its own account of its work (the
buyer's signature is on the vouchers, which bound what is captured), so the seller re-links
the calls after the hole into one whole chain: same outputs, charges and voucher sequences, new
positions and digests, signed again where a position needs it. The repaired calls are written
back before the seller serves, so the chain it continues is the one it redeems.
"""

from __future__ import annotations

import logging

from agents.usage_journal import JournalCall
from agents.v1 import agent_pb2
from marketplace import agreements as ag
from marketplace.identity import AgentKey
from marketplace.v1 import agreement_pb2

log = logging.getLogger("agentmarket.seller")


def repaired(agreement_id: str, calls: tuple[JournalCall, ...], key: AgentKey | None
             ) -> list[JournalCall]:
    """The calls whose position or receipt must change for the chain to be whole and linked
    (none for a sound chain); `calls` in position order."""
    changed: list[JournalCall] = []
    head = ag.CHAIN_GENESIS
    for index, call in enumerate(calls, start=1):
        receipt = agreement_pb2.Receipt.FromString(call.receipt)
        if not changed and call.position == index and receipt.chain_index == index \
                and receipt.previous_sha256 == head:
            head = receipt.chain_sha256
            continue
        receipt.ClearField("seller_signature")
        head = ag.chain_receipt(receipt, index, head,
                                key if index % ag.RECEIPT_SIGN_EVERY == 0 else None)
        changed.append(JournalCall(call.call_id, index, call.sequence, call.voucher,
                                   receipt.SerializeToString(),
                                   _with_receipt(call.response, receipt)))
    if changed:
        log.warning("agreement %s: the journal's receipt chain had a hole; %d receipts from "
                    "position %d on re-linked so that every answered call stays redeemable",
                    agreement_id[:12], len(changed), changed[0].position)
    return changed


def _with_receipt(response: bytes, receipt: agreement_pb2.Receipt) -> bytes:
    """A journal-encoded response (`agents._gate_accounts.encode_response`) carrying `receipt`."""
    if response[:1] == b"S":
        chunk = agent_pb2.StreamChunk.FromString(response[1:])
        chunk.end.receipt.CopyFrom(receipt)
        return b"S" + chunk.SerializeToString()
    answer = agent_pb2.InvokeResponse.FromString(response[1:])
    answer.receipt.CopyFrom(receipt)
    return b"U" + answer.SerializeToString()
