"""What must hold after every fault run, read from the node's database and the parties' records.

- nothing held forever: every agreement is final and its hold is closed; no hold is open;
- the books balance: the posting hash chain verifies, balances match postings, all sum to 0;
- each redeemed receipt chain is whole and linked, each receipt charged once (distinct voucher
  sequences), and the capture is exactly what the receipts charge;
- each party paid exactly for what was delivered and received: a buyer's answers are all in
  its agreement's redeem and nothing else is, except the one call a killed buyer had in flight
  (its answer may have left the seller); a checkpointed buyer's task paid each call once;
- every wallet ends where its agreements put it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from marketplace import agreements as ag
from marketplace.escrows import ESCROWS, EVIDENCE
from marketplace.v1 import dispute_pb2
from wallets.audit import check_balances, verify_chain
from wallets.ledger import Ledger
from wallets.store import make_engine

FUNDED_ATOMIC = 1_000_000_000  # "1.00" USD
FINAL = {"settled", "refunded", "expired", "resolved"}


@dataclass
class BuyerRun:
    """What a buyer process recorded, and whether one of its processes was killed."""

    name: str
    kind: str
    agent_id: str
    record: Path
    killed: bool = False
    facts: list[dict[str, Any]] = field(default_factory=list)

    def load(self) -> None:
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        self.facts = [json.loads(line) for line in lines if line.strip()]


def check(db_url: str, buyers: list[BuyerRun]) -> list[str]:
    """Every violation found (empty: the run held)."""
    problems: list[str] = []
    engine = make_engine(db_url)
    try:
        ledger = Ledger(engine)
        with engine.connect() as conn:
            escrows = {row.agreement_id: row for row in conn.execute(select(ESCROWS)).all()}
            evidence = {row.agreement_id: row for row in conn.execute(select(EVIDENCE)).all()}
        redeemed = {a: _receipts(row.delivery) for a, row in evidence.items()}
        for agreement, row in escrows.items():
            problems += _escrow(ledger, row, redeemed.get(agreement))
        for buyer in buyers:
            buyer.load()
            problems += _buyer(buyer, escrows, redeemed)
        problems += _wallets(ledger, escrows, buyers)
        problems += _books(ledger)
    finally:
        engine.dispose()
    return problems


def _receipts(delivery: bytes) -> list[Any]:
    return list(dispute_pb2.DeliveryEvidence.FromString(delivery).receipts)


def _escrow(ledger: Ledger, row: Any, receipts: list[Any] | None) -> list[str]:
    name = f"agreement {row.agreement_id[:12]}"
    found = []
    if row.state not in FINAL:
        found.append(f"{name} is still {row.state}: held forever")
    if ledger.get_hold(row.hold_id).status == "open":
        found.append(f"{name}: its hold is still open")
    if receipts is None:
        if row.captured_atomic:
            found.append(f"{name} captured {row.captured_atomic} without a redeem")
        return found
    try:
        ag.check_receipt_chain(receipts, row.seller_id, complete=True)
    except Exception as error:
        found.append(f"{name}: the redeemed chain does not verify: {error}")
    if len({r.sequence for r in receipts}) != len(receipts):
        found.append(f"{name}: a voucher sequence is charged twice")
    charged = sum(r.charged_atomic for r in receipts)
    if row.state == "settled" and row.captured_atomic != charged:
        found.append(f"{name}: captured {row.captured_atomic}, the receipts charge {charged}")
    if row.captured_atomic + row.refunded_atomic != row.held_atomic:
        found.append(f"{name}: captured + refunded != held")
    return found


def _buyer(buyer: BuyerRun, escrows: dict[str, Any], redeemed: dict[str, list[Any]]
           ) -> list[str]:
    name = f"{buyer.kind} buyer {buyer.name}"
    agreement = next((f["agreement"] for f in buyer.facts if f.get("agreement")), None)
    if agreement is None:
        refused = [f for f in buyer.facts if "task_refused" in f]
        return [f"{name} never hired: {refused}"] if refused and not buyer.killed else []
    if agreement not in escrows:
        return [f"{name}: its agreement {agreement[:12]} is unknown to the node"]
    receipts = redeemed.get(agreement, [])
    charged = {r.sequence: r.charged_atomic for r in receipts}
    if buyer.kind == "checkpointed":
        return _checkpointed(name, buyer, escrows[agreement], charged)
    answered = {f["sequence"]: f["charged"] for f in buyer.facts if "answered" in f}
    found = []
    unpaid = set(answered) - set(charged)
    if unpaid:
        found.append(f"{name}: answers received but not paid (sequences {sorted(unpaid)}; "
                     f"the agreement is {escrows[agreement].state})")
    extra = set(charged) - set(answered)
    allowed = 1 if buyer.killed else 0
    if len(extra) > allowed or (extra and answered and min(extra) < max(answered)):
        found.append(f"{name}: charged for calls it never received: sequences {sorted(extra)}"
                     f" (received {sorted(answered)}, killed={buyer.killed})")
    for fact in buyer.facts:
        if fact.get("reason") == "JOURNAL_UNAVAILABLE" and fact.get("sequence") in charged:
            found.append(f"{name}: call {fact['refused']} was refused (JOURNAL_UNAVAILABLE) "
                         f"and never retried, yet charged")
    for sequence, amount in answered.items():
        if sequence in charged and charged[sequence] != amount:
            found.append(f"{name}: call {sequence} charged {charged[sequence]}, its receipt "
                         f"said {amount}")
    return found


def _checkpointed(name: str, buyer: BuyerRun, row: Any, charged: dict[int, int]) -> list[str]:
    final = next((f for f in buyer.facts if "status" in f), None)
    if final is None:
        return [] if buyer.killed and not charged else [
            f"{name} never completed its task ({buyer.facts[-1:]})"]
    found = []
    if final["status"] != "done":
        found.append(f"{name} ended {final['status']}")
    answered = [call for call in final["calls"] if call.get("charged_atomic", 0) > 0]
    paid = sum(call["charged_atomic"] for call in answered)
    if sum(charged.values()) != paid or len(charged) != len(answered):
        found.append(f"{name}: its task paid {paid} for {len(answered)} calls, the "
                     f"redeem charged {sum(charged.values())} for {len(charged)}")
    if row.captured_atomic != paid:
        found.append(f"{name}: captured {row.captured_atomic}, the task paid {paid}")
    return found


def _wallets(ledger: Ledger, escrows: dict[str, Any], buyers: list[BuyerRun]) -> list[str]:
    spent: dict[str, int] = defaultdict(int)
    earned: dict[str, int] = defaultdict(int)
    for row in escrows.values():
        spent[row.buyer_id] += row.captured_atomic
        earned[row.seller_id] += row.captured_atomic - row.fee_atomic
    found = []
    for buyer in buyers:
        expected = FUNDED_ATOMIC - spent[buyer.agent_id]
        if buyer.killed and not spent[buyer.agent_id] and _posted(ledger, buyer.agent_id) == 0:
            continue  # killed before its deposit committed: it never funded its wallet
        if _posted(ledger, buyer.agent_id) != expected:
            found.append(f"buyer {buyer.name}: wallet {_posted(ledger, buyer.agent_id)}, its "
                         f"agreements leave {expected}")
    for seller, amount in earned.items():
        if _posted(ledger, seller) != amount:
            found.append(f"seller {seller[:12]}: wallet {_posted(ledger, seller)}, its "
                         f"agreements pay {amount}")
    return found


def _posted(ledger: Ledger, owner: str) -> int:
    account = ledger.find_account(owner, "USD")
    return 0 if account is None else ledger.balance(account.account_id).posted_atomic


def _books(ledger: Ledger) -> list[str]:
    found = []
    if ledger.holds(status="open"):
        found.append(f"{len(ledger.holds(status='open'))} holds still open")
    chain, balances = verify_chain(ledger), check_balances(ledger)
    found += [f"posting chain: {p}" for p in chain.problems] if not chain.ok else []
    found += [f"balances: {p}" for p in balances.problems] if not balances.ok else []
    if sum(b.posted_atomic for b in ledger.accounts()) != 0:
        found.append("the books do not sum to zero")
    return found
