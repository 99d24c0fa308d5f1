"""An LLM judge through litellm: scores a delivery against the agreement's rubric.

One completion per delivery: the rubric, the skill and the outputs (truncated to
`max_input_chars`) go to `terms.judge.model`; the model answers JSON
{"score": 0..1, "reason": "..."}. The delivery passes when floor(score * 1000) reaches
`pass_threshold_permille`; the score is parsed as a Decimal, never a float.

Usage and cost are recorded on the `verify.llm_judge` span: gen_ai.usage.input_tokens and
gen_ai.usage.output_tokens from `response.usage`, and the cost litellm computes
(`litellm.completion_cost`, float USD) converted once into atomic USD:
Decimal(repr(cost)) * 10**9, rounded *up* (ROUND_CEILING) so a cost is never under-reported.
The marketplace bears the judge's cost (it is not charged to the agreement).

An answer that is not such JSON, or a failed call, raises VerifierUnavailable: nothing changes
and the seller may redeem again. litellm is imported on first use (it is slow to import).
Tests pass `mock_response` (litellm's own switch), so no network is used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any

from opentelemetry import trace

from marketplace.errors import FailedPrecondition, VerifierUnavailable
from marketplace.v1 import agreement_pb2
from wallets import attributes as attr
from wallets.currencies import currency

INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
REQUEST_MODEL = "gen_ai.request.model"
COST_ATOMIC = "agentmarket.judge.cost_atomic"
SYSTEM_PROMPT = (
    "You judge work delivered by one AI agent to another. Score how well the outputs satisfy "
    "the rubric, from 0 (not at all) to 1 (fully). Answer with JSON only: "
    '{"score": <number 0..1>, "reason": "<one sentence>"}.')


@dataclass(frozen=True)
class JudgeVerdict:
    score_permille: int
    passed: bool
    reason: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_atomic: int  # atomic USD

    def as_dict(self) -> dict[str, Any]:
        return {"score_permille": self.score_permille, "passed": self.passed,
                "reason": self.reason, "model": self.model, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cost_atomic_usd": self.cost_atomic}


def cost_atomic_usd(cost: float | None) -> int:
    """litellm's float USD cost as atomic USD, rounded up (see the module docstring)."""
    if not cost:
        return 0
    value = Decimal(repr(cost)).scaleb(currency("USD").scale)
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def parse_score(content: str) -> tuple[int, str]:
    """(score per mille, reason) from the judge's JSON answer."""
    try:
        answer = json.loads(content, parse_float=Decimal)
        score = Decimal(str(answer["score"]))
        reason = str(answer.get("reason", ""))[:500]
    except (ValueError, TypeError, KeyError, InvalidOperation, AttributeError):
        raise VerifierUnavailable("the judge's answer is not {\"score\", \"reason\"} JSON",
                                  reason="JUDGE_UNPARSEABLE") from None
    if not Decimal(0) <= score <= Decimal(1):
        raise VerifierUnavailable("the judge's score is outside 0..1", reason="JUDGE_UNPARSEABLE")
    return int((score * 1000).to_integral_value(rounding=ROUND_FLOOR)), reason


class LlmJudge:
    def __init__(self, *, completion: Callable[..., Any] | None = None,
                 mock_response: str | None = None, allowed_models: Collection[str] | None = None,
                 timeout_s: float = 30.0, max_input_chars: int = 32_000,
                 max_output_tokens: int = 200,
                 tracer_provider: trace.TracerProvider | None = None) -> None:
        """`allowed_models`: the models the marketplace pays for (None: any)."""
        self._completion = completion
        self.mock_response = mock_response
        self.allowed_models = set(allowed_models) if allowed_models is not None else None
        self.timeout_s = timeout_s
        self.max_input_chars = max_input_chars
        self.max_output_tokens = max_output_tokens
        self._tracer = trace.get_tracer("agentmarket.judge", tracer_provider=tracer_provider)

    def check(self, judge: agreement_pb2.JudgeTerms) -> None:
        if self.allowed_models is not None and judge.model not in self.allowed_models:
            raise FailedPrecondition(f"this marketplace does not run judge model {judge.model!r}",
                                     reason="JUDGE_MODEL_NOT_ALLOWED")

    def _messages(self, judge: agreement_pb2.JudgeTerms, skill: str,
                  outputs: list[str]) -> list[dict[str, str]]:
        lines, used = [], 0
        for index, output in enumerate(outputs, 1):
            line = f"{index}. {output}"
            if used + len(line) > self.max_input_chars:
                lines.append(f"... ({len(outputs) - index + 1} more outputs not shown)")
                break
            lines.append(line)
            used += len(line)
        user = (f"Skill: {skill}\nRubric: {judge.rubric}\nOutputs ({len(outputs)}):\n"
                + "\n".join(lines))
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    def judge(self, judge: agreement_pb2.JudgeTerms, skill: str,
              outputs: list[str]) -> JudgeVerdict:
        """Ask the model once about all outputs; raise VerifierUnavailable when it cannot say."""
        self.check(judge)
        import litellm

        completion = self._completion or litellm.completion
        kwargs: dict[str, Any] = {"model": judge.model,
                                  "messages": self._messages(judge, skill, outputs),
                                  "timeout": self.timeout_s,
                                  "max_tokens": self.max_output_tokens}
        if self.mock_response is not None:
            kwargs["mock_response"] = self.mock_response
        with self._tracer.start_as_current_span("verify.llm_judge", attributes={
                REQUEST_MODEL: judge.model, "agentmarket.outputs": len(outputs)}) as span:
            try:
                response = completion(**kwargs)
                content = response.choices[0].message.content or ""
            except Exception as error:
                raise VerifierUnavailable(f"the judge model did not answer: "
                                          f"{type(error).__name__}") from None
            usage = getattr(response, "usage", None)
            input_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
            output_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
            try:
                cost = cost_atomic_usd(litellm.completion_cost(completion_response=response))
            except Exception:  # a model without a price in litellm's map
                cost = 0
            span.set_attributes({INPUT_TOKENS: input_tokens, OUTPUT_TOKENS: output_tokens,
                                 COST_ATOMIC: cost, attr.CURRENCY: "USD"})
            score, reason = parse_score(content)
            passed = score >= judge.pass_threshold_permille
            span.set_attributes({"agentmarket.judge.score_permille": score,
                                 "agentmarket.verified": passed})
            return JudgeVerdict(score, passed, reason, judge.model, input_tokens, output_tokens,
                                cost)
