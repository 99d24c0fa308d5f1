"""What the gateway remembers for x402's payment-identifier extension: a retried request gets
the first answer, paid once.

A request is named by its scope (the session's agreement), the identifier's id and the
fingerprint of what it asked (payment payload, resource, arguments). Answers are kept in the
session they were paid under, at most `PER_SESSION` (and `PER_SESSION_BYTES`) each, so no one
evicts another's: a payer crowds out its own. Past `TOTAL_BYTES` in all, the session holding
the most gives up its oldest, so a flood spread over many sessions costs its sender first.

A retry sent while the first request is still running waits for its answer instead of being
refused as a replay of the word the first one spent; only the exact same request shares a
running one, so a stranger who names someone's session and id (but not its word) neither
reads nor holds up its answer. The same payment with other arguments or for another resource
while the first runs is the conflict it would be after (409): only whoever holds that payment
can send it. An answer larger than `PER_SESSION_BYTES` by itself is not kept (a retry of it
runs again, and is refused as a replay of its word).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response, StreamingResponse

from agents.x402._door import problem
from agents.x402.sessions import SessionBook

PER_SESSION = 1_000  # answers
PER_SESSION_BYTES = 1 << 20
TOTAL_BYTES = 256 << 20  # past it, the session holding the most gives up its oldest


@dataclass(frozen=True)
class Answer:
    """A finished request's answer, as sent (a stream: every event of it, in one body)."""

    fingerprint: bytes
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers.items()) + 64

    def response(self) -> Response:
        return Response(self.body, status_code=self.status, headers=self.headers)


class Answers:
    """The identifier memory of one gateway (see the module's docstring)."""

    def __init__(self, sessions: SessionBook) -> None:
        self.sessions = sessions
        self._running: dict[tuple[str, str, bytes], asyncio.Future[None]] = {}
        # (scope, id) of each running request -> (its payment's print, its fingerprint)
        self._running_prints: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self._held: dict[str, int] = {}  # bytes of remembered answers per session
        self._total = 0

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
        if session is None or answer.size > PER_SESSION_BYTES:  # no session (an authorisation,
            return  # or closed meanwhile), or an answer past what a session keeps: not kept
        with session.lock:
            replaced = session.answers.pop(ident, None)
            if replaced is not None:
                self._held[scope] -= replaced.size
                self._total -= replaced.size
            session.answers[ident] = answer
            self._held[scope] = self._held.get(scope, 0) + answer.size
            self._total += answer.size
            while session.answers and (len(session.answers) > PER_SESSION
                                       or self._held.get(scope, 0) > PER_SESSION_BYTES):
                self._forget_oldest(scope, session)
        while self._total > TOTAL_BYTES:  # the biggest holder gives way: a flood its own
            biggest = max(self._held, key=self._held.__getitem__)
            held = self.sessions.sessions.get(biggest)
            if held is None or not held.answers:  # forgotten with its session
                self._total -= self._held.pop(biggest)
                continue
            with held.lock:
                self._forget_oldest(biggest, held)

    def _forget_oldest(self, scope: str, session: Any) -> None:
        _, oldest = session.answers.popitem(last=False)
        self._held[scope] -= oldest.size
        self._total -= oldest.size
        if not session.answers:
            del self._held[scope]

    async def once(self, scope: str, ident: str, fingerprint: bytes,
                   run: Callable[[Callable[[], None]], Awaitable[Response]], *,
                   payment_print: bytes = b"") -> Response:
        """`run(finished)`'s response, or, for a copy of a request still running, its answer
        once remembered (a copy whose first was not remembered runs on its own); 409 for the
        running request's payment (`payment_print`) asking something else. `run` calls
        `finished()` once its answer is remembered, or will never be: a streamed answer is,
        after its last event."""
        key = (scope, ident, fingerprint)
        running = self._running.get(key)
        if running is not None:
            await asyncio.shield(running)
            remembered = self.first(scope, ident, fingerprint)
            return remembered if remembered is not None else await run(lambda: None)
        other = self._running_prints.get((scope, ident))
        if payment_print and other is not None and other[0] == payment_print:
            return problem(409, "payment_identifier_conflict", "this payment identifier is "
                                                               "in use with this payment for "
                                                               "another request")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running[key] = done
        self._running_prints.setdefault((scope, ident), (payment_print, fingerprint))

        def finished() -> None:
            if self._running.get(key) is done:
                del self._running[key]
                if self._running_prints.get((scope, ident), (b"", b""))[1] == fingerprint:
                    del self._running_prints[(scope, ident)]
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
