"""`agentmarket demo` as a user runs it: every seller in the table, balances before anything
moved, what the seller received after the fee, and no folder left behind.

Issue 15 finding 9: the table left out seller-b, its "before" column already had the deposit,
"seller paid 0.00875 USD" was the gross (the seller received 0.00853125), and each run left a
temporary folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wallets.currencies import currency, split

ROOT = Path(__file__).resolve().parent.parent
FEE_BPS = 250


@pytest.mark.slow
def test_the_demo_table_totals_and_folder(tmp_path: Path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch), "COLUMNS": "160",
           "AGENTMARKET_TRACING": "on"}
    done = subprocess.run([sys.executable, "-m", "marketplace.cli.main", "demo", "--calls", "3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    rows = {match[0]: match[1:] for match in re.findall(
        r"│ (\S+)\s+│ (\w+)\s+│\s+([-\d.]+) USD │\s+([-\d.]+) USD │\s+([-\d.]+) USD │", out)}
    assert {"buyer", "seller-a", "seller-b", "sandbox-usd"} <= set(rows), out
    assert rows["buyer"][1] == "0.00", "before: the buyer had nothing before the deposit"
    assert rows["seller-b"] == ("wallet", "0.00", "0.00", "0.00")  # not chosen, still shown
    usd = currency("USD")
    paid = usd.atomic(rows["seller-a"][2])
    gross = re.search(r"paid ([\d.]+) USD, less the marketplace's ([\d.]+) USD fee", out)
    assert gross is not None, out
    captured, fee = usd.atomic(gross[1]), usd.atomic(gross[2])
    assert (paid, fee) == (captured - fee, split(captured, FEE_BPS)[1])
    assert f"the seller received {usd.format(paid)}" in out
    assert list(scratch.iterdir()) == [], "the demo left files behind"
    assert "--workdir DIR" in out  # how to keep them
