"""What the gateway remembers for x402's payment-identifier extension: a retried request gets
the first answer, paid once.

A request is named by its scope (the session's agreement), the identifier's id and the
fingerprint of what it asked (payment payload, resource, arguments). Answers are kept in the
session they were paid under, at most `PER_SESSION` each, so no one evicts another's: a payer
can only crowd out its own. A retry sent while the first request is still running waits for
its answer instead of being refused as a replay of the word the first one spent; only the
exact same request shares a running one, so a stranger who names someone's session and id
(but not its word) neither reads nor holds up its answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.responses import Response, StreamingResponse

from agents.x402._door import problem
from agents.x402.sessions import SessionBook

PER_SESSION = 1_000


@dataclass(frozen=True)
class Answer:
    """A finished request's answer, as sent (a stream: every event of it, in one body)."""

    fingerprint: bytes
    status: int
    headers: dict[str, str]
    body: bytes

    def response(self) -> Response:
        return Response(self.body, status_code=self.status, headers=self.headers)


class Answers:
    """The identifier memory of one gateway (see the module's docstring)."""

    def __init__(self, sessions: SessionBook) -> None:
        self.sessions = sessions
        self._running: dict[tuple[str, str, bytes], asyncio.Future[None]] = {}

    def first(self, scope: str, ident: str, fingerprint: bytes) -> Response | None:
        """The remembered answer of this request; 409 if the id answered another; None."""
        session = self.sessions.sessions.get(scope)
        found = session.answers.get(ident) if session is not None else None
        if found is None:
            return None
        if found.fingerprint != fingerprint:
            return problem(409, "payment_identifier_conflict", "this payment identifier was "
                                                               "used with another payment or "
                                                               "request")
        return found.response()

    def remember(self, scope: str, ident: str, answer: Answer) -> None:
        session = self.sessions.sessions.get(scope)
        if session is None:  # no session (an authorisation, or closed meanwhile): nothing kept
            return
        with session.lock:
            session.answers[ident] = answer
            while len(session.answers) > PER_SESSION:
                session.answers.popitem(last=False)

    async def once(self, scope: str, ident: str, fingerprint: bytes,
                   run: Callable[[Callable[[], None]], Awaitable[Response]]) -> Response:
        """`run(finished)`'s response, or, for a copy of a request still running, its answer
        once remembered (a copy whose first was not remembered runs on its own). `run`
        calls `finished()` once its answer is remembered, or will never be: a streamed
        answer is, after its last event."""
        key = (scope, ident, fingerprint)
        running = self._running.get(key)
        if running is not None:
            await asyncio.shield(running)
            remembered = self.first(scope, ident, fingerprint)
            return remembered if remembered is not None else await run(lambda: None)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running[key] = done

        def finished() -> None:
            if self._running.get(key) is done:
                del self._running[key]
            if not done.done():
                done.set_result(None)

        try:
            response = await run(finished)
        except BaseException:
            finished()
            raise
        if not isinstance(response, StreamingResponse):
            finished()
        return response


__all__ = ["PER_SESSION", "Answer", "Answers"]
