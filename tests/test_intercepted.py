"""`marketplace.intercepted.intercept`: grpc.intercept_channel's behaviour, with each layer's
multi-callables made once per method (a real server on a loopback port)."""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
import pytest

from marketplace._call_details import with_metadata
from marketplace.intercepted import intercept

ECHO, FAIL, STREAM = "/t.Test/Echo", "/t.Test/Fail", "/t.Test/Stream"


@pytest.fixture(scope="module")
def address():
    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        tags = [value for key, value in context.invocation_metadata() if key == "tag"]
        return request + b"|" + ",".join(tags).encode()

    def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "refused: " + request.decode())

    def stream(request: bytes, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        yield from (request * n for n in (1, 2, 3))

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.Test", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Stream": grpc.unary_stream_rpc_method_handler(stream)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


class Tagging(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds its tag to the metadata and records each outcome it sees."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.outcomes: list[Any] = []

    def _tagged(self, details: Any) -> Any:
        return with_metadata(details, [*(details.metadata or ()), ("tag", self.tag)])

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        outcome = continuation(self._tagged(details), request)
        outcome.add_done_callback(lambda call: self.outcomes.append(call.code()))
        return outcome

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._tagged(details), request)


class CountingChannel(grpc.Channel):  # type: ignore[misc]
    """A real channel that counts how often a multi-callable is asked of it."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel, self.made = channel, 0

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        self.made += 1
        return self.channel.unary_unary(*args, **kwargs)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        self.made += 1
        return self.channel.unary_stream(*args, **kwargs)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return self.channel.stream_unary(*args, **kwargs)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return self.channel.stream_stream(*args, **kwargs)

    def subscribe(self, *args: Any, **kwargs: Any) -> None:
        self.channel.subscribe(*args, **kwargs)

    def unsubscribe(self, *args: Any, **kwargs: Any) -> None:
        self.channel.unsubscribe(*args, **kwargs)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CountingChannel:
        return self

    def __exit__(self, *exc_info: Any) -> bool:
        self.close()
        return False


def test_interceptors_run_in_grpc_order_and_see_every_outcome(address: str):
    outer, inner = Tagging("outer"), Tagging("inner")
    with intercept(grpc.insecure_channel(address), outer, inner) as ours, \
            grpc.intercept_channel(grpc.insecure_channel(address), Tagging("outer"),
                                   Tagging("inner")) as theirs:
        mine = ours.unary_unary(ECHO)(b"hi", timeout=5)
        assert mine == theirs.unary_unary(ECHO)(b"hi", timeout=5) == b"hi|outer,inner"
        response, call = ours.unary_unary(ECHO).with_call(b"again", timeout=5)
        assert response == b"again|outer,inner" and call.code() == grpc.StatusCode.OK
        future = ours.unary_unary(ECHO).future(b"later", timeout=5)
        assert future.result() == b"later|outer,inner"
        with pytest.raises(grpc.RpcError) as refused:
            ours.unary_unary(FAIL)(b"no", timeout=5)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.details() == "refused: no"
        assert list(ours.unary_stream(STREAM)(b"ab", timeout=5)) == [b"ab", b"abab", b"ababab"]
    assert outer.outcomes == inner.outcomes == [grpc.StatusCode.OK] * 3 + [
        grpc.StatusCode.FAILED_PRECONDITION]


def test_each_layer_makes_a_methods_callable_once(address: str):
    raw = CountingChannel(grpc.insecure_channel(address))
    with intercept(raw, Tagging("a"), Tagging("b")) as channel:
        for index in range(20):
            assert channel.unary_unary(ECHO)(b"%d" % index, timeout=5) == b"%d|a,b" % index
        assert channel.unary_unary(ECHO) is channel.unary_unary(ECHO)
        list(channel.unary_stream(STREAM)(b"x", timeout=5))
        list(channel.unary_stream(STREAM)(b"y", timeout=5))
    assert raw.made == 2  # once for Echo, once for Stream: not once per call
    counted = CountingChannel(grpc.insecure_channel(address))
    with grpc.intercept_channel(counted, Tagging("a")) as theirs:
        for _ in range(5):
            theirs.unary_unary(ECHO)(b"z", timeout=5)
    assert counted.made == 5  # what grpc.intercept_channel does, and why intercept exists


def test_closing_closes_the_channel_beneath(address: str):
    raw = grpc.insecure_channel(address)
    channel = intercept(raw, Tagging("a"))
    assert channel.unary_unary(ECHO)(b"up", timeout=5) == b"up|a"
    channel.close()
    with pytest.raises(ValueError):  # grpc's own error for a call on a closed channel
        raw.unary_unary(ECHO)(b"down", timeout=5)
