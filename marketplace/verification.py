"""Verification of delivered work, by the method the agreement names.

Every method starts from the same checked receipts (seller-signed, hash of the output, charge
equal to the terms' price of the metered usage) and the skill's output JSON schema: an output
that does not match it is never paid. Then, for the outputs that do:

    SCHEMA             nothing more
    CHECKER            the named checker (marketplace.checkers) must return True, per output
    LLM_JUDGE          one judge call for the whole delivery (marketplace.judge): all pass or
                       none do
    THIRD_PARTY        the verifier agent in the terms judges each receipt over gRPC
                       (VerifierService.Verify) and signs its verdicts; its fee is owed once it
                       has answered
    BUYER_ACCEPTANCE   nothing more here: the buyer accepts (Confirm) or stays silent until the
                       dispute window closes; a dispute is its rejection

The results become the delivery's evidence (`Outcome.details`), kept for disputes. External
calls (judge, verifier) happen before any database transaction; when they fail, the redeem fails
with UNAVAILABLE and changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jsonschema import ValidationError
from opentelemetry import trace

from marketplace import agreements as ag
from marketplace.checkers import CheckerRegistry
from marketplace.errors import FailedPrecondition, VerifierUnavailable
from marketplace.grpc_tracing import span_if_active
from marketplace.identity import verify
from marketplace.judge import LlmJudge
from marketplace.schema_validators import validator_of_json
from marketplace.v1 import agreement_pb2, registry_pb2, verifier_pb2
from wallets import attributes as attr

METHOD_NAMES = {registry_pb2.VERIFICATION_METHOD_SCHEMA: "schema",
                registry_pb2.VERIFICATION_METHOD_CHECKER: "checker",
                registry_pb2.VERIFICATION_METHOD_LLM_JUDGE: "llm_judge",
                registry_pb2.VERIFICATION_METHOD_BUYER_ACCEPTANCE: "buyer_acceptance",
                registry_pb2.VERIFICATION_METHOD_THIRD_PARTY: "third_party"}
VERIFY_TIMEOUT_S = 10.0
# (endpoint, request, timeout_s) -> response; raises VerifierUnavailable when it cannot answer.
VerifierClient = Callable[[str, verifier_pb2.VerifyRequest, float], verifier_pb2.VerifyResponse]


@dataclass
class ReceiptResult:
    sequence: int
    charged_atomic: int
    passed: bool
    reason: str = ""


@dataclass
class Outcome:
    """What verification found: per receipt, and the method's own details."""

    method: str
    results: list[ReceiptResult]
    details: dict[str, Any] = field(default_factory=dict)
    verifier_consulted: bool = False

    @property
    def passed_atomic(self) -> int:
        return sum(r.charged_atomic for r in self.results if r.passed)

    @property
    def verified(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.verified

    def to_json(self) -> str:
        return json.dumps({"method": self.method, "details": self.details,
                           "receipts": [r.__dict__ for r in self.results]}, sort_keys=True)


def _schema_results(schema_json: str, receipts: list[agreement_pb2.Receipt]
                    ) -> tuple[list[ReceiptResult], list[Any]]:
    validator = validator_of_json(schema_json)  # compiled once: a redeem checks hundreds
    results, values = [], []
    for receipt in receipts:
        try:
            value = json.loads(receipt.output_json)
            validator.validate(value)
        except (ValueError, RecursionError):
            results.append(ReceiptResult(receipt.sequence, receipt.charged_atomic, False,
                                         "output is not JSON"))
        except ValidationError as error:
            results.append(ReceiptResult(receipt.sequence, receipt.charged_atomic, False,
                                         f"output schema: {error.message[:200]}"))
        else:
            results.append(ReceiptResult(receipt.sequence, receipt.charged_atomic, True))
        values.append(None if not results[-1].passed else value)
    return results, values


class Verification:
    def __init__(self, *, checkers: CheckerRegistry | None = None, judge: LlmJudge | None = None,
                 verifier_client: VerifierClient | None = None,
                 tracer_provider: trace.TracerProvider | None = None) -> None:
        self.checkers = checkers or CheckerRegistry()
        self.judge = judge or LlmJudge(tracer_provider=tracer_provider)
        self.verifier_client = verifier_client
        self._tracer = trace.get_tracer("agentmarket.verification",
                                        tracer_provider=tracer_provider)
        self._tracer_provider = tracer_provider

    def check_terms(self, terms: agreement_pb2.Terms) -> None:
        """Can this node verify these terms? (At OpenEscrow, before money is held.)"""
        if terms.verification == registry_pb2.VERIFICATION_METHOD_CHECKER:
            self.checkers.get(terms.checker)
        elif terms.verification == registry_pb2.VERIFICATION_METHOD_LLM_JUDGE:
            self.judge.check(terms.judge)
        elif terms.verification == registry_pb2.VERIFICATION_METHOD_THIRD_PARTY \
                and self.verifier_client is None:
            raise FailedPrecondition("this marketplace cannot call third-party verifiers",
                                     reason="NO_VERIFIER_CLIENT")

    def verify(self, agreement: str, signed: agreement_pb2.SignedAgreement,
               terms: agreement_pb2.Terms, schema_json: str,
               receipts: list[agreement_pb2.Receipt]) -> Outcome:
        method = METHOD_NAMES.get(terms.verification, "schema")
        with span_if_active(self._tracer, self._tracer_provider, f"verify.{method}", lambda: {
                attr.AGREEMENT_ID: agreement, "agentmarket.outputs": len(receipts)}) as span:
            results, values = _schema_results(schema_json, receipts)
            outcome = Outcome(method, results)
            passing = [i for i, r in enumerate(results) if r.passed]
            if terms.verification == registry_pb2.VERIFICATION_METHOD_CHECKER:
                for i in passing:
                    ok, why = self.checkers.run(terms.checker, values[i])
                    results[i].passed, results[i].reason = ok, why
                outcome.details = {"checker": terms.checker}
            elif terms.verification == registry_pb2.VERIFICATION_METHOD_LLM_JUDGE and passing:
                verdict = self.judge.judge(terms.judge, terms.skill,
                                           [receipts[i].output_json for i in passing])
                for i in passing:
                    results[i].passed = verdict.passed
                    results[i].reason = "" if verdict.passed else "judge: below threshold"
                outcome.details = {"judge": verdict.as_dict()}
            elif terms.verification == registry_pb2.VERIFICATION_METHOD_THIRD_PARTY and passing:
                self._third_party(agreement, signed, terms, schema_json,
                                  [receipts[i] for i in passing], [results[i] for i in passing],
                                  outcome)
            span.set_attributes({"agentmarket.verified_outputs": outcome.verified,
                                 "agentmarket.failed_outputs": outcome.failed})
            return outcome

    def _third_party(self, agreement: str, signed: agreement_pb2.SignedAgreement,
                     terms: agreement_pb2.Terms, schema_json: str,
                     receipts: list[agreement_pb2.Receipt], results: list[ReceiptResult],
                     outcome: Outcome) -> None:
        if self.verifier_client is None:
            raise VerifierUnavailable("this marketplace cannot call third-party verifiers")
        digest = ag.receipts_digest(receipts)
        request = verifier_pb2.VerifyRequest(
            idempotency_key=f"verify:{agreement}:{digest[:32]}", agreement_id=agreement,
            agreement=signed, receipts=receipts, output_schema_json=schema_json)
        verifier = terms.verifier
        response = self.verifier_client(verifier.endpoint, request, VERIFY_TIMEOUT_S)
        verdicts = list(response.verdicts)
        if (response.agreement_id != agreement
                or [v.sequence for v in verdicts] != [r.sequence for r in receipts]):
            raise VerifierUnavailable("the verifier's answer does not match the receipts")
        if not verify(verifier.agent_id, ag.verdict_message(agreement, receipts, verdicts),
                      response.verifier_signature):
            raise VerifierUnavailable("the verifier's verdict is not signed by its key")
        for result, verdict in zip(results, verdicts, strict=True):
            result.passed = verdict.passed
            result.reason = verdict.reason[:500]
        outcome.verifier_consulted = True
        outcome.details = {"verifier": {
            "agent_id": verifier.agent_id, "fee_atomic": verifier.fee_atomic,
            "verdicts": [{"sequence": v.sequence, "passed": v.passed, "reason": v.reason[:500]}
                         for v in verdicts],
            "signature": response.verifier_signature.hex()}}
