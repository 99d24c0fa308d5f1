from wallets.v1 import wallet_pb2 as _wallet_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConditionalHoldRequest(_message.Message):
    __slots__ = ("idempotency_key", "debit_account_id", "credit_account_id", "amount", "condition_sha256", "expires_at_ms")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    DEBIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CONDITION_SHA256_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    debit_account_id: str
    credit_account_id: str
    amount: _wallet_pb2.Money
    condition_sha256: str
    expires_at_ms: int
    def __init__(self, idempotency_key: _Optional[str] = ..., debit_account_id: _Optional[str] = ..., credit_account_id: _Optional[str] = ..., amount: _Optional[_Union[_wallet_pb2.Money, _Mapping]] = ..., condition_sha256: _Optional[str] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class FulfilRequest(_message.Message):
    __slots__ = ("idempotency_key", "hold_id", "preimage")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    PREIMAGE_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    hold_id: str
    preimage: bytes
    def __init__(self, idempotency_key: _Optional[str] = ..., hold_id: _Optional[str] = ..., preimage: _Optional[bytes] = ...) -> None: ...

class GetConditionalHoldRequest(_message.Message):
    __slots__ = ("hold_id",)
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    def __init__(self, hold_id: _Optional[str] = ...) -> None: ...

class ConditionalHold(_message.Message):
    __slots__ = ("hold", "condition_sha256", "fulfilment", "now_ms")
    HOLD_FIELD_NUMBER: _ClassVar[int]
    CONDITION_SHA256_FIELD_NUMBER: _ClassVar[int]
    FULFILMENT_FIELD_NUMBER: _ClassVar[int]
    NOW_MS_FIELD_NUMBER: _ClassVar[int]
    hold: _wallet_pb2.HoldInfo
    condition_sha256: str
    fulfilment: bytes
    now_ms: int
    def __init__(self, hold: _Optional[_Union[_wallet_pb2.HoldInfo, _Mapping]] = ..., condition_sha256: _Optional[str] = ..., fulfilment: _Optional[bytes] = ..., now_ms: _Optional[int] = ...) -> None: ...
