"""RFC 9162 Merkle trees over a checkpoint segment's leaf hashes, kept by level.

Every left child of an RFC 9162 tree is a perfect subtree aligned on its own size, and every
right child is either one too or a node of the tree's right edge. So one pass that pairs the
leaves, level by level, keeps every perfect subtree (2n hashes, 32 bytes each, in one bytes
object per level), and any node is then at most log2(n) hashes away: an audit path costs
O(log^2 n) hashes instead of rehashing the segment (2n) for every proof a caller asks for.
"""

from __future__ import annotations

import hashlib

from marketplace.receipt_verify import node_hash

HASH_BYTES = 32


class MerkleTree:
    """The tree over `leaves` (leaf hashes, already SHA-256(0x00 || leaf))."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.size = len(leaves)
        levels = [b"".join(leaves)]
        current = leaves
        while len(current) > 1:
            current = [node_hash(current[i], current[i + 1])
                       for i in range(0, len(current) - 1, 2)]
            levels.append(b"".join(current))
        self._levels = levels

    @property
    def stored_bytes(self) -> int:
        return sum(len(level) for level in self._levels)

    def root(self) -> bytes:
        """MTH(D[n]); the hash of no leaves is SHA-256 of nothing."""
        return self._hash(0, self.size) if self.size else hashlib.sha256(b"").digest()

    def audit_path(self, index: int) -> list[bytes]:
        """PATH(m, D[n]) of RFC 9162 section 2.1.3.1."""
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} is not in a tree of {self.size}")
        stack: list[bytes] = []
        lo, hi, m = 0, self.size, index
        while hi - lo > 1:
            k = _split(hi - lo)
            if m < k:
                stack.append(self._hash(lo + k, hi))
                hi = lo + k
            else:
                stack.append(self._hash(lo, lo + k))
                lo, m = lo + k, m - k
        return list(reversed(stack))

    def _hash(self, lo: int, hi: int) -> bytes:
        size = hi - lo
        if size & (size - 1) == 0 and lo % size == 0:  # a perfect subtree: stored
            level = size.bit_length() - 1
            at = (lo >> level) * HASH_BYTES
            return self._levels[level][at:at + HASH_BYTES]
        k = _split(size)
        return node_hash(self._hash(lo, lo + k), self._hash(lo + k, hi))


def _split(size: int) -> int:
    """The largest power of two below `size` (size > 1)."""
    return 1 << ((size - 1).bit_length() - 1)
