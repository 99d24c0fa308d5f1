"""A buyer that crashes mid-task resumes from its checkpoint and pays exactly once per call.

The buyer's LangGraph workflow runs against a real marketplace node and a seller billing per
token (so each call costs a different amount and prepayment carries over). The buyer dies right
after the seller charged a call but before the checkpoint recorded it: once by an exception,
once by killing its process. A new BuyerAgent, holding the same key, resumes from the SQLite
checkpoint; the ledger must show each call paid once, to the atomic unit.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from litellm import ModelResponse
from litellm.types.utils import Usage
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, buyer_graph, per_1k_tokens, skill
from agents.llm import complete, text_of
from marketplace.identity import AgentKey
from marketplace.node import MarketplaceNode
from wallets.audit import check_balances, verify_chain
from wallets.currencies import split

MODEL = "gpt-4o-mini"
INPUTS = [{"text": f"document {i}", "tokens": 100 + 37 * i} for i in range(5)]
CRASH_AFTER = 2  # calls the seller has charged when the buyer dies


class Summary(BaseModel):
    summary: str


class Crash(Exception):
    pass


@dataclass
class World:
    node: MarketplaceNode
    seller: SellerAgent
    runs: list[str]
    key: AgentKey
    checkpoint: Path

    def wallet(self, owner: str):
        return self.node.ledger.find_account(owner, "USD")


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.delenv("AGENTMARKET_MODEL", raising=False)
    runs: list[str] = []

    @skill(price=per_1k_tokens("0.0004", "0.0016", "USD"), max_input_tokens=500,
           max_output_tokens=400)
    def summarize(text: str, tokens: int) -> Summary:
        """Summarise (usage varies with the input)."""
        runs.append(text)
        mock = ModelResponse(model=MODEL, choices=[{"message": {"role": "assistant",
                                                                "content": text.upper()}}],
                             usage=Usage(prompt_tokens=tokens, completion_tokens=tokens // 3,
                                         total_tokens=tokens + tokens // 3))
        return Summary(summary=text_of(complete(MODEL, [{"role": "user", "content": text}],
                                                mock_response=mock)))

    node = MarketplaceNode(f"sqlite:///{tmp_path / 'market.db'}", sweep_interval_s=3600).start()
    seller = SellerAgent("summarizer", skills=[summarize], marketplace=node.address).serve()
    key = AgentKey.generate()
    funder = BuyerAgent("buyer", marketplace=node.address, key=key)
    funder.fund("1.00", "USD")
    funder.close()
    yield World(node, seller, runs, key, tmp_path / "buyer-checkpoints.sqlite")
    seller.stop(0)
    node.stop(0)


TASK = {"skill": "summarize", "currency": "USD", "budget": "0.05", "inputs": INPUTS,
        "max_sellers": 1}


def _assert_paid_exactly_once(world: World, state: dict) -> None:
    assert state["status"] == "done", state.get("status")
    assert sorted(world.runs) == sorted(i["text"] for i in INPUTS)  # each call ran once
    _voucher, receipts = world.seller.gate.redeemable(state["agreement_id"])
    assert len(receipts) == len(INPUTS)
    assert len({r.sequence for r in receipts}) == len(INPUTS)
    charged = sum(r.charged_atomic for r in receipts)
    assert charged == sum(c["charged_atomic"] for c in state["calls"])
    assert state["payment"]["charged_atomic"] == charged
    assert state["captured_atomic"] == charged
    seller_part, fee = split(charged, world.node.settlement.fee_bps)
    assert state["fee_atomic"] == fee
    assert world.wallet(world.seller.agent_id).posted_atomic == seller_part
    buyer = world.wallet(world.key.agent_id)
    assert buyer.posted_atomic == 1_000_000_000 - charged
    assert buyer.pending_debits_atomic == 0
    assert sum(b.posted_atomic for b in world.node.ledger.accounts()) == 0
    assert check_balances(world.node.ledger).ok and verify_chain(world.node.ledger).ok


def test_a_buyer_that_raises_mid_task_resumes_and_pays_each_call_once(world: World):
    config = {"configurable": {"thread_id": "task-raise"}}

    def crash(step: str, update: dict) -> None:
        if step == "call" and len(update["calls"]) == CRASH_AFTER:
            raise Crash("the buyer dies after the seller charged, before the checkpoint")

    first = BuyerAgent("buyer", marketplace=world.node.address, key=world.key)
    with pytest.raises(Crash):
        buyer_graph(first, checkpoint_path=world.checkpoint, on_step=crash).invoke(TASK, config)
    first.close()
    assert len(world.runs) == CRASH_AFTER  # the seller did charge the call being made

    second = BuyerAgent("buyer", marketplace=world.node.address, key=world.key)
    graph = buyer_graph(second, checkpoint_path=world.checkpoint)
    saved = graph.get_state(config).values
    assert len(saved["calls"]) == CRASH_AFTER - 1 and saved["pending_call"]
    state = graph.invoke(None, config)
    second.close()
    _assert_paid_exactly_once(world, state)


BUYER_PROCESS = textwrap.dedent("""
    import os, sys
    from agents import BuyerAgent, buyer_graph
    from marketplace.identity import AgentKey

    address, seed, checkpoint, task = sys.argv[1], sys.argv[2], sys.argv[3], eval(sys.argv[4])

    def die(step, update):
        if step == "call" and len(update["calls"]) == int(sys.argv[5]):
            os._exit(9)  # no cleanup, no checkpoint of this call

    buyer = BuyerAgent("buyer", marketplace=address, key=AgentKey.from_seed(bytes.fromhex(seed)))
    buyer_graph(buyer, checkpoint_path=checkpoint, on_step=die).invoke(
        task, {"configurable": {"thread_id": "task-kill"}})
""")


def test_a_killed_buyer_process_resumes_in_a_new_process_and_pays_each_call_once(world: World):
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "AGENTMARKET_TRACING": "off"}
    done = subprocess.run(
        [sys.executable, "-c", BUYER_PROCESS, world.node.address, world.key.seed().hex(),
         str(world.checkpoint), repr(TASK), str(CRASH_AFTER)],
        env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 9, done.stderr[-2000:]
    assert len(world.runs) == CRASH_AFTER

    buyer = BuyerAgent("buyer", marketplace=world.node.address, key=world.key)
    state = buyer_graph(buyer, checkpoint_path=world.checkpoint).invoke(
        None, {"configurable": {"thread_id": "task-kill"}})
    buyer.close()
    _assert_paid_exactly_once(world, state)


def test_a_resumed_call_sends_the_same_voucher_and_reveals_no_new_word(world: World):
    config = {"configurable": {"thread_id": "task-voucher"}}

    def crash(step: str, update: dict) -> None:
        if step == "call" and len(update["calls"]) == 1:
            raise Crash

    first = BuyerAgent("buyer", marketplace=world.node.address, key=world.key)
    with pytest.raises(Crash):
        buyer_graph(first, checkpoint_path=world.checkpoint, on_step=crash).invoke(TASK, config)
    first.close()
    graph = buyer_graph(BuyerAgent("buyer", marketplace=world.node.address, key=world.key),
                        checkpoint_path=world.checkpoint)
    pending = graph.get_state(config).values["pending_call"]
    agreement_id = graph.get_state(config).values["agreement_id"]
    latest, _ = world.seller.gate.redeemable(agreement_id)
    assert (latest.sequence, latest.payword_index) == (pending["sequence"], pending["index"])
    graph.invoke(None, config)
    assert len(world.runs) == len(INPUTS)


def test_the_default_checkpoints_live_in_agentmarket_home(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    """Checkpoints go where the other parties keep their files, not into the current folder."""
    from agents.workflow import CHECKPOINTS_FILE, default_checkpointer

    monkeypatch.setenv("AGENTMARKET_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    saver = default_checkpointer()
    saver.conn.close()
    assert (tmp_path / "home" / CHECKPOINTS_FILE).exists()
    assert not (tmp_path / ".agentmarket").exists()
