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
    ACCOUNT_KIND_FX: _ClassVar[AccountKind]
ACCOUNT_KIND_UNSPECIFIED: AccountKind
ACCOUNT_KIND_WALLET: AccountKind
ACCOUNT_KIND_RAIL: AccountKind
ACCOUNT_KIND_FEES: AccountKind
ACCOUNT_KIND_FX: AccountKind

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
    __slots__ = ("idempotency_key", "account_id", "amount", "rail", "destination")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    RAIL_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    amount: Money
    rail: str
    destination: str
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., amount: _Optional[_Union[Money, _Mapping]] = ..., rail: _Optional[str] = ..., destination: _Optional[str] = ...) -> None: ...

class GetDepositInstructionsRequest(_message.Message):
    __slots__ = ("account_id", "address", "rail")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RAIL_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    address: str
    rail: str
    def __init__(self, account_id: _Optional[str] = ..., address: _Optional[str] = ..., rail: _Optional[str] = ...) -> None: ...

class DepositInstructions(_message.Message):
    __slots__ = ("rail", "currency", "rail_address", "token_address", "chain_id", "confirmations", "registration_message")
    RAIL_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    RAIL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CHAIN_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    REGISTRATION_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    rail: str
    currency: str
    rail_address: str
    token_address: str
    chain_id: int
    confirmations: int
    registration_message: str
    def __init__(self, rail: _Optional[str] = ..., currency: _Optional[str] = ..., rail_address: _Optional[str] = ..., token_address: _Optional[str] = ..., chain_id: _Optional[int] = ..., confirmations: _Optional[int] = ..., registration_message: _Optional[str] = ...) -> None: ...

class RegisterDepositAddressRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "address", "signature", "rail")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    RAIL_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    address: str
    signature: bytes
    rail: str
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., address: _Optional[str] = ..., signature: _Optional[bytes] = ..., rail: _Optional[str] = ...) -> None: ...

class DepositAddress(_message.Message):
    __slots__ = ("rail", "address", "account_id", "agent_id", "rail_address", "confirmations")
    RAIL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RAIL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    rail: str
    address: str
    account_id: str
    agent_id: str
    rail_address: str
    confirmations: int
    def __init__(self, rail: _Optional[str] = ..., address: _Optional[str] = ..., account_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., rail_address: _Optional[str] = ..., confirmations: _Optional[int] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class TransferRequest(_message.Message):
    __slots__ = ("idempotency_key", "debit_account_id", "credit_account_id", "amount", "memo", "mandate_id", "spender_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    DEBIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    SPENDER_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    debit_account_id: str
    credit_account_id: str
    amount: Money
    memo: str
    mandate_id: str
    spender_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., debit_account_id: _Optional[str] = ..., credit_account_id: _Optional[str] = ..., amount: _Optional[_Union[Money, _Mapping]] = ..., memo: _Optional[str] = ..., mandate_id: _Optional[str] = ..., spender_id: _Optional[str] = ...) -> None: ...

class HoldRequest(_message.Message):
    __slots__ = ("idempotency_key", "debit_account_id", "credit_account_id", "amount", "timeout_s", "mandate_id", "spender_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    DEBIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CREDIT_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    SPENDER_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    debit_account_id: str
    credit_account_id: str
    amount: Money
    timeout_s: int
    mandate_id: str
    spender_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., debit_account_id: _Optional[str] = ..., credit_account_id: _Optional[str] = ..., amount: _Optional[_Union[Money, _Mapping]] = ..., timeout_s: _Optional[int] = ..., mandate_id: _Optional[str] = ..., spender_id: _Optional[str] = ...) -> None: ...

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

class VelocityRule(_message.Message):
    __slots__ = ("window_s", "baseline_s", "factor_pct", "min_atomic")
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    BASELINE_S_FIELD_NUMBER: _ClassVar[int]
    FACTOR_PCT_FIELD_NUMBER: _ClassVar[int]
    MIN_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    window_s: int
    baseline_s: int
    factor_pct: int
    min_atomic: int
    def __init__(self, window_s: _Optional[int] = ..., baseline_s: _Optional[int] = ..., factor_pct: _Optional[int] = ..., min_atomic: _Optional[int] = ...) -> None: ...

class WalletPolicy(_message.Message):
    __slots__ = ("per_call_cap_atomic", "daily_cap_atomic", "counterparty_daily_cap_atomic", "allow_counterparties", "deny_counterparties", "allow_skills", "deny_skills", "approval_threshold_atomic", "approval_ttl_s", "velocity")
    PER_CALL_CAP_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    DAILY_CAP_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    COUNTERPARTY_DAILY_CAP_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    ALLOW_COUNTERPARTIES_FIELD_NUMBER: _ClassVar[int]
    DENY_COUNTERPARTIES_FIELD_NUMBER: _ClassVar[int]
    ALLOW_SKILLS_FIELD_NUMBER: _ClassVar[int]
    DENY_SKILLS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_THRESHOLD_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_TTL_S_FIELD_NUMBER: _ClassVar[int]
    VELOCITY_FIELD_NUMBER: _ClassVar[int]
    per_call_cap_atomic: int
    daily_cap_atomic: int
    counterparty_daily_cap_atomic: int
    allow_counterparties: _containers.RepeatedScalarFieldContainer[str]
    deny_counterparties: _containers.RepeatedScalarFieldContainer[str]
    allow_skills: _containers.RepeatedScalarFieldContainer[str]
    deny_skills: _containers.RepeatedScalarFieldContainer[str]
    approval_threshold_atomic: int
    approval_ttl_s: int
    velocity: VelocityRule
    def __init__(self, per_call_cap_atomic: _Optional[int] = ..., daily_cap_atomic: _Optional[int] = ..., counterparty_daily_cap_atomic: _Optional[int] = ..., allow_counterparties: _Optional[_Iterable[str]] = ..., deny_counterparties: _Optional[_Iterable[str]] = ..., allow_skills: _Optional[_Iterable[str]] = ..., deny_skills: _Optional[_Iterable[str]] = ..., approval_threshold_atomic: _Optional[int] = ..., approval_ttl_s: _Optional[int] = ..., velocity: _Optional[_Union[VelocityRule, _Mapping]] = ...) -> None: ...

class WalletControls(_message.Message):
    __slots__ = ("account_id", "currency", "policy", "frozen", "frozen_reason", "frozen_by", "frozen_at_ms", "updated_at_ms")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    FROZEN_REASON_FIELD_NUMBER: _ClassVar[int]
    FROZEN_BY_FIELD_NUMBER: _ClassVar[int]
    FROZEN_AT_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    currency: str
    policy: WalletPolicy
    frozen: bool
    frozen_reason: str
    frozen_by: str
    frozen_at_ms: int
    updated_at_ms: int
    def __init__(self, account_id: _Optional[str] = ..., currency: _Optional[str] = ..., policy: _Optional[_Union[WalletPolicy, _Mapping]] = ..., frozen: _Optional[bool] = ..., frozen_reason: _Optional[str] = ..., frozen_by: _Optional[str] = ..., frozen_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "policy")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    policy: WalletPolicy
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., policy: _Optional[_Union[WalletPolicy, _Mapping]] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class FreezeRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "reason", "actor")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    reason: str
    actor: str
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class UnfreezeRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "reason", "actor")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    reason: str
    actor: str
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., reason: _Optional[str] = ..., actor: _Optional[str] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("alert_id", "account_id", "kind", "message", "window_spent_atomic", "threshold_atomic", "actor", "created_at_ms")
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SPENT_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    alert_id: str
    account_id: str
    kind: str
    message: str
    window_spent_atomic: int
    threshold_atomic: int
    actor: str
    created_at_ms: int
    def __init__(self, alert_id: _Optional[str] = ..., account_id: _Optional[str] = ..., kind: _Optional[str] = ..., message: _Optional[str] = ..., window_spent_atomic: _Optional[int] = ..., threshold_atomic: _Optional[int] = ..., actor: _Optional[str] = ..., created_at_ms: _Optional[int] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("account_id", "limit")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    limit: int
    def __init__(self, account_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts",)
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("approval_id", "account_id", "counterparty", "skill", "amount", "spend_idempotency_key", "operation", "mandate_id", "spender_id", "status", "created_at_ms", "expires_at_ms", "decided_by", "decided_at_ms", "note", "spend_scope")
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTERPARTY_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    SPEND_IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    SPENDER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    SPEND_SCOPE_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    account_id: str
    counterparty: str
    skill: str
    amount: Money
    spend_idempotency_key: str
    operation: str
    mandate_id: str
    spender_id: str
    status: str
    created_at_ms: int
    expires_at_ms: int
    decided_by: str
    decided_at_ms: int
    note: str
    spend_scope: str
    def __init__(self, approval_id: _Optional[str] = ..., account_id: _Optional[str] = ..., counterparty: _Optional[str] = ..., skill: _Optional[str] = ..., amount: _Optional[_Union[Money, _Mapping]] = ..., spend_idempotency_key: _Optional[str] = ..., operation: _Optional[str] = ..., mandate_id: _Optional[str] = ..., spender_id: _Optional[str] = ..., status: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., decided_by: _Optional[str] = ..., decided_at_ms: _Optional[int] = ..., note: _Optional[str] = ..., spend_scope: _Optional[str] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ("account_id", "status", "limit")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    status: str
    limit: int
    def __init__(self, account_id: _Optional[str] = ..., status: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals",)
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ...) -> None: ...

class DecideApprovalRequest(_message.Message):
    __slots__ = ("idempotency_key", "approval_id", "decided_by", "note")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    approval_id: str
    decided_by: str
    note: str
    def __init__(self, idempotency_key: _Optional[str] = ..., approval_id: _Optional[str] = ..., decided_by: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class MandateTerms(_message.Message):
    __slots__ = ("account_id", "agent_key", "currency", "total_limit_atomic", "per_call_limit_atomic", "expires_at_ms", "counterparties", "nonce")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_KEY_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LIMIT_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    PER_CALL_LIMIT_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    COUNTERPARTIES_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    agent_key: str
    currency: str
    total_limit_atomic: int
    per_call_limit_atomic: int
    expires_at_ms: int
    counterparties: _containers.RepeatedScalarFieldContainer[str]
    nonce: str
    def __init__(self, account_id: _Optional[str] = ..., agent_key: _Optional[str] = ..., currency: _Optional[str] = ..., total_limit_atomic: _Optional[int] = ..., per_call_limit_atomic: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., counterparties: _Optional[_Iterable[str]] = ..., nonce: _Optional[str] = ...) -> None: ...

class Mandate(_message.Message):
    __slots__ = ("mandate_id", "terms", "owner", "spent_atomic", "status", "created_at_ms", "revoked_at_ms")
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SPENT_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    mandate_id: str
    terms: MandateTerms
    owner: str
    spent_atomic: int
    status: str
    created_at_ms: int
    revoked_at_ms: int
    def __init__(self, mandate_id: _Optional[str] = ..., terms: _Optional[_Union[MandateTerms, _Mapping]] = ..., owner: _Optional[str] = ..., spent_atomic: _Optional[int] = ..., status: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., revoked_at_ms: _Optional[int] = ...) -> None: ...

class GrantMandateRequest(_message.Message):
    __slots__ = ("idempotency_key", "terms", "owner_signature")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    OWNER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    terms: bytes
    owner_signature: bytes
    def __init__(self, idempotency_key: _Optional[str] = ..., terms: _Optional[bytes] = ..., owner_signature: _Optional[bytes] = ...) -> None: ...

class RevokeMandateRequest(_message.Message):
    __slots__ = ("idempotency_key", "mandate_id", "owner_signature")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    mandate_id: str
    owner_signature: bytes
    def __init__(self, idempotency_key: _Optional[str] = ..., mandate_id: _Optional[str] = ..., owner_signature: _Optional[bytes] = ...) -> None: ...

class GetMandateRequest(_message.Message):
    __slots__ = ("mandate_id",)
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    mandate_id: str
    def __init__(self, mandate_id: _Optional[str] = ...) -> None: ...

class FxQuote(_message.Message):
    __slots__ = ("quote_id", "from_currency", "to_currency", "rate_numerator", "rate_denominator", "provider", "created_at_ms", "expires_at_ms")
    QUOTE_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TO_CURRENCY_FIELD_NUMBER: _ClassVar[int]
    RATE_NUMERATOR_FIELD_NUMBER: _ClassVar[int]
    RATE_DENOMINATOR_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    quote_id: str
    from_currency: str
    to_currency: str
    rate_numerator: int
    rate_denominator: int
    provider: str
    created_at_ms: int
    expires_at_ms: int
    def __init__(self, quote_id: _Optional[str] = ..., from_currency: _Optional[str] = ..., to_currency: _Optional[str] = ..., rate_numerator: _Optional[int] = ..., rate_denominator: _Optional[int] = ..., provider: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class GetQuoteRequest(_message.Message):
    __slots__ = ("idempotency_key", "from_currency", "to_currency")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    FROM_CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TO_CURRENCY_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    from_currency: str
    to_currency: str
    def __init__(self, idempotency_key: _Optional[str] = ..., from_currency: _Optional[str] = ..., to_currency: _Optional[str] = ...) -> None: ...

class ConvertRequest(_message.Message):
    __slots__ = ("idempotency_key", "quote_id", "from_account_id", "to_account_id", "amount", "mandate_id", "spender_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    QUOTE_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TO_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    MANDATE_ID_FIELD_NUMBER: _ClassVar[int]
    SPENDER_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    quote_id: str
    from_account_id: str
    to_account_id: str
    amount: Money
    mandate_id: str
    spender_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., quote_id: _Optional[str] = ..., from_account_id: _Optional[str] = ..., to_account_id: _Optional[str] = ..., amount: _Optional[_Union[Money, _Mapping]] = ..., mandate_id: _Optional[str] = ..., spender_id: _Optional[str] = ...) -> None: ...

class Conversion(_message.Message):
    __slots__ = ("quote_id", "from_account_id", "to_account_id", "sold", "bought", "postings")
    QUOTE_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    TO_ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    SOLD_FIELD_NUMBER: _ClassVar[int]
    BOUGHT_FIELD_NUMBER: _ClassVar[int]
    POSTINGS_FIELD_NUMBER: _ClassVar[int]
    quote_id: str
    from_account_id: str
    to_account_id: str
    sold: Money
    bought: Money
    postings: _containers.RepeatedCompositeFieldContainer[Posting]
    def __init__(self, quote_id: _Optional[str] = ..., from_account_id: _Optional[str] = ..., to_account_id: _Optional[str] = ..., sold: _Optional[_Union[Money, _Mapping]] = ..., bought: _Optional[_Union[Money, _Mapping]] = ..., postings: _Optional[_Iterable[_Union[Posting, _Mapping]]] = ...) -> None: ...

class SetEcnyTierRequest(_message.Message):
    __slots__ = ("idempotency_key", "account_id", "category", "identity_ref")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_REF_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    account_id: str
    category: int
    identity_ref: str
    def __init__(self, idempotency_key: _Optional[str] = ..., account_id: _Optional[str] = ..., category: _Optional[int] = ..., identity_ref: _Optional[str] = ...) -> None: ...

class GetEcnyWalletRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class EcnyWallet(_message.Message):
    __slots__ = ("account_id", "category", "pseudonym", "identity_ref", "registered", "verified_identity", "balance_cap_atomic", "per_payment_cap_atomic", "daily_cap_atomic", "annual_cap_atomic")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PSEUDONYM_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_REF_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    BALANCE_CAP_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    PER_PAYMENT_CAP_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    DAILY_CAP_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    ANNUAL_CAP_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    category: int
    pseudonym: str
    identity_ref: str
    registered: bool
    verified_identity: bool
    balance_cap_atomic: int
    per_payment_cap_atomic: int
    daily_cap_atomic: int
    annual_cap_atomic: int
    def __init__(self, account_id: _Optional[str] = ..., category: _Optional[int] = ..., pseudonym: _Optional[str] = ..., identity_ref: _Optional[str] = ..., registered: _Optional[bool] = ..., verified_identity: _Optional[bool] = ..., balance_cap_atomic: _Optional[int] = ..., per_payment_cap_atomic: _Optional[int] = ..., daily_cap_atomic: _Optional[int] = ..., annual_cap_atomic: _Optional[int] = ...) -> None: ...
