"""The A2A door's task store on its own: unpaid tasks, which cost their sender nothing, never
push out a task someone paid for, and a paid task found again in the gate keeps its context."""

from __future__ import annotations

from types import SimpleNamespace

from a2a.types import a2a_pb2

from agents import _a2a_parts as parts
from agents._a2a_tasks import TaskStore, paid_task
from agents.v1 import agent_pb2


def _gate(answers: dict[tuple[str, str], agent_pb2.InvokeResponse]) -> SimpleNamespace:
    return SimpleNamespace(agreements=lambda: ["agreement"], paid_calls=lambda: [],
                           answered=lambda agreement, call: answers.get((agreement, call)))


def _unpaid(n: int) -> a2a_pb2.Task:
    return a2a_pb2.Task(id=f"free-{n}", context_id=f"stranger-{n}",
                        status=parts.status(a2a_pb2.TASK_STATE_INPUT_REQUIRED))


def test_a_flood_of_unpaid_tasks_does_not_push_out_a_paid_one():
    answer = agent_pb2.InvokeResponse(output_json='{"text": "mine"}')
    store = TaskStore(_gate({("agreement", "call-1"): answer}), limit=3)  # type: ignore[arg-type]
    store.paid("paid-1", "agreement", "call-1", "my-context")
    store.put(paid_task("paid-1", "my-context", "agreement", answer))
    for n in range(10):
        store.put(_unpaid(n))
    assert store.get("paid-1").context_id == "my-context"
    listed, total = store.list("my-context", 0, 10, 0, True)
    assert ([t.id for t in listed], total) == (["paid-1"], 1)
    assert store.list("stranger-0", 0, 10, 0, True) == ([], 0)  # the oldest unpaid: gone


def test_a_paid_task_pushed_out_by_newer_paid_ones_comes_back_in_its_context():
    answers = {("agreement", f"call-{n}"): agent_pb2.InvokeResponse(output_json=f'{{"n": {n}}}')
               for n in range(5)}
    store = TaskStore(_gate(answers), limit=2)  # type: ignore[arg-type]
    for n in range(5):
        store.paid(f"paid-{n}", "agreement", f"call-{n}", f"context-{n}")
        store.put(paid_task(f"paid-{n}", f"context-{n}", "agreement",
                            answers[("agreement", f"call-{n}")]))
    again = store.get("paid-0")  # no longer in memory: rebuilt from the gate's answer
    assert (again.context_id, again.status.state) == ("context-0",
                                                      a2a_pb2.TASK_STATE_COMPLETED)
