"""The seller's paid calls: validate, run the skill inside a meter, charge, sign, remember.

Invoke: the call has reserved its maximum (the payment interceptor did that); the skill runs
inside a `Meter`; the charge is the metered usage under the agreement's tariff, at most the
reserve; the receipt commits to output and charge, and the gate books it.
InvokeStream: text goes out as the skill produces it, each piece billed before it is sent (the
delivered text's tokens, counted with the model's tokenizer, plus the prompt's); the stream
stops before a piece would cost more than the call's reserve, and the last message is the
receipt for what was delivered.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc
from jsonschema import ValidationError

from agents._grpc_payment import PaidCallAdmitter
from agents.errors import (
    AgentmarketError,
    BudgetExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from agents.llm import traced_by
from agents.metering import TOKENS, Meter, metering
from agents.payments import Admission
from agents.skills import Skill
from agents.v1 import agent_pb2
from marketplace import agreements as ag
from marketplace import escrow_proof
from marketplace.errors import ReceiptLimit
from marketplace.grpc_tracing import span_if_active
from marketplace.stream_limits import PayerShares
from marketplace.v1.agreement_pb2 import Voucher
from wallets import attributes as attr
from wallets.grpc_errors import abort

if TYPE_CHECKING:
    from agents.seller import SellerAgent

MAX_INPUT_BYTES = 1024 * 1024
LLM_REPORT_WAIT_S = 2.0  # how long a call's bill waits for litellm to report its usage
_RULES_REPORTED: set[str] = set()
log = logging.getLogger("agentmarket.seller")
STOP_REASON_KEY = "agentmarket-stop-reason"
STOP_NAMES = {agent_pb2.STOP_REASON_COMPLETE: "complete", agent_pb2.STOP_REASON_BUDGET: "budget",
              agent_pb2.STOP_REASON_SIZE: "size", agent_pb2.STOP_REASON_ENDED: "ended"}


class PaidCalls:
    def __init__(self, seller: SellerAgent, admitter: PaidCallAdmitter, *,
                 streams_allowed: int) -> None:
        """`streams_allowed`: the stream slots of the seller's server, of which one buyer
        holds at most its share (`marketplace.stream_limits.PayerShares`)."""
        self.seller = seller
        self.admitter = admitter
        self.stream_shares = PayerShares(streams_allowed)

    def proof_of(self, request: agent_pb2.InvokeRequest, context: Any) -> bytes:
        """The escrow proof the call carries, read only while its agreement's escrow is not
        known to be held."""
        if request.agreement_id in self.seller._escrowed or context is None:
            return b""
        return escrow_proof.of_metadata(context.invocation_metadata())

    def checked_input(self, request: agent_pb2.InvokeRequest) -> tuple[Skill, Any] | None:
        """The call's skill and arguments, checked before its voucher is admitted, so that a
        call refused for its input uses up no voucher (None: no such agreement here, which
        admission refuses)."""
        try:
            body = self.seller.gate.body(request.agreement_id)
        except NotFound:
            return None
        skill = self.seller.skills[body.terms.skill]
        return skill, _arguments(request, skill)

    def _prepare(self, request: agent_pb2.InvokeRequest, admission: Admission,
                 proof: bytes = b"") -> tuple[Skill, dict[str, Any], Meter]:
        self.seller.check_escrow(request.agreement_id, proof)
        if admission.checked_input is not None:
            skill, arguments = admission.checked_input
        else:
            skill = self.seller.skills[self.seller.gate.body(request.agreement_id).terms.skill]
            arguments = _arguments(request, skill)
        meter = Meter(self.seller.tariffs[request.agreement_id], admission.reserve_atomic,
                      max_input_tokens=skill.max_input_tokens,
                      max_output_tokens=skill.max_output_tokens, model=skill.llm_model)
        return skill, arguments, meter

    def _redeem_began(self, request: agent_pb2.InvokeRequest) -> Callable[[], bool]:
        """Whether the call's agreement began its redeem: a streamed skill stops there."""
        gate, agreement_id = self.seller.gate, request.agreement_id
        return lambda: gate.closing(agreement_id)

    def _span(self, request: agent_pb2.InvokeRequest, skill: Skill, meter: Meter) -> Any:
        return span_if_active(self.seller._tracer, self.seller.tracer_provider,
                              f"skill.{skill.name}", attributes=lambda: {
            attr.AGREEMENT_ID: request.agreement_id, attr.SKILL: skill.name,
            "agentmarket.reserved_atomic": meter.reserve_atomic,
            attr.CURRENCY: self.seller.gate.body(request.agreement_id).terms.currency})

    def _bill(self, request: agent_pb2.InvokeRequest, admission: Admission, meter: Meter,
              output_json: str) -> tuple[agent_pb2.Usage, Any]:
        """The receipt for the billed usage (its charge is the terms' price of that usage).
        An output no receipt can carry is refused here, before anything is charged: a charged
        call must stay redeemable (`marketplace.agreements.MAX_OUTPUT_BYTES`)."""
        if utf8_bytes_over(output_json, ag.MAX_OUTPUT_BYTES):
            raise ReceiptLimit(f"the answer is {len(output_json.encode())} bytes of JSON; a "
                               f"receipt carries at most {ag.MAX_OUTPUT_BYTES}, so the call is "
                               "refused and not charged")
        input_tokens, output_tokens, units = meter.billed()
        charge = meter.charge_atomic()
        receipt = ag.new_receipt(request.agreement_id, admission.sequence, output_json, charge,
                                 units=units, input_tokens=input_tokens,
                                 output_tokens=output_tokens)
        unspent = self.seller.gate.unspent(request.agreement_id) + admission.reserve_atomic \
            - charge
        usage = agent_pb2.Usage(calls=1, input_tokens=input_tokens, output_tokens=output_tokens,
                                units=units, charged_atomic=charge,
                                reserved_atomic=admission.reserve_atomic, unspent_atomic=unspent)
        return usage, receipt

    def invoke(self, request: agent_pb2.InvokeRequest, context: grpc.ServicerContext, *,
               voucher: Voucher | None = None) -> agent_pb2.InvokeResponse:
        """A paid unary call: admit its voucher (`voucher`, or the call metadata's), run the
        skill, charge, answer. A retried call id gets its first answer; a call that fails
        gives its reserve back. Every door (agents.v1, A2A) pays through here."""
        self.admitter.vouch(request, context, voucher)
        checked = self.checked_input(request)
        admission = self.admitter.admit(request, context, partial=False, voucher=voucher)
        if admission.replay is not None:
            _durable(admission)
            return admission.replay  # type: ignore[no-any-return]
        admission.checked_input = checked
        try:
            response = self._invoke(request, admission, self.proof_of(request, context))
        finally:
            self.seller.gate.release(request.agreement_id, admission)  # no-op once completed
        _durable(admission)  # answer only once the usage record is durable
        return response

    def _invoke(self, request: agent_pb2.InvokeRequest, admission: Admission,
                proof: bytes = b"") -> agent_pb2.InvokeResponse:
        skill, arguments, meter = self._prepare(request, admission, proof)
        with self._span(request, skill, meter) as span, metering(meter), \
                traced_by(self.seller.tracer_provider):
            if skill.streams:
                pieces = _metered(skill.iterate(arguments), meter, self._redeem_began(request))
                text = "".join(piece for piece, _charge in pieces)
                output: Any = {"text": text}
            else:
                output = skill.run(arguments)
            billed = self.bill_output(request, admission, skill, meter, span, output)
        return self.book(request, admission, billed)

    def bill_output(self, request: agent_pb2.InvokeRequest, admission: Admission, skill: Skill,
                    meter: Meter, span: Any, output: Any) -> tuple[str, agent_pb2.Usage, Any]:
        """The skill's output as JSON, its usage and receipt (waits briefly for litellm's
        usage reports: not on an event loop)."""
        output_json = json.dumps(output, sort_keys=True)
        _settle_usage(meter, request.input_json, output_json, streamed=skill.streams)
        usage, receipt = self._bill(request, admission, meter, output_json)
        _set_span_usage(span, meter, usage.charged_atomic)
        return output_json, usage, receipt

    def book(self, request: agent_pb2.InvokeRequest, admission: Admission,
             billed: tuple[str, agent_pb2.Usage, Any]) -> agent_pb2.InvokeResponse:
        """Chain the receipt, record the call, and return the answer (durable once the
        admission's record is)."""
        output_json, usage, receipt = billed
        return self.seller.gate.complete(  # type: ignore[no-any-return]
            request.agreement_id, admission, receipt,
            lambda chained: agent_pb2.InvokeResponse(output_json=output_json, usage=usage,
                                                     receipt=chained))

    def invoke_stream(self, request: agent_pb2.InvokeRequest,
                      context: grpc.ServicerContext) -> Iterator[agent_pb2.StreamChunk]:
        try:
            yield from self.paid_stream(request, context)
        except AgentmarketError as error:
            abort(context, error)
        except Exception:  # a failing skill is not paid; never leak its text
            request_id = uuid.uuid4().hex[:12]
            log.exception("streamed skill failed (request %s)", request_id)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")

    def paid_stream(self, request: agent_pb2.InvokeRequest, context: grpc.ServicerContext, *,
                    voucher: Voucher | None = None) -> Iterator[agent_pb2.StreamChunk]:
        """A streamed paid call's chunks, the last one with the receipt (raises
        AgentmarketError; a failing skill's exception propagates, its reserve released)."""
        admission = None
        try:
            self.admitter.vouch(request, context, voucher)
            checked = self.checked_input(request)
            admission = self.admitter.admit(request, context, partial=True, voucher=voucher)
            if admission.replay is not None:
                _durable(admission)
                yield admission.replay
                return
            admission.checked_input = checked
            with self.stream_shares.held(self.seller.gate.body(request.agreement_id).buyer_id):
                yield from self._stream(request, context, admission)
        finally:
            if admission is not None:
                self.seller.gate.release(request.agreement_id, admission)

    def _stream(self, request: agent_pb2.InvokeRequest, context: grpc.ServicerContext,
                admission: Admission) -> Iterator[agent_pb2.StreamChunk]:
        skill, arguments, meter = self._prepare(request, admission,
                                                self.proof_of(request, context))
        if not skill.streams:
            raise FailedPrecondition(f"skill {skill.name} does not stream; call Invoke")
        if meter.tariff.unit != TOKENS and admission.reserve_atomic < meter.tariff.call_max_atomic:
            raise BudgetExceeded("a stream priced per call or unit needs its maximum prepaid")
        delivered: list[str] = []
        with self._span(request, skill, meter) as span, metering(meter), \
                traced_by(self.seller.tracer_provider):
            pieces = _metered(skill.iterate(arguments), meter, self._redeem_began(request))
            try:
                for piece, charge in pieces:
                    delivered.append(piece)
                    yield agent_pb2.StreamChunk(text_delta=piece, charged_atomic=charge)
            except GeneratorExit:  # the buyer hung up: bill what it was sent, then stop
                pieces.close()
                self._end_stream(request, admission, meter, delivered, span)
                raise
            pieces.close()
            last, stop = self._end_stream(request, admission, meter, delivered, span)
        _durable(admission)
        _add_trailers(context, (STOP_REASON_KEY, STOP_NAMES[stop]))
        yield last

    def _end_stream(self, request: agent_pb2.InvokeRequest, admission: Admission, meter: Meter,
                    delivered: list[str], span: Any) -> tuple[agent_pb2.StreamChunk, int]:
        stop = meter.stopped or agent_pb2.STOP_REASON_COMPLETE
        output_json = json.dumps({"text": "".join(delivered)}, sort_keys=True)
        _settle_usage(meter, request.input_json, output_json, streamed=True)
        usage, receipt = self._bill(request, admission, meter, output_json)
        _set_span_usage(span, meter, usage.charged_atomic)
        last = self.seller.gate.complete(
            request.agreement_id, admission, receipt,
            lambda chained: agent_pb2.StreamChunk(
                charged_atomic=usage.charged_atomic, end=agent_pb2.StreamEnd(
                    stop_reason=stop, output_json=output_json, usage=usage, receipt=chained)))
        return last, stop


def _settle_usage(meter: Meter, input_json: str, output_json: str, *, streamed: bool) -> None:
    """Close the meter before billing: wait (briefly) for litellm's reports of the skill's
    own litellm calls, then apply the rule for a token-priced call that reported nothing."""
    meter.settle_llm(LLM_REPORT_WAIT_S, streamed=streamed)
    meter.bill_silent_call(input_json, output_json)
    if meter.usage_rule and meter.usage_rule not in _RULES_REPORTED:
        _RULES_REPORTED.add(meter.usage_rule)  # once per process: it is a property of the skill
        log.warning("a token-priced call was billed by rule (%s): %d input, %d output tokens; "
                    "see the README, 'Skills that call LLMs'", meter.usage_rule,
                    meter.input_tokens, meter.output_tokens)


def _add_trailers(context: Any, *pairs: tuple[str, str]) -> None:
    """Add trailing metadata to what a door set before (the A2A extension's URI): setting it
    replaces."""
    try:
        earlier = tuple(context.trailing_metadata() or ())
    except (AttributeError, NotImplementedError):
        earlier = ()
    context.set_trailing_metadata(earlier + pairs)


def _durable(admission: Admission) -> None:
    """Wait until the call's usage record committed (raises JournalError: UNAVAILABLE, and the
    buyer retries the call id, answered from the same record)."""
    if admission.durable is not None:
        admission.durable.wait()


def _set_span_usage(span: Any, meter: Meter, charge: int) -> None:
    if span.is_recording():
        span.set_attributes({attr.AMOUNT_ATOMIC: charge,
                             "gen_ai.usage.input_tokens": meter.input_tokens,
                             "gen_ai.usage.output_tokens": meter.output_tokens})


def utf8_bytes_over(text: str, limit_bytes: int) -> bool:
    """Whether `text` takes more than `limit_bytes` in UTF-8 (a limit in bytes counts bytes:
    700k 'é' are 1.4 MB). Encodes only when the character count cannot tell."""
    if len(text) > limit_bytes:
        return True
    return len(text) * 4 > limit_bytes and len(text.encode()) > limit_bytes


_EMPTY_STREAM_OUTPUT = len(json.dumps({"text": ""}))


def _metered(pieces: Iterator[str], meter: Meter, ended: Callable[[], bool]
             ) -> Iterator[tuple[str, int]]:
    """Pieces of text with the charge once each is delivered; stops (and closes the skill's
    generator, so an LLM stream is cancelled) before a piece would pass the call's reserve
    (`meter.stopped`: STOP_REASON_BUDGET), or make the output JSON larger than a receipt carries
    (STOP_REASON_SIZE; JSON escapes each character on its own, so the sizes of the pieces add
    up), or once the agreement's redeem began (`ended`, STOP_REASON_ENDED: billed now, the
    charge is in that redeem). Token-priced output is the delivered text's token count; the
    meter keeps it."""
    delivered = ""
    size = _EMPTY_STREAM_OUTPUT
    meter.stopped = 0
    try:
        for piece in pieces:
            if ended():
                meter.stopped = agent_pb2.STOP_REASON_ENDED
                break
            extra = meter.count_tokens(delivered + piece) if meter.tariff.unit == TOKENS else 0
            cost = meter.uncapped_charge_atomic(extra_output_tokens=extra)
            if cost > meter.reserve_atomic:
                meter.stopped = agent_pb2.STOP_REASON_BUDGET
                break
            piece_size = len(json.dumps(piece)) - 2
            if size + piece_size > ag.MAX_OUTPUT_BYTES:
                meter.stopped = agent_pb2.STOP_REASON_SIZE
                break
            delivered += piece
            size += piece_size
            yield piece, cost
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
        if meter.tariff.unit == TOKENS:
            meter.output_tokens = meter.count_tokens(delivered)


def _arguments(request: agent_pb2.InvokeRequest, skill: Skill) -> Any:
    """The call's input, parsed and checked against the skill's input schema."""
    if utf8_bytes_over(request.input_json, MAX_INPUT_BYTES):
        raise InvalidArgument(f"input is larger than {MAX_INPUT_BYTES} bytes of UTF-8")
    return checked_arguments(request.input_json, skill)


def checked_arguments(input_json: str, skill: Skill) -> Any:
    """`input_json` parsed and checked against the skill's input schema (every door)."""
    try:
        arguments = json.loads(input_json)
    except (ValueError, RecursionError) as error:
        raise InvalidArgument(f"input is not valid JSON: {error}") from None
    try:
        skill.input_validator.validate(arguments)
    except (ValidationError, RecursionError) as error:
        raise InvalidArgument(f"input does not match the skill's schema: "
                              f"{getattr(error, 'message', error)}") from None
    return arguments
