"""The segment's Merkle tree kept by level (`marketplace.merkle`) gives RFC 9162's roots and
audit paths exactly, and a receipt asked for again reads and hashes its segment no more."""

from __future__ import annotations

import hashlib
import random

import pytest

from marketplace import checkpoints
from marketplace.identity import AgentKey
from marketplace.merkle import MerkleTree
from marketplace.receipt_verify import leaf_hash, node_hash, verify_receipt
from marketplace.receipts import ReceiptBook
from marketplace.testing import Harness, make_skill


def _mth(leaves: list[bytes]) -> bytes:
    """MTH of RFC 9162 section 2.1.1, as written there."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 section 2.1.3.1, as written there."""
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


@pytest.mark.parametrize("size", [*range(1, 70), 127, 128, 129, 1000])
def test_roots_and_audit_paths_are_rfc_9162s(size: int):
    leaves = [leaf_hash(hashlib.sha256(str(i).encode()).hexdigest()) for i in range(size)]
    tree = MerkleTree(leaves)
    assert tree.root() == _mth(leaves)
    for m in {0, size - 1, size // 2, random.Random(size).randrange(size)}:
        assert tree.audit_path(m) == _path(m, leaves)
    assert tree.stored_bytes < 2 * 32 * size


def test_an_empty_tree_and_a_leaf_outside_it():
    assert MerkleTree([]).root() == hashlib.sha256(b"").digest()
    with pytest.raises(IndexError):
        MerkleTree([leaf_hash("00" * 32)]).audit_path(1)


def test_a_receipt_asked_for_again_reads_its_segment_once(engine, clock, monkeypatch):
    """A party may ask for its receipt as often as its rate allows; each answer was a read of
    every posting of the segment (65,536 at most) and 2n hashes."""
    h = Harness(engine, clock)
    try:
        node = AgentKey.generate()
        h.settlement.receipts = ReceiptBook(engine, node, clock)
        h.advertise(make_skill())
        h.fund(h.buyer, 100_000_000)
        deal = h.deal(dispute_window_s=0)
        h.open(deal)
        h.redeem(deal, [{"text": "a"}])
        reads: list[tuple[int, int]] = []
        real = checkpoints.segment_hashes

        def counted(conn, first, last):
            reads.append((first, last))
            return real(conn, first, last)

        monkeypatch.setattr(checkpoints, "segment_hashes", counted)
        files = [h.settlement.receipts.receipt_file(deal.agreement_id) for _ in range(5)]
        assert len(set(files)) == 1
        verify_receipt(files[0], node=node.agent_id)
        assert len(reads) == 2, reads  # the cut hashes its segment; the proofs read it once
        assert len(set(reads)) == 1
    finally:
        h.close()
