"""A buyer process of the fault suite: plain (the SDK's calls) or checkpointed (the workflow).

    python -m tests.faults.buyer KIND MARKETPLACE KEY_FILE RECORD SELLER_ID CALLS [CHECKPOINT]

It funds its wallet (once: a fixed idempotency key), hires SELLER_ID for CALLS paid calls and
finishes. An outage is retried as a client should (UNAVAILABLE: the same call id again); any
other refusal is final. RECORD gets one JSON line per fact, flushed and fsynced as it happens:
the agreement, each answer received (its voucher sequence and charge), each final refusal, the
escrow it finished with. A checkpointed buyer resumes its task from CHECKPOINT when started
again. Kill point (`tests.faults.faulty`): after_answer (an answer received, not yet recorded
or checkpointed). FAULT_IMPATIENT=1: a plain buyer gives up a call refused JOURNAL_UNAVAILABLE.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from agents import BuyerAgent, buyer_graph
from agents.errors import AgentmarketError, SellerUnavailable
from tests.faults.faulty import install_clock, reach

RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL")
# An impatient plain buyer gives a call up when the seller says it did not answer it because
# its journal failed (JOURNAL_UNAVAILABLE): such a call must never be charged.
IMPATIENT = os.environ.get("FAULT_IMPATIENT") == "1"
GIVE_UP_S = 300.0  # a client's patience with an outage (long: the machine may be slow)


class Record:
    def __init__(self, path: str) -> None:
        self.file = open(path, "a")  # noqa: SIM115 - kept open for the process's life

    def write(self, **fact: Any) -> None:
        self.file.write(json.dumps(fact) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())


def retried(operation: Any, give_up_on: tuple[str, ...] = ()) -> Any:
    """`operation()` again while it meets an outage (up to GIVE_UP_S; never after a refusal
    whose reason is in `give_up_on`)."""
    give_up = time.monotonic() + GIVE_UP_S
    while True:
        try:
            return operation()
        except AgentmarketError as error:
            if error.status not in RETRYABLE or time.monotonic() > give_up \
                    or error.reason in give_up_on:
                raise
            time.sleep(0.2)


def plain(buyer: BuyerAgent, record: Record, seller_id: str, calls: int) -> None:
    def negotiate() -> Any:
        listing = next((found for found in buyer.discover("upper", currency="USD")
                        if found.agent_id == seller_id), None)
        if listing is None:  # away (its listing lapsed): it advertises again when back
            raise SellerUnavailable("the seller is not listed right now")
        return buyer.negotiate(listing, "upper", quantity=calls, budget="0.05",
                               currency="USD", deadline_s=2, failover=False)

    deal = retried(negotiate)
    retried(lambda: buyer.hire(deal))
    record.write(agreement=deal.agreement_id, seller=seller_id)
    for n in range(calls):
        call_id = f"call-{n}"
        try:
            answer = retried(lambda: buyer.invoke(deal, {"text": f"t{n}"}, call_id=call_id),  # noqa: B023
                             give_up_on=("JOURNAL_UNAVAILABLE",) if IMPATIENT else ())
        except AgentmarketError as error:
            record.write(refused=call_id, reason=error.reason, message=error.message,
                         sequence=deal.unanswered.get(call_id, (0, 0))[0])
            continue
        reach("after_answer")
        record.write(answered=call_id, sequence=answer.receipt.sequence,
                     charged=answer.receipt.charged_atomic, output=answer.output)
        time.sleep(0.2)  # paced, so the faults meet calls in flight
    try:
        escrow = retried(lambda: buyer.finish(deal, confirm=False))
        record.write(finished=escrow.state.name, captured=escrow.captured_atomic)
    except AgentmarketError as error:
        record.write(finish_refused=error.reason, message=error.message)


def checkpointed(buyer: BuyerAgent, record: Record, calls: int, checkpoint: str) -> None:
    config = {"configurable": {"thread_id": "task"}}

    def step(node: str, update: dict[str, Any]) -> None:
        if node == "call":
            reach("after_answer")

    graph = buyer_graph(buyer, checkpoint_path=checkpoint, on_step=step)
    task: Any = None if graph.get_state(config).values else {
        "skill": "upper", "currency": "USD", "budget": "0.05", "max_sellers": 1,
        "inputs": [{"text": f"t{n}"} for n in range(calls)]}
    give_up = time.monotonic() + GIVE_UP_S
    while True:
        try:
            state = graph.invoke(task, config)
            break
        except AgentmarketError as error:
            away = error.status == "NOT_FOUND" and "no seller offers" in error.message
            if (error.status not in RETRYABLE and not away) or time.monotonic() > give_up:
                record.write(task_refused=error.reason, message=error.message)
                return
            task = None
            time.sleep(0.2)
    record.write(agreement=state.get("agreement_id"), seller=state.get("seller_id"),
                 status=state.get("status"), calls=state.get("calls", []),
                 charged=state.get("payment", {}).get("charged_atomic"),
                 captured=state.get("captured_atomic"))


def main() -> None:
    install_clock()
    kind, marketplace, key, path, seller_id, calls = sys.argv[1:7]
    buyer = BuyerAgent(f"buyer-{kind}", marketplace=marketplace, key=key)
    record = Record(path)
    retried(lambda: buyer.fund("1.00", "USD", idempotency_key=f"fund:{buyer.agent_id}"))
    if kind == "plain":
        plain(buyer, record, seller_id, int(calls))
    else:
        checkpointed(buyer, record, int(calls), sys.argv[7])
    buyer.close()
    record.write(done=True)


if __name__ == "__main__":
    main()
