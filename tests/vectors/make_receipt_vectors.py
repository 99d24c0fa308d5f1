"""The settlement receipt test vectors (PROTOCOL.md): built from fixed keys and postings, so
another implementation can check its verifier against them byte for byte.

    python -m tests.vectors.make_receipt_vectors    # rewrites settlement_receipts.json
"""

from __future__ import annotations

import json
from pathlib import Path

from marketplace.checkpoints import audit_path, merkle_root
from marketplace.identity import AgentKey
from marketplace.receipt_verify import (
    CHECKPOINT_DOMAIN,
    RECEIPT_DOMAIN,
    VERSION,
    ZERO_HASH,
    canonical,
    leaf_hash,
    posting_hash,
)

PATH = Path(__file__).with_name("settlement_receipts.json")
NODE_SEED = bytes(range(32))
OTHER_SEED = bytes(range(1, 33))
T0_MS = 1_700_000_000_000


def _leg(account: str, posted: int = 0, pending_debit: int = 0, pending_credit: int = 0):
    return {"account_id": account, "currency": "USD", "pending_credit_atomic": str(pending_credit),
            "pending_debit_atomic": str(pending_debit), "posted_atomic": str(posted)}


def _chain() -> list[dict]:
    """Seven postings: a deposit, a hold for an agreement, its capture (seller, fee, rest back),
    and four of other people's business after it."""
    buyer, seller, fees, rail = "a" * 32, "b" * 32, "c" * 32, "d" * 32
    specs = [
        ("deposit-1", "deposit", "", "deposit via sandbox-usd",
         [_leg(rail, -10_000_000_000), _leg(buyer, 10_000_000_000)]),
        ("open-1", "hold", "e" * 32, "", [_leg(buyer, pending_debit=5_000_000),
                                          _leg(seller, pending_credit=5_000_000)]),
        ("confirm-1:capture", "capture", "e" * 32, "",
         [_leg(buyer, -3_000_000, -5_000_000), _leg(seller, 2_925_000, 0, -5_000_000),
          _leg(fees, 75_000)]),
        ("deposit-2", "deposit", "", "deposit via sandbox-usd — ünïcode \"quoted\"",
         [_leg(rail, -1_000), _leg(seller, 1_000)]),
        ("t-1", "transfer", "", "", [_leg(seller, -500), _leg(buyer, 500)]),
        ("t-2", "transfer", "", "", [_leg(buyer, -500), _leg(seller, 500)]),
        ("t-3", "transfer", "", "", [_leg(seller, -1), _leg(fees, 1)]),
    ]
    postings, prev = [], ZERO_HASH
    for n, (key, kind, hold, memo, legs) in enumerate(specs, 1):
        posting = {"created_at_ms": T0_MS + n, "hold_id": hold, "idempotency_key": key,
                   "kind": kind, "legs": legs, "memo": memo, "prev_hash": prev, "sequence": n,
                   "span_id": "", "trace_id": "0af7651916cd43dd8448eb211c80319c" if n == 3
                   else ""}
        posting["hash"] = prev = posting_hash(posting)
        postings.append(posting)
    return postings


def build() -> dict:
    node, other = AgentKey.from_seed(NODE_SEED), AgentKey.from_seed(OTHER_SEED)
    postings = _chain()
    leaves = [leaf_hash(p["hash"]) for p in postings]
    checkpoint = {"first_sequence": 1, "head_hash": postings[-1]["hash"], "node": node.agent_id,
                  "prev_checkpoint": ZERO_HASH, "segment_root": merkle_root(leaves).hex(),
                  "sequence": len(postings), "signed_at_ms": T0_MS + 60_000,
                  "tree_size": len(postings)}
    mine = [postings[2]]
    body = {"amounts": {"earned": "3000000", "fee": "75000", "held": "5000000",
                        "refunded": "2000000", "seller": "2925000", "verifier": "0"},
            "chain": {"head_hash": mine[-1]["hash"], "sequence": mine[-1]["sequence"]},
            "currency": "USD", "issued_at_ms": T0_MS + 3, "kind": "capture",
            "node": node.agent_id, "parties": {"buyer": "1" * 64, "seller": "2" * 64},
            "postings": mine, "subject": "f" * 64, "subject_kind": "agreement"}
    document = {
        "checkpoint": {"body": checkpoint, "signature": node.sign(
            CHECKPOINT_DOMAIN + canonical(checkpoint)).hex()},
        "proofs": [{"leaf_index": p["sequence"] - 1,
                    "path": [h.hex() for h in audit_path(leaves, p["sequence"] - 1)],
                    "sequence": p["sequence"]} for p in mine],
        "receipt": {"body": body, "signature": node.sign(RECEIPT_DOMAIN + canonical(body)).hex()},
        "version": VERSION}
    valid = (canonical(document) + b"\n").decode()
    # a settlement whose two postings were sealed with another's between them (PostgreSQL
    # seals concurrent writers' postings in one chain): positions 5 and 7
    apart = [postings[4], postings[6]]
    apart_body = {"amounts": {"amount": "501"}, "chain": {"head_hash": apart[-1]["hash"],
                                                          "sequence": apart[-1]["sequence"]},
                  "currency": "USD", "issued_at_ms": T0_MS + 7, "kind": "pvp_settled",
                  "node": node.agent_id, "parties": {"payee": "1" * 64, "payer": "2" * 64},
                  "postings": apart, "subject": "9" * 64, "subject_kind": "pvp"}
    apart_file = (canonical({
        "checkpoint": document["checkpoint"],
        "proofs": [{"leaf_index": p["sequence"] - 1,
                    "path": [h.hex() for h in audit_path(leaves, p["sequence"] - 1)],
                    "sequence": p["sequence"]} for p in apart],
        "receipt": {"body": apart_body, "signature": node.sign(
            RECEIPT_DOMAIN + canonical(apart_body)).hex()},
        "version": VERSION}) + b"\n").decode()

    def variant(change) -> str:
        copy = json.loads(valid)
        change(copy)
        return (canonical(copy) + b"\n").decode()

    def resign_receipt(doc: dict, key: AgentKey) -> None:
        doc["receipt"]["body"]["node"] = key.agent_id
        doc["receipt"]["signature"] = key.sign(
            RECEIPT_DOMAIN + canonical(doc["receipt"]["body"])).hex()

    invalid = {
        "amount changed after signing": variant(
            lambda d: d["receipt"]["body"]["amounts"].update(seller="2925001")),
        "posting content does not hash to its hash (re-signed by the node)": variant(
            lambda d: (d["receipt"]["body"]["postings"][0].update(memo="x"),
                       resign_receipt(d, node))),
        "audit path hash changed": variant(
            lambda d: d["proofs"][0]["path"].__setitem__(0, "00" * 32)),
        "receipt signed by another key than the checkpoint": variant(
            lambda d: resign_receipt(d, other)),
        "not canonical (a space added)": valid.replace('"version":1', '"version": 1'),
        "postings out of order": variant(
            lambda d: (d["receipt"]["body"].update(postings=[postings[3], postings[2]],
                                                   chain={"head_hash": postings[2]["hash"],
                                                          "sequence": 3}),
                       d.update(proofs=[{"leaf_index": n - 1, "path": [
                           h.hex() for h in audit_path(leaves, n - 1)], "sequence": n}
                           for n in (4, 3)]),
                       resign_receipt(d, node))),
        "hex in upper case": valid.replace(document["receipt"]["signature"],
                                           document["receipt"]["signature"].upper()),
    }
    return {"description": "Settlement receipt files (PROTOCOL.md, Settlement receipts). "
                           "node_seed_hex is the node's ed25519 seed (do not use it for "
                           "anything else). Invalid files rejected_by 'any' fail every "
                           "verifier of section 2.7; 'strict' ones only the full form checks.",
            "node": node.agent_id, "node_seed_hex": NODE_SEED.hex(),
            "postings": postings, "valid": [
                {"name": "a capture receipt", "file": valid, "subject": body["subject"],
                 "kind": "capture", "first_sequence": 3, "last_sequence": 3,
                 "checkpoint_sequence": 7},
                {"name": "a receipt of two postings not adjacent in the chain",
                 "file": apart_file, "subject": apart_body["subject"], "kind": "pvp_settled",
                 "first_sequence": 5, "last_sequence": 7, "checkpoint_sequence": 7}],
            "invalid": [{"name": name, "file": text,
                         "rejected_by": "strict" if "upper case" in name else "any"}
                        for name, text in invalid.items()]}


if __name__ == "__main__":
    PATH.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {PATH}")
