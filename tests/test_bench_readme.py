"""README's performance table is the committed benchmarks/results.json, row for row: every
figure comes from one `make bench` run and none is typed by hand."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from benchmarks import readme, run


def test_the_readme_table_is_what_the_committed_results_give():
    results = json.loads(readme.RESULTS.read_text())
    text = readme.README.read_text()
    assert readme.rewritten(text, results) == text, \
        "README.md's performance table differs from benchmarks/results.json: run " \
        "`python -m benchmarks.readme`"


def test_the_results_are_one_whole_run():
    results = json.loads(readme.RESULTS.read_text())
    assert results["run_commit"] and not results["run_commit"].endswith("+changes")
    assert "run_partial" not in results, "only some benchmarks ran since the last whole run"
    assert results["run_started_utc"] < results["run_finished_utc"]
    assert results["cpu_count"] >= 1


def test_a_figure_missing_from_the_results_is_named():
    results = json.loads(readme.RESULTS.read_text())
    del results["ledger_postings_per_s_batched"]
    with pytest.raises(KeyError, match="ledger_postings_per_s_batched"):
        readme.render(results)


def test_numbers_are_written_with_thousands_and_shares_as_percentages():
    fmt = readme._Formatter()
    assert fmt.format("{a} {b} {c:%} {d}", a=12920, b=1233.3, c=0.033, d=True) == \
        "12,920 1,233.3 3.3% True"


def test_make_bench_runs_every_benchmark_module():
    """A module of benchmarks/ with a `run` left out of `benchmarks.run.MODULES` would
    silently stop being measured, and README rows would then name keys no run writes."""
    folder = Path(run.__file__).parent
    measuring = {path.stem for path in folder.glob("*.py")
                 if any(isinstance(node, ast.FunctionDef) and node.name == "run"
                        for node in ast.parse(path.read_text()).body)}
    assert measuring == set(run.MODULES)
