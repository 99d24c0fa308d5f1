"""PayWord hash chains (Rivest and Shamir, 1996): cheap, non-repudiable micropayments.

The buyer picks a secret seed and computes w[N] = seed, w[i-1] = SHA-256(w[i]); the root w[0]
goes into the agreement, which the buyer signs. Revealing w[i] authorises i links of value in
total; anyone holding w[j] (j < i) checks w[i] with i - j hashes, so the per-call check costs a
couple of microseconds instead of an ed25519 verify, and the buyer cannot deny a revealed word.
"""

from __future__ import annotations

import hashlib
import os

MAX_CHAIN_LENGTH = 100_000
CHEAP_CHECK_HASHES = 256  # a voucher checked in at most this many SHA-256s (~0.2 ms)


def _h(word: bytes) -> bytes:
    return hashlib.sha256(word).digest()


class PaywordChain:
    """The buyer's side: the whole chain, computed once, kept in memory (32 B per link)."""

    def __init__(self, length: int, seed: bytes | None = None) -> None:
        if not 1 <= length <= MAX_CHAIN_LENGTH:
            raise ValueError(f"chain length must be 1..{MAX_CHAIN_LENGTH}")
        self.length = length
        self.seed = seed if seed is not None else os.urandom(32)
        words = [self.seed]
        for _ in range(length):
            words.append(_h(words[-1]))
        words.reverse()  # words[0] is the root, words[length] the seed
        self._words = words

    @property
    def root(self) -> bytes:
        return self._words[0]

    def word(self, index: int) -> bytes:
        if not 0 <= index <= self.length:
            raise ValueError(f"index {index} outside the chain (0..{self.length})")
        return self._words[index]


def verify_word(word: bytes, index: int, anchor: bytes, anchor_index: int) -> bool:
    """True when hashing `word` (index - anchor_index) times gives `anchor`."""
    steps = index - anchor_index
    if steps < 0 or steps > MAX_CHAIN_LENGTH or len(word) != 32:
        return False
    for _ in range(steps):
        word = _h(word)
    return word == anchor
