from marketplace.v1 import agreement_pb2 as _agreement_pb2
from marketplace.v1 import settlement_pb2 as _settlement_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_REASON_UNSPECIFIED: _ClassVar[StopReason]
    STOP_REASON_COMPLETE: _ClassVar[StopReason]
    STOP_REASON_BUDGET: _ClassVar[StopReason]
    STOP_REASON_SIZE: _ClassVar[StopReason]
    STOP_REASON_ENDED: _ClassVar[StopReason]
STOP_REASON_UNSPECIFIED: StopReason
STOP_REASON_COMPLETE: StopReason
STOP_REASON_BUDGET: StopReason
STOP_REASON_SIZE: StopReason
STOP_REASON_ENDED: StopReason

class Metering(_message.Message):
    __slots__ = ("max_call_atomic",)
    MAX_CALL_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    max_call_atomic: int
    def __init__(self, max_call_atomic: _Optional[int] = ...) -> None: ...

class NegotiationMessage(_message.Message):
    __slots__ = ("rfq", "offer", "agreement", "reject_reason", "metering", "note", "rfq_id")
    RFQ_FIELD_NUMBER: _ClassVar[int]
    OFFER_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    REJECT_REASON_FIELD_NUMBER: _ClassVar[int]
    METERING_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    RFQ_ID_FIELD_NUMBER: _ClassVar[int]
    rfq: _agreement_pb2.Rfq
    offer: _agreement_pb2.Offer
    agreement: _agreement_pb2.SignedAgreement
    reject_reason: str
    metering: Metering
    note: str
    rfq_id: str
    def __init__(self, rfq: _Optional[_Union[_agreement_pb2.Rfq, _Mapping]] = ..., offer: _Optional[_Union[_agreement_pb2.Offer, _Mapping]] = ..., agreement: _Optional[_Union[_agreement_pb2.SignedAgreement, _Mapping]] = ..., reject_reason: _Optional[str] = ..., metering: _Optional[_Union[Metering, _Mapping]] = ..., note: _Optional[str] = ..., rfq_id: _Optional[str] = ...) -> None: ...

class InvokeRequest(_message.Message):
    __slots__ = ("agreement_id", "input_json", "call_id")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    input_json: str
    call_id: str
    def __init__(self, agreement_id: _Optional[str] = ..., input_json: _Optional[str] = ..., call_id: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("calls", "input_tokens", "output_tokens", "units", "charged_atomic", "reserved_atomic", "unspent_atomic")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    CHARGED_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    RESERVED_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    UNSPENT_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    calls: int
    input_tokens: int
    output_tokens: int
    units: int
    charged_atomic: int
    reserved_atomic: int
    unspent_atomic: int
    def __init__(self, calls: _Optional[int] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., units: _Optional[int] = ..., charged_atomic: _Optional[int] = ..., reserved_atomic: _Optional[int] = ..., unspent_atomic: _Optional[int] = ...) -> None: ...

class InvokeResponse(_message.Message):
    __slots__ = ("output_json", "usage", "receipt")
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    output_json: str
    usage: Usage
    receipt: _agreement_pb2.Receipt
    def __init__(self, output_json: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., receipt: _Optional[_Union[_agreement_pb2.Receipt, _Mapping]] = ...) -> None: ...

class StreamEnd(_message.Message):
    __slots__ = ("stop_reason", "output_json", "usage", "receipt")
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    stop_reason: StopReason
    output_json: str
    usage: Usage
    receipt: _agreement_pb2.Receipt
    def __init__(self, stop_reason: _Optional[_Union[StopReason, str]] = ..., output_json: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., receipt: _Optional[_Union[_agreement_pb2.Receipt, _Mapping]] = ...) -> None: ...

class StreamChunk(_message.Message):
    __slots__ = ("text_delta", "charged_atomic", "end")
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    CHARGED_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    text_delta: str
    charged_atomic: int
    end: StreamEnd
    def __init__(self, text_delta: _Optional[str] = ..., charged_atomic: _Optional[int] = ..., end: _Optional[_Union[StreamEnd, _Mapping]] = ...) -> None: ...

class FinishRequest(_message.Message):
    __slots__ = ("agreement_id", "buyer_signature", "confirm_signature")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BUYER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CONFIRM_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    buyer_signature: bytes
    confirm_signature: bytes
    def __init__(self, agreement_id: _Optional[str] = ..., buyer_signature: _Optional[bytes] = ..., confirm_signature: _Optional[bytes] = ...) -> None: ...

class FinishResponse(_message.Message):
    __slots__ = ("escrow",)
    ESCROW_FIELD_NUMBER: _ClassVar[int]
    escrow: _settlement_pb2.Escrow
    def __init__(self, escrow: _Optional[_Union[_settlement_pb2.Escrow, _Mapping]] = ...) -> None: ...
