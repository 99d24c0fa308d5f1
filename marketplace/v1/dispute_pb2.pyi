from marketplace.v1 import agreement_pb2 as _agreement_pb2
from marketplace.v1 import settlement_pb2 as _settlement_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DisputeOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISPUTE_OUTCOME_UNSPECIFIED: _ClassVar[DisputeOutcome]
    DISPUTE_OUTCOME_SELLER: _ClassVar[DisputeOutcome]
    DISPUTE_OUTCOME_BUYER: _ClassVar[DisputeOutcome]
    DISPUTE_OUTCOME_SPLIT: _ClassVar[DisputeOutcome]
DISPUTE_OUTCOME_UNSPECIFIED: DisputeOutcome
DISPUTE_OUTCOME_SELLER: DisputeOutcome
DISPUTE_OUTCOME_BUYER: DisputeOutcome
DISPUTE_OUTCOME_SPLIT: DisputeOutcome

class DeliveryEvidence(_message.Message):
    __slots__ = ("voucher", "receipts", "verification_json")
    VOUCHER_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_JSON_FIELD_NUMBER: _ClassVar[int]
    voucher: _agreement_pb2.Voucher
    receipts: _containers.RepeatedCompositeFieldContainer[_agreement_pb2.Receipt]
    verification_json: str
    def __init__(self, voucher: _Optional[_Union[_agreement_pb2.Voucher, _Mapping]] = ..., receipts: _Optional[_Iterable[_Union[_agreement_pb2.Receipt, _Mapping]]] = ..., verification_json: _Optional[str] = ...) -> None: ...

class DisputeRecord(_message.Message):
    __slots__ = ("agreement_id", "status", "reason", "buyer_evidence", "delivery", "frozen_atomic", "currency", "opened_at_ms", "outcome", "seller_atomic", "buyer_atomic", "arbiter_id", "note", "resolved_at_ms", "agreement")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BUYER_EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    FROZEN_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SELLER_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    BUYER_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    ARBITER_ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    status: str
    reason: str
    buyer_evidence: _containers.RepeatedCompositeFieldContainer[_settlement_pb2.Evidence]
    delivery: DeliveryEvidence
    frozen_atomic: int
    currency: str
    opened_at_ms: int
    outcome: DisputeOutcome
    seller_atomic: int
    buyer_atomic: int
    arbiter_id: str
    note: str
    resolved_at_ms: int
    agreement: _agreement_pb2.SignedAgreement
    def __init__(self, agreement_id: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., buyer_evidence: _Optional[_Iterable[_Union[_settlement_pb2.Evidence, _Mapping]]] = ..., delivery: _Optional[_Union[DeliveryEvidence, _Mapping]] = ..., frozen_atomic: _Optional[int] = ..., currency: _Optional[str] = ..., opened_at_ms: _Optional[int] = ..., outcome: _Optional[_Union[DisputeOutcome, str]] = ..., seller_atomic: _Optional[int] = ..., buyer_atomic: _Optional[int] = ..., arbiter_id: _Optional[str] = ..., note: _Optional[str] = ..., resolved_at_ms: _Optional[int] = ..., agreement: _Optional[_Union[_agreement_pb2.SignedAgreement, _Mapping]] = ...) -> None: ...

class GetDisputeRequest(_message.Message):
    __slots__ = ("agreement_id",)
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    def __init__(self, agreement_id: _Optional[str] = ...) -> None: ...

class ResolveDisputeRequest(_message.Message):
    __slots__ = ("idempotency_key", "agreement_id", "outcome", "seller_atomic", "note", "arbiter_id", "arbiter_signature")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SELLER_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    ARBITER_ID_FIELD_NUMBER: _ClassVar[int]
    ARBITER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    agreement_id: str
    outcome: DisputeOutcome
    seller_atomic: int
    note: str
    arbiter_id: str
    arbiter_signature: bytes
    def __init__(self, idempotency_key: _Optional[str] = ..., agreement_id: _Optional[str] = ..., outcome: _Optional[_Union[DisputeOutcome, str]] = ..., seller_atomic: _Optional[int] = ..., note: _Optional[str] = ..., arbiter_id: _Optional[str] = ..., arbiter_signature: _Optional[bytes] = ...) -> None: ...
