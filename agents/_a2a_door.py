"""A seller's A2A v1.0 door (lf.a2a.v1.A2AService on its gRPC server, beside agents.v1).

A thin adapter onto the seller's one paid-call core (`agents._serving.PaidCalls`): a paid
message becomes an InvokeRequest (call id = the message id) paid by the voucher in its metadata,
so voucher checks, metering, receipts and the journal are the very ones agents.v1's Invoke
uses. What the door adds is A2A's shape: tasks, parts, metadata, A2A's error reasons.

    SendMessage         free skill: run, COMPLETED task. Priced skill without payment: a task
                        in INPUT_REQUIRED with the terms in its status message metadata
                        (`agentmarket.payment.required`). With `agentmarket.payment`: the paid
                        call; COMPLETED task with the artifact, the receipt and usage in
                        metadata; a skill that fails: a FAILED task, nothing charged.
    SendStreamingMessage  a streamed skill's text as artifact updates, billed as it flows
                        (as InvokeStream); the last status update carries the receipt.
    GetTask, ListTasks, CancelTask, SubscribeToTask, GetExtendedAgentCard; push notification
    configs: UNIMPLEMENTED (the card says push_notifications: false).

Why our own servicer over a2a-sdk's generated types rather than its DefaultRequestHandler: a
paid call must be admitted, metered and answered with its receipt in one step, synchronously
with the voucher check, and the handler's event-queue machinery costs more per call than the
whole paid call. benchmarks/a2a.py, 16 clients, 2 cores: the SDK's handler on grpc.aio answers
an unpaid echo at 435 calls/s (2,188 us of server CPU per call); this door answers it paid at
982 calls/s (837 us), unpaid at 2,076/s (425 us).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc
from a2a.types import a2a_pb2, a2a_pb2_grpc

from agents import _a2a_parts as parts
from agents._a2a_streams import PaidStreams
from agents._a2a_subscriptions import Subscriptions, Waiting
from agents._a2a_tasks import (
    TERMINAL,
    PushNotificationNotSupported,
    TaskNotCancelable,
    TaskStore,
    UnsupportedOperation,
)
from agents._a2a_tasks import paid_task as paid_task_of
from agents._serving import MAX_INPUT_BYTES, checked_arguments, utf8_bytes_over
from agents.errors import (
    AgentmarketError,
    CallInProgress,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from agents.payments import MAX_CALL_ID_CHARS
from agents.v1 import agent_pb2
from marketplace import a2a_extension as ext
from wallets.caller import current_caller
from wallets.grpc_errors import _rich_status, abort, abort_internal

if TYPE_CHECKING:
    from agents.seller import SellerAgent

SERVICE = a2a_pb2.DESCRIPTOR.services_by_name["A2AService"].full_name
METHODS = tuple(f"/{SERVICE}/{m.name}"
                for m in a2a_pb2.DESCRIPTOR.services_by_name["A2AService"].methods)
MAX_PAGE = 100
SUBSCRIBE_WAIT_S = 60.0
SUBSCRIBE_SLICE_S = 0.5  # how soon a waiting subscription notices its caller left
MAX_SUBSCRIBERS = 4  # waiting subscriptions at once: each holds a server worker thread
PUSH_UNSUPPORTED = ("push notifications are not supported by agentmarket sellers (the Agent "
                    "Card says push_notifications: false); poll GetTask or SubscribeToTask")
log = logging.getLogger("agentmarket.a2a")


def _guarded(method: Any) -> Any:
    """Unary methods: the project's errors as their status (A2A's with its ErrorInfo
    domain), anything else INTERNAL with a request id, never its text."""

    def wrapper(self: A2ADoor, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except AgentmarketError as error:
            abort(context, error)
        except Exception:
            abort_internal(context, f"A2AService.{method.__name__}")

    wrapper.__name__ = method.__name__
    return wrapper


class A2ADoor(PaidStreams, a2a_pb2_grpc.A2AServiceServicer):
    def __init__(self, seller: SellerAgent) -> None:
        self.seller = seller
        self.tasks = TaskStore(seller.gate)
        self._subscriptions = Subscriptions(MAX_SUBSCRIBERS, self.tasks.wake)

    # ---- messages -------------------------------------------------------------------------

    @_guarded
    def SendMessage(self, request, context):  # type: ignore[no-untyped-def]
        return a2a_pb2.SendMessageResponse(task=self._send(request, context))

    def SendStreamingMessage(self, request, context):  # type: ignore[no-untyped-def]
        try:
            yield from self._stream(request, context)
        except AgentmarketError as error:
            abort(context, error)
        except Exception:
            abort_internal(context, "A2AService.SendStreamingMessage")

    def _send(self, request: a2a_pb2.SendMessageRequest, context: grpc.ServicerContext
              ) -> a2a_pb2.Task:
        message, meta = self._read(request, context)
        if ext.PAYMENT_KEY in meta:
            return self._paid(self._paid_request(message, meta), context)
        skill = self._skill(meta)
        if skill.free:
            return self._free(message, skill)
        return self._payment_required(message, skill)

    def _read(self, request: a2a_pb2.SendMessageRequest, context: grpc.ServicerContext
              ) -> tuple[a2a_pb2.Message, dict[str, Any]]:
        """The message and its metadata, checked before anything is paid or run."""
        message = request.message
        if request.configuration.HasField("task_push_notification_config"):
            raise PushNotificationNotSupported(PUSH_UNSUPPORTED)
        if not 0 < len(message.message_id) <= MAX_CALL_ID_CHARS:
            raise InvalidArgument(f"message.message_id must be 1..{MAX_CALL_ID_CHARS} "
                                  "characters (it is the call's idempotency key)")
        parts.check_sizes(message)
        if message.task_id:
            self._continued(message)
        values = [v for k, v in context.invocation_metadata() or ()
                  if k == ext.EXTENSIONS_HEADER and isinstance(v, str)]
        active, unknown = ext.activated(values)
        if unknown:
            raise InvalidArgument(f"extension {unknown[:200]} is not spoken here; this agent "
                                  f"speaks {ext.URI}", reason="UNKNOWN_EXTENSION_VERSION")
        meta = parts.metadata_dict(message.metadata)
        if ext.PAYMENT_KEY in meta and not active:
            raise FailedPrecondition(f"a paid message activates the payment extension: send "
                                     f"{ext.URI} in the {ext.EXTENSIONS_HEADER} metadata",
                                     reason="EXTENSION_NOT_ACTIVATED")
        if active:
            context.set_trailing_metadata(((ext.EXTENSIONS_HEADER, ext.URI),))
        return message, meta

    def _continued(self, message: a2a_pb2.Message) -> None:
        """A message naming a task continues it: only a task waiting for payment takes one
        (answered with a task of its own: a paid message's task id is derived from its
        payment, PROTOCOL.md); an unknown task is TASK_NOT_FOUND, a running or finished one
        UNSUPPORTED_OPERATION, as A2A has it."""
        task = self.tasks.get(message.task_id)
        state = task.status.state
        if state != a2a_pb2.TASK_STATE_INPUT_REQUIRED:
            raise UnsupportedOperation(
                f"task {message.task_id[:64]} is {a2a_pb2.TaskState.Name(state)}: it takes no "
                "more messages; send one without task_id for a new task")
        if message.context_id and message.context_id != task.context_id:
            raise InvalidArgument("message.context_id is not the context of the task it names")

    def _skill(self, meta: dict[str, Any]) -> Any:
        name = meta.get(ext.SKILL_KEY)
        skills = self.seller.skills
        if name is None:
            if len(skills) != 1:
                raise InvalidArgument(f"this agent has {len(skills)} skills: name one in the "
                                      f"message metadata {ext.SKILL_KEY!r} "
                                      f"({', '.join(sorted(skills))})")
            return next(iter(skills.values()))
        if not isinstance(name, str):
            raise InvalidArgument(f"message metadata {ext.SKILL_KEY!r} is a skill's name (a "
                                  f"string): one of {', '.join(sorted(skills))}")
        if name not in skills:
            raise NotFound(f"no skill {str(name)[:64]!r} here ({', '.join(sorted(skills))})")
        return skills[name]

    def _input_json(self, message: a2a_pb2.Message, skill: Any) -> str:
        """The input's JSON, at most MAX_INPUT_BYTES (the paid core checks it against the
        skill's schema before the voucher: a refused paid message uses up nothing)."""
        input_json = parts.arguments_json(message, skill)
        if utf8_bytes_over(input_json, MAX_INPUT_BYTES):
            raise InvalidArgument(f"input is larger than {MAX_INPUT_BYTES} bytes of UTF-8",
                                  reason="MESSAGE_TOO_LARGE")
        return input_json

    def _ids(self, message: a2a_pb2.Message) -> tuple[str, str]:
        task_id = str(uuid.uuid4())
        return task_id, message.context_id or str(uuid.uuid4())

    # ---- unpaid ---------------------------------------------------------------------------

    def _payment_required(self, message: a2a_pb2.Message, skill: Any) -> a2a_pb2.Task:
        task_id, context_id = self._ids(message)
        terms = ext.skill_terms(self.seller.listing(), skill.message(), self.seller.marketplace)
        prices = "; ".join(f"{p['amountAtomic']} atomic {p['currency']} per {p['unit']}"
                           for p in terms["prices"])
        text = (f"payment required: {skill.name} costs {prices}. Negotiate an agreement with "
                f"{terms['listing']['endpoint']} (agents.v1 Negotiate), escrow it at the "
                f"marketplace {self.seller.marketplace}, then send the message again with "
                f"{ext.PAYMENT_KEY} in its metadata ({ext.URI})")
        note = parts.agent_message(text, task_id=task_id, context_id=context_id, metadata={
            ext.STATUS_KEY: "payment-required", ext.REQUIRED_KEY: terms})
        task = a2a_pb2.Task(id=task_id, context_id=context_id,
                            status=parts.status(a2a_pb2.TASK_STATE_INPUT_REQUIRED, note))
        task.metadata.update({ext.STATUS_KEY: "payment-required"})
        self.tasks.put(task)
        return task

    def _free(self, message: a2a_pb2.Message, skill: Any) -> a2a_pb2.Task:
        input_json = self._input_json(message, skill)
        arguments = checked_arguments(input_json, skill)
        key = _retry_key(message, skill.name, input_json)
        previous = self.tasks.by_message(key)
        if previous is not None:  # the same caller resent the same message: its first task
            return previous
        task_id, context_id = self._ids(message)
        try:
            output = ({"text": "".join(skill.iterate(arguments))} if skill.streams
                      else skill.run(arguments))
            task = a2a_pb2.Task(id=task_id, context_id=context_id,
                                status=parts.status(a2a_pb2.TASK_STATE_COMPLETED),
                                artifacts=[parts.output_artifact(
                                    json.dumps(output, sort_keys=True))])
        except AgentmarketError:
            raise
        except Exception:
            task = self._failed(task_id, context_id, "free skill")
        task.metadata.update({ext.STATUS_KEY: "free"})
        self.tasks.put(task, message_key=key)
        return task

    def _failed(self, task_id: str, context_id: str, what: str) -> a2a_pb2.Task:
        request_id = uuid.uuid4().hex[:12]
        log.exception("%s failed (request %s)", what, request_id)
        note = parts.agent_message(f"the skill failed (request id {request_id}); nothing was "
                                   "charged", task_id=task_id, context_id=context_id)
        return a2a_pb2.Task(id=task_id, context_id=context_id,
                            status=parts.status(a2a_pb2.TASK_STATE_FAILED, note))

    # ---- paid -----------------------------------------------------------------------------

    def _paid_request(self, message: a2a_pb2.Message, meta: dict[str, Any]
                      ) -> tuple[agent_pb2.InvokeRequest, Any, str, str]:
        """The InvokeRequest a paid message stands for, its voucher, task and context ids."""
        agreement_id, voucher = ext.parse_payment(meta[ext.PAYMENT_KEY])
        gate = self.seller.gate
        if not gate.known(agreement_id):
            raise NotFound(f"no agreement {agreement_id[:12]}… with this seller: negotiate "
                           "and escrow one first")
        skill = self.seller.skills.get(gate.body(agreement_id).terms.skill)
        if skill is None:
            raise FailedPrecondition("the agreement's skill is no longer served here")
        named = meta.get(ext.SKILL_KEY)
        if named is not None and named != skill.name:
            raise InvalidArgument(f"the agreement pays for {skill.name}, not "
                                  f"{str(named)[:64]}", reason="WRONG_SKILL")
        request = agent_pb2.InvokeRequest(agreement_id=agreement_id,
                                          input_json=self._input_json(message, skill),
                                          call_id=message.message_id)
        task_id = ext.paid_task_id(agreement_id, message.message_id, voucher.payword)
        return request, voucher, task_id, message.context_id or task_id

    def _paid(self, paid: tuple[agent_pb2.InvokeRequest, Any, str, str],
              context: grpc.ServicerContext) -> a2a_pb2.Task:
        request, voucher, task_id, context_id = paid
        # indexed first: while it runs, the task is its agreement's (one holder of
        # subscriptions) and kept apart from the unpaid tasks a flood could push out
        new = self.tasks.paid(task_id, request.agreement_id, request.call_id, context_id)
        failed = None if new else self._failed_before(task_id)
        if failed is not None:
            return failed
        self._working(task_id, context_id)
        try:
            response = self.seller.calls.invoke(request, context, voucher=voucher)
        except CallInProgress:
            raise  # the first attempt runs on: its task stays WORKING
        except AgentmarketError:
            if new:  # a refused resend changes nothing: its task is the first request's
                self.tasks.unpaid(task_id)
            raise
        except Exception:
            task = self._failed(task_id, context_id, "paid skill")
            self.tasks.put(task)
            return task
        task = paid_task_of(task_id, context_id, request.agreement_id, response)
        self.tasks.put(task)
        return task

    def _failed_before(self, task_id: str) -> a2a_pb2.Task | None:
        """The task of a resent paid message whose skill failed: a final state stays, so the
        resend is answered with it (a new message id, with the next voucher, tries again)."""
        task = self.tasks.stored(task_id)
        return task if task is not None and task.status.state == a2a_pb2.TASK_STATE_FAILED \
            else None

    def _working(self, task_id: str, context_id: str) -> None:
        try:
            if self.tasks.get(task_id).status.state in TERMINAL:
                return  # a resent message: the gate answers it from its first response
        except NotFound:
            pass
        self.tasks.put(a2a_pb2.Task(id=task_id, context_id=context_id,
                                    status=parts.status(a2a_pb2.TASK_STATE_WORKING)))

    def _stream(self, request: a2a_pb2.SendMessageRequest, context: grpc.ServicerContext
                ) -> Iterator[a2a_pb2.StreamResponse]:
        message, meta = self._read(request, context)
        if ext.PAYMENT_KEY not in meta:
            yield a2a_pb2.StreamResponse(task=self._send(request, context))
            return
        paid = self._paid_request(message, meta)
        invoke, voucher, task_id, context_id = paid
        skill = self.seller.skills[self.seller.gate.body(invoke.agreement_id).terms.skill]
        if not skill.streams:  # (`_paid` answers a resent failed message itself)
            yield a2a_pb2.StreamResponse(task=self._paid(paid, context))
            return
        failed = self._failed_before(task_id)
        if failed is not None:
            yield a2a_pb2.StreamResponse(task=failed)
            return
        yield from self._paid_stream(invoke, voucher, task_id, context_id, context)

    # ---- tasks ----------------------------------------------------------------------------

    @_guarded
    def GetTask(self, request, context):  # type: ignore[no-untyped-def]
        parts.check_history_length(request)
        return self.tasks.get(request.id)

    @_guarded
    def ListTasks(self, request, context):  # type: ignore[no-untyped-def]
        if not request.context_id:
            raise InvalidArgument("name a context_id: tasks are listed per context, and a "
                                  "context is known only to whoever started it")
        size = request.page_size or 50
        if not 0 < size <= MAX_PAGE:
            raise InvalidArgument(f"page_size must be 1..{MAX_PAGE}")
        token = request.page_token or "0"
        if not (token.isascii() and token.isdigit()) or len(token) > 9:
            raise InvalidArgument("page_token is one this server returned")
        offset = int(token)
        parts.check_history_length(request)
        after = request.status_timestamp_after.ToNanoseconds() \
            if request.HasField("status_timestamp_after") else None
        tasks, total = self.tasks.list(request.context_id, request.status, size, offset,
                                       request.include_artifacts,
                                       self.tasks.listable_to(current_caller()), after)
        following = str(offset + size) if offset + size < total else ""
        return a2a_pb2.ListTasksResponse(tasks=tasks, next_page_token=following,
                                         page_size=size, total_size=total)

    @_guarded
    def CancelTask(self, request, context):  # type: ignore[no-untyped-def]
        task = self.tasks.get(request.id)
        if task.status.state != a2a_pb2.TASK_STATE_INPUT_REQUIRED:
            raise TaskNotCancelable(
                f"task {request.id[:64]} is {a2a_pb2.TaskState.Name(task.status.state)}: only "
                "a task waiting for payment can be canceled (a paid call runs to its receipt; "
                "a stream closed by its caller is billed for what was delivered)")

        def cancel(entry: a2a_pb2.Task) -> None:
            entry.status.CopyFrom(parts.status(a2a_pb2.TASK_STATE_CANCELED))

        return self.tasks.update(request.id, cancel)

    def SubscribeToTask(self, request, context):  # type: ignore[no-untyped-def]
        try:
            task = self.tasks.get(request.id)
            if task.status.state in TERMINAL:
                raise UnsupportedOperation(f"task {request.id[:64]} is finished; GetTask "
                                           "returns it")
            if task.status.state != a2a_pb2.TASK_STATE_WORKING:
                yield a2a_pb2.StreamResponse(task=task)
                return
            me = self._subscriptions.enter(task.id, self.tasks.holder_of(task.id))
            try:
                seen = a2a_pb2.StreamResponse(task=task)  # a copy: the stored task changes
                yield seen
                later = self._wait_change(seen.task, context, me)
            finally:
                self._subscriptions.leave(me)
            if later is not None:
                yield a2a_pb2.StreamResponse(status_update=a2a_pb2.TaskStatusUpdateEvent(
                    task_id=later.id, context_id=later.context_id, status=later.status,
                    metadata=later.metadata))
        except AgentmarketError as error:
            abort(context, error)

    def _wait_change(self, task: a2a_pb2.Task, context: grpc.ServicerContext, me: Waiting
                     ) -> a2a_pb2.Task | None:
        """The task once it changed, or as it is after SUBSCRIBE_WAIT_S or once another
        subscription took this one's place (`agents._a2a_subscriptions`); None once the
        subscriber is gone. Waits in short slices, so a subscriber that hung up frees its
        worker thread (and its place) within a slice."""
        state, deadline = task.status.state, time.monotonic() + SUBSCRIBE_WAIT_S
        while context.is_active():
            left = deadline - time.monotonic()
            later = self.tasks.wait_change(task.id, state,
                                           max(0.0, min(SUBSCRIBE_SLICE_S, left)),
                                           until=lambda: me.ended)
            if later.status.state != state or left <= SUBSCRIBE_SLICE_S or me.ended:
                return later
        return None

    @_guarded
    def GetExtendedAgentCard(self, request, context):  # type: ignore[no-untyped-def]
        return self.seller.agent_card()

    # ---- push notifications: not offered --------------------------------------------------

    def _push(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort_with_status(_rich_status(
            grpc.StatusCode.UNIMPLEMENTED, PUSH_UNSUPPORTED, "PUSH_NOTIFICATION_NOT_SUPPORTED",
            domain="a2a-protocol.org"))

    CreateTaskPushNotificationConfig = _push
    GetTaskPushNotificationConfig = _push
    ListTaskPushNotificationConfigs = _push
    DeleteTaskPushNotificationConfig = _push


def _retry_key(message: a2a_pb2.Message, skill_name: str, input_json: str) -> tuple[str, ...]:
    """A free message's retry key: its sender (the verified caller, '' when unsigned), context,
    message id and a digest of what it asks. A message id is no secret and unsigned senders have
    no identity, so reusing someone's id with other input is a new message, never their task."""
    digest = hashlib.sha256(f"{skill_name}\0{input_json}".encode()).hexdigest()
    return current_caller(), message.context_id, message.message_id, digest

