"""Receipts and checkpoints are signed over `canonical` bytes, which a verifier anywhere must
reproduce: the fast encoder must write exactly what the standard library's canonical form
writes, for every value those bodies can hold, and refuse (or fall back on) the rest."""

from __future__ import annotations

import random
from typing import Any

import pytest

from marketplace.receipt_verify import canonical, json_canonical

SPECIAL = ["", "\x00", "\x1f", "\x7f", "\n\r\t\b\f", '"', "\\", "/", "\u2028\u2029", "\ufeff",
           "é", "日本", "\U0001f600", "\uffff", "\U00010000", "a" * 300]


def _string(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(SPECIAL)
    return "".join(chr(rng.choice([rng.randrange(0x20), rng.randrange(0x20, 0x7f),
                                   rng.randrange(0x80, 0xd800), rng.randrange(0xe000, 0x110000)]))
                   for _ in range(rng.randrange(12)))


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(5 if depth < 4 else 3)
    if kind == 0:
        return _string(rng)
    if kind == 1:
        return rng.choice([0, 1, -1, 2 ** 53, -(2 ** 53), rng.randrange(-10 ** 12, 10 ** 12)])
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_string(rng): _value(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_the_fast_encoding_is_the_standard_librarys_byte_for_byte():
    rng = random.Random(8785)
    for _ in range(3000):
        value = _value(rng)
        assert canonical(value) == json_canonical(value), value


@pytest.mark.parametrize("value", [{"big": 2 ** 64}, {"big": -(2 ** 70)}, {"a": [2 ** 53 + 1]}],
                         ids=["2**64", "-2**70", "past-2**53"])
def test_integers_past_the_fast_range_are_written_as_before(value: Any):
    assert canonical(value) == json_canonical(value)


def test_what_the_canonical_form_cannot_hold_is_refused_as_before():
    with pytest.raises(UnicodeEncodeError):
        canonical({"memo": "\ud800"})  # a lone surrogate has no UTF-8
    with pytest.raises(ValueError):
        canonical({"x": [float("nan")]})  # NaN has no JSON


@pytest.mark.parametrize("number", [1.5, 1e16, 1e-7, -0.0, float("inf")])
def test_floats_are_written_as_the_standard_library_writes_them(number: float):
    value = {"n": number, "list": [number]}
    if number == float("inf"):
        with pytest.raises(ValueError):
            canonical(value)
    else:
        assert canonical(value) == json_canonical(value)
