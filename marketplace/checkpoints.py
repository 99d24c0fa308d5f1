"""Signed checkpoints of the ledger's posting hash chain, and inclusion proofs against them.

The ledger links every posting to the one before (`wallets._chain`), so its head hash commits to
everything sealed. A checkpoint is the node's ed25519 signature over that head at a chain
position (`sequence` in a checkpoint is a position: on SQLite it equals the posting's own
sequence; on PostgreSQL the sealer gives positions in the order postings are sealed), plus the
RFC 9162 Merkle root of the posting hashes of its *segment* (the postings after the previous
checkpoint, up to and including its own sequence), plus the digest of the previous checkpoint:
the checkpoints form a chain of their own, each covering a bounded segment. A posting's
inclusion is then proved by its content (which hashes to its chain hash), the audit path from
that hash to the segment root (log2 of the segment's length hashes, and nothing about anyone
else's postings), and the signed checkpoint. PROTOCOL.md gives the bytes.

The node cuts a checkpoint every `interval_s` when the chain has moved (`cut_if_due`, from its
sweeper) and on demand when a receipt needs one. Cutting is serialised (SQLite: the write lock;
PostgreSQL: an advisory lock), so concurrent nodes over one database never fork the chain.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, insert, select, text

from marketplace.identity import AgentKey
from marketplace.merkle import MerkleTree
from marketplace.receipt_verify import (
    CHECKPOINT_DOMAIN,
    ZERO_HASH,
    canonical,
    leaf_hash,
)
from marketplace.tables import CheckpointRow
from wallets.ledger import HEAD, POSTINGS
from wallets.store import begin_in_turn

CHECKPOINTS = CheckpointRow.__table__  # type: ignore[attr-defined]
MAX_SEGMENT = 65_536  # postings per checkpoint: an audit path is at most 16 hashes
TREES_KEPT = 8  # segments' trees kept for proofs: 4 MiB each at most
_LOCK_ID = 0x61676D63  # "agmc": the advisory lock checkpoint cutting takes on PostgreSQL


@dataclass(frozen=True, slots=True)
class Checkpoint:
    body: dict[str, Any]
    signature: str

    @property
    def sequence(self) -> int:
        return int(self.body["sequence"])

    @property
    def first_sequence(self) -> int:
        return int(self.body["first_sequence"])

    def signed(self) -> dict[str, Any]:
        return {"body": self.body, "signature": self.signature}

    def digest(self) -> str:
        """What the next checkpoint names as `prev_checkpoint`."""
        return hashlib.sha256(CHECKPOINT_DOMAIN + canonical(self.body)).hexdigest()


# ---- RFC 9162 Merkle trees (`marketplace.merkle`) ----------------------------------------


def merkle_root(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) over leaf hashes (already SHA-256(0x00 || leaf))."""
    return MerkleTree(leaves).root()


def audit_path(leaves: list[bytes], index: int) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 section 2.1.3.1."""
    return MerkleTree(leaves).audit_path(index)


# ---- cutting and reading -------------------------------------------------------------------


class Checkpoints:
    """The checkpoint chain of one ledger database, signed with the node's key (reading needs
    no key: `key=None` for operator tools)."""

    def __init__(self, engine: Engine, key: AgentKey | None, clock_ms: Any) -> None:
        self.engine = engine
        self.key = key
        self.clock_ms = clock_ms
        self._last_cut_ms = 0
        self._trees: OrderedDict[tuple[int, int], MerkleTree] = OrderedDict()
        self._trees_lock = threading.Lock()

    def latest(self) -> Checkpoint | None:
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            return self._latest(conn)

    @staticmethod
    def _latest(conn: Connection) -> Checkpoint | None:
        row = conn.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.sequence.desc())
                           .limit(1)).first()
        return _checkpoint(row) if row else None

    def covering(self, sequence: int) -> Checkpoint | None:
        """The checkpoint whose segment holds `sequence`, if one has been cut."""
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            row = conn.execute(select(CHECKPOINTS).where(CHECKPOINTS.c.sequence >= sequence)
                               .order_by(CHECKPOINTS.c.sequence).limit(1)).first()
        found = _checkpoint(row) if row else None
        return found if found and found.first_sequence <= sequence else None

    def cut_if_due(self, interval_s: float) -> int:
        """Cut the checkpoints the chain needs when `interval_s` has passed since the last."""
        now = self.clock_ms()
        if now - self._last_cut_ms < interval_s * 1000:
            return 0
        self._last_cut_ms = now
        return self.cut()

    def cut(self) -> int:
        """Sign the chain up to its current head, one segment of at most MAX_SEGMENT postings
        at a time; returns how many checkpoints were made (0: the head is already covered)."""
        if self.key is None:
            raise RuntimeError("cutting a checkpoint needs the node's key")
        made = 0
        while True:
            with begin_in_turn(self.engine) as conn:
                if self.engine.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
                previous = self._latest(conn)
                start = previous.sequence + 1 if previous else 1
                head = conn.execute(select(HEAD.c.sequence)).scalar() or 0
                if head < start:
                    return made
                end = min(head, start + MAX_SEGMENT - 1)
                hashes = segment_hashes(conn, start, end)
                body = {"first_sequence": start, "head_hash": hashes[-1], "node":
                        self.key.agent_id, "prev_checkpoint": previous.digest() if previous
                        else ZERO_HASH, "segment_root": merkle_root(
                            [leaf_hash(h) for h in hashes]).hex(), "sequence": end,
                        "signed_at_ms": self.clock_ms(), "tree_size": end - start + 1}
                signature = self.key.sign(CHECKPOINT_DOMAIN + canonical(body)).hex()
                conn.execute(insert(CHECKPOINTS).values(
                    sequence=end, first_sequence=start, body_json=orjson.dumps(body).decode(),
                    signature=signature, node=self.key.agent_id,
                    signed_at_ms=body["signed_at_ms"]))
            made += 1

    def positions(self, sequences: list[int]) -> list[int]:
        """The chain positions of these postings (by sequence; all sealed)."""
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            found = dict(conn.execute(select(POSTINGS.c.sequence, POSTINGS.c.position).where(
                POSTINGS.c.sequence.in_(sequences))).all())
        if any(found.get(s) is None for s in sequences):
            raise RuntimeError(f"postings {sequences} are not all sealed")
        return [int(found[s]) for s in sequences]

    def proofs(self, checkpoint: Checkpoint, sequences: list[int], positions: list[int]
               ) -> list[dict[str, Any]]:
        """The audit path of each posting (by sequence, at these positions) in the
        checkpoint's segment."""
        tree = self._tree(checkpoint)
        return [{"leaf_index": at - checkpoint.first_sequence, "path": [
            p.hex() for p in tree.audit_path(at - checkpoint.first_sequence)],
            "sequence": s} for s, at in zip(sequences, positions, strict=True)]

    def _tree(self, checkpoint: Checkpoint) -> MerkleTree:
        """The segment's tree, built once and kept (a cut segment never changes): a party
        asking for its receipt again and again costs log n hashes, not the segment's 2n."""
        key = (checkpoint.first_sequence, checkpoint.sequence)
        with self._trees_lock:
            tree = self._trees.get(key)
            if tree is not None:
                self._trees.move_to_end(key)
                return tree
        with self.engine.connect().execution_options(agentmarket_read=True) as conn:
            hashes = segment_hashes(conn, checkpoint.first_sequence, checkpoint.sequence)
        tree = MerkleTree([leaf_hash(h) for h in hashes])
        with self._trees_lock:
            self._trees[key] = tree
            while len(self._trees) > TREES_KEPT:
                self._trees.popitem(last=False)
        return tree


def segment_hashes(conn: Connection, first: int, last: int) -> list[str]:
    """The chain hashes at positions first..last."""
    rows = conn.execute(select(POSTINGS.c.position, POSTINGS.c.hash).where(
        POSTINGS.c.position >= first, POSTINGS.c.position <= last)
        .order_by(POSTINGS.c.position)).all()
    if [r.position for r in rows] != list(range(first, last + 1)):
        raise RuntimeError(f"chain positions {first}..{last} are not all in the ledger")
    return [r.hash for r in rows]


def _checkpoint(row: Any) -> Checkpoint:
    return Checkpoint(orjson.loads(row.body_json), row.signature)
