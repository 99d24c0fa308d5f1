"""The A2A door against what unusual or hostile clients send: resends refused for their input,
a resend of a failed paid message, messages naming tasks, ListTasks filters, free outputs of
any size, and a task index pruned under a stranger's nose. A refused request changes nothing,
a final state stays final, and a paid task is listed to its buyer only.

Real parts: a node (SQLite file), a seller on gRPC with its A2A door (port 0), a funded buyer
and a stub of the seller's A2AService (tests/a2a_market.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import grpc
import pytest
from a2a.types import a2a_pb2

from agents import _a2a_buyer
from agents._a2a_tasks import TaskStore, paid_task
from agents.errors import NotFound
from agents.skills import per_call, skill
from agents.v1 import agent_pb2
from marketplace import a2a_extension as ext
from tests.a2a_market import WRITE_MAY_FINISH, Market, echo, hello, open_market, write
from wallets.grpc_errors import error_info

EXT = [(ext.EXTENSIONS_HEADER, ext.URI)]
FLAKY = {"calls": 0}


@skill(price=per_call("0.002", "USD"))
def flaky(text: str) -> dict:
    """Fails on its first call, then works."""
    FLAKY["calls"] += 1
    if FLAKY["calls"] == 1:
        raise RuntimeError("transient")
    return {"text": text}


@skill(price=per_call("0.003", "USD"))
def broken(topic: str) -> Iterator[str]:
    """Fails before its first piece."""
    raise RuntimeError("the model is down")
    yield topic


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    yield from open_market(tmp_path_factory.mktemp("a2a-strangers"),
                           [echo, flaky, hello, write, broken])


def _hello(name: str, message_id: str) -> a2a_pb2.SendMessageRequest:
    message = a2a_pb2.Message(message_id=message_id, role=a2a_pb2.ROLE_USER,
                              parts=[a2a_pb2.Part(text=json.dumps({"name": name}))])
    message.metadata.update({ext.SKILL_KEY: "hello"})
    return a2a_pb2.SendMessageRequest(message=message)


def _paid(market: Market, skill_name: str, arguments: dict, message_id: str,
          context_id: str) -> a2a_pb2.SendMessageRequest:
    deal = market.deal(skill_name)
    request = _a2a_buyer.paid_request(market.buyer._plan(deal, arguments, message_id, None))
    request.message.context_id = context_id
    return request


def _with_input(request: a2a_pb2.SendMessageRequest, arguments: dict
                ) -> a2a_pb2.SendMessageRequest:
    changed = a2a_pb2.SendMessageRequest()
    changed.CopyFrom(request)
    changed.message.ClearField("parts")
    changed.message.parts.append(a2a_pb2.Part(text=json.dumps(arguments)))
    return changed


def test_a_resend_refused_for_its_input_keeps_the_answered_task_listed(market):
    signed, _ = market.buyer._a2a_stubs(market.seller.endpoint)
    request = _paid(market, "echo", {"text": "mine"}, "resend-done", "ctx-resend")
    task = signed.SendMessage(request, metadata=EXT, timeout=5).task
    assert task.status.state == a2a_pb2.TASK_STATE_COMPLETED
    listing = a2a_pb2.ListTasksRequest(context_id="ctx-resend")
    assert [t.id for t in signed.ListTasks(listing, timeout=5).tasks] == [task.id]
    with pytest.raises(grpc.RpcError) as refused:  # the same message, its input mangled
        signed.SendMessage(_with_input(request, {"text": 5}), metadata=EXT, timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [t.id for t in signed.ListTasks(listing, timeout=5).tasks] == [task.id]


def test_a_resend_refused_for_its_input_keeps_the_running_task(market):
    request = _paid(market, "write", {"topic": "x"}, "resend-running", "ctx-running")
    answers: list[a2a_pb2.Task] = []
    first = threading.Thread(target=lambda: answers.append(
        market.stub.SendMessage(request, metadata=EXT, timeout=30).task))
    WRITE_MAY_FINISH.clear()  # the task stays working until the checks below are done
    first.start()
    tasks, task_id = market.door().tasks, None
    deadline = time.monotonic() + 5
    while task_id is None and time.monotonic() < deadline:
        with tasks._lock:
            task_id = next((t.id for t in tasks._answered.values()
                            if t.context_id == "ctx-running"), None)
        time.sleep(0.02)
    assert task_id is not None
    with pytest.raises(grpc.RpcError) as refused:
        market.stub.SendMessage(_with_input(request, {"topic": 5}), metadata=EXT, timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    try:  # the paid call runs on, and so does its task
        running = market.stub.GetTask(a2a_pb2.GetTaskRequest(id=task_id), timeout=5)
        assert running.status.state == a2a_pb2.TASK_STATE_WORKING
    finally:
        WRITE_MAY_FINISH.set()
        first.join()
    assert answers and answers[0].status.state == a2a_pb2.TASK_STATE_COMPLETED


def test_a_resent_paid_message_whose_skill_failed_is_answered_with_its_failed_task(market):
    deal = market.deal("flaky")
    request = _a2a_buyer.paid_request(market.buyer._plan(deal, {"text": "t"}, "flaky-1", None))
    first = market.stub.SendMessage(request, metadata=EXT, timeout=5).task
    assert first.status.state == a2a_pb2.TASK_STATE_FAILED
    again = market.stub.SendMessage(request, metadata=EXT, timeout=5).task
    assert (again.id, again.status.state) == (first.id, a2a_pb2.TASK_STATE_FAILED)
    account = market.seller.gate._account(deal.agreement_id)
    assert account.charged_atomic == 0 and account.reserved_atomic == 0


def test_a_message_naming_no_task_or_a_finished_one_is_refused_as_a2a_says(market):
    request = _hello("a", "cont-missing")
    request.message.task_id = "no-such-task"
    with pytest.raises(grpc.RpcError) as refused:
        market.stub.SendMessage(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(refused.value).reason == "TASK_NOT_FOUND"
    done = market.stub.SendMessage(_hello("a", "cont-first"), timeout=5).task
    assert done.status.state == a2a_pb2.TASK_STATE_COMPLETED
    request = _hello("b", "cont-second")
    request.message.task_id = done.id
    with pytest.raises(grpc.RpcError) as refused:
        market.stub.SendMessage(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(refused.value).reason == "UNSUPPORTED_OPERATION"


def test_a_paid_message_continues_the_task_that_asked_for_payment(market):
    unpaid = _paid(market, "echo", {"text": "hi"}, "ask-first", "ctx-ask")
    del unpaid.message.metadata[ext.PAYMENT_KEY]
    asked = market.stub.SendMessage(unpaid, timeout=5).task
    assert asked.status.state == a2a_pb2.TASK_STATE_INPUT_REQUIRED
    paid = _paid(market, "echo", {"text": "hi"}, "then-paid", "other-context")
    paid.message.task_id = asked.id
    with pytest.raises(grpc.RpcError) as refused:  # not the context of the task it names
        market.stub.SendMessage(paid, metadata=EXT, timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    paid.message.context_id = asked.context_id
    answered = market.stub.SendMessage(paid, metadata=EXT, timeout=5).task
    assert answered.status.state == a2a_pb2.TASK_STATE_COMPLETED
    assert answered.context_id == asked.context_id


def test_list_tasks_applies_its_time_filter_and_refuses_a_negative_history(market):
    request = _hello("a", "ts-1")
    request.message.context_id = "ctx-ts"
    market.stub.SendMessage(request, timeout=5)
    listing = a2a_pb2.ListTasksRequest(context_id="ctx-ts")
    assert market.stub.ListTasks(listing, timeout=5).total_size == 1
    listing.status_timestamp_after.FromSeconds(int(time.time()) + 3600)
    found = market.stub.ListTasks(listing, timeout=5)
    assert found.total_size == 0 and list(found.tasks) == []
    for ask in (lambda: market.stub.ListTasks(a2a_pb2.ListTasksRequest(
            context_id="ctx-ts", history_length=-1), timeout=5),
                lambda: market.stub.GetTask(a2a_pb2.GetTaskRequest(
                    id="x", history_length=-1), timeout=5)):
        with pytest.raises(grpc.RpcError) as refused:
            ask()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_free_tasks_hold_at_most_their_byte_budget_the_oldest_going_first(market):
    tasks = market.door().tasks
    budget = tasks.unpaid_bytes
    tasks.unpaid_bytes = 2_000_000
    try:
        ids = [market.stub.SendMessage(_hello("x" * 900_000, f"big-{n}"), timeout=10).task.id
               for n in range(3)]
        assert tasks._held <= 2_000_000
        with pytest.raises(grpc.RpcError) as gone:
            market.stub.GetTask(a2a_pb2.GetTaskRequest(id=ids[0]), timeout=5)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        assert market.stub.GetTask(a2a_pb2.GetTaskRequest(id=ids[2]), timeout=5).id == ids[2]
    finally:
        tasks.unpaid_bytes = budget


def test_a_paid_task_whose_agreement_was_forgotten_is_never_listed_to_a_stranger():
    known = {"old": "buyer-a", "new": "buyer-b"}

    def body(agreement: str) -> SimpleNamespace:
        if agreement not in known:
            raise NotFound("forgotten")
        return SimpleNamespace(buyer_id=known[agreement])

    gate = SimpleNamespace(agreements=lambda: list(known), paid_calls=lambda: [], body=body,
                           answered=lambda agreement, call: None)
    store = TaskStore(gate, limit=3)  # type: ignore[arg-type]
    answer = agent_pb2.InvokeResponse(output_json='{"secret": "buyer a only"}')
    store.paid("paid-old", "old", "call-old", "shared-context")
    store.put(paid_task("paid-old", "shared-context", "old", answer))
    assert store.list("shared-context", 0, 10, 0, True, store.listable_to("")) == ([], 0)
    del known["old"]  # settled and past retention: the seller forgot it
    for n in range(3):  # newer paid calls push the index past its limit: it is pruned
        store.paid(f"paid-{n}", "new", f"call-{n}", f"ctx-{n}")
    assert store.list("shared-context", 0, 10, 0, True, store.listable_to("")) == ([], 0)


def test_a_paid_stream_whose_skill_fails_at_once_is_a_failed_task_charged_nothing(market):
    deal = market.deal("broken")
    _, request, voucher, _ = market.buyer._stream_plan(
        market.buyer._deal(deal), {"topic": "x"}, "broken-1", None)
    events = list(market.stub.SendStreamingMessage(
        _a2a_buyer.stream_request(request, voucher, deal.body.terms.skill), metadata=EXT,
        timeout=10))
    assert len(events) == 1 and events[0].task.status.state == a2a_pb2.TASK_STATE_FAILED
    assert "nothing was charged" in events[0].task.status.message.parts[0].text
    account = market.seller.gate._account(deal.agreement_id)
    assert account.charged_atomic == 0 and account.reserved_atomic == 0


def test_a_message_asking_for_push_notifications_is_refused_as_a2a_says(market):
    request = _hello("a", "push-1")
    request.configuration.task_push_notification_config.url = "https://example.invalid/hook"
    for send in (lambda: market.stub.SendMessage(request, timeout=5),
                 lambda: list(market.stub.SendStreamingMessage(request, timeout=5))):
        with pytest.raises(grpc.RpcError) as refused:
            send()
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert error_info(refused.value).reason == "PUSH_NOTIFICATION_NOT_SUPPORTED"
