"""The request guards wrap a method's handler once, and wrap again when the handler changes.

A server's handlers are the same objects call after call, so the malformed-request and
field-check interceptors keep the wrapped handler per method instead of building one per
call; an interceptor further in that wraps per call (a signed caller's) hands them a new
handler each time, which must be guarded as well as the first.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from agents.v1 import agent_pb2
from marketplace.request_fields import MARKET_FIELDS
from wallets.grpc_errors import MalformedRequestInterceptor, WrappedHandlers
from wallets.grpc_fields import FieldCheckInterceptor

INVOKE = "/agents.v1.AgentService/Invoke"


class _Details:
    method = INVOKE
    invocation_metadata = ()


class _Refused(Exception):
    pass


class _Context:
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Refused(code, details)

    def abort_with_status(self, status: Any) -> None:
        raise _Refused(status.code, status.details)

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass


def _handler(answer: str) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        lambda request, context: answer,
        request_deserializer=agent_pb2.InvokeRequest.FromString,
        response_serializer=agent_pb2.InvokeResponse.SerializeToString)


@pytest.mark.parametrize("interceptor", [MalformedRequestInterceptor(),
                                         FieldCheckInterceptor(MARKET_FIELDS)],
                         ids=["malformed", "fields"])
def test_a_method_is_wrapped_once_while_its_handler_stays(interceptor: Any):
    first, second = _handler("first"), _handler("second")
    wrapped = interceptor.intercept_service(lambda _d: first, _Details)
    assert interceptor.intercept_service(lambda _d: first, _Details) is wrapped
    rewrapped = interceptor.intercept_service(lambda _d: second, _Details)
    assert rewrapped is not wrapped
    request = agent_pb2.InvokeRequest(agreement_id="ab" * 32, call_id="c1")
    assert rewrapped.unary_unary(request, _Context()) == "second"
    assert interceptor.intercept_service(lambda _d: None, _Details) is None


def test_the_kept_wrapper_still_refuses_a_malformed_field():
    guard = FieldCheckInterceptor(MARKET_FIELDS)
    inner = _handler("ran")
    for _ in range(3):  # the first call wraps, the later ones reuse the wrapper
        wrapped = guard.intercept_service(lambda _d: inner, _Details)
        with pytest.raises(_Refused) as refused:
            wrapped.unary_unary(agent_pb2.InvokeRequest(agreement_id="not hex"), _Context())
        assert refused.value.args[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert "agreement_id" in refused.value.args[1]


def test_the_kept_wrapper_still_refuses_an_undecodable_request():
    guard = MalformedRequestInterceptor()
    inner = _handler("ran")
    for _ in range(3):
        wrapped = guard.intercept_service(lambda _d: inner, _Details)
        parsed = wrapped.request_deserializer(b"\xff\xff\xff")
        with pytest.raises(_Refused) as refused:
            wrapped.unary_unary(parsed, _Context())
        assert refused.value.args[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert INVOKE in refused.value.args[1]


def test_the_cache_holds_one_wrapper_per_method():
    made = WrappedHandlers(lambda inner, method: (inner, method))
    handlers = [_handler(str(n)) for n in range(5)]
    for handler in handlers:
        made.get(INVOKE, handler)
    kept = made.get(INVOKE, handlers[-1])
    assert kept == (handlers[-1], INVOKE)
    assert made.get(INVOKE, handlers[-1]) is kept
    assert len(made._made) == 1
