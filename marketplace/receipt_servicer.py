"""ReceiptService over gRPC: a settlement's parties fetch its signed receipt file.

    GetReceipt    a party the receipts of the subject name (buyer, seller, verifier; a PvP
                  leg's payer and payee), the marketplace, an operator; a party gets only a
                  receipt that names it
"""

from __future__ import annotations

from typing import Any

import grpc

from marketplace.receipts import ReceiptBook
from marketplace.v1 import receipt_pb2, receipt_pb2_grpc
from wallets.access import Principals, Rule
from wallets.caller import current_caller
from wallets.errors import Forbidden, InvalidArgument
from wallets.grpc_errors import grpc_method

SERVICE = "marketplace.v1.ReceiptService"


def _subject(request: Any) -> str:
    if not isinstance(request.subject, str) or not 1 <= len(request.subject) <= 128:
        raise InvalidArgument("subject is an agreement id or a PvP leg (condition:hold_id)")
    if len(request.kind) > 32:
        raise InvalidArgument("kind is at most 32 characters")
    return str(request.subject)


class ReceiptServicer(receipt_pb2_grpc.ReceiptServiceServicer):
    def __init__(self, receipts: ReceiptBook, principals: Principals | None = None) -> None:
        self.receipts = receipts
        self.principals = principals  # None: no authentication, nobody to tell apart

    @grpc_method
    def GetReceipt(self, request: receipt_pb2.GetReceiptRequest,
                   context: grpc.ServicerContext) -> receipt_pb2.ReceiptFile:
        """A party gets the latest receipt that names it: another receipt of the subject (a
        stranger's hold locked to a PvP condition it learnt) is none of its business."""
        caller = current_caller()
        party = caller if self.principals is not None and caller and \
            not self.principals.is_marketplace(caller) else None
        return receipt_pb2.ReceiptFile(
            file=self.receipts.receipt_file(_subject(request), request.kind, party=party))


def receipt_rules(receipts: ReceiptBook, principals: Principals) -> dict[str, Rule]:
    def read(caller: str, request: Any) -> None:
        if principals.is_marketplace(caller):
            return
        parties = {agent for signed in receipts.receipts(_subject(request))
                   for agent in signed["body"]["parties"].values()}
        if parties and caller not in parties:
            raise Forbidden("settlement-parties-read", "only the parties to a settlement, the "
                                                       "marketplace or an operator read its "
                                                       "receipts")

    return {"GetReceipt": read}
