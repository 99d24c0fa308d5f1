from marketplace.v1 import registry_pb2 as _registry_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JudgeTerms(_message.Message):
    __slots__ = ("model", "rubric", "pass_threshold_permille")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RUBRIC_FIELD_NUMBER: _ClassVar[int]
    PASS_THRESHOLD_PERMILLE_FIELD_NUMBER: _ClassVar[int]
    model: str
    rubric: str
    pass_threshold_permille: int
    def __init__(self, model: _Optional[str] = ..., rubric: _Optional[str] = ..., pass_threshold_permille: _Optional[int] = ...) -> None: ...

class VerifierTerms(_message.Message):
    __slots__ = ("agent_id", "endpoint", "fee_atomic", "instructions")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    FEE_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    endpoint: str
    fee_atomic: int
    instructions: str
    def __init__(self, agent_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., fee_atomic: _Optional[int] = ..., instructions: _Optional[str] = ...) -> None: ...

class Terms(_message.Message):
    __slots__ = ("skill", "unit_price_atomic", "unit", "currency", "max_total_atomic", "verification", "completion_deadline_ms", "dispute_window_s", "output_unit_price_atomic", "unit_name", "checker", "judge", "verifier")
    SKILL_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_TOTAL_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    DISPUTE_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_UNIT_PRICE_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    UNIT_NAME_FIELD_NUMBER: _ClassVar[int]
    CHECKER_FIELD_NUMBER: _ClassVar[int]
    JUDGE_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    skill: str
    unit_price_atomic: int
    unit: _registry_pb2.PriceUnit
    currency: str
    max_total_atomic: int
    verification: _registry_pb2.VerificationMethod
    completion_deadline_ms: int
    dispute_window_s: int
    output_unit_price_atomic: int
    unit_name: str
    checker: str
    judge: JudgeTerms
    verifier: VerifierTerms
    def __init__(self, skill: _Optional[str] = ..., unit_price_atomic: _Optional[int] = ..., unit: _Optional[_Union[_registry_pb2.PriceUnit, str]] = ..., currency: _Optional[str] = ..., max_total_atomic: _Optional[int] = ..., verification: _Optional[_Union[_registry_pb2.VerificationMethod, str]] = ..., completion_deadline_ms: _Optional[int] = ..., dispute_window_s: _Optional[int] = ..., output_unit_price_atomic: _Optional[int] = ..., unit_name: _Optional[str] = ..., checker: _Optional[str] = ..., judge: _Optional[_Union[JudgeTerms, _Mapping]] = ..., verifier: _Optional[_Union[VerifierTerms, _Mapping]] = ...) -> None: ...

class Rfq(_message.Message):
    __slots__ = ("rfq_id", "buyer_id", "skill", "expected_quantity", "max_budget_atomic", "currency", "deadline_ms", "verification", "max_rounds")
    RFQ_ID_FIELD_NUMBER: _ClassVar[int]
    BUYER_ID_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    MAX_BUDGET_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    MAX_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rfq_id: str
    buyer_id: str
    skill: str
    expected_quantity: int
    max_budget_atomic: int
    currency: str
    deadline_ms: int
    verification: _registry_pb2.VerificationMethod
    max_rounds: int
    def __init__(self, rfq_id: _Optional[str] = ..., buyer_id: _Optional[str] = ..., skill: _Optional[str] = ..., expected_quantity: _Optional[int] = ..., max_budget_atomic: _Optional[int] = ..., currency: _Optional[str] = ..., deadline_ms: _Optional[int] = ..., verification: _Optional[_Union[_registry_pb2.VerificationMethod, str]] = ..., max_rounds: _Optional[int] = ...) -> None: ...

class Offer(_message.Message):
    __slots__ = ("rfq_id", "round", "from_id", "terms", "expires_at_ms")
    RFQ_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    FROM_ID_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    rfq_id: str
    round: int
    from_id: str
    terms: Terms
    expires_at_ms: int
    def __init__(self, rfq_id: _Optional[str] = ..., round: _Optional[int] = ..., from_id: _Optional[str] = ..., terms: _Optional[_Union[Terms, _Mapping]] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class AgreementBody(_message.Message):
    __slots__ = ("rfq_id", "buyer_id", "seller_id", "seller_endpoint", "terms", "payword_root", "payword_length", "link_value_atomic", "created_at_ms", "nonce", "offer_expires_at_ms")
    RFQ_ID_FIELD_NUMBER: _ClassVar[int]
    BUYER_ID_FIELD_NUMBER: _ClassVar[int]
    SELLER_ID_FIELD_NUMBER: _ClassVar[int]
    SELLER_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    PAYWORD_ROOT_FIELD_NUMBER: _ClassVar[int]
    PAYWORD_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LINK_VALUE_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    OFFER_EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    rfq_id: str
    buyer_id: str
    seller_id: str
    seller_endpoint: str
    terms: Terms
    payword_root: bytes
    payword_length: int
    link_value_atomic: int
    created_at_ms: int
    nonce: bytes
    offer_expires_at_ms: int
    def __init__(self, rfq_id: _Optional[str] = ..., buyer_id: _Optional[str] = ..., seller_id: _Optional[str] = ..., seller_endpoint: _Optional[str] = ..., terms: _Optional[_Union[Terms, _Mapping]] = ..., payword_root: _Optional[bytes] = ..., payword_length: _Optional[int] = ..., link_value_atomic: _Optional[int] = ..., created_at_ms: _Optional[int] = ..., nonce: _Optional[bytes] = ..., offer_expires_at_ms: _Optional[int] = ...) -> None: ...

class SignedAgreement(_message.Message):
    __slots__ = ("body", "buyer_signature", "seller_signature")
    BODY_FIELD_NUMBER: _ClassVar[int]
    BUYER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SELLER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    buyer_signature: bytes
    seller_signature: bytes
    def __init__(self, body: _Optional[bytes] = ..., buyer_signature: _Optional[bytes] = ..., seller_signature: _Optional[bytes] = ...) -> None: ...

class Voucher(_message.Message):
    __slots__ = ("agreement_id", "sequence", "cumulative_atomic", "payword_index", "payword")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CUMULATIVE_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    PAYWORD_INDEX_FIELD_NUMBER: _ClassVar[int]
    PAYWORD_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    sequence: int
    cumulative_atomic: int
    payword_index: int
    payword: bytes
    def __init__(self, agreement_id: _Optional[str] = ..., sequence: _Optional[int] = ..., cumulative_atomic: _Optional[int] = ..., payword_index: _Optional[int] = ..., payword: _Optional[bytes] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("agreement_id", "sequence", "output_sha256", "output_json", "seller_signature", "charged_atomic", "units", "input_tokens", "output_tokens", "chain_index", "chain_sha256", "previous_sha256")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHA256_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    SELLER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CHARGED_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHAIN_INDEX_FIELD_NUMBER: _ClassVar[int]
    CHAIN_SHA256_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SHA256_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    sequence: int
    output_sha256: str
    output_json: str
    seller_signature: bytes
    charged_atomic: int
    units: int
    input_tokens: int
    output_tokens: int
    chain_index: int
    chain_sha256: bytes
    previous_sha256: bytes
    def __init__(self, agreement_id: _Optional[str] = ..., sequence: _Optional[int] = ..., output_sha256: _Optional[str] = ..., output_json: _Optional[str] = ..., seller_signature: _Optional[bytes] = ..., charged_atomic: _Optional[int] = ..., units: _Optional[int] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., chain_index: _Optional[int] = ..., chain_sha256: _Optional[bytes] = ..., previous_sha256: _Optional[bytes] = ...) -> None: ...
