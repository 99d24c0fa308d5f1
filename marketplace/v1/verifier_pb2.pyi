from marketplace.v1 import agreement_pb2 as _agreement_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VerifyRequest(_message.Message):
    __slots__ = ("idempotency_key", "agreement_id", "agreement", "receipts", "output_schema_json")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    agreement_id: str
    agreement: _agreement_pb2.SignedAgreement
    receipts: _containers.RepeatedCompositeFieldContainer[_agreement_pb2.Receipt]
    output_schema_json: str
    def __init__(self, idempotency_key: _Optional[str] = ..., agreement_id: _Optional[str] = ..., agreement: _Optional[_Union[_agreement_pb2.SignedAgreement, _Mapping]] = ..., receipts: _Optional[_Iterable[_Union[_agreement_pb2.Receipt, _Mapping]]] = ..., output_schema_json: _Optional[str] = ...) -> None: ...

class ReceiptVerdict(_message.Message):
    __slots__ = ("sequence", "passed", "reason")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    passed: bool
    reason: str
    def __init__(self, sequence: _Optional[int] = ..., passed: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("agreement_id", "verdicts", "verifier_signature")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    verdicts: _containers.RepeatedCompositeFieldContainer[ReceiptVerdict]
    verifier_signature: bytes
    def __init__(self, agreement_id: _Optional[str] = ..., verdicts: _Optional[_Iterable[_Union[ReceiptVerdict, _Mapping]]] = ..., verifier_signature: _Optional[bytes] = ...) -> None: ...
