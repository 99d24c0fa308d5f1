"""The gateway's payment-identifier memory (`agents.x402.answers`) on its own: an answer too
large to keep is not kept and wakes whoever waits for it; the running request's payment asking
something else is a conflict, a stranger's other payment under the same id is not held up."""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from types import SimpleNamespace

from starlette.responses import Response

from agents.x402.answers import PER_SESSION_BYTES, Answer, Answers


def _answers() -> Answers:
    session = SimpleNamespace(lock=threading.Lock(), answers=OrderedDict())
    return Answers(SimpleNamespace(sessions={"agreement": session}))  # type: ignore[arg-type]


def test_an_answer_larger_than_a_session_keeps_is_not_kept_and_nothing_breaks():
    answers = _answers()
    small = Answer(b"a", 200, {}, b"x" * 100)
    answers.remember("agreement", "id-1", small)
    answers.remember("agreement", "id-2", Answer(b"b", 200, {}, b"y" * (PER_SESSION_BYTES + 1)))
    assert answers.first("agreement", "id-2", b"b") is None
    assert answers.first("agreement", "id-1", b"a").body == small.body
    answers.remember("agreement", "id-3", Answer(b"c", 200, {}, b"z" * (PER_SESSION_BYTES - 200)))
    assert answers.first("agreement", "id-1", b"a") is None  # the oldest made room
    assert answers.first("agreement", "id-3", b"c") is not None


def test_a_copy_waiting_for_an_answer_too_large_to_keep_runs_again_instead_of_hanging():
    async def main() -> list[int]:
        answers = _answers()
        release = asyncio.Event()
        runs = []

        async def run(finished) -> Response:  # type: ignore[no-untyped-def]
            runs.append(1)
            if len(runs) == 1:
                await release.wait()
                answers.remember("agreement", "id", Answer(
                    b"print", 200, {}, b"e" * (PER_SESSION_BYTES + 1)))
            return Response(b"ok", status_code=200 if len(runs) == 1 else 402)

        first = asyncio.create_task(answers.once("agreement", "id", b"print", run))
        await asyncio.sleep(0)
        copy = asyncio.create_task(answers.once("agreement", "id", b"print", run))
        await asyncio.sleep(0)
        release.set()
        done = await asyncio.wait_for(asyncio.gather(first, copy), timeout=5)
        return [r.status_code for r in done]

    assert asyncio.run(main()) == [200, 402]


def test_the_running_payment_asking_something_else_is_a_conflict_a_strangers_is_not():
    async def main() -> list[int]:
        answers = _answers()
        release = asyncio.Event()

        async def slow(finished) -> Response:  # type: ignore[no-untyped-def]
            await release.wait()
            return Response(b"first")

        async def quick(finished) -> Response:  # type: ignore[no-untyped-def]
            return Response(b"refused", status_code=402)

        first = asyncio.create_task(answers.once("agreement", "id", b"request-1", slow,
                                                 payment_print=b"payment"))
        await asyncio.sleep(0)
        other_request = await answers.once("agreement", "id", b"request-2", quick,
                                           payment_print=b"payment")
        strangers = await answers.once("agreement", "id", b"request-3", quick,
                                       payment_print=b"forged")
        release.set()
        return [(await first).status_code, other_request.status_code, strangers.status_code]

    assert asyncio.run(main()) == [200, 409, 402]
