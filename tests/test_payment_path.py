"""The payment-path benchmark (`benchmarks/payment_path.py`) measures real paid calls: each
answered with an output, its usage record in the seller's journal when the record is on."""

from __future__ import annotations

import pytest

from benchmarks import payment_path as bench


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(bench, "CALLERS", 3)
    monkeypatch.setattr(bench, "CALLS_PER_CALLER", 4)
    monkeypatch.setattr(bench, "ROUNDS", 2)


def test_every_side_is_measured_and_every_recorded_call_is_in_the_journal(small):
    results = bench.run()  # raises unless each call was answered and, recorded, in the journal
    assert results["payment_path_callers"] == 3
    for side in ("unpaid", "seller", "buyer", "seller_recorded", "buyer_recorded", "writer"):
        assert results[f"payment_path_{side}_us"] > 0, side

