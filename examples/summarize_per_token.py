"""A summarisation seller billed per token, and a research buyer that hires it.

The seller's skill calls an LLM through litellm and charges litellm's model cost plus a 20%
markup, per 1k input and output tokens, for exactly the tokens each call used. The buyer is the
prebuilt LangGraph workflow: it plans the task (an LLM turns it into calls), discovers the
seller, negotiates, puts the maximum in escrow, makes the paid calls (each prepays its maximum;
the unspent rest carries over) and settles: it pays what the tokens cost, the rest comes back.

Offline by default (litellm's mock_response). With AGENTMARKET_MODEL=gpt-4o-mini and
OPENAI_API_KEY set, the same code calls the real model.
"""

import json
import tempfile

from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, buyer_graph, model_price, skill
from agents.llm import complete, default_model, text_of
from marketplace import MarketplaceNode
from wallets import currency

MODEL = default_model()
ABSTRACTS = [
    "PayWord lets a payer authorise many small payments with one signature and a hash chain.",
    "Escrow holds a buyer's money until the work is verified, then pays the seller.",
    "Agents that buy work from each other need payments cheaper than card rails allow.",
]


class Summary(BaseModel):
    summary: str


@skill(price=model_price(MODEL, "USD", markup_bps=2_000), max_input_tokens=1_000,
       max_output_tokens=100)
def summarize(text: str) -> Summary:
    """Summarise a text in one sentence."""
    reply = complete(MODEL, [{"role": "system", "content": "Summarise in one sentence."},
                             {"role": "user", "content": text}],
                     mock_response=f"In short: {text[:48]}")
    return Summary(summary=text_of(reply))


workdir = tempfile.mkdtemp()
with MarketplaceNode(f"sqlite:///{workdir}/market.db") as node:
    seller = SellerAgent("summarizer", skills=[summarize], marketplace=node.address).serve()
    researcher = BuyerAgent("researcher", marketplace=node.address)
    researcher.fund("1.00", "USD")

    plan = json.dumps({"skill": "summarize", "inputs": [{"text": a} for a in ABSTRACTS]})
    graph = buyer_graph(researcher, checkpoint_path=f"{workdir}/checkpoints.sqlite",
                        planner_model=MODEL, planner_mock_response=plan)
    task = "Summarise these abstracts for my report:\n" + "\n".join(ABSTRACTS)
    state = graph.invoke({"task": task, "currency": "USD", "budget": "0.05"},
                         {"configurable": {"thread_id": "report-1"}})

    usd = currency("USD")
    for call, output in zip(state["calls"], state["outputs"], strict=True):
        print(f"{call['input_tokens']:>4} in {call['output_tokens']:>4} out tokens "
              f"{usd.format(call['charged_atomic']):>18}  {output['summary']}")
    print(f"escrow held {usd.format(state['max_total_atomic'])}; seller paid "
          f"{usd.format(state['captured_atomic'])}; "
          f"refunded {usd.format(state['refunded_atomic'])}")
    seller.stop()
    researcher.close()
