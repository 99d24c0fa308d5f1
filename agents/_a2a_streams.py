"""The A2A door's paid streams: a streamed skill's text relayed as A2A artifact updates,
billed as it flows by the paid-call core (`agents._serving.PaidCalls.paid_stream`), the
last status update carrying the receipt; a reader that hangs up is billed for what it was
sent, and its task stored as the gate answered it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
from a2a.types import a2a_pb2

from agents._a2a_tasks import paid_task as paid_task_of
from agents._serving import STOP_NAMES
from agents.errors import AgentmarketError
from agents.v1 import agent_pb2


class PaidStreams:
    """`A2ADoor`'s streamed paid calls (a mixin: the door has `seller`, `tasks`, `_failed`
    and `_working`)."""

    seller: Any
    tasks: Any
    _failed: Callable[[str, str, str], a2a_pb2.Task]
    _working: Callable[[str, str], None]

    def _paid_stream(self, invoke: agent_pb2.InvokeRequest, voucher: Any, task_id: str,
                     context_id: str, context: grpc.ServicerContext
                     ) -> Iterator[a2a_pb2.StreamResponse]:
        chunks = self.seller.calls.paid_stream(invoke, context, voucher=voucher)
        try:
            yield from self._relay(chunks, invoke, task_id, context_id)
        finally:  # the caller hung up: the core bills what was delivered, then releases
            chunks.close()

    def _relay(self, chunks: Iterator[agent_pb2.StreamChunk], invoke: agent_pb2.InvokeRequest,
               task_id: str, context_id: str) -> Iterator[a2a_pb2.StreamResponse]:
        try:
            first = next(chunks, None)  # admitted (or refused) before the task is announced
        except AgentmarketError:
            raise
        except Exception:  # the skill failed before its first piece: a failed task, unpaid
            self.tasks.paid(task_id, invoke.agreement_id, invoke.call_id, context_id)
            failed = self._failed(task_id, context_id, "streamed paid skill")
            self.tasks.put(failed)
            yield a2a_pb2.StreamResponse(task=failed)
            return
        if first is None:
            return
        self.tasks.paid(task_id, invoke.agreement_id, invoke.call_id, context_id)
        self._working(task_id, context_id)
        sent = 0
        chunk: Any = first
        try:
            yield a2a_pb2.StreamResponse(task=self.tasks.get(task_id))
            while not chunk.HasField("end"):
                update = a2a_pb2.TaskArtifactUpdateEvent(
                    task_id=task_id, context_id=context_id, append=sent > 0,
                    artifact=a2a_pb2.Artifact(artifact_id="text", name="text",
                                              parts=[a2a_pb2.Part(text=chunk.text_delta)]))
                update.metadata.update({"chargedAtomic": str(chunk.charged_atomic)})
                yield a2a_pb2.StreamResponse(artifact_update=update)
                sent += 1
                chunk = next(chunks)
        except GeneratorExit:  # the reader hung up: the core bills what was delivered
            try:
                chunks.close()
            finally:
                self._hung_up(invoke, task_id, context_id)
            raise
        except AgentmarketError:
            self.tasks.drop(task_id)
            raise
        except Exception:  # a call the gate answered (charged) never shows as failed
            task = self._answered_task(invoke, task_id, context_id) \
                or self._failed(task_id, context_id, "streamed paid skill")
            self.tasks.put(task)
            yield a2a_pb2.StreamResponse(status_update=a2a_pb2.TaskStatusUpdateEvent(
                task_id=task_id, context_id=context_id, status=task.status))
            return
        task = _streamed_task(task_id, context_id, invoke.agreement_id, chunk)
        self.tasks.put(task)
        final = a2a_pb2.TaskStatusUpdateEvent(task_id=task_id, context_id=context_id,
                                              status=task.status)
        final.metadata.CopyFrom(task.metadata)
        yield a2a_pb2.StreamResponse(status_update=final)

    def _hung_up(self, invoke: agent_pb2.InvokeRequest, task_id: str, context_id: str) -> None:
        """Store a stream's task as the gate answered it once its reader hung up: completed
        with the receipt for what was delivered (nothing answered: nothing charged, no task),
        so that GetTask never shows a charged call as still working."""
        task = self._answered_task(invoke, task_id, context_id)
        if task is None:
            self.tasks.drop(task_id)
        else:
            self.tasks.put(task)

    def _answered_task(self, invoke: agent_pb2.InvokeRequest, task_id: str, context_id: str
                       ) -> a2a_pb2.Task | None:
        """The completed task of a call as the gate answered (and charged) it; None when the
        gate answered nothing."""
        answer = self.seller.gate.answered(invoke.agreement_id, invoke.call_id)
        return None if answer is None else _streamed_task(task_id, context_id,
                                                          invoke.agreement_id, answer)


def _streamed_task(task_id: str, context_id: str, agreement_id: str, answer: Any
                   ) -> a2a_pb2.Task:
    task = paid_task_of(task_id, context_id, agreement_id, answer)
    if isinstance(answer, agent_pb2.StreamChunk):
        task.metadata.update({"agentmarket.stopReason": _stop_name(answer.end.stop_reason)})
    return task


def _stop_name(stop: int) -> str:
    return STOP_NAMES.get(stop, "complete")
