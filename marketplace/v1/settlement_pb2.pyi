from marketplace.v1 import agreement_pb2 as _agreement_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AgreementState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGREEMENT_STATE_UNSPECIFIED: _ClassVar[AgreementState]
    AGREEMENT_STATE_ACTIVE: _ClassVar[AgreementState]
    AGREEMENT_STATE_DELIVERED: _ClassVar[AgreementState]
    AGREEMENT_STATE_SETTLED: _ClassVar[AgreementState]
    AGREEMENT_STATE_REFUNDED: _ClassVar[AgreementState]
    AGREEMENT_STATE_DISPUTED: _ClassVar[AgreementState]
    AGREEMENT_STATE_EXPIRED: _ClassVar[AgreementState]
    AGREEMENT_STATE_VERIFIED: _ClassVar[AgreementState]
    AGREEMENT_STATE_RESOLVED: _ClassVar[AgreementState]
AGREEMENT_STATE_UNSPECIFIED: AgreementState
AGREEMENT_STATE_ACTIVE: AgreementState
AGREEMENT_STATE_DELIVERED: AgreementState
AGREEMENT_STATE_SETTLED: AgreementState
AGREEMENT_STATE_REFUNDED: AgreementState
AGREEMENT_STATE_DISPUTED: AgreementState
AGREEMENT_STATE_EXPIRED: AgreementState
AGREEMENT_STATE_VERIFIED: AgreementState
AGREEMENT_STATE_RESOLVED: AgreementState

class Escrow(_message.Message):
    __slots__ = ("agreement_id", "state", "hold_id", "currency", "held_atomic", "captured_atomic", "fee_atomic", "refunded_atomic", "verified_outputs", "failed_outputs", "earned_atomic", "verifier_fee_atomic", "release_at_ms", "deadline_ms", "buyer_id", "seller_id", "skill", "proof")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    HELD_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    FEE_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    FAILED_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    EARNED_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FEE_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    RELEASE_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    BUYER_ID_FIELD_NUMBER: _ClassVar[int]
    SELLER_ID_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    state: AgreementState
    hold_id: str
    currency: str
    held_atomic: int
    captured_atomic: int
    fee_atomic: int
    refunded_atomic: int
    verified_outputs: int
    failed_outputs: int
    earned_atomic: int
    verifier_fee_atomic: int
    release_at_ms: int
    deadline_ms: int
    buyer_id: str
    seller_id: str
    skill: str
    proof: bytes
    def __init__(self, agreement_id: _Optional[str] = ..., state: _Optional[_Union[AgreementState, str]] = ..., hold_id: _Optional[str] = ..., currency: _Optional[str] = ..., held_atomic: _Optional[int] = ..., captured_atomic: _Optional[int] = ..., fee_atomic: _Optional[int] = ..., refunded_atomic: _Optional[int] = ..., verified_outputs: _Optional[int] = ..., failed_outputs: _Optional[int] = ..., earned_atomic: _Optional[int] = ..., verifier_fee_atomic: _Optional[int] = ..., release_at_ms: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., buyer_id: _Optional[str] = ..., seller_id: _Optional[str] = ..., skill: _Optional[str] = ..., proof: _Optional[bytes] = ...) -> None: ...

class EscrowProof(_message.Message):
    __slots__ = ("escrow", "signature")
    ESCROW_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    escrow: bytes
    signature: bytes
    def __init__(self, escrow: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class OpenEscrowRequest(_message.Message):
    __slots__ = ("idempotency_key", "agreement")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    agreement: _agreement_pb2.SignedAgreement
    def __init__(self, idempotency_key: _Optional[str] = ..., agreement: _Optional[_Union[_agreement_pb2.SignedAgreement, _Mapping]] = ...) -> None: ...

class RedeemRequest(_message.Message):
    __slots__ = ("idempotency_key", "agreement_id", "voucher", "receipts", "seller_signature", "buyer_confirmation")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VOUCHER_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    SELLER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    BUYER_CONFIRMATION_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    agreement_id: str
    voucher: _agreement_pb2.Voucher
    receipts: _containers.RepeatedCompositeFieldContainer[_agreement_pb2.Receipt]
    seller_signature: bytes
    buyer_confirmation: bytes
    def __init__(self, idempotency_key: _Optional[str] = ..., agreement_id: _Optional[str] = ..., voucher: _Optional[_Union[_agreement_pb2.Voucher, _Mapping]] = ..., receipts: _Optional[_Iterable[_Union[_agreement_pb2.Receipt, _Mapping]]] = ..., seller_signature: _Optional[bytes] = ..., buyer_confirmation: _Optional[bytes] = ...) -> None: ...

class RedeemResult(_message.Message):
    __slots__ = ("agreement_id", "escrow", "error_code", "error_reason", "error_message")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ESCROW_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    escrow: Escrow
    error_code: str
    error_reason: str
    error_message: str
    def __init__(self, agreement_id: _Optional[str] = ..., escrow: _Optional[_Union[Escrow, _Mapping]] = ..., error_code: _Optional[str] = ..., error_reason: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class RedeemBatchRequest(_message.Message):
    __slots__ = ("idempotency_key", "redeems")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    REDEEMS_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    redeems: _containers.RepeatedCompositeFieldContainer[RedeemRequest]
    def __init__(self, idempotency_key: _Optional[str] = ..., redeems: _Optional[_Iterable[_Union[RedeemRequest, _Mapping]]] = ...) -> None: ...

class RedeemBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RedeemResult]
    def __init__(self, results: _Optional[_Iterable[_Union[RedeemResult, _Mapping]]] = ...) -> None: ...

class ConfirmRequest(_message.Message):
    __slots__ = ("idempotency_key", "agreement_id", "buyer_signature")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BUYER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    agreement_id: str
    buyer_signature: bytes
    def __init__(self, idempotency_key: _Optional[str] = ..., agreement_id: _Optional[str] = ..., buyer_signature: _Optional[bytes] = ...) -> None: ...

class Evidence(_message.Message):
    __slots__ = ("kind", "description", "content")
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    description: str
    content: bytes
    def __init__(self, kind: _Optional[str] = ..., description: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class DisputeRequest(_message.Message):
    __slots__ = ("idempotency_key", "agreement_id", "reason", "buyer_signature", "evidence")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BUYER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    agreement_id: str
    reason: str
    buyer_signature: bytes
    evidence: _containers.RepeatedCompositeFieldContainer[Evidence]
    def __init__(self, idempotency_key: _Optional[str] = ..., agreement_id: _Optional[str] = ..., reason: _Optional[str] = ..., buyer_signature: _Optional[bytes] = ..., evidence: _Optional[_Iterable[_Union[Evidence, _Mapping]]] = ...) -> None: ...

class GetEscrowRequest(_message.Message):
    __slots__ = ("agreement_id",)
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    def __init__(self, agreement_id: _Optional[str] = ...) -> None: ...
