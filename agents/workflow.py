"""The buyer's task as a LangGraph StateGraph, checkpointed, resumable without paying twice.

    plan -> discover -> negotiate -> hire --(approval needed)--> approve (interrupt) -> hire
                                      |                                  '-(denied)-> END
                                      '-> prepare <-> call -> verify -> settle | dispute -> END

    graph = buyer_graph(buyer)                      # SqliteSaver checkpoints by default
    config = {"configurable": {"thread_id": "task-42"}}
    state = graph.invoke({"skill": "summarize", "currency": "USD", "budget": "0.05",
                          "inputs": [{"text": "..."}]}, config)
    # crashed? a new process, a new BuyerAgent with the same key:
    state = buyer_graph(BuyerAgent(..., key=same_key)).invoke(None, config)

The state holds only plain data, so the checkpoint has everything a new process needs: the
signed agreement and the PayWord seed (hex; keep checkpoints private, they can spend the
escrow), the last voucher's sequence and index, what was charged, the outputs.

Exactly once, node by node (a resumed node runs again from its start):
- hire: the escrow's idempotency key is the agreement id: a rerun gets the first hold back,
  and the retry after an approval is the very spend the person approved.
- prepare plans the next call's voucher (sequence, index, call id) and the checkpoint stores it
  *before* call sends it; call sends exactly that voucher with that call id. If the process dies
  after the seller charged but before the checkpoint, the rerun re-sends the same voucher and
  call id, and the seller answers with the first response: charged once, no new word revealed.
- settle and dispute: the seller redeems once per agreement (and the marketplace's key is the
  voucher's sequence); confirm and dispute are keyed by the agreement id.
- approve: `interrupt` with the amount, counterparty and reason; resuming with
  `Command(resume={"approve": True})` approves (keyed by the approval id) and hires again;
  `{"approve": False}` denies and ends the task with nothing held. Deciding takes an operator
  of the marketplace (the buyer may not approve its own spend): give `approver`, the operator's
  `AgentKey` or a callable. Without one, the decision is made elsewhere (an operator's own
  tool) and resuming only acts on it: approve hires again (still refused if the approval was
  not granted: the graph stops again), deny ends the task and the approval lapses unused.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from agents.approvals import OperatorApprover
from agents.buyer import BuyerAgent, Deal
from agents.errors import (
    AgentmarketError,
    ApprovalRequired,
    BudgetExceeded,
    InvalidArgument,
    NotFound,
)
from agents.results import Escrow
from marketplace.home import home
from marketplace.identity import AgentKey
from marketplace.v1 import registry_pb2, settlement_pb2
from wallets.currencies import currency as _currency

CHECKPOINTS_FILE = "buyer-checkpoints.sqlite"  # in $AGENTMARKET_HOME (`marketplace.home`)
# statuses after which the seller may have run the call: the node fails, a resume re-sends it
RETRYABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "INTERNAL")
ESCROW_STATES = {v: k.removeprefix("AGREEMENT_STATE_").lower()
                 for k, v in settlement_pb2.AgreementState.items()}


class TaskState(TypedDict, total=False):
    # the task, as given (or as `plan` made it from `task`)
    task: str
    skill: str
    currency: str
    budget: str
    inputs: list[dict[str, Any]]
    max_rounds: int
    max_sellers: int
    verification: int
    # discover and negotiate
    candidates: list[str]
    listings_hex: list[str]
    deal: dict[str, Any]
    agreement_id: str
    seller_id: str
    unit_price_atomic: int
    max_total_atomic: int
    rounds: int
    # hire, and approval by a human
    escrow_state: str
    approval: dict[str, Any]
    # calls: the next voucher is planned (and checkpointed) before it is sent
    payment: dict[str, int]
    pending_call: dict[str, Any] | None
    calls: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    # verify and settle
    problems: list[str]
    captured_atomic: int
    fee_atomic: int
    refunded_atomic: int
    status: str


Approver = Callable[[BuyerAgent, str, bool, str], None]


def default_checkpointer(path: str | Path | None = None) -> Any:
    """A SqliteSaver on `path` (created if need be), by default buyer-checkpoints.sqlite in
    $AGENTMARKET_HOME, where the other parties keep their files."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = Path(path) if path else home() / CHECKPOINTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteSaver(sqlite3.connect(str(path), check_same_thread=False))


def buyer_graph(buyer: BuyerAgent, *, checkpointer: Any = None,
                checkpoint_path: str | Path | None = None,
                on_step: Callable[[str, dict[str, Any]], None] | None = None,
                planner_model: str | None = None, planner_mock_response: str | None = None,
                approver: AgentKey | Approver | None = None,
                check_output: Callable[[dict[str, Any], Any], str] | None = None) -> Any:
    """Compile the buyer workflow for `buyer`, checkpointed by `checkpointer` (default: a
    SqliteSaver at `checkpoint_path`, else buyer-checkpoints.sqlite in $AGENTMARKET_HOME).
    `on_step(node, update)` sees each node's result; `approver` decides an approval at the
    wallet: an operator's `AgentKey` (`agents.approvals.OperatorApprover`), or a callable
    `approver(buyer, approval_id, approve, note)`; None: decided elsewhere (module docstring).
    `check_output(input, output)` is the buyer's own acceptance test (a rule, an LLM judge):
    a non-empty answer is a problem, and problems lead to a dispute where the agreement allows
    one (BUYER_ACCEPTANCE), instead of settling."""
    if isinstance(approver, AgentKey):
        approver = OperatorApprover(approver)
    nodes = _Nodes(buyer, on_step, planner_model, planner_mock_response,
                   approver or decided_elsewhere, check_output)
    graph = StateGraph(TaskState)
    for name in ("plan", "discover", "negotiate", "hire", "approve", "prepare", "call",
                 "verify", "settle", "dispute"):
        graph.add_node(name, getattr(nodes, name))
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "discover")
    graph.add_edge("discover", "negotiate")
    graph.add_edge("negotiate", "hire")
    graph.add_conditional_edges("hire", _after_hire, ["approve", "prepare", END])
    graph.add_conditional_edges("approve", _after_approve, ["hire", END])
    graph.add_conditional_edges("prepare", _after_prepare, ["call", "verify"])
    graph.add_edge("call", "prepare")
    graph.add_conditional_edges("verify", _after_verify, ["settle", "dispute"])
    graph.add_edge("settle", END)
    graph.add_edge("dispute", END)
    if checkpointer is None:
        checkpointer = default_checkpointer(checkpoint_path)
    return graph.compile(checkpointer=checkpointer or None)


def _after_hire(state: TaskState) -> str:
    return {"approval_required": "approve", "active": "prepare"}.get(
        state.get("escrow_state", ""), END)


def _after_approve(state: TaskState) -> str:
    return "hire" if state.get("approval", {}).get("approved") else END


def _after_prepare(state: TaskState) -> str:
    return "call" if state.get("pending_call") else "verify"


def _after_verify(state: TaskState) -> str:
    disputable = state.get("verification") == \
        registry_pb2.VERIFICATION_METHOD_BUYER_ACCEPTANCE
    return "dispute" if disputable and state.get("problems") else "settle"


def decided_elsewhere(buyer: BuyerAgent, approval_id: str, approve: bool, note: str) -> None:
    """No approver: an operator decided at the wallet already; resuming only acts on it."""


class _Nodes:
    def __init__(self, buyer: BuyerAgent, on_step: Callable[[str, dict[str, Any]], None] | None,
                 planner_model: str | None, planner_mock_response: str | None,
                 approver: Approver,
                 check_output: Callable[[dict[str, Any], Any], str] | None) -> None:
        self.check_output = check_output
        self.buyer = buyer
        self.on_step = on_step
        self.planner_model = planner_model
        self.planner_mock_response = planner_mock_response
        self.approver = approver

    def _report(self, step: str, update: dict[str, Any]) -> Any:
        if self.on_step is not None:
            self.on_step(step, update)
        return update

    def _deal(self, state: TaskState) -> Deal:
        return self.buyer.restore_deal(state["deal"])

    def plan(self, state: TaskState) -> dict[str, Any]:
        """Use the given skill and inputs, or ask the planner model to make them from `task`."""
        if state.get("skill") and state.get("inputs"):
            return {}
        if not self.planner_model or not state.get("task"):
            raise InvalidArgument("give skill and inputs, or a task and a planner model")
        from agents.planning import plan_task

        return self._report("plan", plan_task(self.planner_model, state["task"],
                                              mock_response=self.planner_mock_response))

    def discover(self, state: TaskState) -> dict[str, Any]:
        found = self.buyer.discover(state["skill"], currency=state["currency"])
        if not found:
            raise NotFound(f"no seller offers {state['skill']} in {state['currency']}")
        found = found[:max(1, state.get("max_sellers", 3))]
        return self._report("discover", {
            "candidates": [listing.agent_id for listing in found],
            "listings_hex": [listing.SerializeToString().hex() for listing in found]})

    def negotiate(self, state: TaskState) -> dict[str, Any]:
        listings = [registry_pb2.Listing.FromString(bytes.fromhex(h))
                    for h in state["listings_hex"]]
        deal = self.buyer.negotiate_best(
            listings, state["skill"], quantity=len(state["inputs"]), budget=state["budget"],
            currency=state["currency"], max_rounds=state.get("max_rounds", 6),
            verification=state.get("verification") or registry_pb2.VERIFICATION_METHOD_SCHEMA)
        return self._report("negotiate", {
            "deal": deal.state(), "agreement_id": deal.agreement_id,
            "seller_id": deal.body.seller_id,
            "unit_price_atomic": deal.body.terms.unit_price_atomic,
            "max_total_atomic": deal.body.terms.max_total_atomic, "rounds": deal.rounds,
            "verification": deal.body.terms.verification,
            "payment": {"sequence": 0, "index": 0, "charged_atomic": 0},
            "calls": [], "outputs": [], "problems": []})

    def hire(self, state: TaskState) -> dict[str, Any]:
        deal = self._deal(state)
        try:  # the same key before and after an approval: the wallet ties it to the spend
            escrow = self.buyer.hire(deal)
        except ApprovalRequired as needed:
            return self._report("hire", {"escrow_state": "approval_required", "approval": {
                "approval_id": needed.approval_id, "amount_atomic": needed.amount_atomic,
                "amount": _currency(needed.currency).format(needed.amount_atomic),
                "currency": needed.currency, "counterparty": needed.counterparty,
                "reason": needed.message}})
        return self._report("hire", {"escrow_state": ESCROW_STATES.get(escrow.state, "active"),
                                     "captured_atomic": 0, "refunded_atomic": 0})

    def approve(self, state: TaskState) -> dict[str, Any]:
        approval = dict(state["approval"])
        decision = interrupt({"kind": "approval_required", **approval})
        approved = bool(decision.get("approve")) if isinstance(decision, dict) else \
            bool(decision)
        note = str(decision.get("note", "")) if isinstance(decision, dict) else ""
        self.approver(self.buyer, approval["approval_id"], approved, note)
        approval["approved"] = approved
        if approved:
            return self._report("approve", {"approval": approval})
        return self._report("approve", {"approval": approval, "escrow_state": "denied",
                                        "status": "aborted"})

    def prepare(self, state: TaskState) -> dict[str, Any]:
        """Plan the next call's voucher; the checkpoint keeps it before it is sent."""
        done = len(state.get("calls", []))
        if done >= len(state["inputs"]):
            return {"pending_call": None}
        deal = self._deal(state)
        pay = state["payment"]
        session = self.buyer.sessions[deal.agreement_id]
        session.restore(sequence=pay["sequence"], index=pay["index"],
                        charged_atomic=pay["charged_atomic"])  # the state is the truth
        try:
            index = session.plan(deal.call_max_atomic, index=pay["index"],
                                 charged_atomic=pay["charged_atomic"], reserved_atomic=0)
        except BudgetExceeded:
            return {"pending_call": None, "status": "budget_exhausted"}
        return {"pending_call": {"call_id": f"{deal.agreement_id[:24]}:{done}",
                                 "sequence": pay["sequence"] + 1, "index": index,
                                 "input_index": done}}

    def call(self, state: TaskState) -> dict[str, Any]:
        """Send the planned voucher with the planned call id (a rerun sends the same)."""
        deal = self._deal(state)
        pending = state["pending_call"]
        assert pending is not None
        pay = state["payment"]
        record: dict[str, Any] = {"call_id": pending["call_id"], "charged_atomic": 0}
        try:
            result = self.buyer.invoke(deal, state["inputs"][pending["input_index"]],
                                       call_id=pending["call_id"],
                                       voucher_at=(pending["sequence"], pending["index"]))
        except AgentmarketError as error:
            if error.status in RETRYABLE:
                raise  # the seller may not have it yet: resume later sends the same voucher
            record["problem"] = f"{error.status}: {error.message}"
            output: Any = None
        else:
            output = result.output
            problem = result.problem
            if not problem and self.check_output is not None:
                problem = self.check_output(state["inputs"][pending["input_index"]], output)
            record.update(charged_atomic=result.usage.charged_atomic,
                          input_tokens=result.usage.input_tokens,
                          output_tokens=result.usage.output_tokens, units=result.usage.units,
                          problem=problem or "")
        outputs = [*state.get("outputs", []), *([output] if output is not None else [])]
        charged = pay["charged_atomic"] + record["charged_atomic"]
        self.buyer.sessions[deal.agreement_id].restore(
            sequence=pending["sequence"], index=pending["index"], charged_atomic=charged)
        update = {
            "calls": [*state.get("calls", []), record], "outputs": outputs,
            "problems": [*state.get("problems", []),
                         *([record["problem"]] if record.get("problem") else [])],
            "payment": {"sequence": pending["sequence"], "index": pending["index"],
                        "charged_atomic": charged},
            "pending_call": None}
        self._report("call", update)
        return update

    def verify(self, state: TaskState) -> dict[str, Any]:
        return self._report("verify", {"problems": list(state.get("problems", []))})

    def _settled(self, escrow: Escrow, status: str) -> dict[str, Any]:
        return {"escrow_state": ESCROW_STATES.get(escrow.state, "unknown"),
                "captured_atomic": escrow.captured_atomic, "fee_atomic": escrow.fee_atomic,
                "refunded_atomic": escrow.refunded_atomic, "status": status}

    def settle(self, state: TaskState) -> dict[str, Any]:
        deal = self._deal(state)
        escrow = self.buyer.finish(deal, confirm=False)
        if escrow.state in (settlement_pb2.AGREEMENT_STATE_VERIFIED,
                            settlement_pb2.AGREEMENT_STATE_DELIVERED):
            escrow = self.buyer.confirm(deal)  # verified work is paid now, not at release
        status = state.get("status") or "done"
        return self._report("settle", self._settled(escrow, status))

    def dispute(self, state: TaskState) -> dict[str, Any]:
        """Have the seller redeem, then dispute what the marketplace did not already refuse."""
        deal = self._deal(state)
        escrow = self.buyer.finish(deal, confirm=False)
        if escrow.state not in (settlement_pb2.AGREEMENT_STATE_VERIFIED,
                                settlement_pb2.AGREEMENT_STATE_DELIVERED):
            return self._report("dispute", self._settled(escrow, "done"))
        reason = json.dumps(state.get("problems", [])[:10])[:2000]
        return self._report("dispute", self._settled(self.buyer.dispute(deal, reason),
                                                     "disputed"))
