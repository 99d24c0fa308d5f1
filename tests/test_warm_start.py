"""A seller loads what its skills need in serve(), so its first paid call does the same work as
its tenth (the figures are benchmarks/warm_start.py's; no timing is asserted here).

Issue 15 finding 5: the first call to an LLM skill on a fresh seller took 3.8 s (over 10 s
under load, past a client's deadline), later ones 6 ms: the first call imported litellm's
provider modules, chose the tokenizer and compiled validators. Here, in a fresh interpreter, the
first paid call after `serve()` imports no module at all; with the warm-up switched off it
imports dozens (so the check can tell).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROGRAM = '''
import json, sys, tempfile
from pydantic import BaseModel
from agents import BuyerAgent, SellerAgent, model_price, per_call, skill
from agents.llm import complete, text_of
from marketplace import MarketplaceNode

loaded = []

class Summary(BaseModel):
    summary: str

@skill(price=model_price("gpt-4o-mini", "USD", markup_bps=2000), max_input_tokens=1000,
       max_output_tokens=100, warm_up=lambda: loaded.append("index"))
def summarize(text: str) -> Summary:
    \"\"\"Summarise.\"\"\"
    reply = complete("gpt-4o-mini", [{"role": "user", "content": text}], mock_response="short")
    return Summary(summary=text_of(reply))

@skill(price=per_call("0.001", "USD"))
def echo(text: str) -> Summary:
    \"\"\"Echo.\"\"\"
    return Summary(summary=text)

def task(buyer, skill_name, first_call_only=False):
    deal = buyer.negotiate(buyer.discover(skill_name, currency="USD"), skill_name,
                           quantity=2, budget="0.1", currency="USD")
    buyer.hire(deal)
    before = set(sys.modules)
    buyer.call(deal, {"text": "a call"})
    new = sorted(set(sys.modules) - before)
    buyer.finish(deal)
    return new

with MarketplaceNode(f"sqlite:///{tempfile.mkdtemp()}/m.db") as node, \\
        BuyerAgent("buyer", marketplace=node.address) as buyer:
    buyer.fund("1.00", "USD")
    with SellerAgent("echo", skills=[echo], marketplace=node.address):
        task(buyer, "echo")  # the buyer's and the framework's first call: not measured
    seller = SellerAgent("llm", skills=[summarize], marketplace=node.address)
    seller.serve(warm=sys.argv[1] == "warm")  # the process's first LLM seller
    new = task(buyer, "summarize")
    seller.stop()
    print(json.dumps({"new_modules": new, "warmed": loaded}))
'''


def _first_call(tmp_path: Path, mode: str) -> dict[str, list[str]]:
    script = tmp_path / "fresh.py"
    script.write_text(PROGRAM)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTMARKET_TRACING": "off"}
    done = subprocess.run([sys.executable, str(script), mode], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.slow
def test_the_first_paid_call_to_a_fresh_llm_seller_loads_nothing(tmp_path: Path):
    warm = _first_call(tmp_path, "warm")
    assert warm["new_modules"] == [], warm["new_modules"]
    assert "index" in warm["warmed"]  # the skill's own warm_up ran before serving
    cold = _first_call(tmp_path, "cold")
    assert len(cold["new_modules"]) > 5, "the check sees what a cold first call loads"
