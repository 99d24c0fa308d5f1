"""The A2A door's tasks: recent ones in memory (bounded), paid ones found again in the gate.

A paid task is its paid call: its id is derived from (agreement, message id, payword)
(`marketplace.a2a_extension.paid_task_id`), its result is the call's first response, kept by
the payment gate and its journal. So GetTask after a lost answer, or after the seller
restarted, rebuilds the task from the gate and charges nothing. Unpaid tasks (free skills,
payment-required answers) live here only, the oldest dropped past `MAX_TASKS`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from a2a.types import a2a_pb2

from agents import _a2a_parts as parts
from agents.errors import AgentmarketError, FailedPrecondition, NotFound
from agents.payments import PaymentGate
from agents.v1 import agent_pb2
from marketplace import a2a_extension as ext

MAX_TASKS = 10_000
# What the unpaid tasks may hold in all (a free skill's output is its caller's to size, and
# free messages cost their senders nothing): past it, the oldest go first
MAX_UNPAID_BYTES = 64 << 20
A2A_DOMAIN = "a2a-protocol.org"
TERMINAL = frozenset({a2a_pb2.TASK_STATE_COMPLETED, a2a_pb2.TASK_STATE_FAILED,
                      a2a_pb2.TASK_STATE_CANCELED, a2a_pb2.TASK_STATE_REJECTED})


class TaskNotFound(NotFound):
    """A2A's TaskNotFoundError."""

    reason = "TASK_NOT_FOUND"
    domain = A2A_DOMAIN


class TaskNotCancelable(FailedPrecondition):
    """A2A's TaskNotCancelableError."""

    reason = "TASK_NOT_CANCELABLE"
    domain = A2A_DOMAIN


class UnsupportedOperation(FailedPrecondition):
    """A2A's UnsupportedOperationError."""

    reason = "UNSUPPORTED_OPERATION"
    domain = A2A_DOMAIN


class PushNotificationNotSupported(AgentmarketError):
    """A2A's PushNotificationNotSupportedError (the card says pushNotifications: false)."""

    status = "UNIMPLEMENTED"
    reason = "PUSH_NOTIFICATION_NOT_SUPPORTED"
    domain = A2A_DOMAIN


def paid_task(task_id: str, context_id: str, agreement_id: str, response: Any) -> a2a_pb2.Task:
    """The completed task of a paid call from its response (unary, or a stream's last chunk):
    the output artifact, and the receipt and usage in the task's metadata."""
    if isinstance(response, agent_pb2.StreamChunk):
        end = response.end
        output_json, usage, receipt = end.output_json, end.usage, end.receipt
    else:
        output_json, usage, receipt = response.output_json, response.usage, response.receipt
    task = a2a_pb2.Task(id=task_id, context_id=context_id,
                        status=parts.status(a2a_pb2.TASK_STATE_COMPLETED),
                        artifacts=[parts.output_artifact(output_json)])
    task.metadata.update({ext.STATUS_KEY: "paid", "agentmarket.agreementId": agreement_id,
                          ext.RECEIPT_KEY: ext.receipt_text(receipt),
                          ext.USAGE_KEY: ext.usage_params(usage)})
    return task


class TaskStore:
    """Tasks in memory: unpaid ones (`limit` of them, the oldest dropped first) apart from
    paid ones, running or answered (`limit` more), so that no flood of unpaid messages, which
    costs its sender nothing, pushes out a task someone paid for; an answered one pushed out
    by newer paid tasks is still found again in the gate (`_paid_lookup`), in its own
    context."""

    def __init__(self, gate: PaymentGate, limit: int = MAX_TASKS,
                 unpaid_bytes: int = MAX_UNPAID_BYTES) -> None:
        self.gate = gate
        self.limit = limit
        self.unpaid_bytes = unpaid_bytes
        self._tasks: OrderedDict[str, a2a_pb2.Task] = OrderedDict()  # unpaid
        self._sizes: dict[str, int] = {}  # unpaid task id -> its serialized size
        self._held = 0  # bytes of the unpaid tasks
        self._answered: OrderedDict[str, a2a_pb2.Task] = OrderedDict()  # paid, or being paid
        self._order: dict[str, int] = {}  # task id -> when it was last stored (for listing)
        self._stored = 0
        # task id -> (agreement id, call id, context id) of an admitted paid call
        self._paid: dict[str, tuple[str, str, str]] = {}
        self._by_message: dict[tuple[str, ...], str] = {}  # a free message's key -> task id
        self._message_of: dict[str, tuple[str, ...]] = {}  # task id -> its message key
        self._indexed = False
        self._prune_at = limit
        self._lock = threading.Condition()

    def put(self, task: a2a_pb2.Task, *, message_key: tuple[str, ...] | None = None) -> None:
        with self._lock:
            store, other = (self._answered, self._tasks) if task.id in self._paid \
                else (self._tasks, self._answered)
            other.pop(task.id, None)
            self._held -= self._sizes.pop(task.id, 0)
            store[task.id] = task
            store.move_to_end(task.id)
            if store is self._tasks:
                self._sizes[task.id] = task.ByteSize()
                self._held += self._sizes[task.id]
            self._stored += 1
            self._order[task.id] = self._stored
            if message_key is not None:
                self._by_message[message_key] = task.id
                self._message_of[task.id] = message_key
            while len(store) > self.limit or (store is self._tasks and len(store) > 1
                                              and self._held > self.unpaid_bytes):
                old, _ = store.popitem(last=False)
                self._forget(old)
            self._lock.notify_all()

    def _forget(self, task_id: str) -> None:
        """(under the lock) What is kept beside a task that left the stores."""
        self._order.pop(task_id, None)
        self._held -= self._sizes.pop(task_id, 0)
        key = self._message_of.pop(task_id, None)
        if key is not None:
            self._by_message.pop(key, None)

    def _find(self, task_id: str) -> a2a_pb2.Task | None:
        """(under the lock)"""
        return self._tasks.get(task_id) or self._answered.get(task_id)

    def by_message(self, key: tuple[str, ...]) -> a2a_pb2.Task | None:
        """The task of a resent free message (`key`: sender, context, message id, input
        digest; `A2ADoor._free`)."""
        with self._lock:
            task_id = self._by_message.get(key)
            return self._find(task_id) if task_id else None

    def paid(self, task_id: str, agreement_id: str, call_id: str, context_id: str = "") -> bool:
        """Index a paid call's task (whether it was not yet); entries of agreements the gate
        has forgotten (settled, past retention) are dropped whenever the index doubles."""
        with self._lock:
            new = task_id not in self._paid
            self._paid[task_id] = (agreement_id, call_id, context_id)
            if len(self._paid) > self._prune_at:
                known = set(self.gate.agreements())
                for gone in [t for t, w in self._paid.items() if w[0] not in known]:
                    del self._paid[gone]  # and its task: unindexed, it would list as unpaid
                    if self._answered.pop(gone, None) is not None:
                        self._forget(gone)
                self._prune_at = max(self.limit, 2 * len(self._paid))
            return new

    def unpaid(self, task_id: str) -> None:
        """Forget a task indexed as paid whose payment was refused (and the task)."""
        with self._lock:
            self._paid.pop(task_id, None)
        self.drop(task_id)

    def drop(self, task_id: str) -> None:
        with self._lock:
            self._tasks.pop(task_id, None)
            self._answered.pop(task_id, None)
            self._forget(task_id)
            self._lock.notify_all()

    def get(self, task_id: str) -> a2a_pb2.Task:
        with self._lock:
            task = self._find(task_id)
        if task is not None:
            return task
        found = self._paid_lookup(task_id)
        if found is None:
            raise TaskNotFound(f"no task {task_id[:64]!r} here (tasks are kept "
                               "while their agreement is, unpaid ones for the last "
                               f"{self.limit})")
        return found

    def _paid_lookup(self, task_id: str) -> a2a_pb2.Task | None:
        with self._lock:
            if not self._indexed:  # after a restart: index the calls the journal kept
                for agreement_id, call_id, payword in self.gate.paid_calls():
                    self._paid.setdefault(ext.paid_task_id(agreement_id, call_id, payword),
                                          (agreement_id, call_id, ""))
                self._indexed = True
            where = self._paid.get(task_id)
        if where is None:
            return None
        agreement_id, call_id, context_id = where
        response = self.gate.answered(agreement_id, call_id)
        if response is None:
            return None
        return paid_task(task_id, context_id or task_id, agreement_id, response)

    def update(self, task_id: str, change: Callable[[a2a_pb2.Task], None]) -> a2a_pb2.Task:
        with self._lock:
            task = self._find(task_id)
            if task is None:
                raise TaskNotFound(f"no task {task_id[:64]!r} here")
            change(task)
            self._lock.notify_all()
            return task

    def wait_change(self, task_id: str, state: int, timeout_s: float,
                    until: Callable[[], bool] = lambda: False) -> a2a_pb2.Task:
        """The task once its state is no longer `state` (or as it is after `timeout_s`, or
        once `until()`, checked whenever `wake` is called)."""
        with self._lock:
            self._lock.wait_for(lambda: until() or (t := self._find(task_id)) is None
                                or t.status.state != state, timeout=timeout_s)
        return self.get(task_id)

    def wake(self) -> None:
        """Wake every `wait_change` to look at its `until` again."""
        with self._lock:
            self._lock.notify_all()

    def holder_of(self, task_id: str) -> str:
        """Whose task this is, as far as the door can tell: its agreement when paid."""
        return self.agreement_of(task_id) or task_id

    def agreement_of(self, task_id: str) -> str | None:
        """The agreement a paid task's call is paid under (None: not a paid task)."""
        with self._lock:
            where = self._paid.get(task_id)
        return where[0] if where is not None else None

    def listable_to(self, caller: str) -> Callable[[str], bool]:
        """Which tasks a ListTasks caller sees: a context id is chosen by whoever starts it
        and may be known to others, so a paid task (its output and receipt) is listed only to
        its agreement's buyer, calling signed; GetTask by its id still answers anyone holding
        the id."""
        def visible(task_id: str) -> bool:
            agreement = self.agreement_of(task_id)
            if agreement is None:
                with self._lock:  # a paid task whose index entry went: nobody's to list
                    return task_id not in self._answered
            try:
                return bool(caller) and self.gate.body(agreement).buyer_id == caller
            except NotFound:
                return False

        return visible

    def stored(self, task_id: str) -> a2a_pb2.Task | None:
        """The task as kept in memory (None: not there; the gate is not asked)."""
        with self._lock:
            return self._find(task_id)

    def list(self, context_id: str, state: int, page_size: int, offset: int,
             include_artifacts: bool, visible: Callable[[str], bool] = lambda _id: True,
             changed_after_ns: int | None = None) -> tuple[list[a2a_pb2.Task], int]:
        """A page of a context's tasks, newest first; `changed_after_ns`: only those whose
        status is later than this (ns since the epoch)."""
        with self._lock:
            chosen = [t for store in (self._tasks, self._answered) for t in store.values()
                      if t.context_id == context_id and (not state or t.status.state == state)
                      and (changed_after_ns is None
                           or t.status.timestamp.ToNanoseconds() > changed_after_ns)]
            chosen.sort(key=lambda t: self._order.get(t.id, 0), reverse=True)  # newest first
        chosen = [t for t in chosen if visible(t.id)]  # outside: `visible` takes the lock
        page = []
        for task in chosen[offset:offset + page_size]:
            copy = a2a_pb2.Task()
            copy.CopyFrom(task)
            if not include_artifacts:
                del copy.artifacts[:]
            page.append(copy)
        return page, len(chosen)
