"""Signed settlement receipts: every settlement yields one, its file verifies offline against a
signed checkpoint, and a change to any byte of it fails. Test vectors and the few-line verifiers
of PROTOCOL.md. Settlements on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from marketplace.cli.main import app
from marketplace.identity import AgentKey
from marketplace.receipt_verify import ReceiptInvalid, posting_hash, verify_receipt
from marketplace.receipts import ReceiptBook, sealed_postings
from marketplace.testing import Harness, make_skill
from marketplace.v1 import dispute_pb2
from wallets._chain import posting_hash as chain_hash
from wallets.audit import verify_chain
from wallets.models import Leg

ROOT = Path(__file__).resolve().parents[1]
VECTORS = json.loads((ROOT / "tests" / "vectors" / "settlement_receipts.json").read_text())


@pytest.fixture
def market(engine, clock):
    h = Harness(engine, clock)
    node = AgentKey.generate()
    h.settlement.receipts = ReceiptBook(engine, node, clock)
    h.node = node
    h.advertise(make_skill())
    h.fund(h.buyer, 100_000_000)
    yield h
    h.close()


def _file(h: Harness, agreement: str, kind: str = "") -> bytes:
    return h.settlement.receipts.receipt_file(agreement, kind)


def test_a_capture_yields_a_receipt_that_verifies_offline(market: Harness):
    deal = market.deal(dispute_window_s=60)
    market.open(deal)
    market.redeem(deal, [{"text": "a"}, {"text": "b"}, {"text": "c"}])
    assert market.settlement.receipts.receipts(deal.agreement_id) == []  # nothing settled yet
    escrow = market.confirm(deal)
    found = verify_receipt(_file(market, deal.agreement_id), node=market.node.agent_id)
    assert (found.kind, found.subject, found.currency) == ("capture", deal.agreement_id, "USD")
    assert found.amounts == {"held": 5_000, "earned": 3_000, "seller": 2_925, "fee": 75,
                             "verifier": 0, "refunded": 2_000}
    assert escrow["captured_atomic"] - escrow["fee_atomic"] == found.amounts["seller"]
    assert found.parties == {"buyer": market.buyer.agent_id, "seller": market.seller.agent_id}
    postings = market.ledger.postings(hold_id=escrow["hold_id"])
    assert [p.sequence for p in postings if p.kind == "capture"] == [found.last_sequence]
    with pytest.raises(ReceiptInvalid, match="signed by node"):
        verify_receipt(_file(market, deal.agreement_id), node=AgentKey.generate().agent_id)


def test_a_receipt_states_its_postings_as_the_chain_holds_them(market: Harness, engine):
    """On SQLite they are taken from what the ledger wrote in the transaction, not read back:
    the same content, to the byte."""
    deal = market.deal(dispute_window_s=0)  # captured in the redeem's transaction
    market.open(deal)
    market.redeem(deal, [{"text": "a"}, {"text": "b"}])
    [signed] = market.settlement.receipts.receipts(deal.agreement_id)
    stated = signed["body"]["postings"]
    with engine.connect() as conn:
        assert stated == sealed_postings(conn, [p["sequence"] for p in stated])
    verify_receipt(_file(market, deal.agreement_id), node=market.node.agent_id)


def test_refund_expiry_and_a_dispute_each_yield_their_receipt(market: Harness, clock):
    refunded = market.deal()
    market.open(refunded)
    market.redeem(refunded, [{"wrong": 1}])  # fails the output schema: refunded
    expired = market.deal(deadline_ms=clock() + 10_000)
    market.open(expired)
    disputed = market.deal()
    market.open(disputed)
    market.redeem(disputed, [{"text": "a"}, {"text": "b"}])
    market.dispute(disputed)
    market.resolve(disputed, dispute_pb2.DISPUTE_OUTCOME_SPLIT, seller_atomic=500)
    clock.advance(11 + 1)  # the deadline and its redeem grace (a tenth of the span)
    market.settlement.sweep()
    kinds = {}
    for deal in (refunded, expired, disputed):
        for signed in market.settlement.receipts.receipts(deal.agreement_id):
            kind = signed["body"]["kind"]
            found = verify_receipt(_file(market, deal.agreement_id, kind),
                                   node=market.node.agent_id)
            kinds[(deal.agreement_id, kind)] = found.amounts
    assert kinds[(refunded.agreement_id, "refund")]["refunded"] == 5_000
    assert kinds[(expired.agreement_id, "expiry")]["refunded"] == 5_000
    assert kinds[(disputed.agreement_id, "dispute_freeze")]["refunded"] == 3_000
    resolution = kinds[(disputed.agreement_id, "dispute_resolution")]
    assert (resolution["seller"], resolution["fee"]) == (488, 12)
    assert resolution["refunded"] == 3_000 + 1_500
    assert verify_chain(market.ledger).ok


def test_an_expiry_the_ledger_timed_out_first_is_receipted_too(market: Harness, clock):
    deal = market.deal(deadline_ms=clock() + 10_000)
    escrow = market.open(deal)
    clock.advance(10 + 60 + 3600 + 1)  # past the hold's own timeout
    assert market.ledger.expire_holds() == 1
    market.settlement.sweep()
    found = verify_receipt(_file(market, deal.agreement_id), node=market.node.agent_id)
    [expired] = market.ledger.postings(hold_id=escrow["hold_id"], kind="expire")
    assert (found.kind, found.last_sequence) == ("expiry", expired.sequence)
    assert found.amounts["refunded"] == 5_000


def test_a_retried_settlement_issues_no_second_receipt(market: Harness):
    deal = market.deal()
    market.open(deal)
    market.redeem(deal, [{"text": "a"}])
    market.confirm(deal, key="confirm-x")
    market.confirm(deal, key="confirm-x")
    assert len(market.settlement.receipts.receipts(deal.agreement_id)) == 1


def test_checkpoints_chain_and_cover_every_posting(market: Harness):
    book = market.settlement.receipts
    deal = market.deal()
    market.open(deal)
    market.redeem(deal, [{"text": "a"}])
    market.ledger.seal()  # PostgreSQL seals after commit: cut over everything written so far
    assert book.checkpoints.cut() == 1 and book.checkpoints.cut() == 0
    market.confirm(deal)
    first = book.checkpoints.latest()
    data = _file(market, deal.agreement_id)  # cuts the checkpoint the receipt needs
    second = book.checkpoints.latest()
    assert second.first_sequence == first.sequence + 1
    assert second.body["prev_checkpoint"] == first.digest()
    assert json.loads(data)["checkpoint"] == second.signed()


def test_a_receipt_changed_in_any_byte_fails(market: Harness):
    deal = market.deal()
    market.open(deal)
    market.redeem(deal, [{"text": "a"}, {"text": "b"}])
    market.confirm(deal)
    data = _file(market, deal.agreement_id)
    verify_receipt(data)
    for position in range(len(data)):
        for flip in (0x01, 0x20, 0x80):
            changed = bytearray(data)
            changed[position] ^= flip
            with pytest.raises(ReceiptInvalid):
                verify_receipt(bytes(changed))
    with pytest.raises(ReceiptInvalid):
        verify_receipt(data[:-1])
    with pytest.raises(ReceiptInvalid):
        verify_receipt(data + b"\n")


# ---- test vectors and PROTOCOL.md --------------------------------------------------------


def test_the_vectors_are_what_the_builder_makes():
    from tests.vectors.make_receipt_vectors import build

    assert build() == VECTORS


def test_the_vector_chain_hashes_like_the_ledger():
    for p in VECTORS["postings"]:
        legs = [Leg(leg["account_id"], leg["currency"], int(leg["posted_atomic"]),
                    int(leg["pending_debit_atomic"]), int(leg["pending_credit_atomic"]))
                for leg in p["legs"]]
        assert chain_hash(p["prev_hash"], sequence=p["sequence"],
                          idempotency_key=p["idempotency_key"], kind=p["kind"],
                          hold_id=p["hold_id"], created_at_ms=p["created_at_ms"],
                          memo=p["memo"], trace_id=p["trace_id"], span_id=p["span_id"],
                          legs=legs) == p["hash"] == posting_hash(p)


def test_the_vectors_verify_as_stated():
    for case in VECTORS["valid"]:
        found = verify_receipt(case["file"].encode(), node=VECTORS["node"])
        assert (found.subject, found.kind, found.first_sequence, found.last_sequence,
                found.checkpoint_sequence) == (case["subject"], case["kind"],
                                               case["first_sequence"], case["last_sequence"],
                                               case["checkpoint_sequence"])
    for case in VECTORS["invalid"]:
        with pytest.raises(ReceiptInvalid):
            verify_receipt(case["file"].encode(), node=VECTORS["node"])


def _snippet(language: str) -> str:
    text = (ROOT / "PROTOCOL.md").read_text()
    found = re.findall(rf"```{language}\n(.*?)```", text, re.S)
    assert found, f"PROTOCOL.md has no {language} block"
    return found[-1]


def test_the_python_lines_in_protocol_md_check_the_vectors():
    namespace: dict = {}
    exec(_snippet("python"), namespace)  # the documented code, run as written
    verify = namespace["verify"]
    for case in VECTORS["valid"]:
        assert verify(case["file"].encode(), VECTORS["node"])["subject"] == case["subject"]
    for case in VECTORS["invalid"]:
        if case["rejected_by"] == "any":
            with pytest.raises(Exception):  # noqa: B017 - any failure is a refusal here
                verify(case["file"].encode(), VECTORS["node"])


def test_the_javascript_lines_in_protocol_md_check_the_vectors(tmp_path: Path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the JavaScript verifier of PROTOCOL.md is not run")
    script = tmp_path / "verify.js"
    script.write_text(_snippet("javascript") + """
const vectors = JSON.parse(require("fs").readFileSync(process.argv[2], "utf8"));
const out = [];
for (const c of vectors.valid) out.push(verify(Buffer.from(c.file, "utf8"), vectors.node).subject);
for (const c of vectors.invalid) {
  let ok = true;
  try { verify(Buffer.from(c.file, "utf8"), vectors.node); } catch (e) { ok = false; }
  out.push(c.rejected_by + ":" + ok);
}
console.log(JSON.stringify(out));
""")
    done = subprocess.run([node, str(script), str(ROOT / "tests/vectors/settlement_receipts.json")],
                          capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(done.stdout)
    assert result[0] == VECTORS["valid"][0]["subject"]
    assert all(r == "any:false" for r in result[1:] if r.startswith("any:"))


# ---- the command line ------------------------------------------------------------------------


def test_receipt_get_and_verify_on_the_command_line(market: Harness, db_url: str,
                                                    tmp_path: Path):
    deal = market.deal()
    market.open(deal)
    market.redeem(deal, [{"text": "a"}])
    market.confirm(deal)
    market.settlement.receipts.complete()  # on PostgreSQL the node signs it once sealed
    runner = CliRunner()
    out = tmp_path / "receipt.json"
    missing = runner.invoke(app, ["receipt", "get", deal.agreement_id, "--db", db_url,
                                  "--out", str(out)])
    assert missing.exit_code == 1 and "no checkpoint covers" in missing.output
    market.settlement.receipts.checkpoints.cut()
    done = runner.invoke(app, ["receipt", "get", deal.agreement_id, "--db", db_url,
                               "--out", str(out)])
    assert done.exit_code == 0, done.output
    good = runner.invoke(app, ["receipt", "verify", str(out), "--node",
                               market.node.agent_id])
    assert good.exit_code == 0 and "valid: capture receipt" in good.output
    data = bytearray(out.read_bytes())
    data[100] ^= 1
    out.write_bytes(bytes(data))
    bad = runner.invoke(app, ["receipt", "verify", str(out)])
    assert bad.exit_code == 1 and "receipt invalid" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
