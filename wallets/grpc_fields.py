"""Ids and amounts in every request are checked at the gRPC edge, whoever sends them.

Authorisation rules read ids (an account's owner, an agreement's parties), but a node run with
`--no-auth` has no rules, and a malformed id would then reach the domain, which may store it
(an account owned by "not-a-key") or answer NOT_FOUND where the request itself is wrong. So a
table by field name says what each id and amount looks like, and `FieldCheckInterceptor`
refuses a request breaking it with INVALID_ARGUMENT (reason MALFORMED_FIELD, or INVALID_AMOUNT
for an amount; the field's path in ErrorInfo metadata `field`) before anything reads it, with
or without authentication. It walks nested messages and repeated fields (bytes fields, such
as signed bodies, are checked by whoever decodes them). An empty optional id is left to the
domain, which knows when it is required.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from wallets.currencies import MAX_AMOUNT_ATOMIC
from wallets.errors import InvalidAmount, InvalidArgument
from wallets.grpc_errors import WrappedHandlers, abort

Check = Callable[[Any], str]  # the problem with a value, '' when it is fine
MAX_DEPTH = 8
_HEX32 = re.compile(r"^[0-9a-f]{32}\Z")
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")


def hex_id(length: int, what: str) -> Check:
    pattern = _HEX32 if length == 32 else _HEX64

    def check(value: Any) -> str:
        if value == "" or pattern.match(value):
            return ""
        return f"must be {what} ({length} lowercase hex characters), got {_shown(value)}"

    return check


def amount(value: Any) -> str:
    if value < 0:
        return f"must be positive (atomic units), got {value}"
    if value > MAX_AMOUNT_ATOMIC:
        return f"exceeds the limit of {MAX_AMOUNT_ATOMIC} atomic units, got {value}"
    return ""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


AGENT_ID = hex_id(64, "an agent id: an ed25519 public key")
# wallets' own: accounts, holds, approvals and quotes are 128-bit ids; mandates are digests;
# owners and spenders of wallets are agents (system accounts are never opened over the API)
WALLET_FIELDS: dict[str, Check] = {
    "account_id": hex_id(32, "an account id"),
    "debit_account_id": hex_id(32, "an account id"),
    "credit_account_id": hex_id(32, "an account id"),
    "from_account_id": hex_id(32, "an account id"),
    "to_account_id": hex_id(32, "an account id"),
    "hold_id": hex_id(32, "a hold id"),
    "approval_id": hex_id(32, "an approval id"),
    "quote_id": hex_id(32, "a quote id"),
    "mandate_id": hex_id(64, "a mandate id"),
    "owner": AGENT_ID,
    "spender_id": AGENT_ID,
    "agent_id": AGENT_ID,
}


class MalformedField(InvalidArgument):
    """A request field that is not what its name says (an id, an amount)."""

    reason = "MALFORMED_FIELD"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field

    @property
    def metadata(self) -> dict[str, str]:
        return {"field": self.field}


class MalformedAmount(InvalidAmount):
    """An amount field outside 0..MAX_AMOUNT_ATOMIC (reason INVALID_AMOUNT, as the domain's)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field

    @property
    def metadata(self) -> dict[str, str]:
        return {"field": self.field}


def check_fields(message: Message, rules: Mapping[str, Check], path: str = "",
                 depth: int = 0) -> None:
    """Raise InvalidArgument naming the first field that breaks its rule (`*_atomic` fields:
    `amount`). Looks at present fields only (as ListFields lists them), and only at those
    with a rule or a message inside that may hold one (`_field_plan`), by field number."""
    if depth > MAX_DEPTH:
        return
    for field, name, rule, kind in _field_plan(message.DESCRIPTOR, rules):
        if kind == _SCALAR:
            if field.has_presence and not message.HasField(name):
                continue
            value = getattr(message, name)
            if not field.has_presence and value == field.default_value:
                continue  # not present: ListFields leaves it out
            problem = rule(value)
            if problem:
                raise _malformed(rule, f"{path}{name}", problem)
        elif kind == _SCALARS:
            for item in getattr(message, name):
                problem = rule(item)
                if problem:
                    raise _malformed(rule, f"{path}{name}", problem)
        elif kind == _MESSAGE:
            if message.HasField(name):
                check_fields(getattr(message, name), rules, f"{path}{name}.", depth + 1)
        else:  # _MESSAGES
            for index, item in enumerate(getattr(message, name)):
                check_fields(item, rules, f"{path}{name}[{index}].", depth + 1)


def _malformed(rule: Check, field: str, problem: str) -> InvalidArgument:
    return (MalformedAmount if rule is amount else MalformedField)(field, problem)


_SCALAR, _SCALARS, _MESSAGE, _MESSAGES = range(4)
Plan = tuple[tuple[FieldDescriptor, str, Check | None, int], ...]
# Plans by rules table (kept alive beside its plans, so its id is not reused) and message type
_PLANS: dict[int, tuple[Mapping[str, Check], dict[Any, Plan]]] = {}
_MAX_TABLES = 64


def _field_plan(descriptor: Any, rules: Mapping[str, Check]) -> Plan:
    """The fields of a message type `check_fields` must look at under `rules`, made once per
    type and table."""
    table = _PLANS.get(id(rules))
    if table is None or table[0] is not rules:
        if len(_PLANS) >= _MAX_TABLES:
            _PLANS.clear()
        table = _PLANS[id(rules)] = (rules, {})
    plan = table[1].get(descriptor)
    if plan is None:
        plan = _make_plan(descriptor, rules, frozenset())
        table[1][descriptor] = plan
    return plan


def _make_plan(descriptor: Any, rules: Mapping[str, Check], visiting: frozenset[Any]) -> Plan:
    """A type met again while its plan is being made (a recursive type) is taken to hold
    fields with rules."""
    entries = []
    for field in sorted(descriptor.fields, key=lambda f: f.number):
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            inner = field.message_type
            if inner.GetOptions().map_entry:
                continue
            if inner in visiting or inner is descriptor or \
                    _make_plan(inner, rules, visiting | {descriptor}):
                entries.append((field, field.name, None,
                                _MESSAGES if _repeated(field) else _MESSAGE))
            continue
        rule = rules.get(field.name)
        if rule is None and field.name.endswith("_atomic"):
            rule = amount
        if rule is not None:
            entries.append((field, field.name, rule, _SCALARS if _repeated(field) else _SCALAR))
    return tuple(entries)


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


class FieldCheckInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuse requests whose ids or amounts are malformed (INVALID_ARGUMENT), for unary and
    server-streaming methods; place it after authentication and before authorisation."""

    def __init__(self, rules: Mapping[str, Check]) -> None:
        self.rules = dict(rules)
        self._wrapped = WrappedHandlers(self._guarded)

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None:
            return handler
        return self._wrapped.get(details.method, handler)

    def _guarded(self, handler: Any, _method: str) -> Any:
        """`handler` refusing requests whose fields break `rules`."""
        rules = self.rules

        def guard(behaviour):  # type: ignore[no-untyped-def]
            def run(request, context):  # type: ignore[no-untyped-def]
                if isinstance(request, Message):
                    try:
                        check_fields(request, rules)
                    except InvalidArgument as error:
                        abort(context, error)
                return behaviour(request, context)
            return run

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                guard(handler.unary_unary), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                guard(handler.unary_stream), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler
