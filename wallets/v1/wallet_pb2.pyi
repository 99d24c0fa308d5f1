from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AccountKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCOUNT_KIND_UNSPECIFIED: _ClassVar[AccountKind]
    ACCOUNT_KIND_WALLET: _ClassVar[AccountKind]
    ACCOUNT_KIND_RAIL: _ClassVar[AccountKind]
    ACCOUNT_KIND_FEES: _ClassVar[AccountKind]
ACCOUNT_KIND_UNSPECIFIED: AccountKind
ACCOUNT_KIND_WALLET: AccountKind
ACCOUNT_KIND_RAIL: AccountKind
ACCOUNT_KIND_FEES: AccountKind

class Money(_message.Message):
    __slots__ = ("amount_atomic", "currency")
    AMOUNT_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    amount_atomic: int
    currency: str
    def __init__(self, amount_atomic: _Optional[int] = ..., currency: _Optional[str] = ...) -> None: ...

class Currency(_message.Message):
    __slots__ = ("code", "scale", "rail_scale")
    CODE_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    RAIL_SCALE_FIELD_NUMBER: _ClassVar[int]
    code: str
    scale: int
    rail_scale: int
    def __init__(self, code: _Optional[str] = ..., scale: _Optional[int] = ..., rail_scale: _Optional[int] = ...) -> None: ...

class Account(_message.Message):
    __slots__ = ("account_id", "owner", "currency", "kind", "posted_credits_atomic", "posted_debits_atomic", "pending_debits_atomic", "pending_credits_atomic", "available_atomic", "credit_limit_atomic")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    POSTED_CREDITS_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    POSTED_DEBITS_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    PENDING_DEBITS_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    PENDING_CREDITS_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    CREDIT_LIMIT_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    owner: str
    currency: str
    kind: AccountKind
    posted_credits_atomic: int
    posted_debits_atomic: int
    pending_debits_atomic: int
    pending_credits_atomic: int
    available_atomic: int
    credit_limit_atomic: int
    def __init__(self, account_id: _Optional[str] = ..., owner: _Optional[str] = ..., currency: _Optional[str] = ..., kind: _Optional[_Union[AccountKind, str]] = ..., posted_credits_atomic: _Optional[int] = ..., posted_debits_atomic: _Optional[int] = ..., pending_debits_atomic: _Optional[int] = ..., pending_credits_atomic: _Optional[int] = ..., available_atomic: _Optional[int] = ..., credit_limit_atomic: _Optional[int] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("account_id", "amount_atomic", "currency")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount_atomic: int
    currency: str
    def __init__(self, account_id: _Optional[str] = ..., amount_atomic: _Optional[int] = ..., currency: _Optional[str] = ...) -> None: ...

class Posting(_message.Message):
    __slots__ = ("sequence", "idempotency_key", "kind", "entries", "hold_id", "created_at_ms", "trace_id", "span_id", "hash", "memo")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    idempotency_key: str
    kind: str
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    hold_id: str
    created_at_ms: int
    trace_id: str
    span_id: str
    hash: str
    memo: str
    def __init__(self, sequence: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., kind: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., hold_id: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., hash: _Optional[str] = ..., memo: _Optional[str] = ...) -> None: ...

class HoldInfo(_message.Message):
    __slots__ = ("hold_id", "debit_account_id", "credit_account_id", "amount", "captured_atomic", "voided_atomic", "status", "expires_at_ms")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    DEBIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    VOIDED_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    debit_account_id: str
    credit_account_id: str
    amount: Money
    captured_atomic: int
    voided_atomic: int
    status: str
    expires_at_ms: int
    def __init__(self, hold_id: _Optional[str] = ..., debit_account_id: _Optional[str] = ..., credit_account_id: _Optional[str] = ..., amount: _Optional[_Union[Money, _Mapping]] = ..., captured_atomic: _Optional[int] = ..., voided_atomic: _Optional[int] = ..., status: _Optional[str] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class OpenAccountRequest(_message.Message):
    __slots__ = ("idempotency_key", "owner", "currency", "kind")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    owner: str
    currency: str
    kind: AccountKind
    def __init__(self, idempotency_key: _Optional[str] = ..., owner: _Optional[str] = ..., currency: _Optional[str] = ..., kind: _Optional[_Union[AccountKind, str]] = ...) -> None: ...

class DepositRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "amount", "rail")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    RAIL_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    amount: Money
    rail: str
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., amount: _Optional[_Union[Money, _Mapping]] = ..., rail: _Optional[str] = ...) -> None: ...

class WithdrawRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "amount", "rail")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    RAIL_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    amount: Money
    rail: str
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., amount: _Optional[_Union[Money, _Mapping]] = ..., rail: _Optional[str] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class TransferRequest(_message.Message):
    __slots__ = ("idempotency_key", "debit_account_id", "credit_account_id", "amount", "memo")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    DEBIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    debit_account_id: str
    credit_account_id: str
    amount: Money
    memo: str
    def __init__(self, idempotency_key: _Optional[str] = ..., debit_account_id: _Optional[str] = ..., credit_account_id: _Optional[str] = ..., amount: _Optional[_Union[Money, _Mapping]] = ..., memo: _Optional[str] = ...) -> None: ...

class HoldRequest(_message.Message):
    __slots__ = ("idempotency_key", "debit_account_id", "credit_account_id", "amount", "timeout_s")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    DEBIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    debit_account_id: str
    credit_account_id: str
    amount: Money
    timeout_s: int
    def __init__(self, idempotency_key: _Optional[str] = ..., debit_account_id: _Optional[str] = ..., credit_account_id: _Optional[str] = ..., amount: _Optional[_Union[Money, _Mapping]] = ..., timeout_s: _Optional[int] = ...) -> None: ...

class Split(_message.Message):
    __slots__ = ("account_id", "amount_atomic")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    amount_atomic: int
    def __init__(self, account_id: _Optional[str] = ..., amount_atomic: _Optional[int] = ...) -> None: ...

class CaptureRequest(_message.Message):
    __slots__ = ("idempotency_key", "hold_id", "amount_atomic", "splits")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    hold_id: str
    amount_atomic: int
    splits: _containers.RepeatedCompositeFieldContainer[Split]
    def __init__(self, idempotency_key: _Optional[str] = ..., hold_id: _Optional[str] = ..., amount_atomic: _Optional[int] = ..., splits: _Optional[_Iterable[_Union[Split, _Mapping]]] = ...) -> None: ...

class VoidRequest(_message.Message):
    __slots__ = ("idempotency_key", "hold_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    hold_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., hold_id: _Optional[str] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("account_id", "limit", "before_sequence")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    limit: int
    before_sequence: int
    def __init__(self, account_id: _Optional[str] = ..., limit: _Optional[int] = ..., before_sequence: _Optional[int] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("postings",)
    POSTINGS_FIELD_NUMBER: _ClassVar[int]
    postings: _containers.RepeatedCompositeFieldContainer[Posting]
    def __init__(self, postings: _Optional[_Iterable[_Union[Posting, _Mapping]]] = ...) -> None: ...

class ListCurrenciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCurrenciesResponse(_message.Message):
    __slots__ = ("currencies",)
    CURRENCIES_FIELD_NUMBER: _ClassVar[int]
    currencies: _containers.RepeatedCompositeFieldContainer[Currency]
    def __init__(self, currencies: _Optional[_Iterable[_Union[Currency, _Mapping]]] = ...) -> None: ...
