"""The buyer's half of A2A: read an Agent Card, pay a seller's A2A door, ask plain A2A agents.

Both buyers (sync and async) are shells over these pure steps: a card fetched from its URL is
checked (its JWS signature must verify with the key its payment params name), its payment
params become a marketplace Listing to negotiate with, a planned paid call becomes a
SendMessageRequest carrying the voucher, and the task that answers it becomes the
InvokeResponse the buyer's receipt checks already know (`BuyerCore._answered`).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import contextvars
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from a2a.types import a2a_pb2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from agents._buyer_core import PlannedCall
from agents._deal import MalformedAnswer
from agents._serving import STOP_NAMES, STOP_REASON_KEY
from agents.errors import (
    FailedPrecondition,
    InvalidArgument,
    PaymentRequired,
    ServerError,
    Unavailable,
)
from agents.v1 import agent_pb2
from marketplace import a2a_extension as ext
from marketplace.a2a_cards import CARD_PATH, parse_card, payment_params
from marketplace.v1 import registry_pb2

CARD_TIMEOUT_S = 10.0
MAX_CARD_BYTES = 1024 * 1024
EXTENSION_METADATA = ((ext.EXTENSIONS_HEADER, ext.URI),)
_UNITS = {name: value for value, name in ext.UNITS.items()}
_VERIFICATIONS = {name: value for value, name in ext.VERIFICATIONS.items()}
_STOPS = {name: value for value, name in STOP_NAMES.items()}


def card_url(url: str) -> str:
    """A card URL from a base URL or the card's own URL."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise InvalidArgument(f"an Agent Card URL starts with http:// or https://, got "
                              f"{str(url)[:80]!r}")
    return url if url.endswith(".json") else url.rstrip("/") + CARD_PATH


def fetch_card(url: str) -> a2a_pb2.AgentCard:
    """The card at `url`, read within CARD_TIMEOUT_S in all, headers included, and
    MAX_CARD_BYTES at most: a server dripping a byte at a time, or sending without end, holds
    the buyer no longer (httpx's timeout bounds each read, not the whole). Fetched on a loop
    of its own, on a thread of its own, whatever loop the caller's thread runs."""
    with ThreadPoolExecutor(1, thread_name_prefix="agent-card") as pool:
        return pool.submit(contextvars.copy_context().run, asyncio.run,
                           afetch_card(url)).result()


async def afetch_card(url: str) -> a2a_pb2.AgentCard:
    import httpx

    body = bytearray()
    try:
        async with asyncio.timeout(CARD_TIMEOUT_S), \
                httpx.AsyncClient(timeout=CARD_TIMEOUT_S) as client, \
                client.stream("GET", card_url(url)) as response:
            async for piece in response.aiter_bytes():
                body += piece
                if len(body) > MAX_CARD_BYTES:  # enough to refuse it: read no further
                    break
            status = response.status_code
    except TimeoutError:
        raise Unavailable(f"the Agent Card at {url} did not arrive within "
                          f"{CARD_TIMEOUT_S:g} s") from None
    except httpx.HTTPError as error:
        raise Unavailable(f"the Agent Card at {url} could not be fetched: {error}") from None
    return checked_card(url, status, bytes(body))


def checked_card(url: str, status: int, body: bytes) -> a2a_pb2.AgentCard:
    """The card, its signature checked when it has one (a card with the payment extension
    must be signed by the agent its params name: that key signs the agreement too)."""
    if status != 200:
        raise Unavailable(f"the Agent Card at {url} answered HTTP {status}")
    if len(body) > MAX_CARD_BYTES:
        raise InvalidArgument(f"the Agent Card at {url} is larger than {MAX_CARD_BYTES} bytes")
    try:
        card = parse_card(json.loads(body))
    except Exception as error:
        raise InvalidArgument(f"{url} does not hold an Agent Card: {error}") from None
    params = payment_params(card)
    if params is not None:
        agent_id = str(params.get("agentId", ""))
        if len(agent_id) != 64:
            raise InvalidArgument(f"the card at {url} names no agentId in its payment params")
        signers = {agent_id, str(params.get("catalogue", ""))} - {""}
        verify_card(card, signers)
    return card


def verify_card(card: a2a_pb2.AgentCard, signers: set[str]) -> None:
    """Raises BadSignature unless a signature by one of `signers` (the agent, or the node
    whose catalogue served the card) verifies over it (a2a-sdk's verifier: RFC 8785 canonical
    form, JWS, EdDSA). The agreement is what binds money to the seller's key: negotiation
    only succeeds with the key the card names."""
    from a2a.utils.signing import SignatureVerificationError, create_signature_verifier

    from agents.errors import BadSignature

    def key_for(kid: str | None, _jku: str | None) -> Any:
        if kid not in signers or len(kid) != 64:
            raise SignatureVerificationError("a signature by another key")
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(kid))

    try:
        create_signature_verifier(key_for, ["EdDSA"])(card)
    except SignatureVerificationError as error:
        raise BadSignature(f"the Agent Card is not signed by the agent its payment params "
                           f"name: {error}") from None


def card_listing(card: a2a_pb2.AgentCard) -> registry_pb2.Listing:
    """The marketplace listing a card's payment params describe (its priced skills)."""
    params = payment_params(card)
    if params is None:
        raise FailedPrecondition(f"the agent {card.name!r} takes no payment (its card has no "
                                 f"{ext.URI} extension): call it with `ask`")
    try:  # the seller's own words, signed by it: they may still not be what the spec says
        return _listing(card, params)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise InvalidArgument(f"the card of {card.name[:64]!r} has malformed payment params "
                              f"({type(error).__name__}: {str(error)[:120]})") from None


def _listing(card: a2a_pb2.AgentCard, params: dict[str, Any]) -> registry_pb2.Listing:
    skills = []
    for name, spec in (params.get("skills") or {}).items():
        if spec.get("free"):
            continue
        prices = [registry_pb2.Price(
            amount_atomic=int(p["amountAtomic"]), currency=p["currency"],
            unit=_UNITS.get(p.get("unit", "call"), registry_pb2.PRICE_UNIT_CALL),
            unit_name=p.get("unitName", ""),
            output_amount_atomic=int(p.get("outputAmountAtomic", "0")),
            tiers=[registry_pb2.PriceTier(min_quantity=int(t["minQuantity"]),
                                          amount_atomic=int(t["amountAtomic"]),
                                          output_amount_atomic=int(t.get("outputAmountAtomic",
                                                                         "0")))
                   for t in p.get("tiers", [])]) for p in spec.get("prices", [])]
        skills.append(registry_pb2.Skill(
            name=name, description=next((s.description for s in card.skills if s.id == name),
                                        ""),
            input_schema_json=json.dumps(spec.get("inputSchema", {})),
            output_schema_json=json.dumps(spec.get("outputSchema", {})), prices=prices,
            verification_methods=[_VERIFICATIONS[v] for v in spec.get("verificationMethods", [])
                                  if v in _VERIFICATIONS]))
    endpoint = (params.get("negotiate") or {}).get("endpoint", "")
    return registry_pb2.Listing(agent_id=params["agentId"], name=card.name, endpoint=endpoint,
                                skills=skills)


def grpc_endpoint(card: a2a_pb2.AgentCard) -> str:
    found = next((i.url for i in card.supported_interfaces
                  if i.protocol_binding.upper() == "GRPC"), "")
    if not found:
        raise FailedPrecondition(f"the agent {card.name!r} has no gRPC interface on its card")
    return found.removeprefix("grpc://")


def json_part(input_json: str) -> a2a_pb2.Part:
    """The input as a text part holding its exact JSON: a data part (a protobuf Struct) would
    carry its numbers as doubles, and integers past 2^53 would not arrive as sent."""
    return a2a_pb2.Part(text=input_json, media_type="application/json")


def paid_request(planned: PlannedCall) -> a2a_pb2.SendMessageRequest:
    """The SendMessage of a planned paid call: its input as JSON text, its voucher in the
    message metadata; the message id is the call id (a resend is the same task)."""
    message = a2a_pb2.Message(message_id=planned.request.call_id, role=a2a_pb2.ROLE_USER,
                              extensions=[ext.URI])
    message.parts.append(json_part(planned.request.input_json))
    message.metadata.update({ext.PAYMENT_KEY: ext.payment_metadata(planned.voucher),
                             ext.SKILL_KEY: planned.deal.body.terms.skill})
    return a2a_pb2.SendMessageRequest(message=message)


def paid_response(task: a2a_pb2.Task) -> agent_pb2.InvokeResponse:
    """The paid call's answer from its task (a FAILED task: ServerError, nothing charged)."""
    if task.status.state != a2a_pb2.TASK_STATE_COMPLETED:
        text = " ".join(p.text for p in task.status.message.parts if p.text)
        raise ServerError(f"the A2A task ended {a2a_pb2.TaskState.Name(task.status.state)}: "
                          f"{text or 'no reason given'}")
    meta = _dict(task.metadata)
    output = next((p.text for a in task.artifacts if a.artifact_id == "output"
                   for p in a.parts if p.text), "")
    with _parsing("task"):
        return agent_pb2.InvokeResponse(
            output_json=output, receipt=ext.parse_receipt(meta.get(ext.RECEIPT_KEY, "")),
            usage=_usage(meta.get(ext.USAGE_KEY, {})))


@contextlib.contextmanager
def _parsing(what: str) -> Iterator[None]:
    """A seller's metadata read as ours: anything that does not parse (not a number, out of
    range, not base64, not a Receipt, not a map) is the seller's `MalformedAnswer`."""
    try:
        yield
    except (ValueError, TypeError, AttributeError, KeyError, DecodeError,
            binascii.Error) as error:
        raise MalformedAnswer(f"the seller's A2A {what} carries malformed payment metadata "
                              f"({type(error).__name__}: {str(error)[:120]})") from None


def _usage(usage: dict[str, str]) -> agent_pb2.Usage:
    return agent_pb2.Usage(
        calls=int(usage.get("calls", "0")), input_tokens=int(usage.get("inputTokens", "0")),
        output_tokens=int(usage.get("outputTokens", "0")), units=int(usage.get("units", "0")),
        charged_atomic=int(usage.get("chargedAtomic", "0")),
        reserved_atomic=int(usage.get("reservedAtomic", "0")),
        unspent_atomic=int(usage.get("unspentAtomic", "0")))


def stream_request(request: agent_pb2.InvokeRequest, voucher: Any, skill: str
                   ) -> a2a_pb2.SendMessageRequest:
    """The SendStreamingMessage of a planned streamed call (its budget prepaid by `voucher`)."""
    message = a2a_pb2.Message(message_id=request.call_id, role=a2a_pb2.ROLE_USER,
                              extensions=[ext.URI])
    message.parts.append(json_part(request.input_json))
    message.metadata.update({ext.PAYMENT_KEY: ext.payment_metadata(voucher),
                             ext.SKILL_KEY: skill})
    return a2a_pb2.SendMessageRequest(message=message)


class _Chunks:
    """A2A stream events as InvokeStream's chunks: text pieces, then the end with the receipt
    (so `StreamedCall` checks an A2A stream as it checks its own)."""

    def __init__(self) -> None:
        self.stop = ""

    def chunk(self, event: a2a_pb2.StreamResponse) -> agent_pb2.StreamChunk | None:
        with _parsing("stream event"):
            return self._chunk(event)

    def _chunk(self, event: a2a_pb2.StreamResponse) -> agent_pb2.StreamChunk | None:
        if event.HasField("artifact_update"):
            update = event.artifact_update
            return agent_pb2.StreamChunk(
                text_delta="".join(p.text for p in update.artifact.parts),
                charged_atomic=int(_dict(update.metadata).get("chargedAtomic", "0")))
        if event.HasField("status_update"):
            status, meta = event.status_update.status, _dict(event.status_update.metadata)
        elif event.HasField("task"):
            status, meta = event.task.status, _dict(event.task.metadata)
        else:
            return None
        if status.state != a2a_pb2.TASK_STATE_COMPLETED or ext.RECEIPT_KEY not in meta:
            return None  # working; a failed stream ends without a receipt (nothing charged)
        receipt = ext.parse_receipt(meta[ext.RECEIPT_KEY])
        self.stop = meta.get("agentmarket.stopReason", "complete")
        return agent_pb2.StreamChunk(
            charged_atomic=receipt.charged_atomic, end=agent_pb2.StreamEnd(
                stop_reason=_STOPS.get(self.stop, 0), output_json=receipt.output_json,
                usage=_usage(meta.get(ext.USAGE_KEY, {})), receipt=receipt))

    def trailers(self) -> tuple[tuple[str, str], ...]:
        return ((STOP_REASON_KEY, self.stop),)


class A2AStream(_Chunks):
    """A grpc SendStreamingMessage call seen as an InvokeStream call."""

    def __init__(self, call: Any) -> None:
        super().__init__()
        self._call = call

    def __iter__(self) -> Iterator[agent_pb2.StreamChunk]:
        for event in self._call:
            chunk = self.chunk(event)
            if chunk is not None:
                yield chunk

    def cancel(self) -> None:
        self._call.cancel()

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.trailers()


class AsyncA2AStream(_Chunks):
    """The grpc.aio twin of `A2AStream`."""

    def __init__(self, call: Any) -> None:
        super().__init__()
        self._call = call

    async def __aiter__(self) -> AsyncIterator[agent_pb2.StreamChunk]:
        async for event in self._call:
            chunk = self.chunk(event)
            if chunk is not None:
                yield chunk

    def cancel(self) -> None:
        self._call.cancel()

    async def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.trailers()


def plain_request(arguments: dict[str, Any] | str, skill: str | None) -> a2a_pb2.SendMessageRequest:
    """An unpaid message: a dict as JSON text (media type application/json), text as is."""
    if isinstance(arguments, str):
        part = a2a_pb2.Part(text=arguments)
    elif isinstance(arguments, dict):
        try:
            part = json_part(json.dumps(arguments, allow_nan=False))
        except (TypeError, ValueError) as error:
            raise InvalidArgument(f"the arguments are not JSON: {error}") from None
    else:
        raise InvalidArgument("an A2A message's input is a dict or text")
    message = a2a_pb2.Message(message_id=uuid.uuid4().hex, role=a2a_pb2.ROLE_USER,
                              parts=[part])
    if skill:
        message.metadata.update({ext.SKILL_KEY: skill})
    return a2a_pb2.SendMessageRequest(message=message)


def plain_output(response: a2a_pb2.SendMessageResponse) -> Any:
    """What an unpaid A2A answer holds: a JSON object (a data part, or text that is JSON) or
    text. A task waiting for payment raises PaymentRequired with the terms in its message."""
    if response.HasField("message"):
        return _parts_value(response.message.parts)
    task = response.task
    if task.status.state == a2a_pb2.TASK_STATE_INPUT_REQUIRED:
        terms = _dict(task.status.message.metadata).get(ext.REQUIRED_KEY)
        if terms is not None:
            raise PaymentRequired(f"the skill {terms.get('skill')} is paid: "
                                  + json.dumps(terms.get("prices", [])))
    if task.status.state != a2a_pb2.TASK_STATE_COMPLETED:
        text = " ".join(p.text for p in task.status.message.parts if p.text)
        raise ServerError(f"the A2A task ended {a2a_pb2.TaskState.Name(task.status.state)}: "
                          f"{text or 'no reason given'}")
    return _parts_value([p for a in task.artifacts for p in a.parts])


def _parts_value(parts: Any) -> Any:
    values = []
    for part in parts:
        kind = part.WhichOneof("content")
        if kind == "data":
            values.append(_dict_value(part.data))
        elif kind == "text":
            try:
                values.append(json.loads(part.text))
            except ValueError:
                values.append(part.text)
    return values[0] if len(values) == 1 else values


def _dict(struct: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(struct) if struct.fields else {}


def _dict_value(value: Any) -> Any:
    from google.protobuf import json_format

    return json_format.MessageToDict(value)
