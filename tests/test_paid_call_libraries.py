"""The on-demand split of a paid call's seller CPU by library (`benchmarks.paid_call_libraries`):
its arithmetic and its refusal without perf (perf itself runs only on demand)."""

from __future__ import annotations

import pytest
from rich.console import Console

from benchmarks import paid_call_libraries as libraries


def _side(interpreter: float, total: float, rate: float) -> dict[str, float]:
    found = dict.fromkeys(libraries.ROWS, 0.0)
    found.update(interpreter=interpreter, kernel=total - interpreter, total=total, rate=rate)
    return found


FOUND = {"unpaid": _side(150.0, 500.0, 2000.0), "floor": _side(160.0, 520.0, 1900.0),
         "paid": _side(260.0, 640.0, 1400.0)}


def test_the_best_ratio_takes_away_only_the_payments_python():
    # paid less floor in the interpreter is 100 us: without it a paid call costs 540 us
    assert libraries.best_ratio(FOUND) == pytest.approx(500 / 540)


def test_a_paid_side_spending_less_python_than_the_floor_takes_nothing_away():
    cheaper = {**FOUND, "paid": _side(150.0, 600.0, 1500.0)}
    assert libraries.best_ratio(cheaper) == pytest.approx(500 / 600)


def test_the_table_shows_each_side_and_the_difference():
    console = Console(record=True, width=120)
    console.print(libraries.table("aio", FOUND))
    text = console.export_text()
    assert "+100.0" in text  # interpreter: paid less floor
    assert "+120.0" in text  # total
    for figure in ("2000", "1900", "1400"):
        assert figure in text


def test_without_perf_it_says_why_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(libraries, "available", lambda: "no perf on PATH (Debian: linux-perf)")
    assert libraries.main([]) == 2
    assert capsys.readouterr().err.strip() == \
        "paid_call_libraries: no perf on PATH (Debian: linux-perf)"


@pytest.mark.parametrize(("args", "says"), [
    (["--rounds", "0"], "--rounds is a whole number of at least 1, got '0'"),
    (["--rounds"], "--rounds needs a value"),
    (["--kind", "fast"], "--kind is aio, threaded or both, got 'fast'"),
])
def test_a_wrong_option_is_one_line(args, says, capsys):
    assert libraries.main(args) == 2
    assert capsys.readouterr().err.strip() == f"paid_call_libraries: {says}"
