"""A session's later calls at the gateway (`agents.x402.session_calls`): paid in a few hashes,
answered with a PAYMENT-RESPONSE whose receipt is chained to the session's earlier ones and
vouched for by the node's next signature (one in 16, and at close), and
every attack on a word refused with its x402 reason, nothing charged: a replayed word, a word
of another session, a word past the agreement's chain, the same word sent many times at once
(exactly one call is served and charged).

Real parts: a node (SQLite file), a seller agent, the gateway on uvicorn, x402's own client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from x402.extensions.payment_identifier import PAYMENT_IDENTIFIER
from x402.http.clients.httpx import x402AsyncTransport
from x402.http.utils import (
    decode_payment_required_header,
    decode_payment_response_header,
    decode_payment_signature_header,
    encode_payment_signature_header,
)
from x402.schemas import PaymentPayload

from agents.x402 import buyer_client, http_client, receipts
from agents.x402.prepay import PrepayTransport, tls_context
from marketplace.v1 import agreement_pb2
from tests.x402_market import Market, books_balance, open_market


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Iterator[Market]:
    yield from open_market(tmp_path_factory.mktemp("x402-sessions"))


@pytest.fixture(autouse=True)
def balanced_books(market) -> Iterator[None]:
    yield
    books_balance(market.node)


class Session:
    """A session opened at the gateway by x402's client; `next()` is its next voucher."""

    def __init__(self, market: Market, calls: int = 5) -> None:
        self.market = market
        unpaid = httpx.post(market.url("shout"), json={"text": "hi"})
        self.required = decode_payment_required_header(unpaid.headers["payment-required"])
        self.client, self.schemes = buyer_client(market.key, market.network,
                                                 calls_per_session=calls)
        opened = send(market, encode_payment_signature_header(self.next()))
        assert opened.status_code == 200, opened.text
        self.agreement = decode_payment_response_header(
            opened.headers["payment-response"]).extra["agreementId"]

    def next(self) -> PaymentPayload:
        return asyncio.run(self.client.create_payment_payload(self.required))

    def state(self) -> tuple[int, int, int]:
        """(calls, last word, charged) of the gateway's session, and the ledger's postings."""
        found = self.market.gateway.sessions.sessions[self.agreement]
        return found.calls, found.last_index, found.charged_atomic

    def close(self) -> dict[str, Any]:
        closed = httpx.post(f"{self.market.http.url}/v1/sessions/{self.agreement}/close",
                            json={"finish": self.schemes["exact"].finish_signature(
                                self.agreement)})
        assert closed.status_code == 200, closed.text
        return closed.json()


def send(market: Market, header: str) -> httpx.Response:
    return httpx.post(market.url("shout"), json={"text": "hi"},
                      headers={"PAYMENT-SIGNATURE": header})


def reason(response: httpx.Response) -> str:
    return decode_payment_required_header(response.headers["payment-required"]).error or ""


def postings(market: Market) -> int:
    return len(market.node.ledger.postings(limit=100_000))


def with_voucher(payload: PaymentPayload, voucher: agreement_pb2.Voucher) -> str:
    forged = {**payload.payload, "agreementId": voucher.agreement_id,
              "voucher": base64.b64encode(voucher.SerializeToString()).decode()}
    return encode_payment_signature_header(payload.model_copy(update={"payload": forged}))


def voucher(payload: PaymentPayload) -> agreement_pb2.Voucher:
    return agreement_pb2.Voucher.FromString(base64.b64decode(payload.payload["voucher"]))


def test_later_calls_are_paid_in_the_fast_path_with_chained_receipts_the_node_signs(market):
    calls = receipts.SIGN_EVERY + 3

    async def run() -> tuple[list[httpx.Response], httpx.Response]:
        client, schemes = http_client(market.key, market.network, calls_per_session=calls)
        async with client:
            answers = [await client.post(market.url("shout"), json={"text": f"hi {n}"})
                       for n in range(calls)]
            agreement = schemes["exact"].open_sessions()[0]
            closed = await client.post(
                f"{market.http.url}/v1/sessions/{agreement}/close",
                json={"finish": schemes["exact"].finish_signature(agreement)})
            return answers, closed

    before = market.gateway.session_calls.answered
    answers, closed = asyncio.run(run())
    assert [a.json()["output"]["text"] for a in answers] == [f"HI {n}" for n in range(calls)]
    assert market.gateway.session_calls.answered - before == calls - 1  # all but the opening
    paid = [decode_payment_response_header(a.headers["payment-response"]) for a in answers]
    assert [p.extra["calls"] for p in paid] == list(range(1, calls + 1))
    node = market.node.agent_id
    opening = paid[0].extra["receipt"]  # the full path's: signed, outside the chain
    assert receipts.vouched(node, [opening]) and "seq" not in opening["body"]
    chain = [p.extra["receipt"] for p in paid[1:]]
    for settled, receipt in zip(paid[1:], chain, strict=True):
        assert receipt["node"] == node
        assert receipt["body"]["amount"] == settled.amount == "2000000"
        assert receipt["body"]["transaction"] == settled.transaction \
            == settled.extra["holdPosting"]
    assert [r["body"]["seq"] for r in chain] == list(range(1, calls))
    assert chain[0]["body"]["prev"] == receipts.CHAIN_START
    signed = [r["body"]["seq"] for r in chain if "signature" in r]
    assert signed == [1, receipts.SIGN_EVERY]
    assert receipts.vouched(node, chain[:1])
    assert receipts.vouched(node, chain[:receipts.SIGN_EVERY])  # the 16th vouches for all
    assert not receipts.vouched(node, chain[1:3])  # unsigned, and no closing head yet
    tampered = [dict(r, body=dict(r["body"])) for r in chain[:receipts.SIGN_EVERY]]
    tampered[4]["body"]["amount"] = "1"
    assert not receipts.vouched(node, tampered)
    # the closing answer is signed and names the chain's head: it vouches for the rest
    final = decode_payment_response_header(closed.headers["payment-response"])
    assert receipts.vouched(node, [final.extra["receipt"]])
    head = (final.extra["receipt"]["body"]["chainSeq"],
            final.extra["receipt"]["body"]["chainHead"])
    assert head[0] == calls - 1
    assert receipts.vouched(node, chain[receipts.SIGN_EVERY - 1:], head)
    assert not receipts.vouched(node, chain[receipts.SIGN_EVERY - 1:-1], head)


def test_the_clients_session_books_what_each_answer_charged(market):
    """A 200 to an `exact` voucher costs its price (the payload booked it so); a refused call
    gives its reserve back and a metered call books what it was charged (both read from
    PAYMENT-RESPONSE): the session's books and the close's capture agree."""

    async def run(skill_name: str, bodies: list[dict[str, Any]]) -> tuple[list[int], Any]:
        client, schemes = http_client(market.key, market.network, calls_per_session=10)
        async with client:
            answers = [await client.post(market.url(skill_name), json=body) for body in bodies]
            scheme = schemes["exact" if skill_name == "shout" else "upto"]
            agreement = scheme.open_sessions()[0]
            payment = next(iter(scheme.sessions.values())).payment
            booked = payment.charged_atomic, payment.reserved_atomic
            closed = await client.post(f"{market.http.url}/v1/sessions/{agreement}/close",
                                       json={"finish": scheme.finish_signature(agreement)})
        return [a.status_code for a in answers], (booked, closed.json()["captured"])

    statuses, (booked, captured) = asyncio.run(run("shout", [
        {"text": "a"}, {"text": "b"}, {"text": 5}, {"text": "c"}]))
    assert statuses == [200, 200, 400, 200]
    assert booked == (6_000_000, 0) and captured == "6000000"
    statuses, (booked, captured) = asyncio.run(run("count_words", [
        {"text": "one"}, {"text": "two words"}, {"text": "and three words"}]))
    assert statuses == [200, 200, 200]
    assert booked == (6_000_000, 0) and captured == "6000000"  # 6 words at 0.001


def test_a_receipts_signed_bytes_are_the_canonical_json_of_its_body():
    """`net.canonical` (orjson where it can) writes the standard library's RFC 8785 bytes,
    escapes and key order included, and a receipt's signed bytes are those."""
    from agents.x402 import network as net

    bodies = [{"amount": "2000000", "payer": "ab" * 32, "seq": 7, "issuedAtMs": 1796655733707},
              {"k\u2028": "x\x00\x1f\"\\\u00e9\U0001f600", "\uffff": 1, "\ue000": -2},
              {"big": 2**64 + 1}, {"float": 0.1}, {"nan": float("nan")},
              {"nested": {"b": 1, "a": [True, None]}}]
    for body in bodies:
        reference = json.dumps(body, sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False).encode()
        assert net.canonical(body) == reference
        assert receipts.signed_bytes(body) == net.RESPONSE_DOMAIN + reference


class Recording(httpx.AsyncHTTPTransport):
    """The real transport, keeping each request's PAYMENT-SIGNATURE."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(request.headers.get("payment-signature", ""))
        return await super().handle_async_request(request)


def test_the_clients_repeated_payment_is_what_x402s_client_makes(market):
    """The prepaying transport repeats x402's selected requirement: every header decodes with
    x402's own code and differs from the one x402's client made in the payload, and in
    leaving out what tells the gateway nothing: the optional `resource` and the echo of its
    payment-identifier declaration with no id."""
    recording = Recording()

    async def run() -> None:
        client, schemes = buyer_client(market.key, market.network, calls_per_session=10)
        transport = x402AsyncTransport(client, transport=PrepayTransport(
            client, schemes, inner=recording))
        async with httpx.AsyncClient(transport=transport) as http:
            for _ in range(4):
                assert (await http.post(market.url("shout"), json={"text": "x"})
                        ).status_code == 200

    asyncio.run(run())
    paid = [decode_payment_signature_header(h) for h in recording.headers if h]
    assert [p.payload["kind"] for p in paid] == ["open", "voucher", "voucher", "voucher"]
    by_x402, *repeated = (p.model_dump(exclude={"payload"}) for p in paid[1:])
    assert by_x402["resource"] is not None and "id" not in by_x402["extensions"][
        PAYMENT_IDENTIFIER]["info"]
    assert repeated == [{**by_x402, "resource": None, "extensions": None}] * 2


def test_a_replayed_word_is_refused_and_charges_nothing(market):
    session = Session(market)
    second = encode_payment_signature_header(session.next())
    assert send(market, second).status_code == 200
    before, ledger = session.state(), postings(market)
    replay = send(market, second)
    assert (replay.status_code, reason(replay)) == (402, "payload_replayed")
    assert session.state() == before and postings(market) == ledger
    assert session.close()["captured"] == "4000000"  # the open and the second call


@pytest.mark.parametrize("phase", [None, "after-handler", "before-handler"])
def test_a_stranger_cannot_settle_a_session_at_the_public_facilitator(market, phase):
    """The HTTP facilitator is for third parties' authorisations: a session's payload posted
    there (an onlooker who knows the agreement id, a seller that saw a word) is refused, so
    it can neither charge the session nor spend its words, and the buyer's calls go on."""
    session = Session(market)
    stolen = session.next()  # the buyer's next payment, seen before the buyer sends it
    payload = dict(stolen.payload, **({"phase": phase} if phase else {}))
    requirements = stolen.accepted.model_dump(by_alias=True, exclude_none=True)
    body = {"x402Version": 2, "paymentRequirements": dict(requirements, amount=str(10**15)),
            "paymentPayload": {**json.loads(stolen.model_dump_json(by_alias=True,
                                                                   exclude_none=True)),
                               "payload": payload}}
    before, ledger = session.state(), postings(market)
    verified = httpx.post(f"{market.http.url}/facilitator/verify", json=body).json()
    assert verified["isValid"] is False, verified
    settled = httpx.post(f"{market.http.url}/facilitator/settle", json=body).json()
    assert (settled["success"], settled["errorReason"]) == (False, "unsupported_payload_type")
    assert session.state() == before and postings(market) == ledger
    assert send(market, encode_payment_signature_header(stolen)).status_code == 200
    assert session.close()["captured"] == "4000000"  # the open and the buyer's call


def test_a_later_voucher_of_another_x402_version_is_refused_and_charges_nothing(market):
    """The fast path reads x402Version as the full path does: the integer 2 only."""
    session = Session(market)
    data = json.loads(base64.b64decode(encode_payment_signature_header(session.next())))
    data["x402Version"] = 2.0
    before, ledger = session.state(), postings(market)
    refused = send(market, base64.b64encode(json.dumps(data).encode()).decode())
    assert (refused.status_code, refused.json()["error"]) == (400, "malformed_payment_header")
    assert session.state() == before and postings(market) == ledger
    session.close()


def test_a_word_of_another_session_is_refused(market):
    mine, other = Session(market), Session(market)
    theirs = voucher(other.next())
    theirs.agreement_id = mine.agreement  # their next word, relabelled as mine
    before, ledger = mine.state(), postings(market)
    refused = send(market, with_voucher(mine.next(), theirs))
    assert (refused.status_code, reason(refused)) == (402, "invalid_signature")
    assert mine.state() == before and postings(market) == ledger
    mine.close()
    other.close()


def test_a_word_past_the_authorisation_is_refused(market):
    session = Session(market, calls=3)
    payload = session.next()
    beyond = voucher(payload)
    body = market.gateway.sessions.sessions[session.agreement].body
    beyond.payword_index = body.payword_length + 1  # past the chain the buyer signed
    beyond.cumulative_atomic = beyond.payword_index * body.link_value_atomic
    before, ledger = session.state(), postings(market)
    refused = send(market, with_voucher(payload, beyond))
    assert (refused.status_code, reason(refused)) == (402, "invalid_signature")
    guessed = voucher(payload)
    guessed.payword_index += 1  # a later index with this word: not on the chain there
    refused = send(market, with_voucher(payload, guessed))
    assert (refused.status_code, reason(refused)) == (402, "invalid_signature")
    assert session.state() == before and postings(market) == ledger
    assert send(market, encode_payment_signature_header(payload)).status_code == 200
    assert session.close()["captured"] == "4000000"


def test_a_word_far_ahead_is_refused_before_any_hashing(market, monkeypatch):
    """A voucher may make the gateway hash at most CHEAP_CHECK_HASHES words: a forged one
    far along a long chain (anyone who knows the agreement id can send it) is refused before
    a hash, so it cannot stall the session's lock or the gateway's event loop."""
    from agents.x402 import sessions as session_book
    from marketplace.payword import CHEAP_CHECK_HASHES

    session = Session(market, calls=CHEAP_CHECK_HASHES + 40)
    payload = session.next()
    far = voucher(payload)
    far.payword_index += CHEAP_CHECK_HASHES + 10  # on the chain, but far ahead
    far.cumulative_atomic = far.payword_index * \
        market.gateway.sessions.sessions[session.agreement].body.link_value_atomic
    hashed: list[int] = []
    checked = session_book.verify_word
    monkeypatch.setattr(session_book, "verify_word", lambda word, index, anchor, at: (
        hashed.append(index - at), checked(word, index, anchor, at))[1])
    before, ledger = session.state(), postings(market)
    refused = send(market, with_voucher(payload, far))
    assert (refused.status_code, reason(refused)) == (402, "invalid_amount")
    assert hashed == [] and session.state() == before and postings(market) == ledger
    assert send(market, encode_payment_signature_header(payload)).status_code == 200
    assert hashed == [1]
    session.close()


def test_the_same_word_sent_at_once_is_served_and_charged_once(market):
    session = Session(market)
    header = encode_payment_signature_header(session.next())
    calls, _, charged = session.state()

    async def race() -> list[httpx.Response]:
        async with httpx.AsyncClient() as client:
            return list(await asyncio.gather(*(
                client.post(market.url("shout"), json={"text": "hi"},
                            headers={"PAYMENT-SIGNATURE": header}) for _ in range(12))))

    answers = asyncio.run(race())
    served = [a for a in answers if a.status_code == 200]
    assert len(served) == 1
    assert {(a.status_code, reason(a)) for a in answers if a.status_code != 200} \
        == {(402, "payload_replayed")}
    assert session.state()[0] == calls + 1 and session.state()[2] == charged + 2_000_000
    assert session.close()["captured"] == "4000000"


def test_a_payment_identifier_or_a_changed_requirement_takes_the_full_path(market):
    session = Session(market)
    payload = session.next()
    edited = json.loads(base64.b64decode(encode_payment_signature_header(payload)))
    edited["accepted"]["extra"]["skill"] = "whisper"
    before = market.gateway.session_calls.answered
    refused = send(market, base64.b64encode(json.dumps(edited).encode()).decode())
    assert (refused.status_code, reason(refused)) == (402, "invalid_resource")
    assert send(market, encode_payment_signature_header(payload)).status_code == 200
    assert market.gateway.session_calls.answered == before + 1
    session.close()


def test_a_close_in_flight_holds_up_no_voucher_and_a_second_close_is_told_to_retry(market):
    session = Session(market, calls=5)
    found = market.gateway.sessions.sessions[session.agreement]
    assert found.closing.acquire(blocking=False)  # a close waiting on the seller's Finish
    try:
        calls, before = found.calls, postings(market)
        paid = send(market, encode_payment_signature_header(session.next()))
        assert paid.status_code == 200, paid.text  # the voucher did not wait for the close
        assert found.calls == calls + 1 and postings(market) == before
        busy = httpx.post(f"{market.http.url}/v1/sessions/{session.agreement}/close",
                          json={"finish": session.schemes["exact"].finish_signature(
                              session.agreement)})
        assert busy.status_code == 409 and busy.json()["error"] == "session_busy", busy.text
        assert found.closed is None and postings(market) == before
    finally:
        found.closing.release()
    closed = session.close()
    assert closed["state"] == "settled" and closed["captured"] == "4000000"  # both calls


def test_clients_share_one_tls_context_that_still_checks_certificates():
    """Building a TLS context loads the CA bundle (tens of ms of CPU): every `http_client`
    shares the process's one, which still verifies certificates and host names."""
    assert tls_context() is tls_context()
    assert tls_context().verify_mode == ssl.CERT_REQUIRED and tls_context().check_hostname


def test_a_strangers_close_is_refused_at_the_gateway_and_holds_up_nothing(market,
                                                                          monkeypatch):
    """Whoever knows the agreement id may post a close; without the buyer's signature over
    the finish it is refused before the seller is asked (no Finish relayed, the close lock
    not taken), and the buyer's own close then goes through."""
    from marketplace.identity import AgentKey

    session = Session(market)
    relayed: list[str] = []
    calls = market.gateway.sessions.seller_calls
    ask_finish = calls.finish

    async def relay(endpoint: str, *args: Any) -> Any:
        relayed.append(endpoint)
        return await ask_finish(endpoint, *args)

    monkeypatch.setattr(calls, "finish", relay)
    stranger = AgentKey.generate().sign(b"finish " + session.agreement.encode())
    for finish in (stranger.hex(), "00" * 64):
        refused = httpx.post(f"{market.http.url}/v1/sessions/{session.agreement}/close",
                             json={"finish": finish})
        assert (refused.status_code, refused.json()["error"]) == (403, "invalid_signature")
    found = market.gateway.sessions.sessions[session.agreement]
    assert relayed == [] and found.closed is None
    assert not found.closing.locked()
    assert session.close()["captured"] == "2000000" and len(relayed) == 1


def test_a_close_checks_the_buyers_finish_signature_once(market, monkeypatch):
    """The gateway checks the finish before asking the seller, and the close's ledger work
    needs it checked too: one ed25519 verification serves both; a second close of the
    session with the same signature is answered without another."""
    from agents.x402 import sessions

    session = Session(market)
    checked: list[str] = []
    verify = sessions.verify
    monkeypatch.setattr(sessions, "verify", lambda signer, *rest: checked.append(signer)
                        or verify(signer, *rest))
    closed = session.close()
    assert session.close() == closed
    assert checked == [market.gateway.sessions.sessions[session.agreement].body.buyer_id]


@pytest.mark.parametrize("prepay", [True, False], ids=["prepaid", "asked"])
def test_a_session_the_gateway_forgot_is_opened_again_by_the_client(market, prepay):
    """A restarted gateway has no sessions in memory: the client's next voucher is answered
    402 session_unknown, the client forgets that session and pays once more in a new one,
    so the call is served; the first agreement is still redeemed by its seller."""
    async def run() -> tuple[list[httpx.Response], str, list[str]]:
        client, schemes = http_client(market.key, market.network, calls_per_session=5,
                                      prepay=prepay)
        async with client:
            answers = [await client.post(market.url("shout"), json={"text": "one"})]
            first = schemes["exact"].open_sessions()[0]
            del market.gateway.sessions.sessions[first]  # what a restart forgets
            answers += [await client.post(market.url("shout"), json={"text": n})
                        for n in ("two", "three")]
            opened = schemes["exact"].open_sessions()
            for agreement in opened:
                closed = await client.post(
                    f"{market.http.url}/v1/sessions/{agreement}/close",
                    json={"finish": schemes["exact"].finish_signature(agreement)})
                assert closed.status_code == 200, closed.text
            return answers, first, opened

    answers, first, opened = asyncio.run(run())
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert [a.json()["output"]["text"] for a in answers] == ["ONE", "TWO", "THREE"]
    assert len(opened) == 1 and opened[0] != first
    assert market.seller.redeem(first).captured_atomic == 2_000_000  # the call it served



def test_a_full_table_makes_room_from_idle_sessions_only(market, monkeypatch):
    """Sessions opened and left idle cannot shut others out: when the table is full, the
    idlest without a call in flight make room (their sellers still redeem what they served;
    their buyers' clients open new sessions on session_unknown)."""
    from agents.x402 import sessions as book

    table = market.gateway.sessions.sessions
    idle, calling = Session(market), Session(market)
    table[calling.agreement].in_flight = 1  # a call paid and not answered yet
    monkeypatch.setattr(book, "IDLE_EVICT_MS", 0)
    live = [s for s in table.values() if s.closed is None  # closed ones go first anyway
            and s.body.terms.completion_deadline_ms > time.time() * 1000]
    monkeypatch.setattr(book, "MAX_SESSIONS", len(live))  # full
    newcomer = Session(market)
    assert newcomer.agreement in table and calling.agreement in table
    assert idle.agreement not in table
    ledger = postings(market)
    refused = send(market, encode_payment_signature_header(idle.next()))
    assert (refused.status_code, reason(refused)) == (402, "session_unknown")
    assert postings(market) == ledger
    table[calling.agreement].in_flight = 0
    monkeypatch.setattr(book, "MAX_SESSIONS", 100_000)
    assert calling.close()["captured"] == newcomer.close()["captured"] == "2000000"
    assert market.seller.redeem(idle.agreement).captured_atomic == 2_000_000  # its open call


def test_the_paying_client_sends_through_the_transport_it_is_given(market):
    """A caller's own transport (a proxy's, client certificates) carries every request the
    paying client sends: the opening payment, the prepaid session calls and the close."""
    class Counting(httpx.AsyncHTTPTransport):
        def __init__(self) -> None:
            super().__init__()
            self.sent: list[str] = []

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.sent.append(request.url.path)
            return await super().handle_async_request(request)

    counting = Counting()

    async def run() -> list[httpx.Response]:
        client, schemes = http_client(market.key, market.network, calls_per_session=3,
                                      transport=counting)
        async with client:
            answers = [await client.post(market.url("shout"), json={"text": f"t{n}"})
                       for n in range(3)]
            agreement = schemes["exact"].open_sessions()[0]
            answers.append(await client.post(
                f"{market.http.url}/v1/sessions/{agreement}/close",
                json={"finish": schemes["exact"].finish_signature(agreement)}))
            return answers

    answers = asyncio.run(run())
    assert [a.status_code for a in answers] == [200, 200, 200, 200], [a.text for a in answers]
    shout = httpx.URL(market.url("shout")).path
    assert counting.sent.count(shout) == 4  # asked (402), paid; then two prepaid calls
    assert counting.sent[-1].endswith("/close")
