"""The skills sandbox sellers serve: per call, per token (an LLM through litellm's offline mock)
and per GPU-second; each seller's honesty and failures decided by a hash, not by luck.

Every output carries `digest`, a hash of the job that only honest work reproduces
(`expected_digest`): a buyer that checks it, and the arbiter, can tell forged output from real
without trusting the seller. Whether a given call fails or is forged is a pure function of the
seed, the seller and the job (`draw`), so a run repeats exactly whatever order the calls land in.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from pydantic import BaseModel

from agents._tokens import count_tokens
from agents.llm import complete
from agents.metering import current_meter
from agents.sandbox.scenario import SellerGroup
from agents.skills import Price, Skill, per_1k_tokens, per_call, per_unit, skill
from wallets.currencies import currency

MODEL = "gpt-4o-mini"
MAX_INPUT_TOKENS = 2_000
MAX_OUTPUT_TOKENS = 200
MAX_GPU_SECONDS = 7_200
GPU_SECONDS_PER_STEP = 12
WORDS = ("agents", "trade", "work", "over", "gRPC", "and", "pay", "per", "call", "while",
         "escrow", "holds", "the", "money", "until", "the", "task", "is", "verified", "and",
         "the", "ledger", "keeps", "every", "currency", "summing", "to", "zero")


class SkillFailure(RuntimeError):
    """A simulated fault inside a seller's skill (the call fails; nothing is charged)."""


class QuietFaults(logging.Filter):
    """Drops the log record of a simulated fault (the gRPC edge logs any failing skill with
    its traceback: thousands of them would bury the progress bar)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SkillFailure))


FAULT_LOGGER = "agentmarket.grpc"


class Answer(BaseModel):
    job: str
    digest: str
    text: str


class Summary(BaseModel):
    job: str
    digest: str
    summary: str


class Training(BaseModel):
    job: str
    digest: str
    gpu_seconds: int


def draw(seed: int, *parts: str) -> float:
    """A number in [0, 1) fixed by the seed and the parts: the same on every run."""
    text = "|".join((str(seed), *parts)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") / 2**64


def expected_digest(job: str) -> str:
    """What honest work on `job` returns."""
    return hashlib.sha256(f"work|{job}".encode()).hexdigest()[:16]


def _forged(job: str) -> str:
    return hashlib.sha256(f"forged|{job}".encode()).hexdigest()[:16]


def document(job: str, words: int) -> str:
    """A deterministic text of `words` words for a job."""
    start = int(hashlib.sha256(job.encode()).hexdigest()[:4], 16)
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(words))


class Behaviour:
    """One seller's conduct: its failure rate, and how often it forges (0: honest)."""

    def __init__(self, seed: int, seller: str, failure_rate: float, forgery_rate: float
                 ) -> None:
        self.seed, self.seller = seed, seller
        self.failure_rate, self.forgery_rate = failure_rate, forgery_rate

    def digest(self, job: str) -> str:
        if draw(self.seed, self.seller, job, "fail") < self.failure_rate:
            raise SkillFailure(f"{self.seller} failed job {job}")
        if draw(self.seed, self.seller, job, "forge") < self.forgery_rate:
            return _forged(job)
        return expected_digest(job)


def _reply(messages: list[dict[str, str]], text: str) -> dict[str, Any]:
    """litellm's offline reply, with usage counted by the model's tokenizer (litellm's mock
    would report the same 10 and 20 tokens for every call)."""
    words = text.split()
    summary = " ".join(words[:8 + len(words) // 8])
    prompt, completion = count_tokens(MODEL, messages=messages), count_tokens(MODEL, summary)
    return {"model": MODEL, "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": summary}}], "usage": {
        "prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion}}


def price_of(group: SellerGroup) -> Price:
    """The group's list price as a skill price."""
    fmt = currency(group.currency)
    amount = fmt.format(group.list_price_atomic).split()[0]
    if group.kind == "token":
        return per_1k_tokens(amount, fmt.format(group.output_price_atomic).split()[0],
                             group.currency)
    if group.kind == "gpu":
        return per_unit(amount, group.currency, "gpu_second")
    return per_call(amount, group.currency)


def make_skill(group: SellerGroup, behaviour: Behaviour) -> Skill:
    """The group's skill, served by one seller with this behaviour."""
    price = price_of(group)
    if group.kind == "token":
        @skill(price=price, name=group.skill, max_input_tokens=MAX_INPUT_TOKENS,
               max_output_tokens=MAX_OUTPUT_TOKENS, model=MODEL)
        def summarize(job: str, text: str) -> Summary:
            """Summarise a text (an LLM through litellm; offline: its mock response)."""
            digest = behaviour.digest(job)
            messages = [{"role": "user", "content": text}]
            reply = complete(MODEL, messages, mock_response=_reply(messages, text))
            return Summary(job=job, digest=digest, summary=reply.choices[0].message.content)

        return summarize  # type: ignore[no-any-return]
    if group.kind == "gpu":
        @skill(price=price, name=group.skill, max_units=MAX_GPU_SECONDS)
        def train(job: str, steps: int) -> Training:
            """Train for `steps` steps, billed per GPU-second used."""
            digest = behaviour.digest(job)
            seconds = min(steps * GPU_SECONDS_PER_STEP, MAX_GPU_SECONDS)
            current_meter().add_units(seconds)
            return Training(job=job, digest=digest, gpu_seconds=seconds)

        return train  # type: ignore[no-any-return]

    @skill(price=price, name=group.skill)
    def answer(job: str, text: str) -> Answer:
        """Answer a request, billed per call."""
        return Answer(job=job, digest=behaviour.digest(job), text=text[:40])

    return answer  # type: ignore[no-any-return]


def arguments(kind: str, job: str, size: int) -> dict[str, Any]:
    """A call's arguments for a skill of this kind; `size` (1..100) scales the work."""
    if kind == "gpu":
        return {"job": job, "steps": 5 + size * 3}
    if kind == "token":
        return {"job": job, "text": document(job, 40 + size * 6)}
    return {"job": job, "text": document(job, 8)}


def forged(output: dict[str, Any]) -> bool:
    """Whether an output's digest is not what honest work on its job gives."""
    return output.get("digest") != expected_digest(str(output.get("job", "")))
