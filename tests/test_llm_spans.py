"""Each LLM call inside a paid skill is a GenAI span in the seller's trace: model, token usage
from litellm's response, and its cost in exact atomic USD."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm import ModelResponse
from litellm.types.utils import Usage
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from agents import BuyerAgent, SellerAgent, model_price, skill
from agents.llm import complete, text_of
from marketplace.judge import cost_atomic_usd
from marketplace.node import MarketplaceNode
from marketplace.tracing import setup_tracing

MODEL = "gpt-4o-mini"


class Summary(BaseModel):
    summary: str


def _mock(prompt_tokens: int, completion_tokens: int) -> ModelResponse:
    return ModelResponse(model=MODEL, choices=[{"message": {"role": "assistant",
                                                            "content": "short"}}],
                         usage=Usage(prompt_tokens=prompt_tokens,
                                     completion_tokens=completion_tokens,
                                     total_tokens=prompt_tokens + completion_tokens))


def test_an_llm_call_is_a_genai_span_with_usage_and_exact_cost(tmp_path, monkeypatch):
    monkeypatch.delenv("AGENTMARKET_MODEL", raising=False)
    exporter = InMemorySpanExporter()
    seller_provider = setup_tracing("seller", exporters=[exporter], synchronous=True)
    buyer_provider = setup_tracing("buyer", exporters=[exporter], synchronous=True)
    costs: list[int] = []

    @skill(price=model_price(MODEL, "USD", markup_bps=1000), max_input_tokens=1000,
           max_output_tokens=500)
    def summarize(text: str) -> Summary:
        """Summarise with an LLM."""
        reply = complete(MODEL, [{"role": "user", "content": text}], mock_response=_mock(321, 45))
        costs.append(cost_atomic_usd(litellm.completion_cost(completion_response=reply)))
        return Summary(summary=text_of(reply))

    node = MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600).start()
    seller = SellerAgent("llm", skills=[summarize], marketplace=node.address,
                         tracer_provider=seller_provider).serve()
    buyer = BuyerAgent("buyer", marketplace=node.address, tracer_provider=buyer_provider)
    try:
        buyer.fund("1.00", "USD")
        deal = buyer.negotiate(buyer.discover("summarize", currency="USD")[0], "summarize",
                               quantity=2, budget="0.10", currency="USD")
        buyer.hire(deal)
        with trace.get_tracer("test", tracer_provider=buyer_provider).start_as_current_span(
                "task") as root:
            buyer.call(deal, {"text": "a long text"})
    finally:
        buyer.close()
        seller.stop(0)
        node.stop(0)
    spans = [s for s in exporter.get_finished_spans()
             if s.context.trace_id == root.get_span_context().trace_id]
    llm = [s for s in spans if s.name == f"chat {MODEL}"]
    assert len(llm) == 1
    span = llm[0]
    assert span.resource.attributes["service.name"] == "seller"
    assert span.attributes["gen_ai.request.model"] == MODEL
    assert span.attributes["gen_ai.usage.input_tokens"] == 321
    assert span.attributes["gen_ai.usage.output_tokens"] == 45
    assert span.attributes["agentmarket.llm.cost_atomic"] == costs[0] > 0
    skill_span = next(s for s in spans if s.name == "skill.summarize")
    assert span.parent.span_id == skill_span.context.span_id
