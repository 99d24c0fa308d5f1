"""A caller's registry write refused before any work while the registry has no room for it.

`Registry._asked` lets at most `MAX_ASKED_WRITES` callers' writes run or wait at once. A write
refused there has already cost the node its reading: a listing of up to 256 KiB parsed, its
signature's hash taken, every field checked. During a flood of listings from free keys those
refusals took a quarter of the node's interpreter from the payments running beside them. So
this interceptor, first on the node, looks at the method alone and refuses REGISTRY_BUSY at
once, the request never parsed, while the registry is full. It only looks: room is taken in
the registry, after the caller's signature checked, so no unsigned request can take it.
"""

from __future__ import annotations

from typing import Any

import grpc

from marketplace.registry import Registry, busy
from marketplace.v1 import registry_pb2
from wallets.grpc_errors import abort

_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
WRITES = frozenset(f"/{_SERVICE}/{name}" for name in ("Advertise", "Heartbeat",
                                                       "WithdrawListing"))


class RegistryBusyDoor(grpc.ServerInterceptor):  # type: ignore[misc]
    """See the module docstring."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = continuation(details)
        if handler is None or details.method not in WRITES or not self.registry.writes_full():
            return handler
        return grpc.unary_unary_rpc_method_handler(
            _refuse, request_deserializer=None,  # the request's bytes are never parsed
            response_serializer=handler.response_serializer)


def _refuse(_request: bytes, context: grpc.ServicerContext) -> Any:
    abort(context, busy())
