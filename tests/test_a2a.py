"""A2A v1.0 on a seller's gRPC server: a2a-sdk's own client, the signed Agent Card, paid tasks
through the same payment core as agents.v1, and every kind of bad payment refused with nothing
charged or held. One node and one seller for the module (real servers on loopback)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from a2a.client import ClientConfig, ClientFactory
from a2a.types import a2a_pb2, a2a_pb2_grpc
from a2a.utils.errors import TaskNotFoundError
from joserfc import jws
from joserfc.jwk import OKPKey
from pydantic import BaseModel

from agents.buyer import BuyerAgent, Deal
from agents.errors import PaymentRequired
from agents.seller import SellerAgent
from agents.skills import free, per_call, skill
from marketplace import a2a_extension as ext
from marketplace.a2a_cards import public_jwk
from marketplace.node import MarketplaceNode
from marketplace.v1 import agreement_pb2
from tests.a2a_market import Market, open_market
from wallets.grpc_errors import error_info

PRICE = "0.002"


class Echo(BaseModel):
    text: str
    length: int


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    @skill(price=per_call(PRICE, "USD"))
    def echo(text: str) -> Echo:
        """Return the text and its length."""
        if text == "boom":
            raise RuntimeError("the skill broke")
        return Echo(text=text, length=len(text))

    @skill(price=free(), tags=["greeting"])
    def hello(name: str) -> dict:
        """Greet someone, for free."""
        return {"greeting": f"hello {name}"}

    @skill(price=per_call("0.003", "USD"))  # per call: no tokenizer to load (a fast test)
    def write(topic: str) -> Iterator[str]:
        """Write about a topic, streamed."""
        yield from ("agents", " pay", " each", " other")

    yield from open_market(tmp_path_factory.mktemp("a2a"), [echo, hello, write])


async def _first(stream):  # type: ignore[no-untyped-def]
    async for event in stream:
        return event
    raise AssertionError("no event")


def _sdk(coroutine_fn):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine_fn())


def _message(text: str, message_id: str, **metadata: object) -> a2a_pb2.Message:
    message = a2a_pb2.Message(message_id=message_id, role=a2a_pb2.ROLE_USER,
                              parts=[a2a_pb2.Part(text=text)])
    if metadata:
        message.metadata.update(metadata)
    return message


# ---- any A2A client ------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True])
def test_the_sdk_client_given_only_the_card_url_calls_a_free_skill_and_gets_payment_terms(
        market: Market, streaming: bool):
    async def run() -> tuple[a2a_pb2.StreamResponse, a2a_pb2.StreamResponse]:
        config = ClientConfig(grpc_channel_factory=grpc.aio.insecure_channel,
                              streaming=streaming, supported_protocol_bindings=["GRPC"])
        client = await ClientFactory(config).create_from_url(market.base_url)
        try:
            free_answer = await _first(client.send_message(a2a_pb2.SendMessageRequest(
                message=_message("ada", f"m-free-{streaming}", **{ext.SKILL_KEY: "hello"}))))
            priced = await _first(client.send_message(a2a_pb2.SendMessageRequest(
                message=_message(json.dumps({"text": "hi"}), f"m-priced-{streaming}",
                                 **{ext.SKILL_KEY: "echo"}))))
            with pytest.raises(TaskNotFoundError):
                await client.get_task(a2a_pb2.GetTaskRequest(id="no-such-task"))
            return free_answer, priced
        finally:
            await client.close()

    free_answer, priced = _sdk(run)
    assert free_answer.task.status.state == a2a_pb2.TASK_STATE_COMPLETED
    assert json.loads(free_answer.task.artifacts[0].parts[0].text) == {"greeting": "hello ada"}
    task = priced.task
    assert task.status.state == a2a_pb2.TASK_STATE_INPUT_REQUIRED
    required = _struct(task.status.message.metadata)[ext.REQUIRED_KEY]
    assert required["skill"] == "echo" and required["extension"] == ext.URI
    assert required["prices"] == [{"amountAtomic": str(market.seller.skills["echo"].prices[0]
                                                       .amount_atomic),
                                   "currency": "USD", "unit": "call"}]
    assert required["marketplace"] == market.node.address
    assert required["listing"]["agentId"] == market.seller.agent_id


def _struct(struct) -> dict:  # type: ignore[no-untyped-def]
    from google.protobuf import json_format

    return json_format.MessageToDict(struct)


def test_the_buyer_asks_a_free_skill_and_learns_a_priced_one_needs_payment(market: Market):
    assert market.buyer.ask(market.seller.card_url, "grace", skill="hello") == \
        {"greeting": "hello grace"}
    with pytest.raises(PaymentRequired, match="echo"):
        market.buyer.ask(market.base_url, {"text": "x"}, skill="echo")


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")  # A2A and PyJWT name it EdDSA
def test_the_card_is_signed_and_a_jose_library_verifies_it(market: Market):
    data = httpx.get(market.seller.card_url, timeout=5).json()
    assert data["supportedInterfaces"][0] == {"url": market.seller.endpoint,
                                              "protocolBinding": "GRPC",
                                              "protocolVersion": "1.0"}
    assert {s["id"] for s in data["skills"]} == {"echo", "hello", "write"}
    extension = data["capabilities"]["extensions"][0]
    assert extension["uri"] == ext.URI
    params = extension["params"]
    assert params["agentId"] == market.seller.agent_id
    assert params["marketplace"] == market.node.address
    assert params["skills"]["hello"]["free"] is True
    assert params["skills"]["write"]["streams"] is True
    assert params["skills"]["echo"]["inputSchema"]["required"] == ["text"]
    (signature,) = data.pop("signatures")
    payload = _canonical(_clean(data))
    compact = f"{signature['protected']}.{_b64(payload)}.{signature['signature']}"
    key = OKPKey.import_key(public_jwk(market.seller.agent_id))
    verified = jws.deserialize_compact(compact, key, algorithms=["EdDSA"])
    assert verified.headers()["kid"] == market.seller.agent_id
    other = OKPKey.generate_key("Ed25519")
    with pytest.raises(Exception, match="signature"):
        jws.deserialize_compact(compact, other, algorithms=["EdDSA"])
    grpc_card = market.stub.GetExtendedAgentCard(a2a_pb2.GetExtendedAgentCardRequest(),
                                                 timeout=5)
    assert grpc_card.signatures[0].signature == signature["signature"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _clean(value):  # type: ignore[no-untyped-def]
    """The card as A2A signs it: signatures removed, empty values dropped."""
    if isinstance(value, dict):
        out = {k: c for k, v in value.items() if (c := _clean(v)) not in (None, "", [], {})}
        return out or None
    if isinstance(value, list):
        out = [c for v in value if (c := _clean(v)) not in (None, "", [], {})]
        return out or None
    return value


def _canonical(value) -> bytes:  # type: ignore[no-untyped-def]
    """RFC 8785 for the values a card holds (integral numbers written as integers)."""
    def fix(v):  # type: ignore[no-untyped-def]
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v
    return json.dumps(fix(value), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


# ---- paid ------------------------------------------------------------------------------------


def test_a_card_url_is_enough_to_hire_pay_and_settle(market: Market):
    deal = market.deal()
    results = [market.buyer.send(deal, {"text": f"call {i}"}) for i in range(3)]
    assert [r.output["length"] for r in results] == [6, 6, 6]
    assert all(r.verified for r in results), [r.problem for r in results]
    price = deal.body.terms.unit_price_atomic
    assert sum(r.usage.charged_atomic for r in results) == 3 * price
    escrow = market.buyer.finish(deal)
    assert escrow.captured_atomic == 3 * price
    assert escrow.refunded_atomic == deal.body.terms.max_total_atomic - 3 * price


def _planned(market: Market, deal: Deal, text: str, message_id: str):  # type: ignore[no-untyped-def]
    from agents import _a2a_buyer

    planned = market.buyer._plan(deal, {"text": text}, message_id, None)
    return planned, _a2a_buyer.paid_request(planned)


def _send(market: Market, request: a2a_pb2.SendMessageRequest,
          extensions: str = ext.URI) -> a2a_pb2.Task:
    return market.stub.SendMessage(request, metadata=[(ext.EXTENSIONS_HEADER, extensions)],
                                   timeout=5).task


def _account(market: Market, deal: Deal):  # type: ignore[no-untyped-def]
    return market.seller.gate._account(deal.agreement_id)


def test_a_lost_answer_is_found_by_get_task_and_a_resent_message_is_charged_once(
        market: Market):
    deal = market.deal()
    _planned_call, request = _planned(market, deal, "once", "m-lost")
    first = _send(market, request)
    charged = _account(market, deal).charged_atomic
    assert first.status.state == a2a_pb2.TASK_STATE_COMPLETED and charged > 0
    again = _send(market, request)  # the same message id and voucher: the same task
    fetched = market.stub.GetTask(a2a_pb2.GetTaskRequest(id=first.id), timeout=5)
    for task in (again, fetched):
        assert task.id == first.id
        assert task.artifacts[0].parts[0].text == first.artifacts[0].parts[0].text
        assert task.metadata[ext.RECEIPT_KEY] == first.metadata[ext.RECEIPT_KEY]
    assert _account(market, deal).charged_atomic == charged
    assert _account(market, deal).reserved_atomic == 0
    voucher = agreement_pb2.Voucher.FromString(base64.b64decode(
        _struct(request.message.metadata)[ext.PAYMENT_KEY]["voucher"]))
    assert first.id == ext.paid_task_id(deal.agreement_id, "m-lost", voucher.payword)


def test_a_failing_skill_answers_a_failed_task_and_charges_nothing(market: Market):
    deal = market.deal()
    _planned_call, request = _planned(market, deal, "boom", "m-boom")
    task = _send(market, request)
    assert task.status.state == a2a_pb2.TASK_STATE_FAILED
    assert "nothing was charged" in task.status.message.parts[0].text
    assert "broke" not in task.status.message.parts[0].text
    account = _account(market, deal)
    assert (account.charged_atomic, account.reserved_atomic) == (0, 0)


def test_a_streamed_skill_is_billed_as_it_flows_with_the_receipt_last(market: Market):
    deal = market.deal("write", quantity=2)
    planned, request = _planned(market, deal, "x", "m-stream")
    request.message.ClearField("parts")
    request.message.parts.append(a2a_pb2.Part(text=json.dumps({"topic": "money"})))
    events = list(market.stub.SendStreamingMessage(
        request, metadata=[(ext.EXTENSIONS_HEADER, ext.URI)], timeout=10))
    assert events[0].task.status.state == a2a_pb2.TASK_STATE_WORKING
    pieces = [e.artifact_update.artifact.parts[0].text for e in events
              if e.HasField("artifact_update")]
    assert "".join(pieces) == "agents pay each other"
    charges = [int(e.artifact_update.metadata["chargedAtomic"]) for e in events
               if e.HasField("artifact_update")]
    assert charges == sorted(charges) and charges[-1] == deal.body.terms.unit_price_atomic
    final = events[-1].status_update
    assert final.status.state == a2a_pb2.TASK_STATE_COMPLETED
    receipt = ext.parse_receipt(final.metadata[ext.RECEIPT_KEY])
    assert receipt.charged_atomic == charges[-1] <= planned.reserve_atomic
    assert _account(market, deal).charged_atomic == receipt.charged_atomic
    assert market.stub.GetTask(a2a_pb2.GetTaskRequest(id=final.task_id),
                               timeout=5).status.state == a2a_pb2.TASK_STATE_COMPLETED


# ---- tasks -----------------------------------------------------------------------------------


def test_tasks_are_listed_per_context_and_only_waiting_ones_cancel(market: Market):
    message = _message(json.dumps({"text": "t"}), "m-ctx", **{ext.SKILL_KEY: "echo"})
    message.context_id = "ctx-a2a-test"
    task = market.stub.SendMessage(a2a_pb2.SendMessageRequest(message=message), timeout=5).task
    listed = market.stub.ListTasks(a2a_pb2.ListTasksRequest(context_id="ctx-a2a-test"),
                                   timeout=5)
    assert [t.id for t in listed.tasks] == [task.id]
    canceled = market.stub.CancelTask(a2a_pb2.CancelTaskRequest(id=task.id), timeout=5)
    assert canceled.status.state == a2a_pb2.TASK_STATE_CANCELED
    for call, reason in ((lambda: market.stub.CancelTask(
            a2a_pb2.CancelTaskRequest(id=task.id), timeout=5), "TASK_NOT_CANCELABLE"),
            (lambda: list(market.stub.SubscribeToTask(
                a2a_pb2.SubscribeToTaskRequest(id=task.id), timeout=5)),
             "UNSUPPORTED_OPERATION"),
            (lambda: market.stub.ListTasks(a2a_pb2.ListTasksRequest(), timeout=5),
             "INVALID_ARGUMENT"),
            (lambda: market.stub.ListTasks(a2a_pb2.ListTasksRequest(
                context_id="ctx-a2a-test", page_token="\u00b2"), timeout=5),
             "INVALID_ARGUMENT")):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert error_info(caught.value).reason == reason or \
            caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        market.stub.GetTaskPushNotificationConfig(
            a2a_pb2.GetTaskPushNotificationConfigRequest(task_id=task.id, id="x"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "push notifications are not supported" in caught.value.details()


# ---- bad payments: a clear status, nothing charged, nothing held ------------------------------


def _replace_voucher(request: a2a_pb2.SendMessageRequest, voucher: agreement_pb2.Voucher,
                     agreement_id: str | None = None) -> None:
    payment = ext.payment_metadata(voucher)
    if agreement_id is not None:
        payment["agreementId"] = agreement_id
    request.message.metadata.update({ext.PAYMENT_KEY: payment})


def test_bad_payments_are_refused_with_a_reason_and_change_nothing(market: Market):
    deal = market.deal(quantity=20)  # each planned voucher below reserves on the buyer's side
    used_planned, used = _planned(market, deal, "paid", "m-used")
    assert _send(market, used).status.state == a2a_pb2.TASK_STATE_COMPLETED
    other = market.deal(quantity=3)
    before = (_account(market, deal).charged_atomic, _account(market, deal).latest)
    escrow_before = market.buyer.escrow(deal).held_atomic

    def refused(request: a2a_pb2.SendMessageRequest, reason: str, *,
                extensions: str = ext.URI) -> None:
        with pytest.raises(grpc.RpcError) as caught:
            _send(market, request, extensions)
        assert error_info(caught.value).reason == reason, caught.value.details()
        assert caught.value.details()

    planned, request = _planned(market, deal, "x", "m-forged")
    forged = agreement_pb2.Voucher()
    forged.CopyFrom(planned.voucher)
    forged.payword = os.urandom(32)
    _replace_voucher(request, forged)
    refused(request, "INVALID_VOUCHER")

    _unused, request = _planned(market, deal, "x", "m-replay")
    _replace_voucher(request, used_planned.voucher)  # an old voucher under a new message id
    refused(request, "INVALID_VOUCHER")

    _unused, request = _planned(market, deal, "x", "m-exhausted")
    exhausted = agreement_pb2.Voucher()
    exhausted.CopyFrom(planned.voucher)
    exhausted.payword_index = deal.body.payword_length + 1
    exhausted.cumulative_atomic = exhausted.payword_index * deal.body.link_value_atomic
    _replace_voucher(request, exhausted)
    refused(request, "BUDGET_EXCEEDED")

    _unused, request = _planned(market, deal, "x", "m-other-agreement")
    _replace_voucher(request, planned.voucher, agreement_id=other.agreement_id)
    refused(request, "INVALID_VOUCHER")

    _unused, request = _planned(market, deal, "x", "m-other-skill")
    request.message.metadata.update({ext.SKILL_KEY: "write"})
    refused(request, "WRONG_SKILL")

    _unused, request = _planned(market, deal, "x", "m-version")
    refused(request, "UNKNOWN_EXTENSION_VERSION", extensions=ext.URI_PREFIX + "v9")
    refused(request, "EXTENSION_NOT_ACTIVATED", extensions="")

    _unused, request = _planned(market, deal, "x" * (1024 * 1024 + 10), "m-large")
    refused(request, "MESSAGE_TOO_LARGE")

    _unused, request = _planned(market, deal, "x", "m-raw")
    request.message.ClearField("parts")
    request.message.parts.append(a2a_pb2.Part(raw=b"\x00\x01", media_type="image/png"))
    refused(request, "INVALID_ARGUMENT")

    _unused, request = _planned(market, deal, "x", "m-garbled")
    request.message.metadata.update({ext.PAYMENT_KEY: {"agreementId": deal.agreement_id,
                                                       "voucher": "not base64!"}})
    refused(request, "INVALID_ARGUMENT")

    account = _account(market, deal)
    assert (account.charged_atomic, account.latest) == before
    assert account.reserved_atomic == 0
    assert market.buyer.escrow(deal).held_atomic == escrow_before


def test_the_async_buyer_hires_by_card_url_and_asks_free_skills(market: Market):
    from agents.async_buyer import AsyncBuyerAgent

    async def run() -> tuple[object, object, int]:
        async with AsyncBuyerAgent("async-buyer", marketplace=market.node.address) as buyer:
            await buyer.fund("0.50", "USD")
            greeting = await buyer.ask(market.base_url, {"name": "lin"}, skill="hello")
            deal = await buyer.negotiate_card(market.seller.card_url, "echo", quantity=2,
                                              budget="0.05", currency="USD")
            await buyer.hire(deal)
            result = await buyer.send(deal, {"text": "async"})
            escrow = await buyer.finish(deal)
            return greeting, result, escrow.captured_atomic

    greeting, result, captured = _sdk(run)
    assert greeting == {"greeting": "hello lin"}
    assert result.output == {"text": "async", "length": 5} and result.verified
    assert captured == result.usage.charged_atomic


def test_the_node_serves_a_card_per_listing_and_a_search_over_them(tmp_path: Path):
    @skill(price=per_call("0.001", "USD"), tags=["translation"])
    def translate(text: str) -> dict:
        """Translate a text."""
        return {"text": text.upper()}

    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600,
                         cards=True) as node, \
            SellerAgent("translator", skills=[translate], marketplace=node.address), \
            BuyerAgent("finder", marketplace=node.address) as buyer:
        assert node.http is not None
        base = node.http.url
        found = httpx.get(f"{base}/cards/search", params={"skill": "translate"}, timeout=5)
        (hit,) = found.json()["cards"]
        assert hit["card"]["name"] == "translator"
        params = hit["card"]["capabilities"]["extensions"][0]["params"]
        assert params["skills"]["translate"]["prices"][0]["amountAtomic"] == "1000000"
        assert params["catalogue"] == node.agent_id
        card = buyer.card(hit["url"])  # the node's signature checks out
        assert card.skills[0].id == "translate"
        deal = buyer.negotiate_card(hit["url"], "translate", quantity=1, budget="0.01",
                                    currency="USD")
        assert deal.body.seller_id == params["agentId"]
        bad = httpx.get(f"{base}/cards/search", params={"limit": "5000"}, timeout=5)
        assert bad.status_code == 400 and "limit" in bad.json()["error"]["message"]
        missing = httpx.get(f"{base}/cards/{'0' * 64}/.well-known/agent-card.json", timeout=5)
        assert missing.status_code == 404


def test_a_signed_paid_message_must_come_from_the_agreements_buyer(market: Market):
    from marketplace.auth import signed_channel
    from marketplace.identity import AgentKey

    deal = market.deal(quantity=3)
    _planned_call, request = _planned(market, deal, "mine", "m-signed-stranger")
    with signed_channel(market.seller.endpoint, AgentKey.generate()) as channel, \
            pytest.raises(grpc.RpcError) as caught:
        a2a_pb2_grpc.A2AServiceStub(channel).SendMessage(
            request, metadata=[(ext.EXTENSIONS_HEADER, ext.URI)], timeout=5)
    assert error_info(caught.value).reason == "FORBIDDEN"
    assert _account(market, deal).charged_atomic == 0
    signed, _unsigned = market.buyer._a2a_stubs(market.seller.endpoint)
    task = signed.SendMessage(request, metadata=[(ext.EXTENSIONS_HEADER, ext.URI)],
                              timeout=5).task  # the buyer itself, signed: served
    assert task.status.state == a2a_pb2.TASK_STATE_COMPLETED


def test_a_paid_task_is_found_after_the_seller_restarts(tmp_path: Path):
    from marketplace.identity import AgentKey

    @skill(price=per_call("0.001", "USD"))
    def upper(text: str) -> dict:
        """Upper-case a text."""
        return {"text": text.upper()}

    key, journal = AgentKey.generate(), tmp_path / "seller.db"
    with MarketplaceNode(f"sqlite:///{tmp_path / 'm.db'}", sweep_interval_s=3600) as node, \
            BuyerAgent("buyer", marketplace=node.address) as buyer:
        seller = SellerAgent("upper", skills=[upper], marketplace=node.address, key=key,
                             journal=journal).serve()
        try:
            buyer.fund("0.10", "USD")
            deal = buyer.negotiate(buyer.discover("upper", currency="USD")[0], "upper",
                                   quantity=2, budget="0.01", currency="USD")
            buyer.hire(deal)
            planned = buyer._plan(deal, {"text": "kept"}, "m-kept", None)
            from agents import _a2a_buyer

            with grpc.insecure_channel(seller.endpoint) as channel:
                first = a2a_pb2_grpc.A2AServiceStub(channel).SendMessage(
                    _a2a_buyer.paid_request(planned),
                    metadata=[(ext.EXTENSIONS_HEADER, ext.URI)], timeout=5).task
        finally:
            seller.stop(0)
        seller = SellerAgent("upper", skills=[upper], marketplace=node.address, key=key,
                             journal=journal).serve()
        try:
            with grpc.insecure_channel(seller.endpoint) as channel:
                found = a2a_pb2_grpc.A2AServiceStub(channel).GetTask(
                    a2a_pb2.GetTaskRequest(id=first.id), timeout=5)
            assert found.status.state == a2a_pb2.TASK_STATE_COMPLETED
            assert found.artifacts[0].parts[0].text == first.artifacts[0].parts[0].text
            assert found.metadata[ext.RECEIPT_KEY] == first.metadata[ext.RECEIPT_KEY]
        finally:
            seller.stop(0)


def test_the_buyer_streams_over_a2a_and_checks_the_receipt(market: Market):
    from agents.async_buyer import AsyncBuyerAgent

    deal = market.deal("write", quantity=3)
    stream = market.buyer.send_stream(deal, {"topic": "money"})
    assert "".join(stream) == "agents pay each other"
    assert stream.stop_reason == "complete" and not stream.problem
    assert stream.end is not None and stream.charged_atomic == deal.body.terms.unit_price_atomic

    async def run() -> tuple[str, str, str]:
        async with AsyncBuyerAgent("async-streamer", marketplace=market.node.address) as buyer:
            await buyer.fund("0.50", "USD")
            deal = await buyer.negotiate_card(market.seller.card_url, "write", quantity=2,
                                              budget="0.05", currency="USD")
            await buyer.hire(deal)
            call = await buyer.send_stream(deal, {"topic": "async"})
            text = "".join([piece async for piece in call])
            return text, call.stop_reason, call.problem

    assert _sdk(run) == ("agents pay each other", "complete", "")


def test_the_task_store_is_bounded():
    from agents._a2a_tasks import TaskNotFound, TaskStore
    from agents.payments import PaymentGate

    store = TaskStore(PaymentGate(), limit=3)
    for n in range(5):
        store.put(a2a_pb2.Task(id=f"t{n}", context_id="c"), message_key=("c", f"m{n}"))
        store.paid(f"p{n}", "f" * 64, f"m{n}")  # an agreement the gate does not hold
    assert [t.id for t in store.list("c", 0, 10, 0, False)[0]] == ["t4", "t3", "t2"]
    assert store.by_message(("c", "m0")) is None and store.by_message(("c", "m4")) is not None
    with pytest.raises(TaskNotFound):
        store.get("t0")
    assert len(store._paid) <= 3  # forgotten agreements' entries were dropped


def test_a_seller_of_free_skills_only_is_on_no_listing_and_answers_anyone(market: Market):
    @skill(price=free())
    def shout(text: str) -> dict:
        """Shout, for free."""
        return {"text": text.upper()}

    with SellerAgent("shouter", skills=[shout], marketplace=market.node.address,
                     card_port=0) as seller:
        assert not seller.listing().skills
        assert market.buyer.discover("shout") == []
        assert market.buyer.ask(seller.card_url, "hey") == {"text": "HEY"}
    with pytest.raises(Exception, match="only price"):
        skill(price=[free(), per_call("1", "USD")])(lambda text: text)


def test_a_skill_named_by_something_else_than_a_string_is_invalid_argument(market: Market):
    for name in (5, ["echo"]):
        message = _message(json.dumps({"text": "t"}), f"m-skill-{name!s:.3}",
                           **{ext.SKILL_KEY: name})
        with pytest.raises(grpc.RpcError) as caught:
            market.stub.SendMessage(a2a_pb2.SendMessageRequest(message=message), timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert "skill's name" in caught.value.details()
