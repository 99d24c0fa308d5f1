"""Checking a settlement receipt offline: nothing here touches a database or the network.

A receipt file (PROTOCOL.md, "Settlement receipts" gives every byte) holds the node's signed
statement of one settlement (its postings, amounts, parties), a checkpoint the same node signed
over a segment of its posting hash chain, and for each posting the Merkle audit path from its
hash to the checkpoint's root. `verify_receipt` checks, in order: the file is the canonical
encoding of its content (so a change to any byte fails), its shape, both signatures, each
posting's hash against its content and its balance, their order, and each audit path (which
also gives each posting's position in the chain).
It returns what the receipt proves or raises `ReceiptInvalid` saying what failed.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from marketplace.errors import InvalidArgument

RECEIPT_DOMAIN = b"agentmarket settlement receipt v1\n"
CHECKPOINT_DOMAIN = b"agentmarket ledger checkpoint v1\n"
VERSION = 1
MAX_FILE_BYTES = 1 << 20
MAX_SAFE_INT = 2**53 - 1
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_HEX128 = re.compile(r"^[0-9a-f]{128}\Z")
_AMOUNT = re.compile(r"^(0|-?[1-9][0-9]{0,18})\Z")
ZERO_HASH = "0" * 64


class ReceiptInvalid(InvalidArgument):
    """A receipt that does not verify; the message says which check failed."""

    reason = "RECEIPT_INVALID"


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    """What a valid receipt proves, signed by `node`."""

    node: str
    subject: str
    subject_kind: str
    kind: str
    currency: str
    amounts: dict[str, int]
    parties: dict[str, str]
    first_sequence: int
    last_sequence: int
    checkpoint_sequence: int


# ---- encodings shared with the issuer ------------------------------------------------------


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) for the values receipts hold: objects, arrays, strings and integers
    within +-2**53 (amounts travel as decimal strings); keys sorted; no whitespace.

    orjson writes exactly these bytes for such values, faster (a node signs a receipt per
    settlement step); a float (which orjson writes its own way, NaN as null) or what orjson
    refuses (an integer past 2**53, a lone surrogate, a key that is not a string) goes the
    standard library's way, as it always did."""
    fast = orjson_canonical(value)
    return fast if fast is not None else json_canonical(value)


def orjson_canonical(value: Any) -> bytes | None:
    """`canonical`'s bytes as orjson writes them, or None where orjson would write its own
    way or refuses (a float anywhere, an integer past 2**53, a lone surrogate, a key that is
    not a string): the caller's standard-library writer takes those."""
    if _holds_float(value):
        return None
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER)
    except orjson.JSONEncodeError:
        return None


def _holds_float(value: Any) -> bool:
    """Whether a float is anywhere in `value` (its dicts' values and its lists, walked)."""
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is dict:
            pending.extend(item.values())
        elif kind is list or kind is tuple:
            pending.extend(item)
        elif kind is float:
            return True
    return False


def json_canonical(value: Any) -> bytes:
    """`canonical` by the standard library alone (the reference the fast path is held to)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def posting_hash(posting: dict[str, Any]) -> str:
    """The posting's link in the ledger's hash chain (`wallets._chain`): SHA-256 of its fields
    joined by U+001F, each leg as account:currency:posted:pending_debit:pending_credit."""
    parts = [posting["prev_hash"], str(posting["sequence"]), posting["idempotency_key"],
             posting["kind"], posting["hold_id"], str(posting["created_at_ms"]),
             posting["memo"], posting["trace_id"], posting["span_id"]]
    parts += [f"{leg['account_id']}:{leg['currency']}:{leg['posted_atomic']}:"
              f"{leg['pending_debit_atomic']}:{leg['pending_credit_atomic']}"
              for leg in posting["legs"]]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def leaf_hash(posting_hash_hex: str) -> bytes:
    """RFC 9162 leaf: SHA-256(0x00 || the posting's 32-byte hash)."""
    return hashlib.sha256(b"\x00" + bytes.fromhex(posting_hash_hex)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_path(leaf: bytes, index: int, size: int, path: list[bytes]) -> bytes | None:
    """RFC 9162 section 2.1.3.2: the root an audit path leads to (None if it cannot fit)."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None


def check_signature(node: str, domain: bytes, body: dict[str, Any], signature: str) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(node)).verify(
            bytes.fromhex(signature), domain + canonical(body))
    except (InvalidSignature, ValueError):
        return False
    return True


# ---- the check ------------------------------------------------------------------------------

_SHAPES: dict[str, set[str]] = {
    "file": {"checkpoint", "proofs", "receipt", "version"},
    "signed": {"body", "signature"},
    "receipt": {"amounts", "chain", "currency", "issued_at_ms", "kind", "node", "parties",
                "postings", "subject", "subject_kind"},
    "chain": {"head_hash", "sequence"},
    "checkpoint": {"first_sequence", "head_hash", "node", "prev_checkpoint", "segment_root",
                   "sequence", "signed_at_ms", "tree_size"},
    "posting": {"created_at_ms", "hash", "hold_id", "idempotency_key", "kind", "legs", "memo",
                "prev_hash", "sequence", "span_id", "trace_id"},
    "leg": {"account_id", "currency", "pending_credit_atomic", "pending_debit_atomic",
            "posted_atomic"},
    "proof": {"leaf_index", "path", "sequence"},
}


def _fail(message: str) -> ReceiptInvalid:
    return ReceiptInvalid(f"receipt invalid: {message}")


def _shape(value: Any, shape: str) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != _SHAPES[shape]:
        raise _fail(f"a {shape} object must have exactly the fields "
                    f"{', '.join(sorted(_SHAPES[shape]))}")
    return value


def _int(value: Any, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_SAFE_INT:
        raise _fail(f"{what} must be an integer in {low}..2**53-1")
    return value


def _str(value: Any, what: str, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
        raise _fail(f"{what} is malformed")
    return value


def _parse(data: bytes) -> dict[str, Any]:
    if not isinstance(data, bytes) or len(data) > MAX_FILE_BYTES:
        raise _fail(f"a receipt file is at most {MAX_FILE_BYTES} bytes")
    if not data.endswith(b"\n"):
        raise _fail("the file must end with one newline")
    try:
        document = json.loads(data[:-1].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _fail("not UTF-8 JSON") from None
    except RecursionError:  # a receipt file nests a few levels; a hostile one, thousands
        raise _fail("the JSON is nested too deeply") from None
    try:
        encoded = canonical(document) + b"\n"
    except (TypeError, ValueError):
        raise _fail("not canonical JSON") from None
    except RecursionError:
        raise _fail("the JSON is nested too deeply") from None
    if encoded != data:
        raise _fail("the file is not in canonical form (RFC 8785: sorted keys, no spaces)")
    return _shape(document, "file")


def _check_posting(posting: Any) -> dict[str, Any]:
    _shape(posting, "posting")
    _int(posting["sequence"], "posting sequence", 1)
    _int(posting["created_at_ms"], "posting created_at_ms")
    for name in ("hash", "prev_hash"):
        _str(posting[name], f"posting {name}", _HEX64)
    for name in ("idempotency_key", "kind", "hold_id", "memo", "trace_id", "span_id"):
        _str(posting[name], f"posting {name}")
    if not isinstance(posting["legs"], list) or not posting["legs"]:
        raise _fail("a posting has at least one leg")
    totals: dict[str, list[int]] = {}
    for leg in posting["legs"]:
        _shape(leg, "leg")
        _str(leg["account_id"], "leg account_id")
        values = [int(_str(leg[name], f"leg {name}", _AMOUNT)) for name in
                  ("posted_atomic", "pending_debit_atomic", "pending_credit_atomic")]
        total = totals.setdefault(_str(leg["currency"], "leg currency"), [0, 0])
        total[0] += values[0]
        total[1] += values[1] - values[2]
    if any(t != [0, 0] for t in totals.values()):
        raise _fail(f"posting {posting['sequence']} does not balance")
    if posting_hash(posting) != posting["hash"]:
        raise _fail(f"posting {posting['sequence']}'s content does not hash to its hash")
    return posting


def verify_receipt(data: bytes, *, node: str | None = None) -> VerifiedReceipt:
    """Check a receipt file's every byte and what it proves; `node`: the key it must be from."""
    document = _parse(data)
    if document["version"] != VERSION:
        raise _fail(f"unknown version {document['version']!r}")
    signed_receipt = _shape(document["receipt"], "signed")
    signed_checkpoint = _shape(document["checkpoint"], "signed")
    body = _shape(signed_receipt["body"], "receipt")
    checkpoint = _shape(signed_checkpoint["body"], "checkpoint")
    signer = _str(body["node"], "node", _HEX64)
    if node is not None and signer != node:
        raise _fail(f"signed by node {signer}, not {node}")
    if not check_signature(signer, RECEIPT_DOMAIN, body,
                           _str(signed_receipt["signature"], "receipt signature", _HEX128)):
        raise _fail("the node's signature on the receipt does not verify")
    if _str(checkpoint["node"], "checkpoint node", _HEX64) != signer:
        raise _fail("the checkpoint is signed by another node")
    if not check_signature(signer, CHECKPOINT_DOMAIN, checkpoint,
                           _str(signed_checkpoint["signature"], "checkpoint signature",
                                _HEX128)):
        raise _fail("the node's signature on the checkpoint does not verify")
    for name in ("subject", "subject_kind", "kind", "currency", "issued_at_ms"):
        (_int if name == "issued_at_ms" else _str)(body[name], name)
    amounts, parties = body["amounts"], body["parties"]
    if not isinstance(amounts, dict) or not isinstance(parties, dict):
        raise _fail("amounts and parties are objects")
    postings = body["postings"]
    if not isinstance(postings, list) or not postings:
        raise _fail("a receipt names at least one posting")
    previous: dict[str, Any] | None = None
    for posting in postings:
        _check_posting(posting)
        if previous is not None and posting["sequence"] <= previous["sequence"]:
            raise _fail(f"posting {posting['sequence']} does not come after the one before")
        previous = posting
    chain = _shape(body["chain"], "chain")
    if (chain["sequence"], chain["head_hash"]) != (postings[-1]["sequence"],
                                                   postings[-1]["hash"]):
        raise _fail("the chain position is not the last posting's")
    _check_inclusion(document["proofs"], postings, checkpoint)
    return VerifiedReceipt(
        node=signer, subject=body["subject"], subject_kind=body["subject_kind"],
        kind=body["kind"], currency=body["currency"],
        amounts={k: int(_str(v, f"amount {k}", _AMOUNT)) for k, v in amounts.items()},
        parties={k: _str(v, f"party {k}") for k, v in parties.items()},
        first_sequence=postings[0]["sequence"], last_sequence=postings[-1]["sequence"],
        checkpoint_sequence=checkpoint["sequence"])


def _check_inclusion(proofs: Any, postings: list[dict[str, Any]],
                     checkpoint: dict[str, Any]) -> None:
    first = _int(checkpoint["first_sequence"], "checkpoint first_sequence", 1)
    last = _int(checkpoint["sequence"], "checkpoint sequence", 1)
    size = _int(checkpoint["tree_size"], "checkpoint tree_size", 1)
    _int(checkpoint["signed_at_ms"], "checkpoint signed_at_ms")
    for name in ("head_hash", "prev_checkpoint", "segment_root"):
        _str(checkpoint[name], f"checkpoint {name}", _HEX64)
    if size != last - first + 1:
        raise _fail("the checkpoint's tree size is not its segment's length")
    root = bytes.fromhex(checkpoint["segment_root"])
    if not isinstance(proofs, list) or len(proofs) != len(postings):
        raise _fail("one inclusion proof per posting")
    for proof, posting in zip(proofs, postings, strict=True):
        _shape(proof, "proof")
        if _int(proof["sequence"], "proof sequence", 1) != posting["sequence"]:
            raise _fail("the proofs are not in the postings' order")
        _int(proof["leaf_index"], "leaf_index")  # its position: first_sequence + leaf_index
        if not isinstance(proof["path"], list) or len(proof["path"]) > 64:
            raise _fail("an audit path is a list of at most 64 hashes")
        path = [bytes.fromhex(_str(p, "audit path hash", _HEX64)) for p in proof["path"]]
        if root_from_path(leaf_hash(posting["hash"]), proof["leaf_index"], size, path) != root:
            raise _fail(f"posting {posting['sequence']} is not in the checkpoint's tree")
