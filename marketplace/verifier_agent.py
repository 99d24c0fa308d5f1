"""Third-party verification over gRPC: the agent that verifies, and the marketplace's client.

A verifier agent runs `VerifierAgent` with a function judging one output:

    def check(output, receipt, body) -> bool | tuple[bool, str]: ...
    verifier = VerifierAgent(check).serve()          # its own gRPC server
    # buyer and seller put VerifierTerms(agent_id=verifier.agent_id,
    #                                     endpoint=verifier.endpoint, fee_atomic=...) in terms

When the seller redeems, the marketplace calls Verify with the receipts; the agent checks that the
agreement names it and is signed by both parties and that each receipt is the seller's, judges
each output, and signs its verdicts. It is paid its fee from the escrow, in the same posting that
pays the seller (or, if the work fails, in the posting that refunds the buyer).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.trace import TracerProvider

from marketplace import agreements as ag
from marketplace.auth import signed_channel
from marketplace.channel_cache import ChannelCache
from marketplace.errors import PermissionDenied, VerifierUnavailable
from marketplace.grpc_tracing import client_interceptors, server_interceptor
from marketplace.identity import AgentKey
from marketplace.intercepted import intercept
from marketplace.introspection import mark_serving, serve_introspection
from marketplace.stream_limits import StreamLimits
from marketplace.v1 import agreement_pb2, verifier_pb2, verifier_pb2_grpc
from wallets.grpc_errors import grpc_method

OutputCheck = Callable[[Any, agreement_pb2.Receipt, agreement_pb2.AgreementBody],
                       "bool | tuple[bool, str]"]
MAX_REMEMBERED = 10_000
_WORKERS = 8  # the server's threads
MAX_REQUEST_BYTES = 8 * 1024 * 1024  # one redeem's receipts (a node takes 4 MiB) and more


class VerifierAgent:
    """A verifier agent: judges outputs with `check`, signs verdicts with its key."""

    def __init__(self, check: OutputCheck, *, key: AgentKey | None = None,
                 host: str = "127.0.0.1", port: int = 0,
                 tracer_provider: TracerProvider | None = None,
                 server_credentials: grpc.ServerCredentials | None = None) -> None:
        """`server_credentials` (`marketplace.auth.server_credentials`): serve TLS or mTLS."""
        self.check = check
        self.key = key or AgentKey.generate()
        self.agent_id = self.key.agent_id
        self._answers: OrderedDict[tuple[str, str], verifier_pb2.VerifyResponse] = \
            OrderedDict()
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=_WORKERS),
                                  interceptors=[StreamLimits(_WORKERS),
                                                server_interceptor(tracer_provider)],
                                  options=[("grpc.max_receive_message_length",
                                            MAX_REQUEST_BYTES), ("grpc.so_reuseport", 0)])
        verifier_pb2_grpc.add_VerifierServiceServicer_to_server(_Servicer(self), self.server)
        self._services = [verifier_pb2.DESCRIPTOR.services_by_name["VerifierService"].full_name]
        self.health = serve_introspection(self.server, self._services)
        self.port = (self.server.add_secure_port(f"{host}:{port}", server_credentials)
                     if server_credentials is not None
                     else self.server.add_insecure_port(f"{host}:{port}"))
        self.endpoint = f"{host}:{self.port}"

    def serve(self) -> VerifierAgent:
        """Start serving (health checks and reflection too)."""
        self.server.start()
        mark_serving(self.health, self._services)
        return self

    def stop(self, grace_s: float = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace_s).wait()

    def __enter__(self) -> VerifierAgent:
        return self.serve()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def verify(self, request: verifier_pb2.VerifyRequest) -> verifier_pb2.VerifyResponse:
        """Judge the receipts and sign the verdicts. A retry (the same key *and* the same
        request) gets the first answer; the key alone never names an answer, or anyone who
        knows the marketplace's key (`verify:<agreement>:<digest>`) could plant a verdict on
        other outputs under it before the marketplace asks."""
        remembered = (request.idempotency_key,
                      hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest())
        with self._lock:
            known = self._answers.get(remembered)
        if known is not None:
            return known
        body = ag.parse_body(request.agreement)
        ag.check_signatures(request.agreement, body)
        if body.terms.verifier.agent_id != self.agent_id:
            raise PermissionDenied("the agreement names another verifier")
        if ag.agreement_id(request.agreement.body) != request.agreement_id:
            raise PermissionDenied("agreement_id is not the agreement's")
        verdicts = []
        for receipt in request.receipts:
            ag.check_receipt(receipt, body.seller_id)
            try:
                answer = self.check(json.loads(receipt.output_json), receipt, body)
            except Exception as error:  # the verifier's own bug fails the output
                answer = (False, f"check raised {type(error).__name__}")
            passed, reason = answer if isinstance(answer, tuple) else (bool(answer), "")
            verdicts.append(verifier_pb2.ReceiptVerdict(sequence=receipt.sequence,
                                                        passed=bool(passed), reason=reason[:500]))
        response = verifier_pb2.VerifyResponse(
            agreement_id=request.agreement_id, verdicts=verdicts,
            verifier_signature=self.key.sign(ag.verdict_message(
                request.agreement_id, list(request.receipts), verdicts)))
        with self._lock:
            self._answers[remembered] = response
            while len(self._answers) > MAX_REMEMBERED:
                self._answers.popitem(last=False)
        return response


class _Servicer(verifier_pb2_grpc.VerifierServiceServicer):
    def __init__(self, agent: VerifierAgent) -> None:
        self.agent = agent

    @grpc_method
    def Verify(self, request, context):  # type: ignore[no-untyped-def]
        return self.agent.verify(request)


class GrpcVerifierClient:
    """The marketplace's side: call a verifier's endpoint; any failure is UNAVAILABLE."""

    def __init__(self, tracer_provider: TracerProvider | None = None, *,
                 key: AgentKey | None = None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        """`key`: sign every call with it (the node's key, so a verifier can tell the
        marketplace from anyone); `credentials`: TLS to verifiers."""
        self._interceptors = client_interceptors(tracer_provider)
        self._key = key
        self._credentials = credentials
        self._channels: ChannelCache[grpc.Channel] = ChannelCache(
            self._open, lambda channel: channel.close())

    def _open(self, endpoint: str) -> grpc.Channel:
        if self._key is not None:
            return signed_channel(endpoint, self._key, self._credentials,
                                  interceptors=self._interceptors)
        raw = (grpc.secure_channel(endpoint, self._credentials) if self._credentials
               else grpc.insecure_channel(endpoint))
        return intercept(raw, *self._interceptors)

    def _stub(self, endpoint: str) -> verifier_pb2_grpc.VerifierServiceStub:
        return verifier_pb2_grpc.VerifierServiceStub(self._channels.get(endpoint))

    def __call__(self, endpoint: str, request: verifier_pb2.VerifyRequest,
                 timeout_s: float) -> verifier_pb2.VerifyResponse:
        try:
            return self._stub(endpoint).Verify(request, timeout=timeout_s)
        except grpc.RpcError as error:
            raise VerifierUnavailable(f"verifier at {endpoint} failed: {error.code().name}: "
                                      f"{error.details()}") from None

    def close(self) -> None:
        self._channels.close()
