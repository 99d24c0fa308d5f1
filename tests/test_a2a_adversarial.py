"""The A2A door against callers who know only ids, their own key or their own wallet: none of
them gets another's answer, parks data in the task store, holds the server's threads, or costs
a buyer its voucher; bad input is a clear INVALID_ARGUMENT that changes nothing. One node and
one seller for the module (real servers on loopback)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from a2a.types import a2a_pb2

from agents import _a2a_buyer
from agents._a2a_door import MAX_SUBSCRIBERS, SUBSCRIBE_SLICE_S
from agents.buyer import Deal
from agents.skills import per_call, skill
from marketplace import a2a_extension as ext
from tests.a2a_market import Market, echo, hello, open_market, write

EXT = [(ext.EXTENSIONS_HEADER, ext.URI)]


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    @skill(price=per_call("0.002", "USD"))
    def tally(amount_atomic: int) -> dict:
        """Give an amount back, as a ledger would book it."""
        return {"amount_atomic": amount_atomic}

    yield from open_market(tmp_path_factory.mktemp("a2a-adversarial"),
                           [echo, hello, write, tally])


def _message(arguments: dict[str, Any], message_id: str, **metadata: object
             ) -> a2a_pb2.Message:
    message = a2a_pb2.Message(message_id=message_id, role=a2a_pb2.ROLE_USER,
                              parts=[a2a_pb2.Part(text=json.dumps(arguments))])
    message.metadata.update(metadata)
    return message


def _hello(name: str, message_id: str) -> a2a_pb2.SendMessageRequest:
    return a2a_pb2.SendMessageRequest(message=_message({"name": name}, message_id,
                                                       **{ext.SKILL_KEY: "hello"}))


def _refused(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _output(task: a2a_pb2.Task) -> Any:
    return json.loads(task.artifacts[0].parts[0].text)


def test_a_free_message_id_is_a_retry_key_only_for_its_sender_and_input(market: Market):
    stranger = market.stub.SendMessage(_hello("mallory", "shared-id"), timeout=5).task
    victim = market.stub.SendMessage(_hello("alice", "shared-id"), timeout=5).task
    assert _output(victim) == {"greeting": "hello alice"} and victim.id != stranger.id
    again = market.stub.SendMessage(_hello("alice", "shared-id"), timeout=5).task
    assert again.id == victim.id  # a resent message: its first task
    signed, _unsigned = market.buyer._a2a_stubs(market.seller.endpoint)
    own = signed.SendMessage(_hello("alice", "shared-id"), timeout=5).task
    assert own.id != victim.id and _output(own) == {"greeting": "hello alice"}
    assert signed.SendMessage(_hello("alice", "shared-id"), timeout=5).task.id == own.id


def test_an_integer_past_2_53_arrives_exactly_or_is_refused(market: Market):
    """The buyer sends its input as JSON text, so an amount past 2^53 reaches the skill as
    sent (a data part's numbers are doubles: 2^53 + 1 would arrive, run and be charged as
    2^53). A data part holding one, as another client may send, is refused."""
    deal = market.deal("tally", quantity=2)
    amount = 2**53 + 1
    answer = market.buyer.send(deal, {"amount_atomic": amount})
    assert answer.output == {"amount_atomic": amount}
    part = a2a_pb2.Part()
    part.data.struct_value.update({"name": "a", "n": float(amount)})
    message = _message({"name": "a"}, "past-2-53", **{ext.SKILL_KEY: "hello"})
    message.ClearField("parts")
    message.parts.append(part)
    error = _refused(lambda: market.stub.SendMessage(a2a_pb2.SendMessageRequest(
        message=message), timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "2^53" in error.details()


@pytest.mark.parametrize("where", ["metadata", "data part"])
@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_infinity_is_invalid_argument(market: Market, where: str, number: float):
    message = _message({"name": "a"}, f"nan-{where}-{number}", **{ext.SKILL_KEY: "hello"})
    if where == "metadata":
        message.metadata["x"] = number
    else:
        part = a2a_pb2.Part()
        part.data.struct_value.update({"name": "a"})
        part.data.struct_value["n"] = number
        message.ClearField("parts")
        message.parts.append(part)
    request = a2a_pb2.SendMessageRequest(message=message)
    for call in (lambda: market.stub.SendMessage(request, timeout=5),
                 lambda: list(market.stub.SendStreamingMessage(request, timeout=5))):
        error = _refused(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert "NaN or Infinity" in error.details()


def test_ids_and_metadata_a_task_would_keep_are_bounded(market: Market):
    store = market.door().tasks
    held = len(store._tasks)
    oversized: list[Callable[[a2a_pb2.Message], None]] = [
        lambda m: setattr(m, "context_id", "c" * 129),
        lambda m: setattr(m, "task_id", "t" * 129),
        lambda m: m.reference_task_ids.extend(["r" * 129]),
        lambda m: m.reference_task_ids.extend(["r"] * 17),
        lambda m: m.metadata.update({"padding": "p" * 70_000}),
    ]
    for n, grow in enumerate(oversized):
        message = _message({"text": "t"}, f"big-{n}", **{ext.SKILL_KEY: "echo"})
        grow(message)
        error = _refused(lambda: market.stub.SendMessage(
            a2a_pb2.SendMessageRequest(message=message), timeout=5))  # noqa: B023
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "at most" in error.details()
    assert len(store._tasks) == held
    fine = _message({"text": "t"}, "big-fine", **{ext.SKILL_KEY: "echo"})
    fine.context_id = "c" * 128
    task = market.stub.SendMessage(a2a_pb2.SendMessageRequest(message=fine), timeout=5).task
    assert task.status.state == a2a_pb2.TASK_STATE_INPUT_REQUIRED


def test_a_paid_message_refused_for_its_input_keeps_its_voucher(market: Market):
    deal = market.deal("echo")
    planned = market.buyer._plan(deal, {"text": 5}, "bad-input", None)  # text is a string
    request = _a2a_buyer.paid_request(planned)
    account = market.seller.gate._account(deal.agreement_id)
    before = (account.sequence, account.anchor_index, account.charged_atomic)
    error = _refused(lambda: market.stub.SendMessage(request, metadata=EXT, timeout=5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "schema" in error.details()
    assert (account.sequence, account.anchor_index, account.charged_atomic) == before
    request.message.message_id = "bad-input-fixed"
    request.message.ClearField("parts")
    request.message.parts.append(a2a_pb2.Part(text=json.dumps({"text": "ok"})))
    task = market.stub.SendMessage(request, metadata=EXT, timeout=5).task
    assert task.status.state == a2a_pb2.TASK_STATE_COMPLETED
    assert _output(task) == {"text": "ok"}


def _stream_request(market: Market, deal: Deal, message_id: str
                    ) -> a2a_pb2.SendMessageRequest:
    _deal, request, voucher, _budget = market.buyer._stream_plan(
        market.buyer._deal(deal), {"topic": "x"}, message_id, None)
    return _a2a_buyer.stream_request(request, voucher, deal.body.terms.skill)


def test_a_paid_stream_whose_reader_hangs_up_completes_its_task(market: Market):
    deal = market.deal("write")
    signed, _unsigned = market.buyer._a2a_stubs(market.seller.endpoint)
    call = signed.SendStreamingMessage(_stream_request(market, deal, "hang-up"), metadata=EXT,
                                       timeout=30)
    events = []
    for event in call:
        events.append(event)
        if len(events) == 3:  # the task and two pieces
            call.cancel()
            break
    task_id = events[0].task.id
    deadline = time.monotonic() + 5
    while True:
        task = market.stub.GetTask(a2a_pb2.GetTaskRequest(id=task_id), timeout=5)
        if task.status.state != a2a_pb2.TASK_STATE_WORKING or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert task.status.state == a2a_pb2.TASK_STATE_COMPLETED
    receipt = ext.parse_receipt(task.metadata[ext.RECEIPT_KEY])
    account = market.seller.gate._account(deal.agreement_id)
    assert receipt.charged_atomic == account.charged_atomic > 0
    assert account.reserved_atomic == 0


def _working(door: Any, task_id: str, agreement: str = "") -> None:
    if agreement:  # a paid call's task: its agreement holds it
        door.tasks.paid(task_id, agreement, f"call-{task_id}", task_id)
    door.tasks.put(a2a_pb2.Task(id=task_id, context_id=task_id,
                                status=a2a_pb2.TaskStatus(state=a2a_pb2.TASK_STATE_WORKING)))


def _subscribe(market: Market, task_id: str) -> Any:
    call = market.stub.SubscribeToTask(a2a_pb2.SubscribeToTaskRequest(id=task_id), timeout=30)
    assert next(call).task.status.state == a2a_pb2.TASK_STATE_WORKING  # none is refused
    return call


def _waiting_on(door: Any) -> list[str]:
    deadline = time.monotonic() + 5
    while door._subscriptions.waiting > MAX_SUBSCRIBERS and time.monotonic() < deadline:
        time.sleep(0.05)
    return sorted(w.task_id for w in door._subscriptions._waiting if not w.ended)


def test_waiting_subscriptions_are_bounded_and_a_crowd_gives_way_first(market: Market):
    """Each waiting subscription holds a worker thread: at most MAX_SUBSCRIBERS wait, and
    none is refused. One agreement's crowd of subscriptions on its own working tasks gives
    way to a newcomer, and crowding in again takes its own places, not the newcomer's."""
    door = market.door()
    for n in range(MAX_SUBSCRIBERS + 1):
        _working(door, f"crowd-{n}", agreement="mallory")
    _working(door, "victim")
    crowd = [_subscribe(market, f"crowd-{n}") for n in range(MAX_SUBSCRIBERS)]
    victim = _subscribe(market, "victim")
    ended = crowd[0]  # the crowd's oldest gave way: it ends with the task as it stands
    assert next(ended).status_update.status.state == a2a_pb2.TASK_STATE_WORKING
    crowd.append(_subscribe(market, f"crowd-{MAX_SUBSCRIBERS}"))
    assert _waiting_on(door) == sorted(["victim", *(f"crowd-{n}" for n in range(2, 5))])
    started = time.monotonic()  # the server still answers others at once
    assert market.stub.SendMessage(_hello("victim", "victim"), timeout=5).task.status.state \
        == a2a_pb2.TASK_STATE_COMPLETED
    assert time.monotonic() - started < 2

    def finish(task: a2a_pb2.Task) -> None:
        task.status.state = a2a_pb2.TASK_STATE_COMPLETED

    door.tasks.update("victim", finish)  # the victim's subscription sees its task finish
    assert next(victim).status_update.status.state == a2a_pb2.TASK_STATE_COMPLETED
    for call in crowd:
        call.cancel()


def test_waiting_subscriptions_leave_with_their_caller(market: Market):
    door = market.door()
    _working(door, "stuck")
    calls = [_subscribe(market, "stuck")]  # a second one on the task takes the first's place
    calls.append(_subscribe(market, "stuck"))
    assert next(calls[0]).status_update.status.state == a2a_pb2.TASK_STATE_WORKING
    for call in calls:
        call.cancel()
    time.sleep(4 * SUBSCRIBE_SLICE_S)  # each waiting subscription notices its caller left
    assert door._subscriptions.waiting == 0
    later = _subscribe(market, "stuck")

    def finish(task: a2a_pb2.Task) -> None:
        task.status.state = a2a_pb2.TASK_STATE_COMPLETED

    door.tasks.update("stuck", finish)
    assert next(later).status_update.status.state == a2a_pb2.TASK_STATE_COMPLETED


def test_a_flood_of_free_messages_keeps_a_running_paid_task(market: Market, monkeypatch):
    """Free messages cost their sender nothing: they fill the unpaid tasks' store only, never
    push out a paid call's task while it runs."""
    door = market.door()
    monkeypatch.setattr(door.tasks, "limit", 20)
    deal = market.deal("write")
    signed, _unsigned = market.buyer._a2a_stubs(market.seller.endpoint)
    call = signed.SendStreamingMessage(_stream_request(market, deal, "flooded"), metadata=EXT,
                                       timeout=30)
    task_id = next(call).task.id
    for n in range(25):
        market.stub.SendMessage(_hello(f"f{n}", f"flood-{n}"), timeout=5)
    running = market.stub.GetTask(a2a_pb2.GetTaskRequest(id=task_id), timeout=5)
    assert running.status.state == a2a_pb2.TASK_STATE_WORKING
    assert list(call)[-1].status_update.status.state == a2a_pb2.TASK_STATE_COMPLETED


def test_one_agreements_running_calls_are_one_holder(market: Market):
    """While a paid unary call runs, its task is its agreement's (one holder of waiting
    subscriptions), as a streamed call's is, not a holder of its own per call."""
    import threading

    door = market.door()
    deal = market.deal("write")

    def running() -> set[str]:
        with door.tasks._lock:
            return {t.id for store in (door.tasks._tasks, door.tasks._answered)
                    for t in store.values() if t.status.state == a2a_pb2.TASK_STATE_WORKING}

    before = running()  # other tests' tasks
    calls = [threading.Thread(target=market.buyer.send, args=(deal, {"topic": f"t{n}"}))
             for n in range(2)]
    for thread in calls:
        thread.start()
    deadline = time.monotonic() + 5
    working: set[str] = set()
    while len(working) < 2 and time.monotonic() < deadline:
        working = running() - before
        time.sleep(0.02)
    holders = {door.tasks.holder_of(task_id) for task_id in working}
    for thread in calls:
        thread.join()
    assert len(working) == 2 and holders == {deal.agreement_id}


def test_a_context_lists_paid_tasks_to_their_buyer_only(market: Market):
    """A context id is the sender's choice and may be known to others: ListTasks shows a paid
    task, its output and receipt, only to its agreement's buyer calling signed."""
    deal = market.deal("echo")
    request = _a2a_buyer.paid_request(market.buyer._plan(deal, {"text": "secret"}, "ctx-1",
                                                         None))
    request.message.context_id = "shared-conversation"
    signed, _unsigned = market.buyer._a2a_stubs(market.seller.endpoint)
    paid = signed.SendMessage(request, metadata=EXT, timeout=5).task
    listing = a2a_pb2.ListTasksRequest(context_id="shared-conversation", include_artifacts=True)
    assert [t.id for t in signed.ListTasks(listing, timeout=5).tasks] == [paid.id]
    stranger = market.stub.ListTasks(listing, timeout=5)
    assert list(stranger.tasks) == [] and stranger.total_size == 0


def test_a_paid_stream_keeps_the_extensions_trailer(market: Market):
    deal = market.deal("write")
    signed, _unsigned = market.buyer._a2a_stubs(market.seller.endpoint)
    call = signed.SendStreamingMessage(_stream_request(market, deal, "trailer"), metadata=EXT,
                                       timeout=30)
    list(call)
    trailers = dict(call.trailing_metadata())
    assert trailers[ext.EXTENSIONS_HEADER] == ext.URI
    assert "agentmarket-stop-reason" in trailers
