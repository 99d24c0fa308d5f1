"""Verification methods at redeem: a registered checker, an LLM judge (litellm, mocked), and a
third-party verifier agent over gRPC that is paid from the escrow in the settling posting.
(Schema and buyer acceptance are in test_settlement_states.py.)"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import Engine

from marketplace.identity import AgentKey
from marketplace.judge import LlmJudge, cost_atomic_usd, parse_score
from marketplace.testing import Harness, make_skill
from marketplace.v1 import agreement_pb2, registry_pb2
from marketplace.verifier_agent import GrpcVerifierClient, VerifierAgent
from wallets.audit import check_balances, verify_chain
from wallets.currencies import split
from wallets.errors import AgentmarketError

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
M = registry_pb2.VerificationMethod
PRICE = 1_000
FUNDS = 1_000_000_000
FEE = 300
OK = {"text": "fine"}


def _verdict(score: str) -> str:
    return json.dumps({"score": float(score), "reason": "looked at it"})


@pytest.fixture
def market(engine: Engine, clock) -> Iterator[Harness]:  # type: ignore[no-untyped-def]
    client = GrpcVerifierClient()
    harness = Harness(engine, clock, judge=LlmJudge(mock_response=_verdict("0.9"),
                                                    allowed_models={"gpt-4o-mini"}),
                      verifier_client=client)
    harness.advertise(make_skill(price_atomic=PRICE))
    harness.fund(harness.buyer, FUNDS)
    yield harness
    harness.close()
    client.close()


def _refused(market: Harness, attempt, status: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    before = market.balances()
    with pytest.raises(AgentmarketError) as caught:
        attempt()
    assert (caught.value.status, caught.value.reason) == (status, reason), caught.value
    assert market.balances() == before


def _books_ok(market: Harness) -> None:
    assert check_balances(market.ledger).ok and verify_chain(market.ledger).ok


# ---- checker ---------------------------------------------------------------------------------


def test_a_registered_checker_decides_each_output(market: Harness):
    market.checkers.register("short", lambda out: len(out["text"]) <= 5)
    market.checkers.register("buggy", lambda out: out["missing"])
    deal = market.deal(method=M.VERIFICATION_METHOD_CHECKER, checker="short")
    market.open(deal)
    escrow = market.redeem(deal, [{"text": "ok"}, {"text": "far too long"}, {"no": "schema"}])
    assert (escrow["verified_outputs"], escrow["failed_outputs"]) == (1, 2)
    assert escrow["state"] == "verified" and escrow["earned_atomic"] == PRICE

    buggy = market.deal(method=M.VERIFICATION_METHOD_CHECKER, checker="buggy")
    market.open(buggy)
    assert market.redeem(buggy, [OK])["state"] == "refunded"  # a raising checker fails it


def test_an_unregistered_checker_is_refused_at_escrow(market: Harness):
    deal = market.deal(method=M.VERIFICATION_METHOD_CHECKER, checker="nobody.knows")
    _refused(market, lambda: market.open(deal), "FAILED_PRECONDITION", "CHECKER_NOT_REGISTERED")


# ---- LLM judge -------------------------------------------------------------------------------


def _judge_terms(threshold: int = 800) -> agreement_pb2.JudgeTerms:
    return agreement_pb2.JudgeTerms(model="gpt-4o-mini", rubric="Each text is polite.",
                                    pass_threshold_permille=threshold)


@pytest.mark.parametrize(("score", "state"), [("0.9", "verified"), ("0.8", "verified"),
                                              ("0.79", "refunded")])
def test_the_judge_passes_or_fails_the_delivery(market: Harness, score: str, state: str):
    market.verification.judge.mock_response = _verdict(score)
    deal = market.deal(method=M.VERIFICATION_METHOD_LLM_JUDGE, judge=_judge_terms(800))
    market.open(deal)
    escrow = market.redeem(deal, [OK, OK, {"bad": 1}])
    assert escrow["state"] == state
    assert escrow["earned_atomic"] == (2 * PRICE if state == "verified" else 0)


def test_an_unusable_judge_answer_changes_nothing_and_can_be_retried(market: Harness):
    deal = market.deal(method=M.VERIFICATION_METHOD_LLM_JUDGE, judge=_judge_terms())
    market.open(deal)
    market.verification.judge.mock_response = "I think it is fine"
    _refused(market, lambda: market.redeem(deal, [OK], key="redeem-judged"), "UNAVAILABLE",
             "JUDGE_UNPARSEABLE")
    assert market.settlement.get(deal.agreement_id)["state"] == "active"
    market.verification.judge.mock_response = _verdict("1")
    assert market.redeem(deal, [OK], key="redeem-judged")["state"] == "verified"


def test_a_model_the_marketplace_does_not_run_is_refused_at_escrow(market: Harness):
    terms = _judge_terms()
    terms.model = "some-expensive-model"
    deal = market.deal(method=M.VERIFICATION_METHOD_LLM_JUDGE, judge=terms)
    _refused(market, lambda: market.open(deal), "FAILED_PRECONDITION", "JUDGE_MODEL_NOT_ALLOWED")


def test_the_judge_records_usage_and_cost_on_its_span():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    judge = LlmJudge(mock_response=_verdict("0.85"), tracer_provider=provider)
    verdict = judge.judge(_judge_terms(), "echo", ['{"text": "hello"}'])
    assert verdict.passed and verdict.score_permille == 850
    [span] = exporter.get_finished_spans()
    assert span.name == "verify.llm_judge"
    assert span.attributes["gen_ai.usage.input_tokens"] == verdict.input_tokens > 0
    assert span.attributes["gen_ai.usage.output_tokens"] == verdict.output_tokens > 0
    assert span.attributes["agentmarket.judge.cost_atomic"] == verdict.cost_atomic > 0
    assert isinstance(span.attributes["agentmarket.judge.cost_atomic"], int)


def test_cost_and_score_conversions_are_exact():
    assert cost_atomic_usd(1.35e-05) == 13_500
    assert cost_atomic_usd(1e-10) == 1  # rounded up: a cost is never under-reported
    assert cost_atomic_usd(0.1) == 100_000_000  # through repr: 0.1, not 0.1000000000000000055
    assert cost_atomic_usd(None) == 0
    assert parse_score('{"score": 0.999, "reason": "r"}') == (999, "r")
    assert parse_score('{"score": 1}')[0] == 1000
    for answer in ('{"score": 1.5}', '{"reason": "no score"}', "[]", '{"score": "high"}'):
        with pytest.raises(AgentmarketError):
            parse_score(answer)


# ---- third-party verifier ------------------------------------------------------------------


def _verifier_terms(verifier: VerifierAgent, fee: int = FEE) -> agreement_pb2.VerifierTerms:
    return agreement_pb2.VerifierTerms(agent_id=verifier.agent_id, endpoint=verifier.endpoint,
                                       fee_atomic=fee, instructions="texts under 6 letters")


@pytest.fixture
def verifier() -> Iterator[VerifierAgent]:
    agent = VerifierAgent(lambda out, receipt, body: (len(out["text"]) < 6, "length")).serve()
    yield agent
    agent.stop(0)


def test_the_verifier_judges_each_receipt_and_is_paid_in_the_same_posting(
        market: Harness, verifier: VerifierAgent):
    deal = market.deal(method=M.VERIFICATION_METHOD_THIRD_PARTY,
                       verifier=_verifier_terms(verifier))
    market.open(deal)
    escrow = market.redeem(deal, [OK, {"text": "much too long"}, OK])
    assert escrow["state"] == "verified" and escrow["earned_atomic"] == 2 * PRICE
    escrow = market.confirm(deal)
    seller_part, fee = split(2 * PRICE, 250)
    assert escrow["fee_atomic"] == fee and escrow["verifier_fee_atomic"] == FEE
    assert escrow["refunded_atomic"] == 5 * PRICE - 2 * PRICE - FEE
    assert market.posted(verifier.agent_id) == FEE
    assert market.posted(market.seller) == seller_part
    [capture] = [p for p in market.ledger.postings(hold_id=escrow["hold_id"])
                 if p.kind == "capture"]
    credited = {leg.account_id for leg in capture.legs if leg.posted_atomic > 0}
    assert len(credited) == 3  # seller, marketplace fee and verifier: one posting
    _books_ok(market)


def test_a_failing_verdict_refunds_the_buyer_less_the_verifiers_fee(
        market: Harness, verifier: VerifierAgent):
    deal = market.deal(method=M.VERIFICATION_METHOD_THIRD_PARTY,
                       verifier=_verifier_terms(verifier))
    market.open(deal)
    escrow = market.redeem(deal, [{"text": "far too long"}])
    assert escrow["state"] == "refunded" and escrow["refunded_atomic"] == 5 * PRICE - FEE
    assert market.posted(verifier.agent_id) == FEE
    assert market.posted(market.buyer) == FUNDS - FEE
    _books_ok(market)


def test_an_unreachable_or_forged_verifier_changes_nothing(market: Harness,
                                                           verifier: VerifierAgent):
    impostor = VerifierAgent(lambda *_: True, key=AgentKey.generate()).serve()
    try:
        terms = _verifier_terms(verifier)
        terms.endpoint = impostor.endpoint  # answers, but signs with another key
        deal = market.deal(method=M.VERIFICATION_METHOD_THIRD_PARTY, verifier=terms)
        market.open(deal)
        _refused(market, lambda: market.redeem(deal, [OK]), "UNAVAILABLE",
                 "VERIFIER_UNAVAILABLE")
    finally:
        impostor.stop(0)
    gone = _verifier_terms(verifier)
    gone.endpoint = "127.0.0.1:1"
    deal = market.deal(method=M.VERIFICATION_METHOD_THIRD_PARTY, verifier=gone)
    market.open(deal)
    _refused(market, lambda: market.redeem(deal, [OK]), "UNAVAILABLE", "VERIFIER_UNAVAILABLE")
    assert market.settlement.get(deal.agreement_id)["state"] == "active"
