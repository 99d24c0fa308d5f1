"""gRPC health checking and server reflection (v1 and v1alpha) for every server we run.

The node and every agent's server answer `grpc.health.v1.Health` (Check and Watch, per service
and for the server as a whole, "") and server reflection under both names tools ask for:
`grpc.reflection.v1.ServerReflection` (buf curl, grpcurl, Postman try it first) and
`grpc.reflection.v1alpha.ServerReflection`. grpcio-reflection ships only v1alpha; v1 is the
same protocol with the same wire format under another package, so its requests are decoded as
v1alpha messages, answered by grpcio-reflection's servicer, and sent back as they are
(`marketplace/v1/server_reflection.proto` describes it for clients).

Both stay open without a signature (`marketplace.auth.PUBLIC_PREFIXES`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from marketplace.v1 import server_reflection_pb2

REFLECTION_V1 = server_reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING


def _v1_handler(v1alpha: reflection.ReflectionServicer) -> grpc.GenericRpcHandler:
    """v1 reflection answered by the v1alpha servicer (identical messages on the wire)."""

    def info(requests: Iterable[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        return v1alpha.ServerReflectionInfo(iter(requests), context)  # type: ignore[no-any-return]

    return grpc.method_handlers_generic_handler(REFLECTION_V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            info, request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)})


def serve_introspection(server: grpc.Server, services: Iterable[str]) -> health.HealthServicer:
    """Add health checking and reflection (v1, v1alpha) for `services` to `server`; returns
    the health servicer, whose statuses `mark_serving` sets once the server has started."""
    names = [*services, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1]
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    v1alpha = reflection.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(v1alpha, server)
    server.add_generic_rpc_handlers((_v1_handler(v1alpha),))
    return checker


def mark_serving(checker: health.HealthServicer, services: Iterable[str]) -> None:
    """The server and each service answer SERVING."""
    for name in ["", *services]:
        checker.set(name, SERVING)
