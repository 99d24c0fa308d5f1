from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PriceUnit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRICE_UNIT_UNSPECIFIED: _ClassVar[PriceUnit]
    PRICE_UNIT_CALL: _ClassVar[PriceUnit]
    PRICE_UNIT_1K_TOKENS: _ClassVar[PriceUnit]
    PRICE_UNIT_UNIT: _ClassVar[PriceUnit]

class VerificationMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERIFICATION_METHOD_UNSPECIFIED: _ClassVar[VerificationMethod]
    VERIFICATION_METHOD_SCHEMA: _ClassVar[VerificationMethod]
    VERIFICATION_METHOD_CHECKER: _ClassVar[VerificationMethod]
    VERIFICATION_METHOD_LLM_JUDGE: _ClassVar[VerificationMethod]
    VERIFICATION_METHOD_BUYER_ACCEPTANCE: _ClassVar[VerificationMethod]
    VERIFICATION_METHOD_THIRD_PARTY: _ClassVar[VerificationMethod]
PRICE_UNIT_UNSPECIFIED: PriceUnit
PRICE_UNIT_CALL: PriceUnit
PRICE_UNIT_1K_TOKENS: PriceUnit
PRICE_UNIT_UNIT: PriceUnit
VERIFICATION_METHOD_UNSPECIFIED: VerificationMethod
VERIFICATION_METHOD_SCHEMA: VerificationMethod
VERIFICATION_METHOD_CHECKER: VerificationMethod
VERIFICATION_METHOD_LLM_JUDGE: VerificationMethod
VERIFICATION_METHOD_BUYER_ACCEPTANCE: VerificationMethod
VERIFICATION_METHOD_THIRD_PARTY: VerificationMethod

class PriceTier(_message.Message):
    __slots__ = ("min_quantity", "amount_atomic", "output_amount_atomic")
    MIN_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_AMOUNT_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    min_quantity: int
    amount_atomic: int
    output_amount_atomic: int
    def __init__(self, min_quantity: _Optional[int] = ..., amount_atomic: _Optional[int] = ..., output_amount_atomic: _Optional[int] = ...) -> None: ...

class Price(_message.Message):
    __slots__ = ("amount_atomic", "currency", "unit", "output_amount_atomic", "unit_name", "tiers")
    AMOUNT_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_AMOUNT_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    UNIT_NAME_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    amount_atomic: int
    currency: str
    unit: PriceUnit
    output_amount_atomic: int
    unit_name: str
    tiers: _containers.RepeatedCompositeFieldContainer[PriceTier]
    def __init__(self, amount_atomic: _Optional[int] = ..., currency: _Optional[str] = ..., unit: _Optional[_Union[PriceUnit, str]] = ..., output_amount_atomic: _Optional[int] = ..., unit_name: _Optional[str] = ..., tiers: _Optional[_Iterable[_Union[PriceTier, _Mapping]]] = ...) -> None: ...

class Skill(_message.Message):
    __slots__ = ("name", "description", "tags", "input_schema_json", "output_schema_json", "prices", "verification_methods", "max_concurrency", "typical_latency_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SCHEMA_JSON_FIELD_NUMBER: _ClassVar[int]
    PRICES_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_METHODS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    TYPICAL_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    input_schema_json: str
    output_schema_json: str
    prices: _containers.RepeatedCompositeFieldContainer[Price]
    verification_methods: _containers.RepeatedScalarFieldContainer[VerificationMethod]
    max_concurrency: int
    typical_latency_ms: int
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., input_schema_json: _Optional[str] = ..., output_schema_json: _Optional[str] = ..., prices: _Optional[_Iterable[_Union[Price, _Mapping]]] = ..., verification_methods: _Optional[_Iterable[_Union[VerificationMethod, str]]] = ..., max_concurrency: _Optional[int] = ..., typical_latency_ms: _Optional[int] = ...) -> None: ...

class Listing(_message.Message):
    __slots__ = ("agent_id", "name", "endpoint", "skills", "expires_at_ms", "reputation_permille", "rated_agreements")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SKILLS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REPUTATION_PERMILLE_FIELD_NUMBER: _ClassVar[int]
    RATED_AGREEMENTS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    name: str
    endpoint: str
    skills: _containers.RepeatedCompositeFieldContainer[Skill]
    expires_at_ms: int
    reputation_permille: int
    rated_agreements: int
    def __init__(self, agent_id: _Optional[str] = ..., name: _Optional[str] = ..., endpoint: _Optional[str] = ..., skills: _Optional[_Iterable[_Union[Skill, _Mapping]]] = ..., expires_at_ms: _Optional[int] = ..., reputation_permille: _Optional[int] = ..., rated_agreements: _Optional[int] = ...) -> None: ...

class AdvertiseRequest(_message.Message):
    __slots__ = ("idempotency_key", "listing", "ttl_s")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    LISTING_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    listing: Listing
    ttl_s: int
    def __init__(self, idempotency_key: _Optional[str] = ..., listing: _Optional[_Union[Listing, _Mapping]] = ..., ttl_s: _Optional[int] = ...) -> None: ...

class AdvertiseResponse(_message.Message):
    __slots__ = ("listing", "node_id")
    LISTING_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    listing: Listing
    node_id: str
    def __init__(self, listing: _Optional[_Union[Listing, _Mapping]] = ..., node_id: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("expires_at_ms",)
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    expires_at_ms: int
    def __init__(self, expires_at_ms: _Optional[int] = ...) -> None: ...

class WithdrawListingRequest(_message.Message):
    __slots__ = ("idempotency_key", "agent_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    agent_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., agent_id: _Optional[str] = ...) -> None: ...

class WithdrawListingResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportUnreachableRequest(_message.Message):
    __slots__ = ("agent_id", "endpoint")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    endpoint: str
    def __init__(self, agent_id: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class ReportUnreachableResponse(_message.Message):
    __slots__ = ("withdrawn",)
    WITHDRAWN_FIELD_NUMBER: _ClassVar[int]
    withdrawn: bool
    def __init__(self, withdrawn: _Optional[bool] = ...) -> None: ...

class DiscoverRequest(_message.Message):
    __slots__ = ("skill", "currency", "max_price_atomic", "limit", "text", "tags", "min_reputation_permille", "convert_currencies")
    SKILL_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_PRICE_ATOMIC_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    MIN_REPUTATION_PERMILLE_FIELD_NUMBER: _ClassVar[int]
    CONVERT_CURRENCIES_FIELD_NUMBER: _ClassVar[int]
    skill: str
    currency: str
    max_price_atomic: int
    limit: int
    text: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    min_reputation_permille: int
    convert_currencies: bool
    def __init__(self, skill: _Optional[str] = ..., currency: _Optional[str] = ..., max_price_atomic: _Optional[int] = ..., limit: _Optional[int] = ..., text: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., min_reputation_permille: _Optional[int] = ..., convert_currencies: _Optional[bool] = ...) -> None: ...

class DiscoverResponse(_message.Message):
    __slots__ = ("listings",)
    LISTINGS_FIELD_NUMBER: _ClassVar[int]
    listings: _containers.RepeatedCompositeFieldContainer[Listing]
    def __init__(self, listings: _Optional[_Iterable[_Union[Listing, _Mapping]]] = ...) -> None: ...
