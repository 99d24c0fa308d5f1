"""A seller's gRPC server on grpc.aio, run on an event loop of its own (a background thread),
behind the few synchronous methods of `grpc.Server` the seller uses.

Why: a paid call answers only once its usage record is durable. On a threaded server each
handler blocks its thread until the record's batch commits, and waking each of those threads
costs more, under the interpreter lock, than the payment's own work. Here the call awaits the
batch instead: the journal's writer wakes the loop once per batch (`Pending.wait_async`).

The same interceptors as the threaded server guard every call (`SyncBridge`): they are applied
to each method's handler as they are, and a handler that stays synchronous (negotiation,
Finish, streams, A2A, health, reflection) runs, with their guards, in the bounded executor.
A method with a fast path (Invoke: `agents._aio_invoke`) runs its guards' checks on the loop
and then the call itself there; its context variables (the caller the authentication set) are
carried over. With tracing active the fast path steps aside, so the SERVER span covers the
whole call as on the threaded server.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any

import grpc

from marketplace.grpc_tracing import tracing_active
from marketplace.stream_limits import REQUEST_IDLE_S

FastPath = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
_END = object()


class Aborted(Exception):
    """A synchronous `context.abort` seen on the loop or in a worker: the status to answer
    with once back on the loop (grpc.aio's abort is a coroutine)."""

    def __init__(self, code: Any = None, details: str = "", trailing: Any = None,
                 status: Any = None) -> None:
        super().__init__(details)
        self.code, self.details, self.trailing, self.status = code, details, trailing, status

    async def answer(self, context: grpc.aio.ServicerContext) -> None:
        """Abort the call with this status (raises grpc.aio's AbortError)."""
        if self.status is not None:
            await context.abort_with_status(self.status)
        await context.abort(self.code, self.details, self.trailing or ())


class SyncContext:
    """A grpc.aio context as synchronous code expects one: `abort` raises."""

    __slots__ = ("aio",)

    def __init__(self, context: grpc.aio.ServicerContext) -> None:
        self.aio = context

    def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = None
              ) -> None:
        raise Aborted(code, details, trailing_metadata)

    def abort_with_status(self, status: Any) -> None:
        raise Aborted(status=status)

    def is_active(self) -> bool:
        return not self.aio.done()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.aio, name)


class _Passed:
    """What a fast path's guards let through: the request and the context variables they set."""

    __slots__ = ("context", "request")

    def __init__(self, request: Any, context: contextvars.Context) -> None:
        self.request, self.context = request, context


class SyncBridge(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The threaded server's interceptors (outermost first) on the aio server."""

    def __init__(self, interceptors: Sequence[grpc.ServerInterceptor], executor: Executor,
                 fast: dict[str, FastPath], tracer_provider: Any) -> None:
        self.interceptors = list(interceptors)
        self.executor = executor
        self.fast = fast
        self.tracer_provider = tracer_provider

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        fast = self.fast.get(details.method)
        if fast is not None and handler.unary_unary is not None \
                and not tracing_active(self.tracer_provider):
            return self._fast(handler, fast, details)
        guarded = self._guarded(handler, details)
        return None if guarded is None else asyncify(guarded, self.executor)

    def _guarded(self, handler: Any, details: Any) -> Any:
        for interceptor in reversed(self.interceptors):
            handler = interceptor.intercept_service(lambda _d, h=handler: h, details)
            if handler is None:
                return None
        return handler

    def _fast(self, handler: Any, behaviour: FastPath, details: Any) -> Any:
        def passed(request: Any, _context: Any) -> _Passed:
            return _Passed(request, contextvars.copy_context())

        guarded = self._guarded(grpc.unary_unary_rpc_method_handler(
            passed, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer), details)
        check = guarded.unary_unary

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                through = check(request, SyncContext(context))
            except Aborted as aborted:
                await aborted.answer(context)
            if not isinstance(through, _Passed):
                return through
            for var, value in through.context.items():  # this call's own task context
                var.set(value)
            return await behaviour(through.request, context)

        return grpc.unary_unary_rpc_method_handler(
            run, request_deserializer=guarded.request_deserializer,
            response_serializer=guarded.response_serializer)


def asyncify(handler: Any, executor: Executor) -> Any:
    """A synchronous handler as an aio one: its behaviour runs in `executor` (each step of a
    response stream too), with a context whose `abort` raises; request streams are read on
    the loop."""
    def in_pool(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def requests(stream: AsyncIterator[Any], loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
        async def step() -> Any:  # a caller quiet for too long ends its requests
            try:
                return await asyncio.wait_for(anext(stream, _END), REQUEST_IDLE_S)
            except TimeoutError:
                return _END
        while (item := asyncio.run_coroutine_threadsafe(step(), loop).result()) is not _END:
            yield item

    async def unary(behaviour: Callable[..., Any], request: Any,
                    context: grpc.aio.ServicerContext) -> Any:
        try:
            return await in_pool(contextvars.copy_context().run, behaviour, request,
                                 SyncContext(context))
        except Aborted as aborted:
            await aborted.answer(context)

    async def stream(behaviour: Callable[..., Any], request: Any,
                     context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        run = contextvars.copy_context().run
        responses = None
        try:
            responses = await in_pool(run, lambda: iter(behaviour(request, SyncContext(context))))
            while (item := await in_pool(run, next, responses, _END)) is not _END:
                yield item
        except Aborted as aborted:
            await aborted.answer(context)
        finally:
            close = getattr(responses, "close", None)
            if close is not None:  # a hung-up caller: the generator sees GeneratorExit
                await in_pool(run, close)

    if handler.unary_unary is not None:
        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            return await unary(handler.unary_unary, request, context)
        make, behaviour = grpc.unary_unary_rpc_method_handler, unary_unary
    elif handler.unary_stream is not None:
        async def unary_stream(request: Any, context: grpc.aio.ServicerContext
                               ) -> AsyncIterator[Any]:
            async for item in stream(handler.unary_stream, request, context):
                yield item
        make, behaviour = grpc.unary_stream_rpc_method_handler, unary_stream
    elif handler.stream_unary is not None:
        async def stream_unary(request_stream: Any, context: grpc.aio.ServicerContext) -> Any:
            loop = asyncio.get_running_loop()
            return await unary(handler.stream_unary, requests(request_stream, loop), context)
        make, behaviour = grpc.stream_unary_rpc_method_handler, stream_unary
    else:
        async def stream_stream(request_stream: Any, context: grpc.aio.ServicerContext
                                ) -> AsyncIterator[Any]:
            loop = asyncio.get_running_loop()
            async for item in stream(handler.stream_stream, requests(request_stream, loop),
                                     context):
                yield item
        make, behaviour = grpc.stream_stream_rpc_method_handler, stream_stream
    return make(behaviour, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)


class AioServer:
    """A grpc.aio server on its own event loop thread, started and stopped synchronously."""

    def __init__(self, bridge: SyncBridge, options: Sequence[tuple[str, Any]]) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="seller-aio-server")
        self._thread.start()
        self.bridge = bridge

        async def make() -> grpc.aio.Server:
            return grpc.aio.server(interceptors=[bridge], options=list(options))

        self._server = self._on_loop(make())
        self._closed = False

    def _on_loop(self, coroutine: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()  # type: ignore[arg-type]

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Any) -> None:
        self._server.add_registered_method_handlers(service, handlers)

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)  # type: ignore[no-any-return]

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, credentials)  # type: ignore[no-any-return]

    def start(self) -> None:
        self._on_loop(self._server.start())

    def stop(self, grace: float | None) -> threading.Event:
        """Stop serving (running calls get `grace` seconds), then end the loop; returns a set
        Event, as grpc.Server.stop's is once stopped."""
        stopped = threading.Event()
        if not self._closed:
            self._closed = True
            self._on_loop(self._server.stop(grace))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
            if not self.loop.is_running():
                self.loop.close()
            shutdown = getattr(self.bridge.executor, "shutdown", None)
            if shutdown is not None:
                shutdown(wait=False)
        stopped.set()
        return stopped
